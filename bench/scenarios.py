"""The scenarios: what each load generator run asks for, in full and in `--quick` form.

Each scenario is one or more phases (load generator runs) against one relay
process; the targets each scenario is judged by are in `report.rows`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Phase:
    streams: int
    tokens: int
    total: int = 0
    gap_ms: float = 0
    first_ms: float = 0
    stamp: bool = False
    hold: float = 0
    open_concurrency: int = 0
    ramp_ms: float = 0
    open_budget: float = 0
    deadline: float = 120


@dataclass
class Scenario:
    about: str
    phases: dict[str, Phase]
    heartbeat: float = 15
    settings: dict[str, Any] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)  # for the relay


def scenarios(quick: bool) -> dict[str, Scenario]:
    q = quick
    idle_streams, beat = (500 if q else 5000), 2.0
    return {
        "latency": Scenario(
            "1 stream, 100 tokens 2 ms apart (run 5 times in a row)",
            {"main": Phase(1, 100, total=2 if q else 5, gap_ms=2, stamp=True)},
        ),
        "load": Scenario(
            "200 streams × 200 tokens 20 ms apart, begun within 1 s: 10,000 tokens/s offered",
            {"main": Phase(200, 50 if q else 200, gap_ms=20, stamp=True, ramp_ms=1000)},
        ),
        "throughput": Scenario(
            "50 streams × 2,000 tokens, no delay", {"main": Phase(50, 200 if q else 2000)}
        ),
        "idle": Scenario(
            f"{idle_streams} open streams on a slow provider, heartbeat {beat:g} s",
            {
                "main": Phase(
                    idle_streams,
                    1,
                    first_ms=3_600_000,
                    hold=(2 if q else 3) * beat,
                    open_concurrency=100,
                    open_budget=40,
                    deadline=90,
                )
            },
            heartbeat=beat,
            settings={"streams": idle_streams, "heartbeat": beat},
            # The provider is slow on purpose: its silence must not end the streams we hold.
            env={"SIDECHAT_UPSTREAM_IDLE_TIMEOUT": "600", "SIDECHAT_UPSTREAM_FIRST_TOKEN_TIMEOUT": "600"},
        ),
        "start": Scenario(
            "POST to `start` event: 1 stream at a time, then 200 at once",
            {"one": Phase(1, 3, total=10 if q else 50, first_ms=20), "burst": Phase(200, 3, first_ms=20)},
        ),
        "completions": Scenario(
            "1,000 generations of 5 tokens, 32 at a time; then every stored row is checked",
            {"main": Phase(32, 5, total=200 if q else 1000)},
        ),
    }
