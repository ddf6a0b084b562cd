"""Alert rules and the Grafana dashboard, checked offline against promtool and the service.

The rules live as two PrometheusRules, k8s/monitoring/alerts.yaml (hand-written) and
slo-rules.yaml (generated from slo.yaml, tested in tests/unit/metrics/test_slo.py); each `spec` is a
plain Prometheus rule file, which these tests hand to `promtool`.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from metrics.registry import exported_metric_names

ROOT = Path(__file__).resolve().parents[3]
MONITORING = ROOT / "k8s" / "monitoring"
ALERTS = MONITORING / "alerts.yaml"
SLO_RULES = MONITORING / "slo-rules.yaml"
ALERT_TESTS = MONITORING / "alerts.test.yaml"
DASHBOARD = MONITORING / "dashboard.json"
SERIES_SUFFIXES = ("_bucket", "_sum", "_count", "_total")
# Series that other exporters provide and the alerts deliberately use.
EXTERNAL_METRICS = {
    "up": "Prometheus itself, per scrape target",
    "kube_deployment_status_replicas_unavailable": "kube-state-metrics",
}
# Grafana's variables, replaced by values Prometheus accepts before parsing.
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__interval": "1m", "$namespace": ".*"}
PROMQL_KEYWORDS = {
    "and",
    "or",
    "unless",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "offset",
    "bool",
    "inf",
    "nan",
    "atan2",
}

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"' + r"|'(?:[^'\\]|\\.)*'")
_MATCHERS = re.compile(r"\{[^}]*\}")
_RANGE = re.compile(r"\[[^\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_NUMBER = re.compile(r"(?<![\w:])\d[\w.]*")
_IDENTIFIER = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")


def promql_metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (functions, labels and keywords left out)."""
    for pattern in (_STRING, _MATCHERS, _RANGE, _GROUPING, _NUMBER):
        expr = pattern.sub(" ", expr)
    names = set()
    for match in _IDENTIFIER.finditer(expr):
        if expr[match.end() :].lstrip().startswith("("):
            continue  # a function or an aggregation
        if match.group().lower() not in PROMQL_KEYWORDS:
            names.add(match.group())
    return names


def unknown_metrics(names: set[str]) -> set[str]:
    """Names that are neither exported by the service (as a base name or series), nor recorded by
    our rules, nor external."""
    exported = exported_metric_names()
    unknown = set()
    for name in names:
        bases = {name} | {name.removesuffix(suffix) for suffix in SERIES_SUFFIXES if name.endswith(suffix)}
        if not bases & exported and name not in EXTERNAL_METRICS and name not in recorded_names():
            unknown.add(name)
    return unknown


def rules_spec(path: Path = ALERTS) -> dict[str, Any]:
    document = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert document["kind"] == "PrometheusRule"
    spec = document["spec"]
    assert isinstance(spec, dict)
    return spec


def all_rules() -> list[dict[str, Any]]:
    """Alerting and recording rules of both PrometheusRules."""
    return [rule for path in (ALERTS, SLO_RULES) for group in rules_spec(path)["groups"] for rule in group["rules"]]


def alert_rules() -> list[dict[str, Any]]:
    return [rule for rule in all_rules() if "alert" in rule]


def recorded_names() -> set[str]:
    """Series the recording rules make (`namespace:realtime_latency_slo_...`)."""
    return {rule["record"] for rule in all_rules() if "record" in rule}


def dashboard() -> dict[str, Any]:
    document = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    assert isinstance(document, dict)
    return document


def panels() -> list[dict[str, Any]]:
    return [panel for panel in dashboard()["panels"] if panel["type"] != "row"]


def dashboard_exprs() -> list[str]:
    return [target["expr"] for panel in panels() for target in panel["targets"]]


def template_metric_names() -> set[str]:
    """Metrics named by the dashboard's query variables (`label_values(metric, label)`)."""
    names = set()
    for variable in dashboard()["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]["query"] if isinstance(variable["query"], dict) else variable["query"]
            names |= set(re.findall(r"label_values\(\s*([A-Za-z_:][A-Za-z0-9_:]*)", query))
    return names


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.fail("promtool not found: install the Debian package `prometheus` (make system-deps)")
    return found


def run_promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool(), *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False)


@pytest.fixture
def rules_dir(tmp_path: Path) -> Iterator[Path]:
    """A directory with the PrometheusRule's spec as rules.yaml beside the promtool unit tests."""
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(rules_spec(), sort_keys=False), encoding="utf-8")
    shutil.copy(ALERT_TESTS, tmp_path / ALERT_TESTS.name)
    yield tmp_path


def test_alert_rules_pass_promtool_check(rules_dir: Path) -> None:
    """`promtool check rules` accepts the PrometheusRule's rule groups."""
    result = run_promtool("check", "rules", "rules.yaml", cwd=rules_dir)
    assert result.returncode == 0, result.stdout + result.stderr


def test_alert_unit_tests_pass_promtool_test(rules_dir: Path) -> None:
    """The target-down alert fires after 2 minutes without a scrape (alerts.test.yaml)."""
    result = run_promtool("test", "rules", ALERT_TESTS.name, cwd=rules_dir)
    assert result.returncode == 0, result.stdout + result.stderr


def test_alerts_have_severity_summary_and_description() -> None:
    """Every alert carries a severity label and summary and description annotations."""
    rules = alert_rules()
    assert len({rule["alert"] for rule in rules}) == len(rules)
    for rule in rules:
        assert rule["labels"]["severity"] in {"warning", "critical"}, rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], rule["alert"]


def test_alert_rules_reference_only_exported_metrics() -> None:
    """Every metric in a rule is one the service exports, one a rule records, or a named external one."""
    names = set().union(*(promql_metric_names(rule["expr"]) for rule in all_rules()))
    assert names
    assert unknown_metrics(names) == set()


def test_dashboard_queries_reference_only_exported_metrics() -> None:
    """Every metric in a dashboard query or variable is one the service exports."""
    names = set().union(*(promql_metric_names(expr) for expr in dashboard_exprs())) | template_metric_names()
    assert names
    assert unknown_metrics(names) == set()


def test_dashboard_shows_every_service_metric() -> None:
    """Each `realtime_*` metric the service exports appears on the dashboard."""
    shown = set().union(*(promql_metric_names(expr) for expr in dashboard_exprs()))
    bases = {name.removesuffix(suffix) for name in shown for suffix in SERIES_SUFFIXES} | shown
    service_metrics = {name for name in exported_metric_names() if name.startswith("realtime_")}
    assert service_metrics - bases == set()


def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    """promtool parses every dashboard query once Grafana's variables are filled in."""
    rules = []
    for index, expr in enumerate(dashboard_exprs()):
        for variable, value in GRAFANA_VARIABLES.items():
            expr = expr.replace(variable, value)
        assert "$" not in expr, expr
        rules.append({"record": f"dashboard:query_{index}", "expr": expr})
    (tmp_path / "dashboard-rules.yaml").write_text(
        yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}), encoding="utf-8"
    )
    result = run_promtool("check", "rules", "dashboard-rules.yaml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dashboard_uses_a_prometheus_datasource_variable() -> None:
    """Panels and queries read from `${datasource}`, a variable over Prometheus data sources."""
    variables = {variable["name"]: variable for variable in dashboard()["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    expected = {"type": "prometheus", "uid": "${datasource}"}
    for panel in panels():
        assert panel["datasource"] == expected, panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == expected, panel["title"]


def test_dashboard_panel_ids_and_ref_ids_are_unique() -> None:
    """Panel ids are unique, and so are the query refIds within each panel."""
    ids = [panel["id"] for panel in dashboard()["panels"]]
    assert len(ids) == len(set(ids))
    for panel in panels():
        ref_ids = [target["refId"] for target in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), panel["title"]


def test_latency_panel_plots_quantiles_against_50ms_line() -> None:
    """The broadcast latency panel shows p50, p95 and p99 and a 50 ms threshold line."""
    [panel] = [p for p in panels() if "realtime_broadcast_latency_seconds_bucket" in json.dumps(p["targets"])]
    quantile = re.compile(r"histogram_quantile\(([\d.]+),")
    quantiles = {m[1] if (m := quantile.match(t["expr"])) else t["expr"] for t in panel["targets"]}
    assert quantiles == {"0.5", "0.95", "0.99"}
    defaults = panel["fieldConfig"]["defaults"]
    assert defaults["unit"] == "s"
    assert defaults["custom"]["thresholdsStyle"]["mode"] == "line"
    assert 0.05 in [step["value"] for step in defaults["thresholds"]["steps"]]


def test_dashboard_has_the_expected_panels() -> None:
    """Connections, disconnect codes, latencies, lag, slow consumers, auth, resumes and HTTP are shown."""
    by_metric = {
        "realtime_connections": "transport",
        "realtime_disconnects_total": "code",
        "realtime_bus_lag_seconds_bucket": None,
        "realtime_slow_consumer_disconnects_total": None,
        "realtime_auth_failures_total": "reason",
        "realtime_resumes_total": "outcome",
        "realtime_http_request_duration_seconds_bucket": "handler",
        "realtime_http_request_duration_seconds_count": None,
    }
    exprs = dashboard_exprs()
    for metric, label in by_metric.items():
        using = [expr for expr in exprs if metric in promql_metric_names(expr)]
        assert using, metric
        if label is not None:
            assert any(re.search(rf"by \([^)]*\b{label}\b", expr) for expr in using), (metric, label)


def test_promql_metric_names_ignores_functions_labels_and_numbers() -> None:
    """The metric-name extractor finds selectors only, with suffixes, offsets and `up`."""
    expr = (
        'histogram_quantile(0.99, sum by (le, namespace) (rate(a_seconds_bucket{code=~"5..", x="y"}[5m])))'
        " > 0.05 and on (job) up == 0 or absent(b_total offset 1h) / 1e3"
    )
    assert promql_metric_names(expr) == {"a_seconds_bucket", "up", "b_total"}
