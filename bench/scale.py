"""Measure sidechat as several processes sharing SQLite and Redis: `python bench/scale.py`.

A fake provider and a real redis-server (started here, in a temporary directory, on a
loopback port) serve three parts, each printed as a table with a baseline column:

- cpu: bench/run.py's `load` and `throughput` scenarios through one sidechat in memory and
  one with SIDECHAT_REDIS_URL, measured as run.py measures (relay on its own core, its CPU
  from /proc before and after); redis-server's own CPU beside it. Target: ≤ 1.3×.
- processes: tokens/s through 1 and through 2 sidechat processes (both with Redis, sharing
  the SQLite file), the load generator spreading streams round robin; unpinned, so every
  process shares this machine's cores, and the CPU split says who used them.
- attach: a reply started on process A, attached to on A itself (the baseline) and on B:
  the time to the follower's first event, and how far its tokens lag A's own stream.

See bench/README.md, "Scale-out".
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import report
import scale_report
from attach_probe import Crowd, Probe, attach_on, crowd_on
from procs import TICK, cpu_list, cpu_seconds, free_port, healthy, spawn, stop
from redis_proc import REDIS_SERVER, RedisProcess
from run import BENCH, PY, ROOT, Bench, describe
from scale_report import Part, Row
from scenarios import Phase, Scenario, scenarios

PARTS = ("cpu", "processes", "attach")
CROWD = 150  # followers of one reply at once: more than redis-py's pool holds (100) by default


class ScaleBench(Bench):
    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        super().__init__(args, workdir)
        (workdir / "redis").mkdir()
        self.redis = RedisProcess(workdir / "redis", self.pinned(args.client_cpus, []))
        self.redis_cpu = 0.0  # redis-server's CPU seconds in the load generator's "run" phases
        self.runs = 0
        self.prefix: str | None = None  # the Redis runs' prefix; None: in memory
        self.ended = 0  # the topics ended in it so far
        self.drained_ns = 0  # when the last phase's topics were all in Redis
        self.logs: dict[int, Path] = {}  # of the processes sidechats() started
        self.tail_ms = 0.0  # how long after its last token to a client that was

    def loadgen(self, url: str | list[str], kind: str, phase: Phase, tag: str) -> dict[str, Any]:
        """A phase, and with Redis the wait until sidechat has copied it all there: the copy
        may lag the clients (it batches), and its CPU is part of what a token costs."""
        before = cpu_seconds(self.redis.pid)
        result = super().loadgen(url, kind, phase, tag)
        if self.prefix is not None:
            self.ended += result["completed"]
            self.drained_ns = self.redis.wait_ended(self.prefix, self.ended)
            self.tail_ms = round((self.drained_ns - result["last_ns"]) / 1e6, 1)
        if tag == "run":
            self.redis_cpu += cpu_seconds(self.redis.pid) - before
        return result

    @contextlib.contextmanager
    def shared(self) -> Iterator[dict[str, str]]:
        """The environment of sidechat with Redis, under a prefix of its own (message ids start
        again in each fresh database); the load generator waits for the copies meanwhile."""
        self.runs += 1
        self.prefix, self.ended, self.redis_cpu = f"bench{self.runs}:", 0, 0.0
        try:
            yield {"SIDECHAT_REDIS_URL": self.redis.url, "SIDECHAT_REDIS_PREFIX": self.prefix}
        finally:
            self.prefix = None

    @contextlib.contextmanager
    def unpinned(self) -> Iterator[None]:
        """Everything on every core for the block: the fake provider, redis-server, this process
        and whatever starts inside it."""
        pinned, everywhere = self.pin, f"0-{(os.cpu_count() or 1) - 1}"
        if pinned:
            self.move(everywhere)
        self.pin = False
        try:
            yield
        finally:
            self.pin = pinned
            if pinned:
                self.move(self.args.client_cpus)

    def move(self, cpus: str) -> None:
        assert self.fake is not None
        for pid in (self.fake.pid, self.redis.pid):
            subprocess.run(["taskset", "-a", "-p", "-c", cpus, str(pid)], check=True, capture_output=True)
        os.sched_setaffinity(0, cpu_list(cpus))

    @contextlib.contextmanager
    def sidechats(self, count: int, name: str) -> Iterator[list[tuple[subprocess.Popen[bytes], int]]]:
        """`count` sidechat processes (python app.py) sharing one SQLite file and Redis."""
        db = self.workdir / f"{name}.db"
        servers: list[tuple[subprocess.Popen[bytes], int]] = []
        with contextlib.ExitStack() as stack:
            env = self.relay_env(Scenario("", {}), db) | stack.enter_context(self.shared())
            stack.callback(stop_all, servers)
            for n in range(count):
                port, log = free_port(), self.workdir / f"{name}-{n}.log"
                command = [PY, "app.py", "--port", str(port), "--db", str(db)]
                servers.append(
                    (spawn(self.pinned(self.args.relay_cpus, command), log, cwd=ROOT, env=env), port)
                )
                self.logs[servers[-1][0].pid] = log
                deadline = time.monotonic() + 20
                while not healthy(port):
                    if time.monotonic() > deadline or servers[-1][0].poll() is not None:
                        raise SystemExit(f"sidechat did not start; see {log}")
                    time.sleep(0.05)
            for _, port in servers:
                self.loadgen(chat_url(port), "relay", Phase(4, 5, total=20), "warm")
            yield servers


def copy_failures(log: Path) -> int:
    """How often sidechat logged that a copy to Redis failed (and was retried, after a pause)."""
    return log.read_text(errors="replace").count("could not copy")


def stop_all(servers: list[tuple[subprocess.Popen[bytes], int]]) -> None:
    for process, _ in servers:
        stop(process)


def machine_busy() -> tuple[float, float, float]:
    """CPU seconds all this machine's cores spent on anything since boot, and of those: on
    interrupts (softirq: mostly the loopback network, counted to no process), and the time the
    hypervisor gave to other guests (steal)."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]
    user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, fields)
    return (user + nice + system + irq + softirq + steal) / TICK, (irq + softirq) / TICK, steal / TICK


def children_cpu() -> float:
    """CPU seconds of this process's children that have ended and were waited for."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def chat_url(port: int) -> str:
    return f"http://127.0.0.1:{port}/api/chat/stream"


# -- cpu: Redis mode vs in memory ----------------------------------------------------------------


def cpu_part(bench: ScaleBench, quick: bool) -> list[Row]:
    rows: list[Row] = []
    for name in ("load", "throughput"):
        scenario = scenarios(quick)[name]
        memory = bench.measure(f"{name}-memory", scenario, "sidechat")
        with bench.shared() as env:
            redis = bench.measure(
                f"{name}-redis", dataclasses.replace(scenario, env=scenario.env | env), "sidechat"
            )
        tokens = report.dig(redis, "main.tokens") or 0
        redis_us = round(bench.redis_cpu / tokens * 1e6, 1) if tokens else None
        rows += [
            Row(
                f"{name}: relay CPU µs/token",
                report.dig(memory, "relay.cpu_us_per_token"),
                report.dig(redis, "relay.cpu_us_per_token"),
                target="≤ ×1.3",
                passes=lambda r: r <= 1.3,
            ),
            Row(f"{name}: redis-server CPU µs/token", None, redis_us, ratio=False),
            Row(f"{name}: Redis copy done after the last token, ms", None, bench.tail_ms, ratio=False),
            Row(
                f"{name}: tokens/s",
                report.dig(memory, "main.tokens_per_s"),
                report.dig(redis, "main.tokens_per_s"),
            ),
        ]
        if name == "load":
            rows.append(
                Row(
                    f"{name}: token latency p99 ms",
                    report.dig(memory, "main.token_latency_ms.p99"),
                    report.dig(redis, "main.token_latency_ms.p99"),
                )
            )
        failures = copy_failures(bench.workdir / f"{name}-redis-sidechat.log")
        rows.append(
            Row(
                f"{name}: Redis copies failed",
                None,
                failures,
                ratio=False,
                target="0",
                passes=lambda v: v == 0,
            )
        )
        base, scaled = (report.dig(m, "main.errors") for m in (memory, redis))
        rows.append(Row(f"{name}: errors", base, scaled, ratio=False, target="0", passes=lambda v: v == 0))
    return rows


# -- processes: 2 vs 1, and attach on another ---------------------------------------------------


def throughput(
    bench: ScaleBench, servers: list[tuple[subprocess.Popen[bytes], int]], phase: Phase
) -> dict[str, Any]:
    """tokens/s through `servers`, and what every process here spent on them, in % of one core."""
    assert bench.fake is not None
    watched = {
        "sidechat": [p.pid for p, _ in servers],
        "fake provider": [bench.fake.pid],
        "redis-server": [bench.redis.pid],
    }
    before, began = {who: sum(map(cpu_seconds, pids)) for who, pids in watched.items()}, time.monotonic()
    busy, mine, ended = machine_busy(), time.process_time(), children_cpu()
    raw = bench.loadgen([chat_url(port) for _, port in servers], "relay", phase, "run")
    # CPU over the window it was read in (the load generator's start and exit included), so
    # the shares add up to at most the cores; tokens/s over the load generator's own run.
    spent = {who: sum(map(cpu_seconds, pids)) - before[who] for who, pids in watched.items()}
    window = time.monotonic() - began
    spent["load generator"] = children_cpu() - ended  # its start-up included
    spent["this bench (waits for Redis)"] = time.process_time() - mine
    # what the cores did besides: other processes (a test run next door), and time the
    # hypervisor gave to other guests
    total, interrupts, steal = (after - before for after, before in zip(machine_busy(), busy, strict=True))
    spent["interrupts (loopback network)"] = interrupts
    spent["stolen (other guests)"] = steal
    spent["other processes"] = max(0.0, total - sum(spent.values()))
    return {
        "tokens_per_s": round(raw["tokens"] / ((raw["last_ns"] - raw["began_ns"]) / 1e9)),
        "copied_tokens_per_s": round(raw["tokens"] / ((bench.drained_ns - raw["began_ns"]) / 1e9)),
        "tokens": raw["tokens"],
        "seconds": round((raw["last_ns"] - raw["began_ns"]) / 1e9, 3),
        "window_s": round(window, 3),
        "errors": sum(raw["errors"].values()),
        "error_kinds": raw["errors"],
        "copy_failures": sum(copy_failures(bench.logs[p.pid]) for p, _ in servers),
        "cpu_pct": {who: round(100 * s / window, 1) for who, s in spent.items()},
        "sidechat_us_per_token": round(spent["sidechat"] / raw["tokens"] * 1e6, 1) if raw["tokens"] else None,
    }


def processes_rows(one: dict[str, Any], two: dict[str, Any]) -> list[Row]:
    rows = [
        Row("tokens/s to the clients", one["tokens_per_s"], two["tokens_per_s"]),
        Row(
            "tokens/s, copies to Redis done",
            one["copied_tokens_per_s"],
            two["copied_tokens_per_s"],
            target="≥ ×1.7 (load from elsewhere)",
        ),
        Row(
            "sidechat CPU µs/token (all processes)",
            one["sidechat_us_per_token"],
            two["sidechat_us_per_token"],
        ),
    ]
    rows += [
        Row(f"CPU % of one core: {who}", one["cpu_pct"][who], two["cpu_pct"][who]) for who in one["cpu_pct"]
    ]
    rows.append(Row("CPU % of one core: all", sum(one["cpu_pct"].values()), sum(two["cpu_pct"].values())))
    rows.append(
        Row(
            "Redis copies failed",
            one["copy_failures"],
            two["copy_failures"],
            ratio=False,
            target="0",
            passes=lambda v: v == 0,
        )
    )
    rows.append(Row("errors", one["errors"], two["errors"], ratio=False, target="0", passes=lambda v: v == 0))
    return rows


def attach_rows(same: Probe, other: Probe) -> list[Row]:
    def q(samples: list[int], at: float) -> float | None:
        return report.percentiles(samples)[f"p{round(at * 100)}"] if samples else None  # type: ignore[index]

    return [
        Row("time to first event p50 ms", q(same.attach_us, 0.5), q(other.attach_us, 0.5)),
        Row("time to first event p99 ms", q(same.attach_us, 0.99), q(other.attach_us, 0.99)),
        Row("token lag behind A p50 ms", q(same.lag_us, 0.5), q(other.lag_us, 0.5)),
        Row("token lag behind A p99 ms", q(same.lag_us, 0.99), q(other.lag_us, 0.99)),
        Row("live tokens timed", len(same.lag_us), len(other.lag_us), ratio=False),
        Row("errors", len(same.errors), len(other.errors), ratio=False, target="0", passes=lambda v: v == 0),
    ]


def crowd_rows(many: int, same: Crowd, other: Crowd) -> list[Row]:
    def p99(samples: list[int]) -> float | None:
        return report.percentiles(samples)["p99"] if samples else None  # type: ignore[index]

    return [
        Row(
            f"{many} attaching at once: followed to the end",
            same.followed,
            other.followed,
            ratio=False,
            target=f"= {many}",
            passes=lambda v: v == many,
        ),
        Row(f"{many} attaching at once: first event p99 ms", p99(same.attach_us), p99(other.attach_us)),
    ]


def pair_parts(
    bench: ScaleBench, chosen: list[str], quick: bool, out: dict[str, list[Row]]
) -> dict[str, Any]:
    """The processes and attach parts: one process, then a pair that both parts use."""
    phase = Phase(100, 100 if quick else 1000)
    raw: dict[str, Any] = {}
    with bench.unpinned():
        if "processes" in chosen:
            with bench.sidechats(1, f"one{bench.runs}") as servers:
                raw["one"] = throughput(bench, servers, phase)
        with bench.sidechats(2, f"pair{bench.runs}") as pair:
            if "processes" in chosen:
                raw["two"] = throughput(bench, pair, phase)
                out["processes"] = processes_rows(raw["one"], raw["two"])
            if "attach" in chosen:
                replies, tokens = (3, 50) if quick else (10, 50)
                (_, a), (_, b) = pair
                same = asyncio.run(attach_on(a, a, replies, tokens, 10, "attach-same"))
                other = asyncio.run(attach_on(a, b, replies, tokens, 10, "attach-other"))
                many = 30 if quick else CROWD
                crowds = [asyncio.run(crowd_on(a, f, many, 100, 20, f"crowd-{f}")) for f in (a, b)]
                raw["attach"] = {
                    "same": dataclasses.asdict(same),
                    "other": dataclasses.asdict(other),
                    "crowd": [dataclasses.asdict(c) for c in crowds],
                }
                out["attach"] = attach_rows(same, other) + crowd_rows(many, *crowds)
    return raw


def describe_parts(quick: bool, cores: int) -> dict[str, Part]:
    phase = Phase(100, 100 if quick else 1000)
    replies = 3 if quick else 10
    return {
        "cpu": Part(
            "cpu",
            "one sidechat in memory vs with SIDECHAT_REDIS_URL (run.py's load and throughput scenarios)",
            "in memory",
            "redis",
            [
                "sidechat's CPU is its own process's (all threads, from /proc); redis-server's is not in it, it is its own row",
                "pinned as run.py pins: sidechat on the relay core, fake provider + load generator + redis-server on the client core",
            ],
        ),
        "processes": Part(
            "processes",
            f"{phase.streams} streams × {phase.tokens} tokens, no delay, round robin over the processes (Redis, one SQLite file)",
            "1 process",
            "2 processes",
            [
                f"nothing pinned: on this {cores}-core machine the load generator, fake provider and redis-server share the cores with sidechat,"
                " so tokens/s is bounded by what they leave (the CPU rows); the ≥ ×1.7 target is for load from elsewhere,"
                " and is not judged here",
                "a ×1.0 in 'sidechat CPU µs/token' means the second process costs nothing per token: with cores to itself it would add its own",
            ],
        ),
        "attach": Part(
            "attach",
            f"{replies} replies × 50 tokens 10 ms apart, started on A; a follower attaches after A's first token",
            "on A itself",
            "on B",
            [
                "time to first event: from B's connect to its first event; lag: tokens A got after that, B's arrival less A's",
                f"then {30 if quick else CROWD} clients attach at once to one reply (100 tokens 20 ms apart) on A, then on B;"
                " a follower on B holds one Redis connection (XREAD BLOCK) while it waits",
            ],
        ),
    }


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Benchmark sidechat on Redis and as several processes.")
    parser.add_argument("--quick", action="store_true", help="a short smoke run (under 30 s)")
    parser.add_argument("--parts", default=",".join(PARTS), help="comma-separated: " + ", ".join(PARTS))
    parser.add_argument(
        "--repeat", type=int, default=1, help="run it all this many times; cells show median (min–max)"
    )
    parser.add_argument("--format", choices=("openai", "anthropic"), default="openai")
    parser.add_argument("--relay-cpus", default="1")
    parser.add_argument("--client-cpus", default="0")
    parser.add_argument("--no-pin", action="store_true")
    parser.add_argument("--out", default=str(BENCH / "results-scale.json"))
    parser.add_argument("--keep", action="store_true", help="keep the logs and databases")
    args = parser.parse_args()
    # What bench/run.py's Bench reads, fixed: sidechat as `python app.py`, one load generator.
    args.server, args.loop, args.http, args.client_procs, args.profile = "app", "auto", "auto", 1, ""
    # Only sidechat runs, in memory and with Redis, without auth: the attach probe's followers
    # would need each stream's own token, and what is compared is the same on both sides.
    args.only, args.auth = "sidechat", "none"
    return args


def main() -> None:
    args = parse_args()
    chosen = [p.strip() for p in args.parts.split(",") if p.strip()]
    if unknown := set(chosen) - set(PARTS):
        raise SystemExit(f"unknown parts: {', '.join(sorted(unknown))}")
    workdir = Path(tempfile.mkdtemp(prefix="sidechat-scale-"))
    bench = ScaleBench(args, workdir)
    meta = describe(bench) | {
        "redis_server": subprocess.run(
            [REDIS_SERVER, "--version"], capture_output=True, text=True
        ).stdout.strip()
    }
    for key, value in meta.items():
        print(f"{key:>20}: {value}")
    parts = describe_parts(args.quick, os.cpu_count() or 1)
    runs: dict[str, list[list[Row]]] = {name: [] for name in chosen}
    raw: list[dict[str, Any]] = []
    bench.start_fake()
    bench.redis.start()
    try:
        for n in range(args.repeat):
            began, rows = time.monotonic(), {}
            if "cpu" in chosen:
                rows["cpu"] = cpu_part(bench, args.quick)
            details = (
                pair_parts(bench, chosen, args.quick, rows) if {"processes", "attach"} & set(chosen) else {}
            )
            raw.append(details)
            for name in chosen:
                runs[name].append(rows[name])
            print(f"run {n + 1} of {args.repeat}: {time.monotonic() - began:.1f} s", flush=True)
        meta["redis_keys_after"] = bench.redis.keys()
    except BaseException:
        print(f"\nlogs and databases kept in {workdir}", file=sys.stderr)
        raise
    finally:
        assert bench.fake is not None
        stop(bench.fake)
        bench.redis.stop()
    if args.keep:
        print(f"\nlogs and databases kept in {workdir}")
    else:
        shutil.rmtree(workdir)
    for name in chosen:
        print("\n" + scale_report.table(parts[name], runs[name]))
    results = {
        "meta": meta,
        "parts": {n: scale_report.as_json(parts[n], runs[n]) for n in chosen},
        "raw": raw,
    }
    Path(args.out).write_text(json.dumps(results, indent=1))
    print(f"\nresults written to {os.path.relpath(args.out)}")


if __name__ == "__main__":
    main()
