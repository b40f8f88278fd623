"""Whether this process should be sent traffic: `GET /readyz`.

Liveness (`/healthz`) asks only that the process answers and can read. Readiness
asks more, each time, of the real thing rather than a remembered flag: that a
write goes through (on a connection of its own that waits for a foreign lock
only briefly, so the answer is quick), that no reply is waiting in memory for
a write the database refused, and that the file the store has open is still
the one at its path (a deleted directory or a replaced file would otherwise
take every later write with it, silently). `deep` adds SQLite's quick check,
which reads the whole file: it runs at most once a minute, however often it is
asked (the probes are open to anyone), and its verdict is kept in between.

With SIDECHAT_STORE=none there is no database to ask anything of, and no write
that could be refused: no `Readiness` is made, and a process that answers is ready.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

import aiosqlite

from .database import reason_of
from .keeping import Keeper
from .store import now

PROBE_BUSY_MS = 250
DEEP_EVERY = 60.0  # seconds


def _identity(path: str) -> tuple[int, int] | None:
    try:
        found = os.stat(path)
    except OSError:
        return None
    return found.st_dev, found.st_ino


class Readiness:
    def __init__(
        self,
        path: str,
        probe: aiosqlite.Connection,
        keeper: Keeper,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._path = path
        self._probe = probe
        self._keeper = keeper
        self._identity = _identity(path)
        self._clock = clock
        self._deep: tuple[float, str] | None = None  # (when, verdict) of the last quick check

    @classmethod
    async def open(cls, path: str, keeper: Keeper) -> Readiness | None:
        """After the store has opened (and so created) the database at `path`; None for an
        in-memory database, which a second connection could not see."""
        if path == ":memory:" or path.startswith("file:"):
            return None
        probe = await aiosqlite.connect(path, isolation_level=None)
        try:
            await probe.execute(f"PRAGMA busy_timeout = {PROBE_BUSY_MS}")
            await probe.execute("PRAGMA synchronous = NORMAL")  # as the store's: no fsync per probe
        except BaseException:
            await probe.close()
            raise
        return cls(path, probe, keeper)

    async def close(self) -> None:
        await self._probe.close()

    async def problem(self, *, deep: bool = False) -> str | None:
        """Why this process should not get traffic now, or None."""
        if self._identity is not None:
            now_there = _identity(self._path)
            if now_there is None:
                return f"the database file {Path(self._path)} was deleted: new writes would be lost"
            if now_there != self._identity:
                return f"the database file {Path(self._path)} was replaced by another file"
        if self._keeper.pending:
            return f"{self._keeper.pending} replies are waiting for the database to take their final write"
        try:
            await self._probe.execute(
                "INSERT INTO readiness (id, checked_at) VALUES (1, :now)"
                " ON CONFLICT (id) DO UPDATE SET checked_at = excluded.checked_at",
                {"now": now()},
            )
            if deep and (verdict := await self._quick_check()) != "ok":
                return f"the database failed its integrity check: {verdict[:500]}"
        except sqlite3.OperationalError as exc:
            return f"the database cannot be written: {reason_of(exc)}"
        except sqlite3.Error as exc:
            return f"the database cannot be used: {exc}"
        return None

    async def _quick_check(self) -> str:
        now = self._clock()
        if self._deep is None or now - self._deep[0] >= DEEP_EVERY:
            rows = list(await self._probe.execute_fetchall("PRAGMA quick_check"))
            self._deep = (now, "; ".join(str(row[0]) for row in rows))
        return self._deep[1]
