"""Every PromQL expression the deploy files ship, and the metric names each one reads.

`all_promql_exprs()` is for tests that run the expressions against a live Prometheus: each
string is plain PromQL (Grafana's variables are replaced by concrete values), so it can go
straight to /api/v1/query.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "cfn.json"
RULES_DIR = DEPLOY / "prometheus" / "rules"
RECORDING_RULES = RULES_DIR / "recording.yml"
ALERT_RULES = RULES_DIR / "alerts.yml"

# Grafana's built-in interval variables, with the values a plain query uses instead.
# 1m spans four scrapes at the 15s scrape interval, as $__rate_interval would.
BUILTIN_VARIABLES = {"__rate_interval": "1m", "__interval": "15s", "__range": "1h"}

PROMQL_KEYWORDS = frozenset(
    {"by", "without", "on", "ignoring", "group_left", "group_right", "offset", "bool"}
    | {"and", "or", "unless", "atan2", "inf", "nan", "start", "end"}
)

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_BRACKETS = re.compile(r"\[[^\[\]]*\]")
_GROUPING = re.compile(
    r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^()]*)\)", re.IGNORECASE
)
_GRAFANA_VAR = re.compile(r"\$\{(\w+)(?::\w+)?\}|\[\[(\w+)\]\]|\$(\w+)")
_IDENT = re.compile(r"(?<![\w:.$])([A-Za-z_:][A-Za-z0-9_:]*)(?![\w:])")
_LABEL_IN_MATCHER = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)")


def load_dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return data


def load_rule_groups(path: Path) -> list[dict[str, Any]]:
    data: dict[str, Any] = yaml.safe_load(path.read_text(encoding="utf-8"))
    groups: list[dict[str, Any]] = data["groups"]
    return groups


def iter_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Every panel, including those nested in (collapsed) rows."""
    for panel in panels:
        yield panel
        yield from iter_panels(panel.get("panels", []))


def dashboard_variables(dashboard: dict[str, Any]) -> dict[str, str]:
    """Built-in interval variables plus the current value of each custom/constant variable."""
    values = dict(BUILTIN_VARIABLES)
    for var in dashboard.get("templating", {}).get("list", []):
        if var.get("type") in ("custom", "constant", "textbox", "interval"):
            current = var.get("current", {}).get("value")
            if isinstance(current, str) and current:
                values[var["name"]] = current
    return values


def substitute_variables(expr: str, values: dict[str, str]) -> str:
    """Replace $name, ${name}, ${name:format} and [[name]] by their value; unknown ones stay."""

    def repl(match: re.Match[str]) -> str:
        name = next(group for group in match.groups() if group)
        return values.get(name, match.group(0))

    return _GRAFANA_VAR.sub(repl, expr)


def dashboard_exprs(*, substitute: bool = True) -> list[str]:
    """The expr of every panel target, in panel order."""
    dashboard = load_dashboard()
    values = dashboard_variables(dashboard)
    exprs: list[str] = []
    for panel in iter_panels(dashboard.get("panels", [])):
        for target in panel.get("targets", []):
            expr = str(target.get("expr", ""))
            exprs.append(substitute_variables(expr, values) if substitute else expr)
    return exprs


def recording_rules() -> list[tuple[str, str]]:
    """(record name, expr) of every recording rule, in file order."""
    return [
        (rule["record"], rule["expr"])
        for group in load_rule_groups(RECORDING_RULES)
        for rule in group["rules"]
        if "record" in rule
    ]


def alert_rules() -> list[tuple[str, str]]:
    """(alert name, expr) of every alerting rule, in file order."""
    return [
        (rule["alert"], rule["expr"])
        for group in load_rule_groups(ALERT_RULES)
        for rule in group["rules"]
        if "alert" in rule
    ]


def all_promql_exprs() -> list[str]:
    """Every dashboard panel expression and every recording rule: its expr and its name.

    Grafana variables are replaced by concrete values (see BUILTIN_VARIABLES and the
    dashboard's custom variables), duplicates removed, order kept.
    """
    exprs = dashboard_exprs(substitute=True)
    for record, expr in recording_rules():
        exprs.append(expr)
        exprs.append(record)
    return list(dict.fromkeys(" ".join(expr.split()) for expr in exprs))


def _strip(expr: str) -> str:
    expr = _STRING.sub('""', expr)
    expr = _GRAFANA_VAR.sub(" ", expr)
    expr = _MATCHERS.sub(" ", expr)
    expr = _BRACKETS.sub(" ", expr)
    return _GROUPING.sub(" ", expr)


def metric_names(expr: str) -> set[str]:
    """Metric (or recording rule) names a PromQL expression selects.

    Strings, label matchers, range/offset brackets, grouping clauses, function calls,
    keywords and numbers are left out; what remains are the selected names.
    """
    text = _strip(expr)
    names: set[str] = set()
    for match in _IDENT.finditer(text):
        name = match.group(1)
        if name.lower() in PROMQL_KEYWORDS:
            continue
        if re.match(r"\s*\(", text[match.end() :]):
            continue  # a function or aggregation operator
        names.add(name)
    return names


def label_names(expr: str) -> set[str]:
    """Label names used in matchers and in by/without/on/ignoring/group_* clauses."""
    text = _STRING.sub('""', _GRAFANA_VAR.sub(" ", expr))
    labels: set[str] = set()
    for block in _MATCHERS.findall(text):
        labels.update(_LABEL_IN_MATCHER.findall(block))
    for clause in _GROUPING.findall(text):
        labels.update(part.strip() for part in clause.split(",") if part.strip())
    return labels
