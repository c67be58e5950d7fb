"""Payload parsing, record shapes and their JSON Schemas, shared by ingest and processors."""
