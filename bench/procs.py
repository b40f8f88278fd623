"""What the runner needs from the OS: ports, processes, and their CPU and memory from /proc."""

from __future__ import annotations

import http.client
import importlib.util
import os
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def spawn(command: list[str], log: Path, **options: object) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(command, stdout=out, stderr=out, **options)  # type: ignore[call-overload]


def stop(process: subprocess.Popen[bytes], grace: float = 20) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def healthy(port: int, path: str = "/healthz") -> bool:
    try:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
        connection.request("GET", path)
        return connection.getresponse().status == 200
    except OSError:
        return False


def cpu_seconds(pid: int) -> float:
    """utime + stime of every thread, dead ones included."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def status_kb(pid: int, name: str) -> int:
    """A `kB` line of /proc/<pid>/status: VmRSS, VmHWM."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(name + ":"):
            return int(line.split()[1])
    return 0


class RssSampler(threading.Thread):
    def __init__(self, pid: int, every: float = 0.02) -> None:
        super().__init__(daemon=True)
        self.pid, self.every = pid, every
        self.samples: list[tuple[int, int]] = []  # (CLOCK_MONOTONIC ns, KB)
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.wait(self.every):
            try:
                self.samples.append((time.monotonic_ns(), status_kb(self.pid, "VmRSS")))
            except OSError:
                return

    def stop(self) -> None:
        self.stopping.set()
        self.join()

    def peak(self, start: int = 0, end: int = 2**63) -> int:
        return max((kb for t, kb in self.samples if start <= t <= end), default=0)


def server_stack(loop: str, http: str) -> tuple[str, str]:
    """The event loop and HTTP parser uvicorn will use, `auto` resolved as uvicorn does."""
    if loop == "auto":
        loop = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
    if http == "auto":
        http = "httptools" if importlib.util.find_spec("httptools") else "h11"
    return loop, http


def cpu_list(text: str) -> set[int]:
    """taskset's list format: `0`, `0,2`, `2-3`."""
    cpus: set[int] = set()
    for part in text.split(","):
        low, _, high = part.partition("-")
        cpus.update(range(int(low), int(high or low) + 1))
    return cpus


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "?"


def git(root: Path, *args: str) -> str:
    try:
        return subprocess.run(
            ["git", *args], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "?"
