"""Cut the alerting paths cfn calls, and every schema they reference, out of Cloudflare's OpenAPI
document, into tests/data/cloudflare/alerting-openapi.json (tests/data/cloudflare/README.md).

    python -m tools.vendor_cloudflare_openapi openapi.json COMMIT > alerting-openapi.json

`openapi.json` is the file of the public cloudflare/api-schemas repository at COMMIT.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

REPOSITORY = "https://github.com/cloudflare/api-schemas"
# The paths cfn.cloudflare calls; silences are not in every version of the document.
PATHS = (
    "/accounts/{account_id}/alerting/v3/destinations/webhooks",
    "/accounts/{account_id}/alerting/v3/destinations/webhooks/{webhook_id}",
    "/accounts/{account_id}/alerting/v3/policies",
    "/accounts/{account_id}/alerting/v3/policies/{policy_id}",
    "/accounts/{account_id}/alerting/v3/history",
    "/accounts/{account_id}/alerting/v3/silences",
)


def _refs(value: Any) -> Iterator[str]:
    if isinstance(value, dict):
        for key, item in value.items():
            if key == "$ref" and isinstance(item, str):
                yield item
            else:
                yield from _refs(item)
    elif isinstance(value, list):
        for item in value:
            yield from _refs(item)


def excerpt(document: dict[str, Any], commit: str) -> dict[str, Any]:
    """The paths of PATHS present in `document`, with the components they reach."""
    paths = {path: document["paths"][path] for path in PATHS if path in document["paths"]}
    components: dict[str, dict[str, Any]] = {}
    pending = list(_refs(paths))
    while pending:
        ref = pending.pop()
        _, section, kind, name = ref.split("/")
        assert section == "components", ref
        if name in components.get(kind, {}):
            continue
        value = document["components"][kind][name]
        components.setdefault(kind, {})[name] = value
        pending.extend(_refs(value))
    return {
        "openapi": document["openapi"],
        "info": {
            "title": "Cloudflare API: the alerting paths cfn calls (an excerpt)",
            "version": document["info"]["version"],
            "x-source": f"{REPOSITORY}/blob/{commit}/openapi.json",
        },
        "paths": paths,
        "components": {
            kind: dict(sorted(items.items())) for kind, items in sorted(components.items())
        },
    }


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    document = orjson.loads(Path(argv[0]).read_bytes())
    sys.stdout.buffer.write(
        orjson.dumps(excerpt(document, argv[1]), option=orjson.OPT_INDENT_2) + b"\n"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
