"""Builds schemas/catalog.json from the Cloudflare docs seeds and the alert-types CSV (vendor/)."""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_DIR = Path(__file__).resolve().parents[1]
CATALOG_PATH = REPO_DIR / "schemas" / "catalog.json"
# The sources as vendored in this repository (vendor/README.md says where they come from).
VENDOR_DIR = REPO_DIR / "vendor"
SEED_TYPES = Path("seeds/notification-types.md")
SEED_WHAT_TO_DO = Path("seeds/what-to-do-on-notification.md")
ALERT_TYPES_CSV = Path("cloudflare/alert-types.csv")

CSV_COLUMNS = ("alert_type", "title", "product", "status", "kind_hint", "kind_confirmed")
STATUSES = frozenset({"enum", "live", "legacy"})
KINDS = frozenset({"stateful", "transition", "one_off", "periodic", "unknown"})

# The text each MDX partial renders, keyed by the partial's path as the seed imports it.
# The first three are not guesses: what-to-do-on-notification.md is the same docs page from
# before the partials existed, and spells out this text inline for the same notifications
# (tests/test_catalog.py asserts each appears there verbatim).
# The Page Shield pair does not appear in the seeds; their text is that of the partial files of
# the same names in cloudflare/cloudflare-docs (content/notifications/_partials/, oldest stored
# versions), with the site-relative links made absolute.
PARTIALS: Mapping[str, str] = {
    "_ddos": (
        "No action needed. Refer to [Understanding Cloudflare DDoS alerts]"
        "(https://support.cloudflare.com/hc/en-us/articles/"
        "360053216191-Understanding-Cloudflare-DDoS-alerts) for more information."
    ),
    "_errors": (
        "Refer to our [Troubleshooting Cloudflare 5XX errors]"
        "(https://support.cloudflare.com/hc/en-us/articles/"
        "115003011431-Troubleshooting-Cloudflare-5XX-errors) to learn how to troubleshoot these"
        " errors."
    ),
    "_troubleshoot-ssl": (
        "You only need to take action if notified that you have a certificate that failed. You"
        " can find the reasons why a certificate is not being issued in our [Troubleshooting SSL"
        " errors](https://support.cloudflare.com/hc/en-us/articles/"
        "200170566-Troubleshooting-SSL-errors#h_c1a6e78e-150d-4db6-89ab-eec7cb1ab03f)."
    ),
    "_script-monitor-detect-malicious-scripts": (
        "For more information, refer to [Malicious script and connection detection]"
        "(https://developers.cloudflare.com/page-shield/how-it-works/malicious-script-detection/)."
    ),
    "_script-monitor-review-malicious-scripts": (
        "Review the information in the Page Shield dashboard about the detected malicious"
        " resources, then update the pages where those resources were detected.\n\n"
        "For more information, refer to [Review scripts and connections considered malicious]"
        "(https://developers.cloudflare.com/page-shield/detection/review-malicious-scripts/)."
    ),
}

# Seed titles that do not equal a CSV title even after normalisation, mapped by hand. Each entry
# was reviewed against a later revision of the same docs page (cloudflare/cloudflare-docs,
# content/notifications/notification-available.md), where the notification carries the CSV's
# name and the same "Who is it for?" / "Included with" text, or against the id itself.
REVIEWED_ALIASES: Mapping[str, tuple[str, ...]] = {
    # Renamed "HTTP DDoS Attack Alert" later, same audience and "All Cloudflare plans"; the
    # Enterprise-only advanced_ddos_attack_l7_alert is a separate, later entry on that page.
    "HTTP DDoS Attack Alerter": ("dos_attack_l7",),
    # Renamed "Layer 3/4 DDoS Attack Alert" later, same audience (BYOIP and Spectrum) and plan;
    # advanced_ddos_attack_l4_alert is a separate, later, Enterprise entry.
    "Layer 4 Attack Alerter": ("dos_attack_l4",),
    # fbm_ = Flow-Based Monitoring, since renamed Magic Network Monitoring; same suffix.
    "Flow-based Monitoring: Volumetric Attack": ("fbm_volumetric_attack",),
    # Script Monitor is Page Shield's former name (the ids keep the scriptmonitor_ prefix); the
    # later page has "Page Shield <same suffix>" with the same audience text.
    "Script Monitor New Code Change Detection Alert": (
        "scriptmonitor_alert_new_code_change_detections",
    ),
    "Script Monitor New Domain Alert": ("scriptmonitor_alert_new_hosts",),
    "Script Monitor New Malicious Domain Alert": ("scriptmonitor_alert_new_malicious_hosts",),
    "Script Monitor New Malicious Script Alert": ("scriptmonitor_alert_new_malicious_scripts",),
    "Script Monitor New Malicious URL Alert": ("scriptmonitor_alert_new_malicious_url",),
    # Only the legacy id: the CSV titles it "Page Shield new scripts (old id)". Its successor
    # scriptmonitor_alert_new_resources also covers connections, with a different audience text.
    "Script Monitor New Scripts Alert": ("scriptmonitor_alert_new_scripts",),
    # The id names Dedicated SSL, which Advanced Certificate Manager replaced (CSV product
    # "SSL/TLS (Advanced Certificate Manager)"). Only what-to-do-on-notification.md has it.
    "Dedicated SSL Alert": ("dedicated_ssl_certificate_event_type",),
}

_HEADINGS: Mapping[str, str] = {
    "Who is it for?": "audience",
    "Included with": "plan",
    "What should you do if you receive one?": "what_to_do",
    "What should you do?": "what_to_do",
}
_DETAILS_RE = re.compile(
    r"<details>\s*<summary>(?P<title>.*?)</summary>\s*<div>(?P<body>.*?)</div>\s*</details>",
    re.DOTALL,
)
_IMPORT_RE = re.compile(r'^import\s+(\w+)\s+from\s+"([^"]+)"\s*$', re.MULTILINE)
_TAG_RE = re.compile(r"<([A-Za-z][\w.]*)\s*/>")
_ANY_TAG_RE = re.compile(r"</?[A-Za-z][^>]*>")
_HEADING_RE = re.compile(r"^\*\*([^*]+)\*\*$")
_LINK_RE = re.compile(r"\[[^\]]+\]\((?P<url>[^)\s]+)\)")
_ORDERED_RE = re.compile(r"^(\d+)\.\s+")
_BULLET_RE = re.compile(r"^[*+-]\s+")


class CatalogBuildError(Exception):
    """The sources cannot be turned into a catalogue; the message says which source and why."""


@dataclass(frozen=True, slots=True)
class SeedEntry:
    """One <details> block of a seed page, with its partials resolved into plain text."""

    title: str
    audience: str | None = None
    plan: str | None = None
    what_to_do: str | None = None
    links: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class AlertTypeRow:
    """One row of alert-types.csv, validated."""

    alert_type: str
    title: str
    product: str
    status: str
    kind: str
    kind_confirmed: bool


@dataclass(slots=True)
class BuildReport:
    """What a build matched: which ids got seed data and which seed titles found no id."""

    mapped: dict[str, str] = field(default_factory=dict)
    unmapped_titles: list[str] = field(default_factory=list)
    total_ids: int = 0

    def summary(self) -> str:
        """Human summary for the script's output.

        Returns:
            Several lines: the mapping count, then each unmapped seed title.
        """
        lines = [f"seed data mapped to {len(self.mapped)} of {self.total_ids} alert_type ids"]
        if self.unmapped_titles:
            lines.append("seed titles left unmapped (no sure alert_type id):")
            lines.extend(f"  - {title}" for title in self.unmapped_titles)
        return "\n".join(lines)


def normalize_title(title: str) -> str:
    """Key for title equality: case, punctuation, spacing and an "(old id)" suffix ignored.

    Args:
        title: A seed or CSV title.

    Returns:
        The lower-cased words of the title joined by single spaces.
    """
    text = re.sub(r"\(old id\)\s*$", "", title.strip(), flags=re.IGNORECASE)
    return " ".join(re.findall(r"[a-z0-9]+", text.casefold()))


def parse_imports(markdown: str) -> dict[str, str]:
    """Maps each MDX component name imported by a page to its partial's file stem.

    Args:
        markdown: A seed page.

    Returns:
        For `import DDOS from "../\\_partials/\\_ddos"`, the entry `{"DDOS": "_ddos"}`.
    """
    return {
        name: path.replace("\\", "").rsplit("/", 1)[-1]
        for name, path in _IMPORT_RE.findall(markdown)
    }


def resolve_tags(text: str, components: Mapping[str, str], partials: Mapping[str, str]) -> str:
    """Replaces each self-closing MDX tag such as `<DDOS/>` by the text its partial renders.

    Args:
        text: Markdown that may contain component tags.
        components: Component name to partial stem, from `parse_imports`.
        partials: Partial stem to its rendered markdown.

    Returns:
        The text with every tag replaced.

    Raises:
        CatalogBuildError: A tag is not imported, or its partial text is not known.
    """

    def replace(match: re.Match[str]) -> str:
        name = match.group(1)
        stem = components.get(name)
        if stem is None:
            raise CatalogBuildError(f"tag <{name}/> is used but never imported")
        if stem not in partials:
            raise CatalogBuildError(
                f"tag <{name}/> renders partial {stem!r}, whose text is unknown"
            )
        return partials[stem]

    return _TAG_RE.sub(replace, text)


def clean_text(text: str) -> str:
    """Turns a section of docs markdown into plain text that keeps markdown links.

    Bold markers go, list markers become `1.` / `-` with one space, blank-line runs shrink to one.

    Args:
        text: A section body with tags already resolved.

    Returns:
        The cleaned text, stripped.
    """
    lines: list[str] = []
    for raw in text.replace("**", "").splitlines():
        line = raw.strip()
        line = _ORDERED_RE.sub(lambda m: f"{m.group(1)}. ", line)
        line = _BULLET_RE.sub("- ", line)
        lines.append(line)
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def extract_links(texts: Iterable[str | None]) -> tuple[str, ...]:
    """Collects the URLs of markdown links, first occurrence first, without repeats.

    Args:
        texts: Cleaned section texts; None entries are skipped.

    Returns:
        The distinct link targets in reading order.
    """
    seen: dict[str, None] = {}
    for text in texts:
        for match in _LINK_RE.finditer(text or ""):
            seen.setdefault(match.group("url"), None)
    return tuple(seen)


def split_sections(title: str, body: str) -> dict[str, str]:
    """Splits a <details> body at its bold headings into catalogue fields.

    Args:
        title: The block's summary, for error messages.
        body: The markdown between <div> and </div>.

    Returns:
        Field name (audience, plan, what_to_do) to that section's raw markdown.

    Raises:
        CatalogBuildError: A heading is not one of the known ones, or text precedes the first.
    """
    sections: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in body.splitlines():
        heading = _HEADING_RE.match(line.strip())
        if heading:
            name = _HEADINGS.get(heading.group(1).strip())
            if name is None:
                raise CatalogBuildError(f"{title!r}: unknown heading {heading.group(1)!r}")
            current = sections.setdefault(name, [])
        elif current is not None:
            current.append(line)
        elif line.strip():
            raise CatalogBuildError(f"{title!r}: text before the first heading: {line.strip()!r}")
    return {name: "\n".join(lines) for name, lines in sections.items()}


def parse_seed(markdown: str, partials: Mapping[str, str] = PARTIALS) -> list[SeedEntry]:
    """Parses a docs seed page into one entry per <details> block.

    Args:
        markdown: The page.
        partials: Partial stem to rendered text, used to resolve MDX tags.

    Returns:
        The entries in page order.

    Raises:
        CatalogBuildError: A block is malformed, a tag cannot be resolved, or a title repeats.
    """
    components = parse_imports(markdown)
    entries: list[SeedEntry] = []
    for match in _DETAILS_RE.finditer(markdown):
        title = " ".join(match.group("title").split())
        sections = split_sections(title, resolve_tags(match.group("body"), components, partials))
        fields = {name: clean_text(text) or None for name, text in sections.items()}
        for name, text in fields.items():
            if text and _ANY_TAG_RE.search(text):
                raise CatalogBuildError(f"{title!r}: markup left in {name}: {text!r}")
        entries.append(
            SeedEntry(
                title=title,
                audience=fields.get("audience"),
                plan=fields.get("plan"),
                what_to_do=fields.get("what_to_do"),
                links=extract_links(fields.values()),
            )
        )
    titles = [entry.title for entry in entries]
    repeated = sorted({t for t in titles if titles.count(t) > 1})
    if repeated:
        raise CatalogBuildError(f"seed titles repeat: {repeated}")
    return entries


def parse_alert_types(text: str) -> list[AlertTypeRow]:
    """Parses and validates alert-types.csv.

    Args:
        text: The CSV's contents.

    Returns:
        The rows in file order.

    Raises:
        CatalogBuildError: The header differs, a value is outside its allowed set, or an id repeats.
    """
    reader = csv.DictReader(io.StringIO(text))
    if tuple(reader.fieldnames or ()) != CSV_COLUMNS:
        raise CatalogBuildError(f"alert-types.csv header is {reader.fieldnames}, not {CSV_COLUMNS}")
    rows: list[AlertTypeRow] = []
    seen: set[str] = set()
    for number, rec in enumerate(reader, start=2):
        where = f"alert-types.csv line {number}"
        if rec["alert_type"] in seen:
            raise CatalogBuildError(f"{where}: alert_type {rec['alert_type']!r} repeats")
        if rec["status"] not in STATUSES:
            raise CatalogBuildError(f"{where}: status {rec['status']!r} not in {sorted(STATUSES)}")
        if rec["kind_hint"] not in KINDS:
            raise CatalogBuildError(
                f"{where}: kind_hint {rec['kind_hint']!r} not in {sorted(KINDS)}"
            )
        if rec["kind_confirmed"] not in ("yes", "no"):
            raise CatalogBuildError(f"{where}: kind_confirmed {rec['kind_confirmed']!r} not yes/no")
        seen.add(rec["alert_type"])
        rows.append(
            AlertTypeRow(
                alert_type=rec["alert_type"],
                title=rec["title"],
                product=rec["product"],
                status=rec["status"],
                kind=rec["kind_hint"],
                kind_confirmed=rec["kind_confirmed"] == "yes",
            )
        )
    return rows


def merge_seeds(primary: Sequence[SeedEntry], secondary: Sequence[SeedEntry]) -> list[SeedEntry]:
    """Combines the two seed pages: the newer one wins, the older adds titles it lacks.

    Args:
        primary: Entries of notification-types.md.
        secondary: Entries of what-to-do-on-notification.md (an older revision).

    Returns:
        Primary entries in order, then secondary entries whose title the primary lacks.
    """
    known = {entry.title for entry in primary}
    return [*primary, *(entry for entry in secondary if entry.title not in known)]


def map_titles(
    seeds: Sequence[SeedEntry],
    rows: Sequence[AlertTypeRow],
    aliases: Mapping[str, tuple[str, ...]] = REVIEWED_ALIASES,
) -> tuple[dict[str, SeedEntry], list[str]]:
    """Decides which seed entry describes which alert_type id, only where that is sure.

    A seed title maps to every id whose CSV title is equal after `normalize_title`, or to the
    ids listed for it in `aliases`.

    Args:
        seeds: Seed entries.
        rows: CSV rows.
        aliases: Reviewed seed title to alert_type ids.

    Returns:
        alert_type id to its seed entry, and the seed titles that matched no id, in seed order.

    Raises:
        CatalogBuildError: An alias names an unknown id or title, or two seed titles claim one id.
    """
    ids = {row.alert_type for row in rows}
    titles = {entry.title for entry in seeds}
    for title, targets in aliases.items():
        if title not in titles:
            raise CatalogBuildError(f"reviewed alias for {title!r}, which no seed has")
        for alert_type in targets:
            if alert_type not in ids:
                raise CatalogBuildError(f"reviewed alias {title!r} -> unknown id {alert_type!r}")
    by_norm: dict[str, list[str]] = {}
    for row in rows:
        by_norm.setdefault(normalize_title(row.title), []).append(row.alert_type)
    mapped: dict[str, SeedEntry] = {}
    unmapped: list[str] = []
    for entry in seeds:
        targets = aliases.get(entry.title) or tuple(by_norm.get(normalize_title(entry.title), ()))
        if not targets:
            unmapped.append(entry.title)
        for alert_type in targets:
            if alert_type in mapped:
                raise CatalogBuildError(
                    f"{alert_type!r} claimed by {mapped[alert_type].title!r} and {entry.title!r}"
                )
            mapped[alert_type] = entry
    return mapped, unmapped


def build_catalog(
    rows: Sequence[AlertTypeRow], mapped: Mapping[str, SeedEntry]
) -> dict[str, dict[str, Any]]:
    """Builds the catalogue object, one value per CSV row.

    Args:
        rows: CSV rows.
        mapped: alert_type id to its seed entry, from `map_titles`.

    Returns:
        alert_type id to its catalogue record; seed fields are None where no seed maps.
    """
    catalog: dict[str, dict[str, Any]] = {}
    for row in rows:
        seed = mapped.get(row.alert_type)
        catalog[row.alert_type] = {
            "alert_type": row.alert_type,
            "title": row.title,
            "product": row.product,
            "audience": seed.audience if seed else None,
            "plan": seed.plan if seed else None,
            "what_to_do": seed.what_to_do if seed else None,
            "kind": row.kind,
            "kind_confirmed": row.kind_confirmed,
            "status": row.status,
            "links": list(seed.links) if seed else [],
            "doc_title": seed.title if seed else None,
        }
    return catalog


def render(catalog: Mapping[str, Any]) -> str:
    """Serialises the catalogue the way it is committed: sorted keys, two-space indent.

    Args:
        catalog: The catalogue object.

    Returns:
        JSON text ending in a newline.
    """
    return json.dumps(catalog, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def build_from_dir(sources: Path) -> tuple[str, BuildReport]:
    """Reads the sources under a directory and renders the catalogue.

    Args:
        sources: Directory holding seeds/ and cloudflare/, laid out as vendor/ is.

    Returns:
        The catalogue JSON text and what was mapped.

    Raises:
        CatalogBuildError: A source is missing or cannot be parsed.
    """
    try:
        types_md = (sources / SEED_TYPES).read_text(encoding="utf-8")
        what_md = (sources / SEED_WHAT_TO_DO).read_text(encoding="utf-8")
        csv_text = (sources / ALERT_TYPES_CSV).read_text(encoding="utf-8")
    except OSError as exc:
        raise CatalogBuildError(f"cannot read the sources under {sources}: {exc}") from exc
    rows = parse_alert_types(csv_text)
    seeds = merge_seeds(parse_seed(types_md), parse_seed(what_md))
    mapped, unmapped = map_titles(seeds, rows)
    report = BuildReport(
        mapped={alert_type: entry.title for alert_type, entry in mapped.items()},
        unmapped_titles=unmapped,
        total_ids=len(rows),
    )
    return render(build_catalog(rows, mapped)), report


def default_sources_dir(environ: Mapping[str, str] = os.environ) -> Path:
    """Where the sources live: CFN_CATALOG_SOURCES if set, else the repository's vendor/.

    Args:
        environ: The environment to read.

    Returns:
        The directory.
    """
    value = environ.get("CFN_CATALOG_SOURCES")
    return Path(value) if value else VENDOR_DIR


def main(argv: Sequence[str] | None = None) -> int:
    """Writes schemas/catalog.json, or with --check only compares it.

    Args:
        argv: Command-line arguments without the program name; sys.argv when None.

    Returns:
        0 on success; 1 when --check finds the committed file stale; 2 when sources are broken.
    """
    parser = argparse.ArgumentParser(prog="python -m tools.build_catalog", description=__doc__)
    parser.add_argument(
        "--sources",
        type=Path,
        help="dir holding seeds/ and cloudflare/ (default: $CFN_CATALOG_SOURCES, else vendor/)",
    )
    parser.add_argument("--output", type=Path, default=CATALOG_PATH, help="catalogue to write")
    parser.add_argument("--check", action="store_true", help="exit 1 if the catalogue is stale")
    args = parser.parse_args(argv)
    sources: Path = args.sources or default_sources_dir()
    output: Path = args.output
    try:
        text, report = build_from_dir(sources)
    except CatalogBuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(report.summary())
    if args.check:
        current = output.read_text(encoding="utf-8") if output.exists() else None
        if current != text:
            print(f"{output} is stale: run `python -m tools.build_catalog`", file=sys.stderr)
            return 1
        print(f"{output} is up to date")
        return 0
    output.write_text(text, encoding="utf-8")
    print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
