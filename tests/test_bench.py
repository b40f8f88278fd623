"""The benchmark still runs end to end: a short run against sidechat and the floor.

Figures are not asserted here (speed is measured, in bench/, not tested); only
that the benchmark measures something and that sidechat stored every reply.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_quick_benchmark_run_measures_and_stores_every_reply(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    result = subprocess.run(
        [sys.executable, "bench/run.py", "--quick", "--scenarios", "latency,completions"]
        + ["--only", "direct,floor,sidechat", "--no-pin", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()
    scenarios = json.loads(out.read_text())["scenarios"]

    latency = scenarios["latency"]["targets"]
    for target in ("direct", "floor", "sidechat"):
        assert latency[target]["main"]["errors"] == 0
        assert latency[target]["main"]["token_latency_ms"]["n"] == latency[target]["main"]["tokens"] > 0
    completions = scenarios["completions"]["targets"]["sidechat"]
    assert completions["main"]["errors"] == 0
    assert completions["db"]["wrong"] == 0
    assert completions["db"]["right"] == completions["db"]["expected"] == completions["main"]["completed"] > 0
    assert b"latency" in result.stdout and b"sc/floor" in result.stdout  # the table was printed
