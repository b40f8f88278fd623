"""A real PostgreSQL (Debian's `postgresql` package) for the tests: one server per test
session in a throwaway directory on a loopback port, a new database for each test.

Postgres refuses to run as root, so as root (CI, this machine) the server runs as the
`postgres` user the package creates, or `nobody` where there is none, through `setpriv`;
its directory is made theirs. It listens on 127.0.0.1 only, with `trust` authentication
for the superuser `postgres` (nothing but this machine can reach it), and without fsync:
a test's data need not survive a power cut, and the suite runs faster.
"""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from tests.processes import free_port

MISSING = "PostgreSQL's server is not installed: apt-get install postgresql (it provides {})"


def bindir() -> Path:
    """Where the server's programs are: on PATH, else Debian's /usr/lib/postgresql/N/bin."""
    found = shutil.which("postgres")
    if found:
        return Path(found).resolve().parent
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"), key=lambda p: int(p.split("/")[4]))
    if not versions:
        raise AssertionError(MISSING.format("postgres, initdb"))
    return Path(versions[-1]).parent


def _owner() -> str | None:
    """Whom the server runs as: None (ourselves) unless we are root."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
        except KeyError:
            continue
        return name
    raise AssertionError("no unprivileged user (postgres or nobody) to run PostgreSQL as")


def _as(user: str) -> list[str]:
    """The command prefix that runs a program as `user`: setpriv execs it in our place, so
    the server is our child itself and our signals reach it (runuser would stand between)."""
    entry = pwd.getpwnam(user)
    return ["setpriv", f"--reuid={entry.pw_uid}", f"--regid={entry.pw_gid}", "--clear-groups", "--"]


@dataclass
class Postgres:
    """A running server; `database()` makes a new empty database and answers its URL."""

    bin: Path
    port: int
    process: subprocess.Popen[bytes]
    log: Path
    _names: Iterator[int] = field(default_factory=itertools.count)

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}"

    def _client(self, program: str, *args: str) -> None:
        done = subprocess.run(
            [str(self.bin / program), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", *args],
            capture_output=True,
            timeout=60,
        )
        if done.returncode != 0:
            raise AssertionError(f"{program} {' '.join(args)} failed: {done.stderr.decode(errors='replace')}")

    def database(self) -> str:
        name = f"test_{os.getpid()}_{next(self._names)}"
        self._client("createdb", "-T", "template0", "-E", "UTF8", name)
        return f"{self.url}/{name}"

    def drop(self, url: str) -> None:
        self._client("dropdb", "--force", url.rpartition("/")[2])

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def _ready(server: Postgres) -> bool:
    if server.process.poll() is not None:
        raise AssertionError(f"postgres exited with {server.process.returncode}:\n{server.output()}")
    probe = [str(server.bin / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(server.port)]
    return subprocess.run(probe, timeout=10).returncode == 0


@contextmanager
def postgres_server(timeout: float = 60.0) -> Iterator[Postgres]:
    """A new cluster (initdb) and its server, stopped (fast shutdown) and removed after."""
    bin = bindir()
    for program in ("initdb", "postgres", "pg_isready", "createdb", "dropdb"):
        if not (bin / program).exists():
            raise AssertionError(MISSING.format(program))
    owner = _owner()
    as_owner = _as(owner) if owner else []
    home = Path(tempfile.mkdtemp(prefix="sidechat-pg-"))
    if owner:
        shutil.chown(home, owner, pwd.getpwnam(owner).pw_gid)
    data, log = home / "data", home / "postgres.log"
    try:
        made = subprocess.run(
            [*as_owner, str(bin / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust"]
            + ["-E", "UTF8", "--locale=C.UTF-8", "-N"],
            capture_output=True,
            timeout=120,
        )
        if made.returncode != 0:
            raise AssertionError(f"initdb failed: {made.stdout.decode()}{made.stderr.decode()}")
        port = free_port()
        settings = ["-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"]
        with log.open("wb") as output:
            process = subprocess.Popen(
                [*as_owner, str(bin / "postgres"), "-D", str(data), "-p", str(port)]
                + ["-k", str(home), "-h", "127.0.0.1", *settings],
                stdout=output,
                stderr=subprocess.STDOUT,
            )
        server = Postgres(bin, port, process, log)
        try:
            deadline = time.monotonic() + timeout
            while not _ready(server):
                if time.monotonic() > deadline:
                    raise AssertionError(f"postgres did not accept connections:\n{server.output()}")
                time.sleep(0.05)  # a poll's interval: the fact waited for is pg_isready's answer
            yield server
        finally:
            stop(server)
    finally:
        shutil.rmtree(home, ignore_errors=True)


def stop(server: Postgres) -> None:
    """A fast shutdown (SIGINT: clients are disconnected), waited for."""
    if server.process.poll() is None:
        server.process.send_signal(signal.SIGINT)
        try:
            server.process.wait(30)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait(10)
