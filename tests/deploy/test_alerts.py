"""deploy/prometheus/alerts.yaml and deploy/grafana/dimse-bridge.json, offline.

The rules are checked and unit-tested by ``promtool`` (Debian's ``prometheus`` package;
tests/run.sh installs it): ``promtool check rules`` for their syntax, ``promtool test
rules`` for deploy/prometheus/alerts_test.yaml (input series → the alerts expected, the
transcoding fallbacks and cancelled requests included). A broken copy of the rules must
fail the same unit tests. The dashboard is parsed and its panels checked for what Grafana
needs to import it. That every metric both name exists in a real scrape is
tests/integration/test_dashboards.py; here the PromQL tokenizer it uses is tested.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.deploy.promql import (
    ALERTS,
    SPOOL_METRICS,
    alert_exprs,
    dashboard,
    dashboard_exprs,
    metric_names,
)

ALERTS_TEST = ALERTS.with_name("alerts_test.yaml")


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.skip("promtool not installed (Debian package prometheus; tests/run.sh installs it)")
    return path


def run_promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool(), *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )


def test_promtool_checks_the_rules() -> None:
    result = run_promtool("check", "rules", ALERTS.name, cwd=ALERTS.parent)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alert_exprs())} rules found" in result.stdout


def test_promtool_rule_unit_tests_pass() -> None:
    result = run_promtool("test", "rules", ALERTS_TEST.name, cwd=ALERTS.parent)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


@pytest.mark.parametrize(
    ("original", "broken", "alert"),
    [
        # Counting declined transcodings as errors: the C-GET test case fires.
        ('outcome!~"200|transcode_refused|cancelled"', 'outcome!~"200|cancelled"', "Dicomweb"),
        # Counting peers' own aborts: the abort test case fires for peer_abort.
        ('cause!~"peer_abort|shutdown"', 'cause!~"shutdown"', "AssociationAborts"),
        ("dimse_bridge_backend_up == 0", "dimse_bridge_backend_up == 2", "BackendDown"),
    ],
)
def test_the_unit_tests_catch_a_broken_rule(
    tmp_path: Path, original: str, broken: str, alert: str
) -> None:
    text = ALERTS.read_text()
    assert original in text
    (tmp_path / ALERTS.name).write_text(text.replace(original, broken))
    shutil.copy(ALERTS_TEST, tmp_path / ALERTS_TEST.name)
    result = run_promtool("test", "rules", ALERTS_TEST.name, cwd=tmp_path)
    assert result.returncode != 0, result.stdout
    assert f"alertname: DimseBridge{alert}" in result.stdout + result.stderr


def test_the_rules_cover_what_an_operator_alerts_on() -> None:
    names = {alert: metric_names(expr) for alert, expr in alert_exprs().items()}
    assert names == {
        "DimseBridgeBackendDown": {"dimse_bridge_backend_up"},
        "DimseBridgeDimseErrorRate": {"dimse_bridge_dimse_requests_total"},
        "DimseBridgeDicomwebErrorRate": {"dimse_bridge_http_requests_total"},
        "DimseBridgeAssociationAborts": {"dimse_bridge_association_aborts_total"},
        "DimseBridgeSpoolBacklog": {"dimse_bridge_spool_oldest_queued_seconds"},
    }


# --- the tokenizer ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ("up", {"up"}),
        (
            'histogram_quantile(0.95, sum by (le, service) (rate(a_bucket{x=~"$i", y="b c"}'
            "[$__rate_interval])))",
            {"a_bucket"},
        ),
        ("sum without (instance) (a) / on (job) group_left (version) b_info", {"a", "b_info"}),
        ("rate(a[5m]) > 0.05 and b == 1 or c unless bool_metric", {"a", "b", "c", "bool_metric"}),
        ("a offset 5m + 1e3 * b:recorded", {"a", "b:recorded"}),
        ('label_replace(a, "dst", "$1", "src", "(.*)") > bool 0', {"a"}),
        ('max by (backend) (a{kind=~"wado|stow", outcome!~"200|x"})', {"a"}),
    ],
)
def test_metric_names(expr: str, names: set[str]) -> None:
    assert metric_names(expr) == names


# --- the dashboard ------------------------------------------------------------------------


def test_the_dashboard_is_importable_and_queries_every_area() -> None:
    data = dashboard()
    assert data["uid"] == "dimse-bridge" and data["title"] == "dimse-bridge"
    panels = data["panels"]
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in panels:
        assert set(panel["gridPos"]) == {"h", "w", "x", "y"}, panel["title"]
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert metric_names(target["expr"]), (panel["title"], target["expr"])
    variables = {v["name"]: v for v in data["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"

    queried = set().union(*(metric_names(e) for e in dashboard_exprs().values()))
    # associations, operations by service and status, sub-operations and bytes, HTTP
    # latency by backend, cancels and aborts, the spool backlog (the list)
    assert {
        "dimse_bridge_associations_active",
        "dimse_bridge_associations_total",
        "dimse_bridge_dimse_requests_total",
        "dimse_bridge_dimse_request_seconds_bucket",
        "dimse_bridge_suboperations_total",
        "dimse_bridge_bytes_total",
        "dimse_bridge_http_request_seconds_bucket",
        "dimse_bridge_cancels_total",
        "dimse_bridge_association_aborts_total",
        "dimse_bridge_backend_up",
    } <= queried
    assert SPOOL_METRICS <= queried
