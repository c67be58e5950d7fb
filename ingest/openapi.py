"""The OpenAPI 3.1 description of the ingest, kept beside the code that it describes."""

from __future__ import annotations

from typing import Any

from cfn.ingest.settings import IngestSettings


def _error(description: str, *, retry: bool = False) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }
    if retry:
        response["headers"] = {
            "Retry-After": {"schema": {"type": "integer"}, "description": "seconds"}
        }
    return response


def _status(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Status"}}},
    }


def openapi_document(settings: IngestSettings) -> dict[str, Any]:
    """The document served at /openapi.json; statuses match `ingest.app` exactly."""
    not_allowed = _error("Wrong method for this path.")
    # /readyz, /metrics and this document are on the admin listener, not the public port.
    admin = [
        {
            "url": f"http://{settings.admin_host}:{settings.admin_port}",
            "description": "the admin port (CFN_INGEST_ADMIN_HOST, CFN_INGEST_ADMIN_PORT)",
        }
    ]
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "cfn ingest",
            "version": "1",
            "description": (
                "Receives Cloudflare Notifications generic webhooks and writes the exact bytes "
                "to Kafka. 202 means Kafka acknowledged the write with acks=all. The public port "
                "serves the webhook and /healthz; the paths with a server of their own are on "
                "the admin port."
            ),
        },
        "paths": {
            "/webhooks/cloudflare": {
                "post": {
                    "summary": "Accept one Cloudflare notification",
                    "parameters": [
                        {
                            "name": "cf-webhook-auth",
                            "in": "header",
                            "required": True,
                            "schema": {"type": "string"},
                            "description": "The webhook secret configured in Cloudflare.",
                        }
                    ],
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {"$ref": "#/components/schemas/Notification"}
                            }
                        },
                    },
                    "responses": {
                        "202": {
                            "description": "Durably written to the raw topic.",
                            "content": {
                                "application/json": {
                                    "schema": {"$ref": "#/components/schemas/Accepted"}
                                }
                            },
                        },
                        "400": _error("Not a JSON object; the body went to the dead-letter topic."),
                        "401": _error("Missing or wrong cf-webhook-auth."),
                        "408": _error(
                            "The head or the body did not arrive within its timeout "
                            "(the connection is closed)."
                        ),
                        "413": _error(f"Body over {settings.max_body} bytes."),
                        "429": _error(
                            "Too many requests: the tenant is over its share of the in-flight "
                            "slots (each tenant is guaranteed CFN_INGEST_MAX_INFLIGHT / tenants "
                            "of them, and may borrow unreserved ones up to its own "
                            "max_inflight), over its rate, or the ingest is at "
                            f"CFN_INGEST_MAX_INFLIGHT ({settings.max_inflight}). The message "
                            "names the tenant's limit. Sent after a short hold "
                            "(CFN_INGEST_THROTTLE_DELAY).",
                            retry=True,
                        ),
                        "431": _error(
                            f"Request head over {settings.max_header_bytes} bytes "
                            "(the connection is closed)."
                        ),
                        "500": _error("Kafka rejected the write permanently.", retry=True),
                        "503": _error("Kafka did not acknowledge in time.", retry=True),
                    },
                },
                "get": {"responses": {"405": not_allowed}},
                "put": {"responses": {"405": not_allowed}},
                "delete": {"responses": {"405": not_allowed}},
                "patch": {"responses": {"405": not_allowed}},
            },
            "/healthz": {
                "get": {"summary": "The process is alive", "responses": {"200": _status("Alive.")}}
            },
            "/readyz": {
                "servers": admin,
                "get": {
                    "summary": "The producer is connected and the raw topic exists",
                    "responses": {
                        "200": _status("Ready."),
                        "503": _status("Not ready."),
                    },
                },
            },
            "/metrics": {
                "servers": admin,
                "get": {
                    "summary": "Prometheus metrics",
                    "responses": {
                        "200": {
                            "description": "Prometheus text format.",
                            "content": {"text/plain": {"schema": {"type": "string"}}},
                        }
                    },
                },
            },
            "/openapi.json": {
                "servers": admin,
                "get": {
                    "summary": "This document",
                    "responses": {
                        "200": {
                            "description": "OpenAPI 3.1.",
                            "content": {"application/json": {"schema": {"type": "object"}}},
                        }
                    },
                },
            },
        },
        "components": {
            "schemas": {
                "Notification": {
                    "type": "object",
                    "description": "Cloudflare's generic webhook body; any JSON object is kept.",
                    "properties": {
                        "name": {"type": "string"},
                        "text": {"type": "string"},
                        "data": {"type": "object"},
                        "ts": {"type": "integer"},
                        "account_id": {"type": "string"},
                        "policy_id": {"type": "string"},
                        "policy_name": {"type": "string"},
                        "alert_type": {"type": "string"},
                        "alert_correlation_id": {"type": "string"},
                        "alert_event": {"type": "string"},
                    },
                },
                "Accepted": {
                    "type": "object",
                    "required": ["status", "id"],
                    "properties": {"status": {"const": "accepted"}, "id": {"type": "string"}},
                },
                "Status": {
                    "type": "object",
                    "required": ["status"],
                    "properties": {"status": {"type": "string"}, "message": {"type": "string"}},
                },
                "Error": {
                    "type": "object",
                    "required": ["error", "message"],
                    "properties": {
                        "error": {"type": "string"},
                        "message": {"type": "string"},
                        "id": {"type": "string"},
                    },
                },
            },
        },
    }
