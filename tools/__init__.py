"""Development tools: not shipped in the cfn package (install-deps, the catalogue build)."""
