"""Turn load-generator samples into figures, and figures into one table with targets.

Percentiles are nearest-rank over every sample (no histogram): a run holds at
most a few hundred thousand samples. Times are in milliseconds, except where a
row says otherwise.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

TARGETS = ("direct", "floor", "hop", "naive", "litellm", "sidechat")
OPTIONAL = ("litellm",)  # run only when asked: `python bench/run.py --with litellm`
Metrics = dict[str, Any]


def percentiles(samples_us: list[int]) -> dict[str, float] | None:
    if not samples_us:
        return None
    ordered = sorted(samples_us)
    n = len(ordered)

    def rank(q: float) -> float:
        return ordered[min(n - 1, int(q * n))] / 1000

    return {"n": n, "p50": rank(0.5), "p90": rank(0.9), "p99": rank(0.99), "max": ordered[-1] / 1000}


def merge(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """One loadgen result from several processes' results."""
    merged: dict[str, Any] = dict(parts[0])
    for part in parts[1:]:
        for key, value in part.items():
            if isinstance(value, list):
                merged[key] = merged[key] + value
            elif key == "errors":
                merged[key] = {k: merged[key].get(k, 0) + value.get(k, 0) for k in {**merged[key], **value}}
            elif key in ("began_ns", "hold_end_ns"):
                merged[key] = min(merged[key], value) or max(merged[key], value)
            elif key in ("last_ns", "all_open_ns"):
                merged[key] = max(merged[key], value)
            elif key != "first_token_ns":
                merged[key] += value
    return merged


def summarise(result: dict[str, Any]) -> Metrics:
    wall = (result["last_ns"] - result["began_ns"]) / 1e9
    return {
        "streams": result["streams"],
        "completed": result["completed"],
        "held": result["held"],
        "tokens": result["tokens"],
        "errors": sum(result["errors"].values()),
        "error_kinds": result["errors"],
        "seconds": round(wall, 3),
        "tokens_per_s": round(result["tokens"] / wall) if wall > 0 else None,
        "completions_per_s": round(result["completed"] / wall, 1) if wall > 0 else None,
        "token_latency_ms": percentiles(result["latency_us"]),
        "ttft_ms": percentiles(result["ttft_us"]),
        "start_ms": percentiles(result["start_us"]),
        "headers_ms": percentiles(result["headers_us"]),
        "ping_gap_ms": percentiles(result["ping_gaps_us"]),
        "pings": result["pings"],
        "client_cpu_s": round(result["cpu_s"], 3),
    }


def dig(metrics: Metrics | None, path: str) -> Any:
    value: Any = metrics
    for key in path.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value


@dataclass
class Row:
    """A table row; `passes(sidechat's value, the floor's value)`, the floor's being None
    when it was not run (a target relative to it is then not judged)."""

    label: str
    value: Callable[[Metrics], Any]
    target: str = ""
    passes: Callable[[Any, Any], bool] | None = None
    ratio: bool = True


def at(path: str) -> Callable[[Metrics], Any]:
    return lambda m: dig(m, path)


def start_or_headers(phase: str, q: str) -> Callable[[Metrics], Any]:
    # Only sidechat sends a `start` event; for the others the nearest thing is the response head.
    return lambda m: dig(m, f"{phase}.start_ms.{q}") or dig(m, f"{phase}.headers_ms.{q}")


def at_most(limit: float) -> Callable[[Any, Any], bool]:
    return lambda v, floor: v <= limit


def floor_times(factor: float, *, at_least: bool = False) -> Callable[[Any, Any], bool]:
    if at_least:
        return lambda v, floor: floor is not None and v >= factor * floor
    return lambda v, floor: floor is not None and v <= factor * floor


def none(v: Any, floor: Any) -> bool:
    return bool(v == 0)


def rows(scenario: str, settings: dict[str, Any]) -> list[Row]:
    streams = settings.get("streams", 0)
    beat = settings.get("heartbeat", 0)
    errors = Row("errors", at("main.errors"), "0", none, ratio=False)
    table: dict[str, list[Row]] = {
        "latency": [
            Row("token latency p50 ms", at("main.token_latency_ms.p50")),
            Row("token latency p90 ms", at("main.token_latency_ms.p90")),
            Row("token latency p99 ms", at("main.token_latency_ms.p99")),
            Row("token latency max ms", at("main.token_latency_ms.max")),
            Row(
                "added over direct, p50 ms",
                at("added_p50_ms"),
                "≤ floor + 0.02",
                lambda v, floor: floor is not None and v <= floor + 0.02,
                ratio=False,
            ),
            Row("TTFT p50 ms", at("main.ttft_ms.p50")),
            errors,
        ],
        "load": [
            Row("token latency p50 ms", at("main.token_latency_ms.p50")),
            Row("token latency p99 ms", at("main.token_latency_ms.p99"), "≤ ×2 floor", floor_times(2)),
            Row("token latency max ms", at("main.token_latency_ms.max")),
            Row("TTFT p50 ms", at("main.ttft_ms.p50")),
            Row("TTFT p99 ms", at("main.ttft_ms.p99"), "≤ ×2 floor", floor_times(2)),
            Row("tokens/s", at("main.tokens_per_s")),
            Row("relay CPU µs/token", at("relay.cpu_us_per_token"), "≤ ×1.2 floor", floor_times(1.2)),
            Row("relay peak RSS MB", at("relay.rss_peak_mb")),
            errors,
        ],
        "throughput": [
            Row("tokens/s", at("main.tokens_per_s"), "≥ ×1.0 floor", floor_times(1.0, at_least=True)),
            Row("relay CPU µs/token", at("relay.cpu_us_per_token")),
            Row("relay core busy %", at("relay.busy_pct")),
            Row("client core busy %", at("client_core_busy_pct")),
            errors,
        ],
        "idle": [
            Row("streams held", at("main.held"), f"= {streams}", lambda v, floor: v == streams, ratio=False),
            Row("relay RSS per stream KB", at("relay.rss_per_stream_kb"), "≤ 20", at_most(20)),
            Row("relay peak RSS MB", at("relay.rss_peak_mb")),
            Row("heartbeat gap p50 ms", at("main.ping_gap_ms.p50")),
            Row(
                "heartbeat gap max ms", at("main.ping_gap_ms.max"), f"≤ {beat * 1250:g}", at_most(beat * 1250)
            ),
            Row("seconds to open all", at("open_seconds")),
            errors,
        ],
        "start": [
            Row("start p50, 1 stream ms", start_or_headers("one", "p50"), "≤ 1", at_most(1)),
            Row("start p99, 1 stream ms", start_or_headers("one", "p99")),
            Row(
                "first token over direct, p50 ms", at("added_ttft_p50_ms"), "≤ 0.5", at_most(0.5), ratio=False
            ),
            Row("start p50, 200 at once ms", start_or_headers("burst", "p50")),
            Row("start p99, 200 at once ms", start_or_headers("burst", "p99"), "≤ 20", at_most(20)),
            Row("TTFT p99, 200 at once ms", at("burst.ttft_ms.p99")),
            Row(
                "errors",
                lambda m: (dig(m, "one.errors") or 0) + (dig(m, "burst.errors") or 0),
                "0",
                none,
                ratio=False,
            ),
        ],
        "completions": [
            Row("completions/s", at("main.completions_per_s")),
            Row("relay CPU ms/completion", at("relay.cpu_ms_per_completion")),
            Row("upstream connections opened", at("upstream.connections")),
            errors,
            Row("stored rows wrong", at("db.wrong"), "0", none, ratio=False),
        ],
    }
    return table[scenario]


def fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        return f"{value:.3g}" if abs(value) >= 1 else f"{value:.3f}"
    if isinstance(value, int) and abs(value) >= 10_000:
        return f"{value:,}"
    return str(value)


def ratio(a: Any, b: Any) -> str:
    if not isinstance(a, int | float) or not isinstance(b, int | float) or not b:
        return "-"
    return f"×{a / b:.2f}"


def table(results: dict[str, dict[str, Any]]) -> str:
    ran = [t for t in TARGETS if t not in OPTIONAL or any(t in e["targets"] for e in results.values())]
    head = ("scenario", "metric", *ran, "sc/floor", "sc/naive", "target", "")
    lines: list[tuple[str, ...]] = [head]
    for scenario, entry in results.items():
        for row in rows(scenario, entry["settings"]):
            values = dict.fromkeys(ran)
            values.update({t: row.value(m) for t, m in entry["targets"].items() if t in values})
            sidechat, floor = values["sidechat"], values["floor"]
            verdict = ""
            if row.passes is not None and sidechat is not None:
                verdict = "ok" if row.passes(sidechat, floor) else "MISS"
            ratios = (ratio(sidechat, floor), ratio(sidechat, values["naive"])) if row.ratio else ("", "")
            lines.append((scenario, row.label, *map(fmt, values.values()), *ratios, row.target, verdict))
            scenario = ""
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    out = []
    for n, line in enumerate(lines):
        cells = [
            c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths, strict=False))
        ]
        out.append("  ".join(cells).rstrip())
        if n == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)
