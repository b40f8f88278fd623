"""The SQLite database: opening it (its settings, the schema, start-up errors in plain
words), and what its errors mean to the store's callers.

Deliberate choices:
- WAL mode, so readers (other tools, backups) never block the writer, and
  `synchronous=NORMAL`, which in WAL mode is still safe against corruption.
- `schema.sql` is the whole schema of a new database; an older one is upgraded to it
  by numbered steps (`chat.upgrades`), and one newer than this code is refused.
- A new database takes `auto_vacuum = INCREMENTAL` (it must precede the first table,
  and WAL's header), so `sidechat prune` can give space back while the server runs.
- A connection whose set-up fails is closed before the error goes up: aiosqlite
  runs each connection on a thread of its own, and a thread left running keeps
  the process from ever exiting.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiosqlite

from .errors import StartupError
from .resources import resource
from .telemetry import NOTHING, Telemetry
from .upgrades import TooNew, upgrade


def stamp(moment: datetime) -> str:
    """A time as every timestamp column holds it: UTC, milliseconds, a `Z`; so they sort as text."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def now() -> str:
    """Now, as a timestamp column holds it."""
    return stamp(datetime.now(UTC))


class StoreError(Exception):
    """A write the store could not make, in its own terms."""


class ConversationGone(StoreError):
    """The conversation a write needs was deleted meanwhile."""


class KeyTaken(StoreError):
    """Another turn holds this idempotency key already (a twin request won the race)."""


class NotLatest(StoreError):
    """The message a write would replace is not its conversation's newest of its kind any more,
    or its reply is still streaming: another request changed the conversation first."""


class StorageFailed(StoreError):
    """A write that failed for a reason that can pass: a lock held elsewhere, a full disk,
    a read-only file, an I/O error. `reason` says which, in words for a user."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def reason_of(exc: sqlite3.OperationalError) -> str:
    """What a failed write's error means, in words for a user."""
    text = str(exc).lower()
    if "locked" in text or "busy" in text:
        return "the database is locked by another process"
    if "full" in text:
        return "the disk is full"
    if "readonly" in text or "read-only" in text:
        return "the database is read-only"
    if "i/o" in text:
        return "the disk could not be written (I/O error)"
    return f"the database could not be written ({exc})"


async def connect(path: str, *, busy_timeout: float = 10.0) -> aiosqlite.Connection:
    """A connection to the database brought up to date; a `StartupError` that says why when it
    cannot be had (a database newer than this code among them)."""
    schema = resource("schema.sql").read_text()
    try:
        # Opened once here first (start-up only, so blocking is fine): aiosqlite, when its own
        # open fails, leaves its thread to finish on a loop that may be closed by then.
        sqlite3.connect(path).close()
        db = await aiosqlite.connect(path, isolation_level=None)
    except sqlite3.Error as exc:
        raise opening_error(path, exc) from None
    try:
        db.row_factory = sqlite3.Row
        # A short foreign lock (a backup, `sqlite3` in a shell) is waited out, not failed.
        await db.execute(f"PRAGMA busy_timeout = {round(busy_timeout * 1000)}")
        await db.execute("PRAGMA auto_vacuum = INCREMENTAL")  # a new database only: see above
        await db.execute("PRAGMA journal_mode = WAL")
        await db.execute("PRAGMA synchronous = NORMAL")
        await db.execute("PRAGMA foreign_keys = ON")
        await upgrade(db, schema)
    except BaseException as exc:
        await db.close()
        if isinstance(exc, sqlite3.Error):
            raise opening_error(path, exc) from None
        if isinstance(exc, TooNew):
            raise StartupError(
                f"the database {path} (SIDECHAT_DB or --db) has {exc}: it was upgraded by a newer"
                " sidechat; run that one, or restore a backup made before the upgrade"
            ) from None
        raise
    return db


async def connect_reader(path: str) -> aiosqlite.Connection | None:
    """A second connection for reads, after `connect`; None for an in-memory database, which a
    second connection could not see."""
    if path == ":memory:" or path.startswith("file:"):
        return None
    db = await aiosqlite.connect(path, isolation_level=None)
    try:
        db.row_factory = sqlite3.Row
        await db.execute("PRAGMA query_only = ON")
        await db.execute("PRAGMA busy_timeout = 1000")  # reads wait only for WAL recovery
    except BaseException:
        await db.close()
        raise
    return db


def opening_error(path: str, exc: sqlite3.Error) -> StartupError:
    """Why the database at `path` could not be opened, in one line."""
    where = f"the database {path} (SIDECHAT_DB or --db)"
    reason = str(exc)
    if "not a database" in reason:
        return StartupError(f"{where} is not a SQLite database")
    if "unable to open" in reason:
        parent = Path(path).resolve().parent
        if not parent.is_dir():
            return StartupError(f"cannot open {where}: the directory {parent} does not exist")
        return StartupError(f"cannot open {where}: its directory or the file cannot be written")
    if "readonly" in reason:
        return StartupError(f"cannot write to {where}: it is read-only")
    if "locked" in reason:
        return StartupError(f"cannot use {where}: it is locked by another process")
    return StartupError(f"cannot use {where}: {reason}")


class Database:
    """The writer and the reader connections; a write the database refuses for now is a
    `StorageFailed`, whose reason is in words for a user."""

    def __init__(
        self,
        writer: aiosqlite.Connection,
        reader: aiosqlite.Connection | None,
        telemetry: Telemetry = NOTHING,
    ) -> None:
        self._writer = writer
        self._reader = reader or writer
        self._telemetry = telemetry  # times each write

    @classmethod
    async def open(cls, path: str, *, busy_timeout: float = 10.0, telemetry: Telemetry = NOTHING) -> Database:
        writer = await connect(path, busy_timeout=busy_timeout)
        try:
            return cls(writer, await connect_reader(path), telemetry)
        except BaseException:
            await writer.close()
            raise

    async def close(self) -> None:
        if self._reader is not self._writer:
            await self._reader.close()
        await self._writer.close()

    async def rows(self, sql: str, parameters: dict[str, Any]) -> list[sqlite3.Row]:
        """A read's rows."""
        found: Iterable[sqlite3.Row] = await self._reader.execute_fetchall(sql, parameters)
        return list(found)

    async def written(self, sql: str, parameters: dict[str, Any]) -> list[sqlite3.Row]:
        """A write's RETURNING rows."""
        try:
            with self._telemetry.db_write(sql):
                found: Iterable[sqlite3.Row] = await self._writer.execute_fetchall(sql, parameters)
        except sqlite3.OperationalError as exc:
            raise StorageFailed(reason_of(exc)) from exc
        return list(found)

    async def write(self, sql: str, parameters: dict[str, Any]) -> int:
        """A write's row count."""
        try:
            with self._telemetry.db_write(sql):
                cursor = await self._writer.execute(sql, parameters)
        except sqlite3.OperationalError as exc:
            raise StorageFailed(reason_of(exc)) from exc
        return cursor.rowcount

    async def ping(self) -> bool:
        try:
            found = await self.rows("SELECT 1", {})
        except (sqlite3.Error, ValueError):  # ValueError: the connection is closed
            return False
        return len(found) == 1 and found[0][0] == 1
