"""The results of a run as a Markdown table, `results/latest.json`, and the table in README.md."""

from __future__ import annotations

import json
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

from bench.stats import Delivery, Histogram

HERE = Path(__file__).resolve().parent
START, END = "<!-- results:start -->", "<!-- results:end -->"


def latency_summary(hist: Histogram) -> dict[str, float]:
    return {
        "samples": hist.total,
        "p50_ms": hist.percentile(0.50) / 1000,
        "p99_ms": hist.percentile(0.99) / 1000,
        "max_ms": hist.max_us / 1000,
    }


def delivery_summary(d: Delivery) -> dict[str, Any]:
    return {
        "clients": d.clients,
        "received": d.received,
        "lost": d.lost,
        "duplicated": d.duplicated,
        "out_of_order": d.out_of_order,
        "disconnected": d.disconnected,
        "latency": latency_summary(d.latency),
        "disorder_examples": d.disorder[:10],
        "missing_by_seq": dict(sorted(d.missing_examples.items())[:40]),
    }


def slowest_events(worst_by_event: dict[int, int], count: int = 5) -> list[dict[str, float]]:
    """The events some client waited longest for: a stall shows as a run of neighbours."""
    ranked = sorted(worst_by_event.items(), key=lambda item: -item[1])[:count]
    return [{"seq": seq, "worst_ms": us / 1000} for seq, us in ranked]


def machine() -> dict[str, str]:
    meminfo = Path("/proc/meminfo").read_text().splitlines()
    mem_kb = next((int(line.split()[1]) for line in meminfo if line.startswith("MemTotal")), 0)
    try:
        nginx = subprocess.run(["nginx", "-v"], capture_output=True, text=True, timeout=5).stderr.strip()
    except OSError:
        nginx = "not installed"
    return {
        "nproc": str(os.cpu_count()),
        "memory": f"{mem_kb / 1024 / 1024:.1f} GiB",
        "kernel": platform.release(),
        "python": platform.python_version(),
        "nginx": nginx.replace("nginx version: ", ""),
    }


def add_ratios(results: dict[str, dict[str, Any]]) -> None:
    """p99 against nchan (same worker count when it ran) and against the naive server."""
    nchans = {r["workers"]: name for name, r in results.items() if name.startswith("nchan")}
    naive = results.get("naive")
    for name, r in results.items():
        ratios: dict[str, float | str | None] = {}
        reference = nchans.get(r["workers"]) or next(iter(nchans.values()), None)
        if reference and not name.startswith("nchan"):
            ref = results[reference]
            ratios["vs"] = reference
            if r["sse"]["clients"]:
                ratios["p99_vs_nchan"] = _ratio(r["all"]["p99_ms"], ref["all"]["p99_ms"])
            else:  # WebSocket only (Socket.IO): against nchan's WebSocket clients
                ratios["p99_vs_nchan"] = _ratio(
                    r["websocket"]["latency"]["p99_ms"], ref["websocket"]["latency"]["p99_ms"]
                )
            for kind in ("websocket", "sse"):
                ratios[f"{kind}_p99_vs_nchan"] = _ratio(r[kind]["latency"]["p99_ms"], ref[kind]["latency"]["p99_ms"])
            ratios["rss_vs_nchan"] = _ratio(r["rss_per_connection_kb"], ref["rss_per_connection_kb"])
            ratios["connect_rate_vs_nchan"] = _ratio(r["connect_per_second"], ref["connect_per_second"])
        if naive is not None and name != "naive":
            ratios["websocket_p99_gain_vs_naive"] = _ratio(
                naive["websocket"]["latency"]["p99_ms"], r["websocket"]["latency"]["p99_ms"]
            )
            ratios["p99_gain_vs_naive"] = _ratio(naive["all"]["p99_ms"], r["all"]["p99_ms"])
        r["ratios"] = ratios


def _ratio(a: float, b: float) -> float | None:
    return round(a / b, 3) if b else None


def _fmt(value: object, digits: int = 1) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def table(results: dict[str, dict[str, Any]]) -> str:
    """One row per system."""
    head = (
        "| system | workers | WS / SSE clients | events | WS p50 / p99 / max ms | SSE p50 / p99 / max ms "
        "| lost / dup / out-of-order | RSS per conn KB | connect /s | server CPU s | p99 ÷ nchan "
        "| WS p99: naive ÷ this |"
    )
    rows = [head, "|" + "---|" * 12]
    for name, r in results.items():
        ws, sse, ratios = r["websocket"], r["sse"], r.get("ratios", {})
        lat = [" / ".join(_fmt(x["latency"][k]) for k in ("p50_ms", "p99_ms", "max_ms")) for x in (ws, sse)]
        faults = [sum(x[k] for x in (ws, sse)) for k in ("lost", "duplicated", "out_of_order")]
        vs = ratios.get("p99_vs_nchan")
        rows.append(
            f"| {name} | {r['workers']} | {ws['clients']} / {sse['clients']} | {r['published']} | {lat[0]} | {lat[1]} "
            f"| {faults[0]} / {faults[1]} / {faults[2]} | {_fmt(r['rss_per_connection_kb'])} "
            f"| {_fmt(r['connect_per_second'], 0)} | {_fmt(r['server_cpu_seconds'])} "
            f"| {_fmt(vs, 2)}{' (' + ratios['vs'] + ')' if vs is not None else ''} "
            f"| {_fmt(ratios.get('websocket_p99_gain_vs_naive'), 1)} |"
        )
    return "\n".join(rows)


def save(document: dict[str, Any], markdown: str, name: str = "latest") -> Path:
    results_dir = HERE / "results"
    results_dir.mkdir(exist_ok=True)
    path = results_dir / f"{name}.json"
    path.write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    readme = HERE / "README.md"
    if name == "latest" and readme.exists():
        text = readme.read_text(encoding="utf-8")
        if START in text and END in text:
            before, rest = text.split(START, 1)
            after = rest.split(END, 1)[1]
            readme.write_text(f"{before}{START}\n{markdown}\n{END}{after}", encoding="utf-8")
    return path
