"""The scale bench still runs end to end: `bench/scale.py --quick`, against a real redis-server.

Figures are not asserted here (speed is measured, in bench/, not tested); only that every
part produced its figures, that they are sane (positive and finite where a figure must
exist, no errors), that Redis really held the streams, and that the tables were printed.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_quick_scale_benchmark_measures_every_part(tmp_path: Path) -> None:
    assert shutil.which("redis-server") or Path("/usr/bin/redis-server").exists(), (
        "redis-server is missing: install Debian's redis-server package"
    )
    out = tmp_path / "results-scale.json"
    result = subprocess.run(
        [sys.executable, "bench/scale.py", "--quick", "--no-pin", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()
    results = json.loads(out.read_text())
    assert results["meta"]["redis_keys_after"] > 0  # the Redis runs wrote their streams

    figures = {
        (part, row["metric"]): row for part, entry in results["parts"].items() for row in entry["runs"][0]
    }
    must_be_positive = [
        ("cpu", "load: relay CPU µs/token", "base"),
        ("cpu", "load: relay CPU µs/token", "scaled"),
        ("cpu", "load: redis-server CPU µs/token", "scaled"),
        ("cpu", "throughput: relay CPU µs/token", "base"),
        ("cpu", "throughput: relay CPU µs/token", "scaled"),
        ("cpu", "throughput: redis-server CPU µs/token", "scaled"),
        ("processes", "tokens/s to the clients", "base"),
        ("processes", "tokens/s, copies to Redis done", "scaled"),
        ("processes", "CPU % of one core: sidechat", "scaled"),
        ("processes", "CPU % of one core: load generator", "scaled"),
        ("attach", "time to first event p50 ms", "base"),
        ("attach", "time to first event p50 ms", "scaled"),
        ("attach", "token lag behind A p99 ms", "scaled"),
        ("attach", "live tokens timed", "scaled"),
        ("attach", "30 attaching at once: first event p99 ms", "base"),
    ]
    for part, metric, side in must_be_positive:
        value = figures[part, metric][side]
        sane = isinstance(value, int | float) and math.isfinite(value) and value > 0
        assert sane, f"{part} / {metric} / {side}: {value!r}"
    for part, metric in figures:
        if metric.endswith("errors"):
            assert figures[part, metric]["base"] == figures[part, metric]["scaled"] == 0, (part, metric)

    printed = result.stdout.decode()
    for title in ("cpu:", "processes:", "attach:"):
        assert title in printed
    assert "in memory" in printed and "2 processes" in printed and "on B" in printed
