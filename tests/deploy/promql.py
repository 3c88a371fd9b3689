"""The metric names a PromQL expression reads, and the expressions of the deploy files.

A small tokenizer, not a PromQL parser: strings, label matchers ``{...}`` and ranges
``[...]`` are dropped whole; an identifier followed by ``(`` is a function or an
aggregation; the parenthesised label list after ``by``/``without``/``on``/``ignoring``/
``group_left``/``group_right`` holds label names; keywords, aggregation operators (also
written ``sum by (x) (...)``, not followed by ``(``) and numbers are skipped.
Whatever identifier is left names a metric. Grafana's ``$variables`` only appear inside
matchers and ranges, which are dropped.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
ALERTS = DEPLOY / "prometheus" / "alerts.yaml"
DASHBOARD = DEPLOY / "grafana" / "dimse-bridge.json"

# The spool's metrics (bridge/spool/): a bridge exports their samples in spool mode, which
# the scrape test's bridge runs in.
SPOOL_METRICS = frozenset(
    {
        "dimse_bridge_spool_instances",
        "dimse_bridge_spool_bytes",
        "dimse_bridge_spool_oldest_queued_seconds",
    }
)

_TOKEN = re.compile(
    r"""
    (?P<string>"(?:\\.|[^"\\])*"|'(?:\\.|[^'\\])*'|`[^`]*`)
  | (?P<matchers>\{[^}]*\})
  | (?P<range>\[[^\]]*\])
  | (?P<number>0[xX][0-9a-fA-F]+|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?(?:ms|[smhdwy])?)
  | (?P<ident>[A-Za-z_:][A-Za-z0-9_:]*)
  | (?P<open>\()
  | (?P<close>\))
  | (?P<space>\s+)
  | (?P<other>.)
    """,
    re.VERBOSE,
)
_LABEL_LISTS = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right"})
_KEYWORDS = frozenset({"and", "or", "unless", "bool", "offset", "inf", "nan", "atan2"})
_AGGREGATIONS = frozenset(
    {
        "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values",
        "bottomk", "topk", "quantile", "limitk", "limit_ratio",
    }
)  # fmt: skip


def _tokens(expr: str) -> Iterator[tuple[str, str]]:
    for match in _TOKEN.finditer(expr):
        kind = match.lastgroup
        assert kind is not None
        if kind not in ("space", "string", "matchers", "range"):
            yield kind, match.group()


def metric_names(expr: str) -> set[str]:
    """The metrics `expr` selects."""
    tokens = list(_tokens(expr))
    names: set[str] = set()
    i = 0
    while i < len(tokens):
        kind, text = tokens[i]
        following = tokens[i + 1] if i + 1 < len(tokens) else ("", "")
        if kind == "ident" and text.lower() in _LABEL_LISTS:
            if following[0] == "open":  # skip the label names up to the ")"
                i += 2
                while i < len(tokens) and tokens[i][0] != "close":
                    i += 1
        elif kind == "ident" and following[0] == "open":
            pass  # a function or an aggregation
        elif kind == "ident" and text.lower() not in _KEYWORDS | _AGGREGATIONS:
            names.add(text)
        i += 1
    return names


def alert_exprs() -> dict[str, str]:
    """alert name → expression, from deploy/prometheus/alerts.yaml."""
    document = yaml.safe_load(ALERTS.read_text())
    return {rule["alert"]: rule["expr"] for group in document["groups"] for rule in group["rules"]}


def dashboard() -> dict[str, Any]:
    data = json.loads(DASHBOARD.read_text())
    assert isinstance(data, dict)
    return data


def dashboard_exprs() -> dict[str, str]:
    """ "panel title / refId" → expression, for every query of the dashboard, and the
    metric of each ``label_values(metric, label)`` template variable."""
    exprs: dict[str, str] = {}
    for panel in dashboard()["panels"]:
        for target in panel.get("targets", []):
            exprs[f"{panel['title']} / {target['refId']}"] = target["expr"]
    for variable in dashboard()["templating"]["list"]:
        query = variable.get("query")
        text = query.get("query", "") if isinstance(query, dict) else ""
        found = re.fullmatch(r"label_values\((\w+),\s*\w+\)", text)
        if found:
            exprs[f"${variable['name']}"] = found.group(1)
    return exprs
