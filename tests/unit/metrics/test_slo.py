"""The latency SLO: defined once (k8s/monitoring/slo.yaml), generated outward by scripts/slo.py.

The generated files must match the definition, the burn-rate alerts must fire for a fast
and a slow burn and stay quiet without one (promtool unit tests in slo-rules.test.yaml),
and the objective's threshold must be a bucket edge, so good events are counted exactly.
"""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path
from types import ModuleType

import pytest
import yaml

from metrics.registry import LATENCY_BUCKETS
from tests.unit.metrics.test_monitoring_static import dashboard, rules_spec, run_promtool

ROOT = Path(__file__).resolve().parents[3]
MONITORING = ROOT / "k8s" / "monitoring"
SLO_RULES = MONITORING / "slo-rules.yaml"
SLO_TESTS = MONITORING / "slo-rules.test.yaml"


def generator() -> ModuleType:
    """scripts/slo.py, imported from its path (scripts/ is not a package)."""
    spec = importlib.util.spec_from_file_location("slo_generator", ROOT / "scripts" / "slo.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def slo_rules_dir(tmp_path: Path) -> Path:
    """The SLO PrometheusRule's spec as rules.yaml beside its promtool unit tests."""
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(rules_spec(SLO_RULES), sort_keys=False), encoding="utf-8")
    shutil.copy(SLO_TESTS, tmp_path / SLO_TESTS.name)
    return tmp_path


def test_generated_files_match_the_slo_definition() -> None:
    """slo-rules.yaml and the dashboard's SLO row are what scripts/slo.py makes from slo.yaml."""
    slo = generator()
    for path, content in slo.generated(slo.load()).items():
        assert path.read_text(encoding="utf-8") == content, f"{path.name} is stale: run python scripts/slo.py"


def test_check_mode_reports_a_stale_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`scripts/slo.py --check` exits 1 and names the file when a generated file was edited by hand."""
    slo = generator()
    stale = tmp_path / "slo-rules.yaml"
    stale.write_text(SLO_RULES.read_text(encoding="utf-8").replace("14.4", "14"), encoding="utf-8")
    vars(slo).update(RULES=stale, ROOT=tmp_path)
    assert slo.main(["--check"]) == 1
    assert "slo-rules.yaml" in capsys.readouterr().err
    assert "(14 * 0.01)" in stale.read_text(encoding="utf-8")  # --check writes nothing


def test_objective_threshold_is_a_latency_bucket_edge() -> None:
    """The 50 ms threshold is an `le` of the histogram, so `le="0.05"` counts the good events."""
    slo = generator().load()
    assert slo.histogram == "realtime_broadcast_latency_seconds"
    assert slo.threshold in LATENCY_BUCKETS
    assert (slo.objective, slo.period) == (0.99, "30d")


def test_alert_windows_are_the_sre_workbooks() -> None:
    """Pages at 14.4× (1h/5m) and 6× (6h/30m), tickets at 3× (1d/2h) and 1× (3d/6h)."""
    slo = generator().load()
    windows = {alert.severity: [(w.long, w.short, w.burn_rate) for w in alert.windows] for alert in slo.alerts}
    assert windows == {
        "critical": [("1h", "5m", 14.4), ("6h", "30m", 6.0)],
        "warning": [("1d", "2h", 3.0), ("3d", "6h", 1.0)],
    }


def test_slo_rules_pass_promtool_check(slo_rules_dir: Path) -> None:
    """`promtool check rules` accepts the generated recording and alerting rules."""
    result = run_promtool("check", "rules", "rules.yaml", cwd=slo_rules_dir)
    assert result.returncode == 0, result.stdout + result.stderr


def test_burn_rate_alerts_pass_promtool_unit_tests(slo_rules_dir: Path) -> None:
    """Fast burn pages and stops, slow burn opens a ticket only, no burn and no traffic stay quiet."""
    result = run_promtool("test", "rules", SLO_TESTS.name, cwd=slo_rules_dir)
    assert result.returncode == 0, result.stdout + result.stderr


def test_crude_p99_alert_is_gone() -> None:
    """The burn-rate alerts replace `p99 > 50 ms for 5m`: no rule takes a quantile of broadcast latency."""
    for path in (MONITORING / "alerts.yaml", SLO_RULES):
        for group in rules_spec(path)["groups"]:
            for rule in group["rules"]:
                assert not ("histogram_quantile" in rule["expr"] and "broadcast_latency" in rule["expr"]), rule


def test_dashboard_opens_with_the_slo_row() -> None:
    """The first row shows the SLI, the burn rate with the alert thresholds, and the budget left."""
    panels = dashboard()["panels"]
    assert panels[0]["type"] == "row" and panels[0]["title"].startswith("SLO: 99 % of events within 50 ms")
    by_title = {panel["title"]: panel for panel in panels[1:4]}
    assert set(by_title) == {"Events within 50 ms", "Error budget burn rate", "Error budget left (30d)"}
    burn = by_title["Error budget burn rate"]["fieldConfig"]["defaults"]["thresholds"]["steps"]
    assert [step["value"] for step in burn[1:]] == [1.0, 3.0, 6.0, 14.4]
    budget = by_title["Error budget left (30d)"]["targets"][0]["expr"]
    assert budget.startswith("namespace:realtime_latency_slo_budget_remaining:ratio30d")
    assert all(panel["gridPos"]["y"] >= 9 for panel in panels[4:])
