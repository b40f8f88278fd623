"""A real PostgreSQL (Debian's `postgresql` package) for the tests: one server per test
session in a throwaway directory on a loopback port, a new database for each test.

Postgres refuses to run as root, so as root (CI, this machine) the server runs as the
`postgres` user the package creates, or `nobody` where there is none, through `setpriv`;
its directory is made theirs. It listens on 127.0.0.1 only, with `trust` authentication
for the superuser `postgres` (nothing but this machine can reach it), and without fsync:
a test's data need not survive a power cut, and the suite runs faster.

A test's database is cheap: one admin connection, kept for the session on an event loop of
its own thread, runs each CREATE DATABASE (a new connection's first one costs ~250 ms, a
kept one's ~25 ms), and `database(schema=True)` copies a template that sidechat's schema
was applied to once, so a served test does not apply it again.
"""

from __future__ import annotations

import asyncio
import glob
import itertools
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import asyncpg

from chat.config import Settings
from chat.stores import open_database
from tests.processes import free_port

T = TypeVar("T")

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
    """A server on its own cluster; `database()` makes a new empty database and answers its
    URL. `stop()` and `start()` take it down and bring it back on the same port and data."""

    bin: Path
    home: Path
    port: int
    as_owner: list[str]
    process: subprocess.Popen[bytes] | None = None
    _names: Iterator[int] = field(default_factory=itertools.count)
    _loop: asyncio.AbstractEventLoop | None = None
    _admin: Any = None  # asyncpg.Connection, opened on `_loop` by the first `database()`
    _template: str | None = None
    _thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}"

    @property
    def log(self) -> Path:
        return self.home / "postgres.log"

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def start(self, timeout: float = 60.0) -> None:
        """Start the server and wait until it accepts connections."""
        settings = ["-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"]
        with self.log.open("ab") as output:
            self.process = subprocess.Popen(
                [*self.as_owner, str(self.bin / "postgres"), "-D", str(self.home / "data")]
                + ["-p", str(self.port), "-k", str(self.home), "-h", "127.0.0.1", *settings],
                stdout=output,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while not self._ready():
            if time.monotonic() > deadline:
                raise AssertionError(f"postgres did not accept connections:\n{self.output()}")
            time.sleep(0.05)  # a poll's interval: the fact waited for is pg_isready's answer

    def _ready(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"postgres exited with {self.process.returncode}:\n{self.output()}")
        probe = [str(self.bin / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(self.port)]
        return subprocess.run(probe, timeout=10).returncode == 0

    def stop(self) -> None:
        """A fast shutdown (SIGINT: clients are disconnected), waited for."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)  # setpriv exec'd it: the signal is its own
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)

    def _client(self, program: str, *args: str) -> None:
        done = subprocess.run(
            [str(self.bin / program), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", *args],
            capture_output=True,
            timeout=60,
        )
        if done.returncode != 0:
            raise AssertionError(f"{program} {' '.join(args)} failed: {done.stderr.decode(errors='replace')}")

    def _run(self, work: Coroutine[Any, Any, T]) -> T:
        """`work` run on the admin loop's thread, waited for from whatever thread calls."""
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
            self._thread = threading.Thread(target=self._loop.run_forever, name="postgres-admin", daemon=True)
            self._thread.start()
        return asyncio.run_coroutine_threadsafe(work, self._loop).result(60)

    async def _admin_execute(self, sql: str) -> None:
        if self._admin is None or self._admin.is_closed():
            self._admin = await asyncpg.connect(f"{self.url}/postgres")
        await self._admin.execute(sql)

    def _create(self, name: str, template: str) -> str:
        self._run(self._admin_execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}" ENCODING \'UTF8\''))
        return f"{self.url}/{name}"

    def database(self, *, schema: bool = False) -> str:
        """A new database's URL: empty, or with `schema` a copy of one sidechat's schema was
        applied to (made the first time one is asked for)."""
        name = f"test_{os.getpid()}_{next(self._names)}"
        if not schema:
            return self._create(name, "template0")
        if self._template is None:
            self._template = self._run(self._schema_template())
        return self._create(name, self._template)

    async def _schema_template(self) -> str:
        name = f"sidechat_template_{os.getpid()}"
        await self._admin_execute(f"CREATE DATABASE \"{name}\" TEMPLATE template0 ENCODING 'UTF8'")
        store = await open_database(Settings(db=f"{self.url}/{name}"))
        await store.close()
        return name

    def drop(self, url: str) -> None:
        name = url.rpartition("/")[2]
        self._run(self._admin_execute(f'DROP DATABASE "{name}" WITH (FORCE)'))

    def close_admin(self) -> None:
        """Close the admin connection and stop its loop (before the server stops)."""
        if self._loop is None:
            return
        if self._admin is not None and not self._admin.is_closed():
            self._run(self._admin.close(timeout=10))
        self._loop.call_soon_threadsafe(self._loop.stop)
        assert self._thread is not None
        self._thread.join(10)
        self._loop.close()
        self._loop = self._admin = self._thread = None


@contextmanager
def postgres_server() -> Iterator[Postgres]:
    """A new cluster (initdb) and its server, stopped and removed after."""
    bin = bindir()
    for program in ("initdb", "postgres", "pg_isready", "createdb", "dropdb"):
        if not (bin / program).exists():
            raise AssertionError(MISSING.format(program))
    owner = _owner()
    as_owner = _as(owner) if owner else []
    home = Path(tempfile.mkdtemp(prefix="sidechat-pg-"))
    if owner:
        shutil.chown(home, owner, pwd.getpwnam(owner).pw_gid)
    try:
        made = subprocess.run(
            [*as_owner, str(bin / "initdb"), "-D", str(home / "data"), "-U", "postgres", "--auth=trust"]
            + ["-E", "UTF8", "--locale=C.UTF-8", "-N"],
            capture_output=True,
            timeout=120,
        )
        if made.returncode != 0:
            raise AssertionError(f"initdb failed: {made.stdout.decode()}{made.stderr.decode()}")
        server = Postgres(bin, home, free_port(), as_owner)
        try:
            server.start()
            yield server
        finally:
            server.close_admin()
            server.stop()
    finally:
        shutil.rmtree(home, ignore_errors=True)
