"""Runtime lookup of Cloudflare alert types in the catalogue shipped as schemas/catalog.json."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from typing import Any

import orjson

_RECORD_FIELDS = ("title", "product", "audience", "plan", "what_to_do", "kind")


@dataclass(frozen=True, slots=True)
class CatalogEntry:
    """What the catalogue knows about one alert_type id.

    Use it to enrich events and to explain a type to people. Fields taken from the docs seeds
    (audience, plan, what_to_do) are None wherever the seed could not be tied to the id for sure.
    """

    alert_type: str
    """The id as Cloudflare sends it in `alert_type`."""
    title: str
    """Name in Cloudflare's docs or dashboard."""
    product: str | None
    """Product group, as in alert-types.csv."""
    audience: str | None
    """Who the notification is for, from the docs."""
    plan: str | None
    """The plan or purchase it is included with, from the docs."""
    what_to_do: str | None
    """What to do on receiving one, from the docs; markdown links kept."""
    kind: str | None
    """stateful, transition, one_off, periodic or unknown (the CSV's kind_hint)."""

    def as_record(self) -> dict[str, str | None]:
        """The fields an enriched event carries.

        Returns:
            A new dict with exactly title, product, audience, plan, what_to_do and kind.
        """
        return {
            "title": self.title,
            "product": self.product,
            "audience": self.audience,
            "plan": self.plan,
            "what_to_do": self.what_to_do,
            "kind": self.kind,
        }


@dataclass(frozen=True, slots=True)
class _Extra:
    """Catalogue facts only `describe` shows."""

    status: str
    kind_confirmed: bool
    links: tuple[str, ...]
    doc_title: str | None


def _opt(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _load() -> tuple[dict[str, CatalogEntry], dict[str, dict[str, str | None]], dict[str, _Extra]]:
    raw: dict[str, dict[str, Any]] = orjson.loads(
        resources.files("cfn.schemas").joinpath("catalog.json").read_bytes()
    )
    entries: dict[str, CatalogEntry] = {}
    extras: dict[str, _Extra] = {}
    for alert_type, value in raw.items():
        entries[alert_type] = CatalogEntry(
            alert_type=alert_type,
            title=str(value["title"]),
            product=_opt(value.get("product")),
            audience=_opt(value.get("audience")),
            plan=_opt(value.get("plan")),
            what_to_do=_opt(value.get("what_to_do")),
            kind=_opt(value.get("kind")),
        )
        extras[alert_type] = _Extra(
            status=str(value.get("status")),
            kind_confirmed=bool(value.get("kind_confirmed")),
            links=tuple(value.get("links") or ()),
            doc_title=_opt(value.get("doc_title")),
        )
    records = {alert_type: entry.as_record() for alert_type, entry in entries.items()}
    return entries, records, extras


# Loaded once at import: lookups on the hot path are plain dict gets.
_ENTRIES, _RECORDS, _EXTRAS = _load()
_KNOWN = frozenset(_ENTRIES)


def lookup(alert_type: str | None) -> CatalogEntry | None:
    """Finds the catalogue entry for an alert_type id.

    Args:
        alert_type: The id from a payload; may be None, since payloads may omit it.

    Returns:
        The shared, immutable entry, or None for None and for ids the catalogue lacks.
    """
    if alert_type is None:
        return None
    return _ENTRIES.get(alert_type)


def record_for(alert_type: str | None) -> dict[str, str | None] | None:
    """The precomputed `as_record()` dict for an id, without building a new one.

    Args:
        alert_type: The id from a payload; may be None.

    Returns:
        A dict shared between callers (treat it as read-only), or None for None and unknown ids.
    """
    if alert_type is None:
        return None
    return _RECORDS.get(alert_type)


def known_ids() -> frozenset[str]:
    """Every alert_type id in the catalogue.

    Returns:
        The ids.
    """
    return _KNOWN


def _field(label: str, text: str) -> str:
    """`  label:      text`, with later lines of a multi-line text indented under the first."""
    pad = " " * 14
    head, *rest = text.splitlines() or [""]
    return "\n".join(
        [f"  {label + ':':<11} {head}", *(pad + line if line else "" for line in rest)]
    )


def describe(alert_type: str) -> str:
    """Human description of one alert type, for `cfn catalog <id>`.

    Args:
        alert_type: The id to describe.

    Returns:
        Several lines: title, product, audience, plan, kind, what to do and links; for an id
        the catalogue lacks, one line saying it is an unknown alert type.
    """
    entry = _ENTRIES.get(alert_type)
    if entry is None:
        return (
            f"unknown alert type: {alert_type!r} (not among the {len(_KNOWN)} catalogued ids;"
            " events with it still flow through untouched)"
        )
    extra = _EXTRAS[alert_type]
    missing = "(not in the docs seeds)"
    kind = f"{entry.kind} ({'documented' if extra.kind_confirmed else 'inferred, unconfirmed'})"
    lines = [
        f"{entry.alert_type}: {entry.title}",
        _field("product", entry.product or "unknown"),
        _field("status", extra.status),
        _field("kind", kind),
        _field("audience", entry.audience or missing),
        _field("plan", entry.plan or missing),
    ]
    if extra.doc_title and extra.doc_title != entry.title:
        lines.append(_field("docs title", extra.doc_title))
    lines.append("  what to do:")
    what = entry.what_to_do or missing
    lines.extend(f"    {line}" if line else "" for line in what.splitlines())
    if extra.links:
        lines.append("  links:")
        lines.extend(f"    - {url}" for url in extra.links)
    return "\n".join(lines)


def describe_all() -> str:
    """One line per catalogued id, sorted: id, title and product, for `cfn catalog`.

    Returns:
        The lines joined by newlines.
    """
    width = max(map(len, _ENTRIES), default=0)
    return "\n".join(
        f"{alert_type:<{width}}  {entry.title}  [{entry.product or 'unknown'}]"
        for alert_type, entry in sorted(_ENTRIES.items())
    )
