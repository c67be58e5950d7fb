"""The alert-type catalogue: the committed data against its sources, the builder, the lookup API."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path
from typing import Any

import pytest

from cfn.schemas import catalog
from tools import build_catalog
from tools.build_catalog import (
    PARTIALS,
    REVIEWED_ALIASES,
    AlertTypeRow,
    CatalogBuildError,
    SeedEntry,
    build_from_dir,
    default_sources_dir,
    main,
    map_titles,
    normalize_title,
    parse_imports,
    parse_seed,
    resolve_tags,
)

SOURCES = build_catalog.VENDOR_DIR  # what the committed catalogue is built from
CSV_PATH = SOURCES / "cloudflare" / "alert-types.csv"
TYPES_MD = SOURCES / "seeds" / "notification-types.md"
WHAT_MD = SOURCES / "seeds" / "what-to-do-on-notification.md"
COMMITTED = build_catalog.CATALOG_PATH
TAG = re.compile(r"</?[A-Za-z][^>]*>")
SEED_FIELDS = ("audience", "plan", "what_to_do")


def _committed() -> dict[str, dict[str, Any]]:
    data: dict[str, dict[str, Any]] = json.loads(COMMITTED.read_text(encoding="utf-8"))
    return data


def _csv_rows() -> dict[str, dict[str, str]]:
    with CSV_PATH.open(encoding="utf-8", newline="") as fh:
        return {row["alert_type"]: row for row in csv.DictReader(fh)}


def _squash(text: str) -> str:
    """Whitespace-insensitive form, so list-marker spacing in the seeds does not matter."""
    return " ".join(text.split())


# --- the committed data against its sources -------------------------------------------------


def test_committed_catalog_equals_a_fresh_build() -> None:
    text, report = build_from_dir(SOURCES)
    assert COMMITTED.read_text(encoding="utf-8") == text
    assert report.total_ids == len(_csv_rows())


def test_check_passes_on_the_committed_file(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--check", "--sources", str(SOURCES)]) == 0
    assert "up to date" in capsys.readouterr().out


def test_the_sources_are_the_vendored_ones_unless_a_folder_is_named(tmp_path: Path) -> None:
    assert default_sources_dir({}) == build_catalog.VENDOR_DIR
    assert default_sources_dir({"CFN_CATALOG_SOURCES": str(tmp_path)}) == tmp_path
    assert main(["--check", "--sources", str(tmp_path)]) == 2  # an empty folder: no sources


def test_check_fails_on_a_stale_or_missing_file(tmp_path: Path) -> None:
    stale = tmp_path / "catalog.json"
    data = _committed()
    data["dos_attack_l7"]["what_to_do"] = "edited by hand"
    stale.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    assert main(["--check", "--sources", str(SOURCES), "--output", str(stale)]) == 1
    assert main(["--check", "--sources", str(SOURCES), "--output", str(tmp_path / "no.json")]) == 1


def test_every_csv_id_is_catalogued_with_its_csv_facts() -> None:
    rows = _csv_rows()
    data = _committed()
    assert len(rows) == 82
    assert set(data) == set(rows)
    assert catalog.known_ids() == frozenset(rows)
    for alert_type, row in rows.items():
        value = data[alert_type]
        assert value["alert_type"] == alert_type
        assert value["title"] == row["title"]
        assert value["product"] == row["product"]
        assert value["status"] == row["status"]
        assert value["kind"] == row["kind_hint"]
        assert value["kind_confirmed"] is (row["kind_confirmed"] == "yes")


def test_every_record_has_the_documented_keys() -> None:
    keys = {"alert_type", "title", "product", "audience", "plan", "what_to_do", "kind"}
    keys |= {"kind_confirmed", "status", "links", "doc_title"}
    for value in _committed().values():
        assert set(value) == keys
        assert isinstance(value["links"], list)


def test_no_mdx_tags_remain_in_any_text() -> None:
    for alert_type, value in _committed().items():
        texts = [v for v in value.values() if isinstance(v, str)] + list(value["links"])
        for text in texts:
            assert not TAG.search(text), f"{alert_type}: markup left in {text!r}"


def test_seed_fields_only_where_a_seed_title_was_matched() -> None:
    seed_titles = {e.title for e in parse_seed(TYPES_MD.read_text(encoding="utf-8"))}
    seed_titles |= {e.title for e in parse_seed(WHAT_MD.read_text(encoding="utf-8"))}
    for alert_type, value in _committed().items():
        if value["doc_title"] is None:
            assert all(value[f] is None for f in SEED_FIELDS), alert_type
            assert value["links"] == []
        else:
            assert value["doc_title"] in seed_titles


@pytest.mark.parametrize(
    ("alert_type", "field", "seed_text"),
    [
        # Exact title match, numbered list in the seed.
        ("secondary_dns_all_primaries_failing", "what_to_do", "primary nameservers are up and"),
        ("secondary_dns_all_primaries_failing", "plan", "Purchase of Secondary DNS."),
        ("bgp_hijack_notification", "what_to_do", "reach out to your transit providers"),
        ("expiring_service_token_alert", "what_to_do", "Refresh your service token"),
        # Reviewed aliases ("HTTP DDoS Attack Alerter", "Script Monitor New Domain Alert").
        ("dos_attack_l7", "audience", "WAF/CDN customers who want to receive a notification"),
        ("scriptmonitor_alert_new_hosts", "plan", "Business plans or higher."),
        # Legacy id matched through its "(old id)" title.
        ("g6_pool_toggle_alert", "audience", "status changes (enabled/disabled) in their pools"),
    ],
)
def test_sure_mappings_carry_the_seed_text(alert_type: str, field: str, seed_text: str) -> None:
    assert seed_text in TYPES_MD.read_text(encoding="utf-8")
    value = _committed()[alert_type][field]
    assert isinstance(value, str)
    assert seed_text in value


def test_partials_are_resolved_into_their_text_and_links() -> None:
    data = _committed()
    ddos = data["dos_attack_l4"]["what_to_do"]
    assert ddos.startswith("No action needed.")
    assert "https://support.cloudflare.com/hc/en-us/articles/360053216191" in ddos
    assert "Understanding-Cloudflare-DDoS-alerts" in " ".join(data["dos_attack_l4"]["links"])
    origin = data["http_alert_origin_error"]["what_to_do"]
    assert origin.startswith("1. Use the link in the Notification")
    assert "\n2. Refer to our [Troubleshooting Cloudflare 5XX errors](" in origin
    assert "Troubleshooting SSL errors" in data["universal_ssl_event_type"]["what_to_do"]


def test_partial_texts_taken_from_the_older_seed_appear_there_verbatim() -> None:
    older = _squash(WHAT_MD.read_text(encoding="utf-8"))
    for stem in ("_ddos", "_errors", "_troubleshoot-ssl"):
        assert _squash(PARTIALS[stem]) in older, stem


def test_every_imported_partial_has_a_known_text() -> None:
    imports = parse_imports(TYPES_MD.read_text(encoding="utf-8"))
    assert set(imports) == {
        "SSLTroubleshoot",
        "DDOS",
        "Errors5xx",
        "PageShieldDetectMaliciousScripts",
        "PageShieldReviewMaliciousScripts",
    }
    assert set(imports.values()) <= set(PARTIALS)


def test_unsure_titles_stay_unmapped() -> None:
    _, report = build_from_dir(SOURCES)
    assert report.unmapped_titles == ["Workers Usage Report", "Workers Weekly Summary"]
    data = _committed()
    for alert_type in ("workers_alert", "workers_uptime", "scriptmonitor_alert_new_resources"):
        assert data[alert_type]["doc_title"] is None
        assert data[alert_type]["what_to_do"] is None


def test_every_reviewed_alias_is_needed() -> None:
    csv_titles = {normalize_title(row["title"]) for row in _csv_rows().values()}
    for title in REVIEWED_ALIASES:
        assert normalize_title(title) not in csv_titles, title


# --- the builder's pure functions -----------------------------------------------------------


def test_normalize_title_ignores_case_punctuation_and_old_id() -> None:
    assert normalize_title("Pool enablement (old id)") == normalize_title("Pool Enablement")
    assert normalize_title("Secondary DNS all  Primaries-Failing") == (
        "secondary dns all primaries failing"
    )
    assert normalize_title("Workers Alert") != normalize_title("Workers Usage Report")


def test_resolve_tags_rejects_unknown_or_unimported_tags() -> None:
    assert resolve_tags("a <X/> b", {"X": "_x"}, {"_x": "ex"}) == "a ex b"
    with pytest.raises(CatalogBuildError, match="never imported"):
        resolve_tags("<Y/>", {}, {})
    with pytest.raises(CatalogBuildError, match="unknown"):
        resolve_tags("<X />", {"X": "_x"}, {})


def test_parse_seed_reads_sections_and_links() -> None:
    page = (
        'import P from "../\\_partials/\\_p"\n\n'
        "<details>\n<summary>Some Alert</summary>\n<div>\n\n"
        "**Who is it for?**\n\nEveryone.\n\n**Included with**\n\nAll plans.\n\n"
        "**What should you do if you receive one?**\n\n1.  Look **here**.\n2.  <P/>\n\n"
        "</div>\n</details>\n"
    )
    [entry] = parse_seed(page, {"_p": "See [docs](https://example.com/d)."})
    assert entry == SeedEntry(
        title="Some Alert",
        audience="Everyone.",
        plan="All plans.",
        what_to_do="1. Look here.\n2. See [docs](https://example.com/d).",
        links=("https://example.com/d",),
    )


def test_parse_seed_rejects_an_unknown_heading() -> None:
    page = "<details>\n<summary>T</summary>\n<div>\n\n**Price**\n\nfree\n\n</div>\n</details>"
    with pytest.raises(CatalogBuildError, match="unknown heading"):
        parse_seed(page)


def test_map_titles_refuses_two_seeds_for_one_id() -> None:
    rows = [AlertTypeRow("a_id", "Same", "P", "enum", "one_off", True)]
    seeds = [SeedEntry(title="Same"), SeedEntry(title="Other")]
    with pytest.raises(CatalogBuildError, match="claimed by"):
        map_titles(seeds, rows, {"Other": ("a_id",)})
    mapped, unmapped = map_titles(seeds, rows, {})
    assert mapped == {"a_id": seeds[0]}
    assert unmapped == ["Other"]


# --- the runtime API ------------------------------------------------------------------------


def test_lookup_known_unknown_and_none() -> None:
    entry = catalog.lookup("bgp_hijack_notification")
    assert entry is not None
    assert entry.title == "Route Leak Detection Alert"
    assert entry.kind == "one_off"
    assert catalog.lookup("bgp_hijack_notification") is entry
    assert catalog.lookup("not_a_real_alert_type") is None
    assert catalog.lookup(None) is None


def test_as_record_and_record_for_agree() -> None:
    for alert_type in sorted(catalog.known_ids()):
        entry = catalog.lookup(alert_type)
        assert entry is not None
        record = entry.as_record()
        assert set(record) == {"title", "product", "audience", "plan", "what_to_do", "kind"}
        assert catalog.record_for(alert_type) == record
    assert catalog.record_for("not_a_real_alert_type") is None
    assert catalog.record_for(None) is None


def test_describe_a_known_id() -> None:
    text = catalog.describe("real_origin_monitoring")
    assert text.startswith("real_origin_monitoring: Passive Origin Monitoring")
    assert "Traffic Monitoring (all plans; 521 errors)" in text
    assert "Any customer who wants to receive a notification" in text
    assert "All Cloudflare plans." in text
    assert "one_off" in text
    assert "115003011431-Troubleshooting-Cloudflare-5XX-errors" in text
    assert "not in the docs seeds" not in text


def test_describe_an_id_without_seed_data_says_so() -> None:
    text = catalog.describe("sentinel_alert")
    assert "Sentinel Alert" in text
    assert "not in the docs seeds" in text


def test_describe_an_unknown_id() -> None:
    text = catalog.describe("made_up_alert")
    assert text.startswith("unknown alert type")
    assert "made_up_alert" in text
    assert "\n" not in text


def test_describe_all_lists_every_id_once() -> None:
    lines = catalog.describe_all().splitlines()
    by_id = {line.split()[0]: line for line in lines}
    assert list(by_id) == sorted(catalog.known_ids())
    assert len(lines) == len(by_id)
    assert "Route Leak Detection Alert" in by_id["bgp_hijack_notification"]
    assert "Route Leak Detection (BYOIP)" in by_id["bgp_hijack_notification"]
