"""A real redis-server (Debian's `redis-server`) for the scale bench, as tests/redis_server.py
starts one for the tests: on a free loopback port, in a directory of its own, nothing persisted.

It is not that module's fixture because the bench runs without pytest; the command line is the
same, so what is measured is what the tests exercise.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

from procs import free_port, spawn, stop

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


class RedisProcess:
    def __init__(self, directory: Path, pinned: list[str]) -> None:
        self.directory, self.pinned = directory, pinned  # pinned: a taskset prefix, or []
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self) -> None:
        if not Path(REDIS_SERVER).exists():
            raise SystemExit(f"{REDIS_SERVER} is missing: install Debian's redis-server package")
        command = [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1"]
        command += ["--save", "", "--appendonly", "no", "--dir", str(self.directory)]
        self.process = spawn(self.pinned + command, self.directory / "redis.log")
        deadline = time.monotonic() + 10
        while not self.answers():
            if self.process.poll() is not None or time.monotonic() > deadline:
                log = (self.directory / "redis.log").read_text(errors="replace")
                raise SystemExit(f"redis-server did not start:\n{log}")
            time.sleep(0.01)

    def stop(self) -> None:
        if self.process is not None:
            stop(self.process)
            self.process = None

    def answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(7) == b"+PONG\r\n"
        except OSError:
            return False

    def wait_ended(self, prefix: str, at_least: int, deadline: float = 120) -> int:
        """Wait until every topic stream under `prefix` has its `end` entry and there are at
        least `at_least` of them: sidechat has copied everything to Redis. CLOCK_MONOTONIC ns
        when it had."""
        from redis import Redis  # the scale extra's; sidechat itself needs it for this bench

        client = Redis(port=self.port)
        ended: set[bytes] = set()  # looked at once each: this wait's own cost stays small
        try:
            give_up = time.monotonic() + deadline
            while True:
                keys = [k for k in client.scan_iter(match=f"{prefix}topic:*", count=1000) if k not in ended]
                pipe = client.pipeline(transaction=False)
                for key in keys:
                    pipe.xrevrange(key, count=1)
                for key, last in zip(keys, pipe.execute(), strict=True):
                    if last and b"end" in last[0][1]:
                        ended.add(key)
                if len(ended) >= at_least and len(keys) == len(ended & set(keys)):
                    return time.monotonic_ns()
                if time.monotonic() > give_up:
                    raise SystemExit(f"sidechat had not copied its topics to Redis within {deadline:g} s")
                time.sleep(0.02)
        finally:
            client.close()

    def keys(self) -> int:
        """How many keys it holds (DBSIZE): the bench's streams were really written."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as sock:
            sock.sendall(b"DBSIZE\r\n")
            reply = sock.recv(64)
        return int(reply[1:].split(b"\r\n")[0])
