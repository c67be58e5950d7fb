"""The one JSON seam: orjson, bytes in and bytes out."""

from __future__ import annotations

from typing import Any

import orjson

JSONDecodeError = orjson.JSONDecodeError


def loads(data: bytes | str) -> Any:
    """Parse JSON.

    Raises:
        JSONDecodeError: the input is not valid JSON (a ValueError subclass).
    """
    return orjson.loads(data)


def dumps(obj: Any) -> bytes:
    """Serialise a record; dataclasses and non-str dict keys are supported by orjson."""
    return orjson.dumps(obj, option=orjson.OPT_NON_STR_KEYS)


def canonical(obj: Any) -> bytes:
    """Canonical JSON: keys sorted at every depth, no whitespace, UTF-8.

    Two bodies that differ only in key order or spacing have the same canonical form; values are
    kept exactly as received (a "800" stays a string), so a real change in content never
    collides.
    """
    return orjson.dumps(obj, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS)
