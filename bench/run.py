"""Measure what sidechat costs between a client and a provider: `python bench/run.py`.

For each scenario and each target — `direct` (the load generator reads the fake
provider itself: no relay), `floor` (bench/floor_relay.py: the least a relay on
sidechat's stack can do, which the targets are ratios to), `hop` (a byte pipe: what
any extra process costs here), `naive` (bench/naive_relay.py), `litellm` (with
`--with litellm`) and `sidechat` — the runner starts a
fresh relay on the relay core, warms it up, reads its CPU
time from /proc before and after, samples its RSS while the load generator
runs on the client core next to the fake provider, then prints one table and
writes every figure to bench/results.json. See bench/README.md.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import resource
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import profile_summary
import report
from loadgen import bench_token
from procs import (
    RssSampler,
    cpu_list,
    cpu_model,
    cpu_seconds,
    free_port,
    git,
    healthy,
    server_stack,
    spawn,
    status_kb,
    stop,
)
from scenarios import Phase, Scenario, scenarios

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
PY = sys.executable
USERS = 10_000  # more than any scenario's streams: every stream its own user


class Bench:
    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args, self.workdir = args, workdir
        self.pin = shutil.which("taskset") is not None and (os.cpu_count() or 1) >= 2 and not args.no_pin
        self.fake: subprocess.Popen[bytes] | None = None
        self.fake_port = 0
        self.loop, self.http = server_stack(args.loop, args.http)
        self.profiled = {name for name in args.profile.split(",") if name}
        self.litellm = Path()
        if "litellm" in args.only:  # imported only then: it installs LiteLLM on first use
            import litellm_row

            self.litellm = litellm_row.prepare(BENCH / ".venv-litellm")
        self.tokens_file = workdir / "tokens"
        self.tokens_file.write_text("".join(f"{bench_token(i)}=user{i}\n" for i in range(USERS)))
        if self.pin:  # this process samples RSS: keep it off the relay's core too
            os.sched_setaffinity(0, cpu_list(args.client_cpus))

    def pinned(self, cpus: str, command: list[str]) -> list[str]:
        return ["taskset", "-c", cpus, *command] if self.pin else command

    def start_fake(self) -> None:
        ready = self.workdir / "fake.port"
        command = [PY, str(BENCH / "fake_provider.py"), "--ready-file", str(ready)]
        self.fake = spawn(self.pinned(self.args.client_cpus, command), self.workdir / "fake.log")
        deadline = time.monotonic() + 10
        while not ready.exists() or not ready.read_text():
            if time.monotonic() > deadline or self.fake.poll() is not None:
                raise SystemExit("the fake provider did not start; see " + str(self.workdir / "fake.log"))
            time.sleep(0.05)
        self.fake_port = int(ready.read_text())

    def relay_env(self, scenario: Scenario, db: Path) -> dict[str, str]:
        upstream = f"http://127.0.0.1:{self.fake_port}"
        return {
            **os.environ,
            "SIDECHAT_PROVIDER": self.args.format,
            "OPENAI_API_KEY": "x",
            "OPENAI_BASE_URL": upstream + "/v1",
            "ANTHROPIC_API_KEY": "x",
            "ANTHROPIC_BASE_URL": upstream,
            "SIDECHAT_DB": str(db),
            **self.auth_env(),
            "SIDECHAT_HEARTBEAT_SECONDS": f"{scenario.heartbeat:g}",
            "SIDECHAT_SHUTDOWN_GRACE_SECONDS": "0",
            # The limits stay on (their cost is measured) but high enough for one user's load.
            "SIDECHAT_RATE_LIMIT": "1000000/second",
            "SIDECHAT_MAX_STREAMS_PER_USER": "1000000",
            "SIDECHAT_MAX_CONNECTIONS_PER_USER": "1000000",
            "SIDECHAT_MAX_CONNECTIONS": "1000000",
            "NAIVE_PING_SECONDS": f"{scenario.heartbeat:g}",
            **scenario.env,
        }

    def auth_env(self) -> dict[str, str]:
        """Deployed as a user would: auth on, one user per stream (loadgen --auth)."""
        if self.args.auth == "tokens":
            return {"SIDECHAT_API_TOKENS_FILE": str(self.tokens_file)}
        if self.args.auth == "header":
            return {"SIDECHAT_TRUSTED_USER_HEADER": "X-User"}
        return {}

    def start_relay(
        self, target: str, name: str, scenario: Scenario
    ) -> tuple[subprocess.Popen[bytes], int, Path]:
        port, db = free_port(), self.workdir / f"{name}.db"
        env, health, wait = self.relay_env(scenario, db), "/healthz", 20
        if target == "hop":
            command = [
                PY,
                str(BENCH / "tcp_hop.py"),
                "--port",
                str(port),
                "--upstream-port",
                str(self.fake_port),
            ]
            command += ["--loop", self.loop]
        elif target == "floor":
            command = [PY, str(BENCH / "floor_relay.py"), "--port", str(port)]
            command += ["--upstream-port", str(self.fake_port), "--loop", self.loop, "--http", self.http]
        elif target == "naive":
            command = [
                PY,
                str(BENCH / "naive_relay.py"),
                "--port",
                str(port),
                "--loop",
                self.loop,
                "--http",
                self.http,
            ]
        elif target == "litellm":
            import litellm_row

            command, extra = litellm_row.command(self.litellm, port, self.fake_port, self.workdir)
            env, health, wait = {**env, **extra}, litellm_row.HEALTH_PATH, 120
        elif self.args.server == "app":
            command = [PY, "app.py", "--port", str(port), "--db", str(db)]
        else:
            command = [PY, "-m", "uvicorn", "app:app", "--port", str(port), "--backlog", "8192"]
            command += ["--loop", self.loop, "--http", self.http]
        log = self.workdir / f"{name}-{target}.log"
        process = spawn(self.pinned(self.args.relay_cpus, command), log, cwd=ROOT, env=env)
        deadline = time.monotonic() + wait
        while not healthy(port, health):
            if time.monotonic() > deadline or process.poll() is not None:
                stop(process)
                raise SystemExit(f"{target} did not start; see {log}")
            time.sleep(0.05)
        return process, port, db

    def loadgen(self, url: str | list[str], kind: str, phase: Phase, tag: str) -> dict[str, Any]:
        """One phase's load, merged across `--client-procs` processes; given several URLs,
        each process spreads its streams over them round robin."""
        procs = self.args.client_procs if phase.streams >= self.args.client_procs else 1
        command = [PY, str(BENCH / "loadgen.py"), "--kind", kind, "--tag", tag, "--auth", self.args.auth]
        for each in [url] if isinstance(url, str) else url:
            command += ["--url", each]
        for name, value in asdict(phase).items():
            if name == "stamp":
                command += ["--stamp"] if value else []
            elif name in ("streams", "total", "open_concurrency"):
                command += [f"--{name.replace('_', '-')}", str(-(-value // procs))]
            else:
                command += [f"--{name.replace('_', '-')}", str(value)]
        children = [
            subprocess.Popen(self.pinned(self.args.client_cpus, command), stdout=subprocess.PIPE)
            for _ in range(procs)
        ]
        outputs = [child.communicate(timeout=phase.deadline + 60)[0] for child in children]
        return report.merge([json.loads(out) for out in outputs])

    def measure(self, name: str, scenario: Scenario, target: str) -> dict[str, Any]:
        relay, url, kind, db = None, f"http://127.0.0.1:{self.fake_port}", self.args.format, None
        if target != "direct":
            relay, port, db = self.start_relay(target, name, scenario)
            url, kind = f"http://127.0.0.1:{port}/api/chat/stream", "relay"
            if target in ("hop", "floor"):  # bytes pass through: the client speaks the provider's format
                url, kind = f"http://127.0.0.1:{port}", self.args.format
            elif target == "litellm":  # an OpenAI-compatible proxy, whatever the provider speaks
                url, kind = f"http://127.0.0.1:{port}", "openai"
            self.loadgen(url, kind, Phase(4, 5, total=20), "warm")
        assert self.fake is not None
        watched = relay.pid if relay else self.fake.pid
        profiler = (
            self.profile(name, relay.pid)
            if relay and target == "sidechat" and name in self.profiled
            else None
        )
        sampler = RssSampler(watched)
        upstream = self.fake_stats()
        rss_base, cpu0, fake0 = status_kb(watched, "VmRSS"), cpu_seconds(watched), cpu_seconds(self.fake.pid)
        sampler.start()
        raw = {phase: self.loadgen(url, kind, spec, "run") for phase, spec in scenario.phases.items()}
        wall = sum(r["last_ns"] - r["began_ns"] for r in raw.values()) / 1e9  # the relay idles outside these
        cpu, fake_cpu = cpu_seconds(watched) - cpu0, cpu_seconds(self.fake.pid) - fake0
        sampler.stop()
        # less the connection and request of the second look at /stats itself
        upstream = {k: v - upstream[k] - (k != "tokens") for k, v in self.fake_stats().items() if k != "open"}
        if profiler is not None:
            profiler.send_signal(signal.SIGINT)
            profiler.wait(timeout=60)
        metrics: dict[str, Any] = {phase: report.summarise(r) for phase, r in raw.items()}
        main = raw.get("main")
        tokens = sum(r["tokens"] for r in raw.values())
        completed = sum(r["completed"] for r in raw.values())
        client_cpu = sum(r["cpu_s"] for r in raw.values())
        peak = max(sampler.peak(), status_kb(watched, "VmRSS"))
        metrics["relay"] = {
            "process": target if relay else "fake provider",
            "cpu_s": round(cpu, 3),
            "busy_pct": round(100 * cpu / wall, 1),
            "cpu_us_per_token": round(cpu / tokens * 1e6, 1) if tokens and relay else None,
            "cpu_ms_per_completion": round(cpu / completed * 1e3, 3) if completed and relay else None,
            "rss_base_mb": round(rss_base / 1024, 1),
            "rss_peak_mb": round(peak / 1024, 1),
            "vm_hwm_mb": round(status_kb(watched, "VmHWM") / 1024, 1),
        }
        metrics["provider_cpu_s"] = round(fake_cpu, 3)
        # Seen by the fake provider: a relay that reuses connections makes far fewer than requests.
        metrics["upstream"] = upstream
        metrics["client_cpu_s"] = round(client_cpu, 3)
        metrics["client_core_busy_pct"] = round(100 * (client_cpu + fake_cpu) / wall, 1)
        if main and main["held"]:
            in_hold = sampler.peak(main["all_open_ns"], main["hold_end_ns"]) or peak
            metrics["relay"]["rss_per_stream_kb"] = round((in_hold - rss_base) / main["held"], 1)
            metrics["open_seconds"] = round((main["all_open_ns"] - main["began_ns"]) / 1e9, 2)
        if target == "sidechat" and db is not None and name == "completions":
            spec = scenario.phases["main"]
            metrics["db"] = check_rows(db, spec.total or spec.streams, spec.tokens)
        if relay is not None:
            stop(relay)
        return metrics

    def fake_stats(self) -> dict[str, int]:
        connection = http.client.HTTPConnection("127.0.0.1", self.fake_port, timeout=5)
        connection.request("GET", "/stats")
        stats: dict[str, int] = json.loads(connection.getresponse().read())
        connection.close()
        return stats

    def profile(self, name: str, pid: int) -> subprocess.Popen[bytes] | None:
        spy = shutil.which("py-spy") or str(Path(PY).parent / "py-spy")
        out = BENCH / f"profile-{name}.txt"
        command = [
            spy,
            "record",
            "--pid",
            str(pid),
            "--rate",
            "200",
            "--format",
            "raw",
            "-o",
            str(out),
        ]
        print(f"  profiling sidechat with py-spy into {out.relative_to(ROOT)}", flush=True)
        return spawn(self.pinned(self.args.client_cpus, command), self.workdir / f"py-spy-{name}.log")


def check_rows(db: Path, expected: int, tokens: int) -> dict[str, int]:
    """Every run reply stored as completed with exactly the text the provider sent."""
    text = "".join(f"w{i} " for i in range(tokens))
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as connection:
        rows = connection.execute(
            "SELECT a.status, a.content FROM messages u JOIN messages a"
            " ON a.conversation_id = u.conversation_id AND a.role = 'assistant'"
            " WHERE u.role = 'user' AND u.content LIKE '% run#%'"
        ).fetchall()
    right = sum(1 for status, content in rows if status == "completed" and content == text)
    return {"expected": expected, "rows": len(rows), "right": right, "wrong": expected - right}


def describe(bench: Bench) -> dict[str, Any]:
    args = bench.args
    how = (
        "python app.py --port P --db DB"
        if args.server == "app"
        else f"python -m uvicorn app:app --loop {bench.loop} --http {bench.http}"
    )
    return {
        "sidechat_started_as": how,
        "uvicorn_stack": f"loop={bench.loop} http={bench.http}"
        + (" (uvicorn's auto choice)" if args.server == "app" else ""),
        "pinning": f"relay on CPU {args.relay_cpus}, fake provider + load generator on CPU {args.client_cpus} (taskset)"
        if bench.pin
        else "none (taskset missing, fewer than 2 CPUs, or --no-pin): numbers are noisier",
        "provider_format": args.format,
        "client_processes": args.client_procs,
        "sidechat_commit": git(ROOT, "rev-parse", "--short", "HEAD")
        + (" + uncommitted changes" if git(ROOT, "status", "--porcelain", "--", "app.py", "chat") else ""),
        "python": platform.python_version(),
        "cpu": f"{os.cpu_count()} × {cpu_model()}",
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Benchmark direct vs naive relay vs sidechat.")
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    parser.add_argument("--scenarios", default="latency,load,throughput,idle,start,completions")
    parser.add_argument(
        "--only", default="", help="targets to run, comma-separated (default: all but optional)"
    )
    parser.add_argument(
        "--with",
        dest="optional",
        default="",
        help="optional targets to add: litellm (installed on first use)",
    )
    parser.add_argument("--format", choices=("openai", "anthropic"), default="openai")
    parser.add_argument(
        "--server",
        choices=("app", "uvicorn"),
        default="app",
        help="start sidechat as `python app.py` or `python -m uvicorn app:app`",
    )
    parser.add_argument(
        "--loop",
        choices=("auto", "asyncio", "uvloop"),
        default="auto",
        help="with --server uvicorn (and for the naive relay)",
    )
    parser.add_argument(
        "--http",
        choices=("auto", "h11", "httptools"),
        default="auto",
        help="with --server uvicorn (and for the naive relay)",
    )
    parser.add_argument(
        "--auth",
        choices=("tokens", "header", "none"),
        default="tokens",
        help="each stream its own user: a bearer token from a tokens file, or the trusted X-User header",
    )
    parser.add_argument("--relay-cpus", default="1")
    parser.add_argument("--client-cpus", default="0")
    parser.add_argument("--client-procs", type=int, default=1, help="load generator processes per phase")
    parser.add_argument("--no-pin", action="store_true")
    parser.add_argument(
        "--profile",
        default="",
        help="scenarios to record sidechat in with py-spy (raw, bench/profile-NAME.txt)",
    )
    parser.add_argument("--out", default=str(BENCH / "results.json"))
    parser.add_argument("--keep", action="store_true", help="keep the relays' logs and databases")
    args = parser.parse_args()
    standard = [t for t in report.TARGETS if t not in report.OPTIONAL]
    args.only = ",".join(filter(None, [args.only or ",".join(standard), args.optional]))
    if unknown := set(args.only.split(",")) - set(report.TARGETS):
        parser.error(f"unknown targets: {', '.join(sorted(unknown))}")
    if args.format != "openai" and "litellm" in args.only:
        parser.error("the litellm row is set up for --format openai")
    if args.server == "app" and (args.loop != "auto" or args.http != "auto"):
        parser.error("--loop/--http need --server uvicorn (python app.py lets uvicorn choose)")
    return args


def main() -> None:
    args = parse_args()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # children inherit it
    chosen = scenarios(args.quick)
    names = [n.strip() for n in args.scenarios.split(",") if n.strip()]
    targets = [t for t in report.TARGETS if t in args.only.split(",")]
    if unknown := set(names) - set(chosen):
        raise SystemExit(f"unknown scenarios: {', '.join(sorted(unknown))}")
    workdir = Path(tempfile.mkdtemp(prefix="sidechat-bench-"))  # logs and databases; kept if a run fails
    bench = Bench(args, workdir)
    meta = describe(bench)
    for key, value in meta.items():
        print(f"{key:>20}: {value}")
    if hard < 12_000 and "idle" in names:
        print(f"warning: open files limited to {hard}; the idle scenario may fail")
    bench.start_fake()
    results: dict[str, Any] = {}
    try:
        for name in names:
            scenario = chosen[name]
            print(f"\n{name}: {scenario.about}", flush=True)
            entry: dict[str, Any] = {"about": scenario.about, "settings": scenario.settings, "targets": {}}
            for target in targets:
                began = time.monotonic()
                entry["targets"][target] = metrics = bench.measure(name, scenario, target)
                errors = sum(m.get("errors", 0) for m in metrics.values() if isinstance(m, dict))
                print(f"  {target:<8} {time.monotonic() - began:5.1f} s, {errors} errors", flush=True)
            derive(entry)
            results[name] = entry
    except BaseException:
        print(f"\nlogs and databases kept in {workdir}", file=sys.stderr)
        raise
    finally:
        assert bench.fake is not None
        stop(bench.fake)
    if args.keep:
        print(f"\nlogs and databases kept in {workdir}")
    else:
        shutil.rmtree(workdir)
    print()
    print(report.table(results))
    Path(args.out).write_text(json.dumps({"meta": meta, "scenarios": results}, indent=1))
    print(f"\nresults written to {os.path.relpath(args.out)}")
    for name in sorted(bench.profiled):
        path = BENCH / f"profile-{name}.txt"
        if path.exists():
            print(f"\npy-spy, sidechat, {name} scenario:\n" + profile_summary.summary(path, 15))


def derive(entry: dict[str, Any]) -> None:
    """What a target adds to `direct` (the client reading the provider itself), per token and,
    one stream at a time, to the first token."""
    targets = entry["targets"]
    for name, path in (
        ("added_p50_ms", "main.token_latency_ms.p50"),
        ("added_ttft_p50_ms", "one.ttft_ms.p50"),
    ):
        direct = report.dig(targets.get("direct"), path)
        for target, metrics in targets.items():
            mine = report.dig(metrics, path)
            if target != "direct" and direct is not None and mine is not None:
                metrics[name] = round(mine - direct, 3)


if __name__ == "__main__":
    main()
