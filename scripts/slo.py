"""Generate the SLO's Prometheus rules and Grafana row from its one definition.

    .venv/bin/python scripts/slo.py            # rewrite the generated files
    .venv/bin/python scripts/slo.py --check    # exit 1 if they differ from what slo.yaml gives

k8s/monitoring/slo.yaml defines the objective; this writes k8s/monitoring/slo-rules.yaml
(a PrometheusRule: error ratios per window, the 30-day budget, the burn-rate alerts) and
replaces the SLO row at the top of k8s/monitoring/dashboard.json, leaving its other panels
as they are (moved below the row). tests/unit/metrics/test_slo.py runs `--check`.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
MONITORING = ROOT / "k8s" / "monitoring"
SPEC = MONITORING / "slo.yaml"
RULES = MONITORING / "slo-rules.yaml"
DASHBOARD = MONITORING / "dashboard.json"
PREFIX = "namespace:realtime_latency_slo"
SLO_PANEL_IDS = range(100, 110)  # the generated row and its panels; hand-written panels use others
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
DURATION = re.compile(r"(\d+)([mhd])")
SECONDS = {"m": 60, "h": 3600, "d": 86400}


@dataclass(frozen=True)
class Window:
    long: str
    short: str
    burn_rate: float


@dataclass(frozen=True)
class Alert:
    name: str
    severity: str
    windows: tuple[Window, ...]


@dataclass(frozen=True)
class Slo:
    name: str
    description: str
    histogram: str
    threshold: float
    objective: float
    period: str
    alerts: tuple[Alert, ...]

    @property
    def budget(self) -> float:
        """The error budget as a ratio: 1 − objective, rounded off float noise (0.01, not 0.010000000000000009)."""
        return round(1 - self.objective, 10)

    def windows(self) -> list[str]:
        """Every alert window, shortest first."""
        found = {w for alert in self.alerts for window in alert.windows for w in (window.long, window.short)}
        return sorted(found, key=seconds)


def seconds(duration: str) -> int:
    match = DURATION.fullmatch(duration)
    if match is None:
        raise ValueError(f"not a duration like 5m, 1h or 3d: {duration!r}")
    return int(match.group(1)) * SECONDS[match.group(2)]


def load(path: Path = SPEC) -> Slo:
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    return Slo(
        name=raw["name"],
        description=raw["description"],
        histogram=raw["histogram"],
        threshold=float(raw["threshold_seconds"]),
        objective=float(raw["objective"]),
        period=raw["period"],
        alerts=tuple(
            Alert(
                a["name"],
                a["severity"],
                tuple(Window(w["long"], w["short"], float(w["burn_rate"])) for w in a["windows"]),
            )
            for a in raw["alerts"]
        ),
    )


def number(value: float) -> str:
    """A PromQL literal without float noise: 14.4, 6, 0.05."""
    return f"{value:g}"


def ratio(window: str) -> str:
    return f"{PREFIX}_error_ratio:rate{window}"


def recording_rules(slo: Slo) -> list[dict[str, Any]]:
    total = f"sum by (namespace) (rate({slo.histogram}_count[{{w}}]))"
    good = f'sum by (namespace) (rate({slo.histogram}_bucket{{{{le="{number(slo.threshold)}"}}}}[{{w}}]))'
    rules: list[dict[str, Any]] = [
        {"record": f"{PREFIX}_events:rate5m", "expr": total.format(w="5m")},
        {"record": f"{PREFIX}_errors:rate5m", "expr": f"{total.format(w='5m')}\n- {good.format(w='5m')}"},
    ]
    for window in slo.windows():
        expr = f"(\n  {total.format(w=window)}\n  - {good.format(w=window)}\n)\n/ {total.format(w=window)}"
        rules.append({"record": ratio(window), "expr": expr})
    # The period's ratio from the 5-minute rates, weighted by traffic: a rate over 30 days of
    # raw samples would read a month of data at every evaluation.
    period = (
        f"sum_over_time({PREFIX}_errors:rate5m[{slo.period}])\n/ sum_over_time({PREFIX}_events:rate5m[{slo.period}])"
    )
    rules.append({"record": ratio(slo.period), "expr": period})
    rules.append(
        {
            "record": f"{PREFIX}_budget_remaining:ratio{slo.period}",
            "expr": f"1 - {ratio(slo.period)} / {number(slo.budget)}",
        }
    )
    return rules


def alert_rules(slo: Slo) -> list[dict[str, Any]]:
    rules = []
    target_ms = number(slo.threshold * 1000)
    for alert in slo.alerts:
        clauses = [
            f"(\n  {ratio(w.long)} > ({number(w.burn_rate)} * {number(slo.budget)})\n"
            f"  and\n  {ratio(w.short)} > ({number(w.burn_rate)} * {number(slo.budget)})\n)"
            for w in alert.windows
        ]
        days = seconds(slo.period) / 86400
        spans = " or ".join(f"{w.long} (and {w.short})" for w in alert.windows)
        lasts = ", ".join(
            f"at {number(w.burn_rate)}× the budget lasts {number(round(days / w.burn_rate, 1))} days"
            for w in alert.windows
        )
        rules.append(
            {
                "alert": alert.name,
                "expr": "\nor\n".join(clauses),
                "labels": {"severity": alert.severity, "slo": slo.name},
                "annotations": {
                    "summary": f"Realtime events are burning the {target_ms} ms latency error budget "
                    + ("fast" if alert.severity == "critical" else "slowly"),
                    "description": (
                        f"{{{{ $value | humanizePercentage }}}} of events in {{{{ $labels.namespace }}}} took over "
                        f"{target_ms} ms to reach their last socket over the last {spans}, against "
                        f"{number(slo.budget * 100)} % allowed over {slo.period}: {lasts}. Compare "
                        "realtime_bus_lag_seconds (MongoDB) with realtime_fanout_duration_seconds "
                        "(CPU, connections per pod)."
                    ),
                },
            }
        )
    return rules


class _Dumper(yaml.SafeDumper):
    """Block strings for multi-line PromQL, and lists indented under their key (yamllint's rule)."""

    def increase_indent(self, flow: bool = False, indentless: bool = False) -> None:
        super().increase_indent(flow, False)


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def rules_yaml(slo: Slo) -> str:
    document = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {
            "name": "realtime-slo",
            "labels": {"app.kubernetes.io/name": "realtime", "app.kubernetes.io/component": "server"},
        },
        "spec": {
            "groups": [
                # One group: the alerts read the ratios recorded in the same evaluation, not
                # the previous one (groups are evaluated independently).
                {"name": "realtime-slo", "rules": recording_rules(slo) + alert_rules(slo)},
            ]
        },
    }
    header = (
        "# Generated by scripts/slo.py from slo.yaml: edit slo.yaml and run the script, not this file.\n"
        f"# SLO {slo.name}: {slo.description}\n"
    )
    return header + yaml.dump(document, Dumper=_Dumper, sort_keys=False, width=100, allow_unicode=True)


def _panel(
    panel_id: int, title: str, description: str, x: int, unit: str, targets: list[tuple[str, str]]
) -> dict[str, Any]:
    return {
        "id": panel_id,
        "type": "timeseries",
        "title": title,
        "description": description,
        "datasource": DATASOURCE,
        "gridPos": {"x": x, "y": 1, "w": 8, "h": 8},
        "fieldConfig": {"defaults": {"unit": unit, "custom": {"lineWidth": 1, "fillOpacity": 10}}, "overrides": []},
        "options": {
            "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
            "tooltip": {"mode": "multi", "sort": "desc"},
        },
        "targets": [
            {"refId": chr(ord("A") + i), "datasource": DATASOURCE, "expr": expr, "legendFormat": legend}
            for i, (expr, legend) in enumerate(targets)
        ],
    }


def _threshold_lines(panel: dict[str, Any], values: list[tuple[float, str]]) -> None:
    defaults = panel["fieldConfig"]["defaults"]
    defaults["custom"]["thresholdsStyle"] = {"mode": "line"}
    steps: list[dict[str, Any]] = [{"color": "green", "value": None}]
    steps += [{"color": color, "value": value} for value, color in values]
    defaults["thresholds"] = {"mode": "absolute", "steps": steps}


def dashboard_row(slo: Slo) -> list[dict[str, Any]]:
    selector = '{namespace=~"$namespace"}'
    target_ms = number(slo.threshold * 1000)
    objective_pct = number(slo.objective * 100)
    row = {
        "id": SLO_PANEL_IDS[0],
        "type": "row",
        "title": f"SLO: {objective_pct} % of events within {target_ms} ms over {slo.period}",
        "collapsed": False,
        "gridPos": {"x": 0, "y": 0, "w": 24, "h": 1},
        "panels": [],
    }
    sli = _panel(
        SLO_PANEL_IDS[1],
        f"Events within {target_ms} ms",
        f"Share of events written to their last local socket within {target_ms} ms (the SLI), over 5 minutes "
        f"and 1 hour. The line is the objective, {objective_pct} %.",
        0,
        "percentunit",
        [(f"1 - {ratio(w)}{selector}", f"{{{{namespace}}}} {w}") for w in ("5m", "1h")],
    )
    _threshold_lines(sli, [(slo.objective, "red")])
    # A 0-100 % axis would flatten the line against the top; widens when the SLI drops lower.
    sli["fieldConfig"]["defaults"]["custom"].update({"axisSoftMin": 0.95, "axisSoftMax": 1})
    longs = [w.long for alert in slo.alerts for w in alert.windows]
    burn = _panel(
        SLO_PANEL_IDS[2],
        "Error budget burn rate",
        f"How many times faster than the objective allows the budget is spent (1 = all of it in {slo.period}), "
        "per alert window. Lines: "
        + "; ".join(
            f"{alert.name} at " + " / ".join(f"{number(w.burn_rate)}× ({w.long})" for w in alert.windows)
            for alert in slo.alerts
        )
        + ".",
        8,
        "short",
        [(f"{ratio(w)}{selector} / {number(slo.budget)}", f"{{{{namespace}}}} {w}") for w in longs],
    )
    colors = ["red", "orange", "yellow", "blue"]
    rates = sorted({w.burn_rate for alert in slo.alerts for w in alert.windows}, reverse=True)
    _threshold_lines(burn, sorted((r, colors[min(i, len(colors) - 1)]) for i, r in enumerate(rates)))
    budget = _panel(
        SLO_PANEL_IDS[3],
        f"Error budget left ({slo.period})",
        f"Share of the {slo.period} error budget ({number(slo.budget * 100)} % of events may take over "
        f"{target_ms} ms) not yet spent, over the last {slo.period} (or since Prometheus has data).",
        16,
        "percentunit",
        [(f"{PREFIX}_budget_remaining:ratio{slo.period}{selector}", "{{namespace}} budget left")],
    )
    _threshold_lines(budget, [(0.0, "red")])
    return [row, sli, burn, budget]


def dashboard_json(slo: Slo, current: str) -> str:
    """dashboard.json with the SLO row on top and the hand-written panels below it, unchanged otherwise."""
    document = json.loads(current)
    generated = dashboard_row(slo)
    height = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in generated)
    others = [p for p in document["panels"] if p["id"] not in SLO_PANEL_IDS]
    shift = height - min(p["gridPos"]["y"] for p in others)
    for panel in others:
        panel["gridPos"]["y"] += shift
    document["panels"] = generated + others
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"


def generated(slo: Slo) -> dict[Path, str]:
    """Every generated file's path and its content."""
    return {RULES: rules_yaml(slo), DASHBOARD: dashboard_json(slo, DASHBOARD.read_text(encoding="utf-8"))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 when a generated file is stale")
    args = parser.parse_args(argv)
    slo = load()
    stale = []
    for path, content in generated(slo).items():
        old = path.read_text(encoding="utf-8") if path.exists() else None
        if old == content:
            continue
        stale.append(path.relative_to(ROOT))
        if not args.check:
            path.write_text(content, encoding="utf-8")
    if args.check and stale:
        print(f"stale: {', '.join(map(str, stale))}; run python scripts/slo.py", file=sys.stderr)
        return 1
    for path in stale:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
