"""The PostgreSQL database, when SIDECHAT_DB is a `postgresql://` URL: opening it (a pool of
asyncpg connections, the schema, start-up errors in one line), and what its errors mean to
the store's callers -- the same `StorageFailed` and `StartupError` as SQLite's.

Deliberate choices:
- A pool, not one writer: Postgres takes concurrent writers (its row locks order them), and
  several processes share it anyway. Each statement is sent on its own, autocommitted, as on
  SQLite: no transaction is held across awaits.
- `schema_pg.sql` is the whole schema, applied at every start-up in one transaction under
  an advisory lock, so processes starting together apply it once each, one after another
  (concurrent `CREATE ... IF NOT EXISTS` can fail in Postgres). Its version is a row in
  `schema_version`, the twin of SQLite's `PRAGMA user_version`; a database newer than this
  code is refused, as `chat.upgrades` refuses one on SQLite. `STEPS` is empty so far: a
  change that `IF NOT EXISTS` cannot make appends one, as on SQLite.
- An error that can pass (the server unreachable, restarting, refusing connections, out of
  disk, read-only, a statement cancelled by the timeout) is a `StorageFailed` with a reason
  in words, on reads too, so routes answer 503 `storage_unavailable` and the next request
  tries again: the pool replaces a broken connection by itself, so no restart is needed.
- Postgres text holds no NUL character (SQLite's does), so one is sent as U+FFFD.
- The URL is shown without its password in every message.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import asyncpg  # type: ignore[import-untyped]  # it ships no types

from .database import StorageFailed
from .errors import StartupError
from .resources import resource
from .stores import shown
from .telemetry import NOTHING, Telemetry
from .upgrades import TooNew

T = TypeVar("T")
log = logging.getLogger("sidechat")

LOCK = 0x51DEC4A7  # the advisory lock that start-ups take in turn to apply the schema
Step = Callable[[asyncpg.Connection], Awaitable[None]]  # what `IF NOT EXISTS` cannot do
STEPS: tuple[Step, ...] = ()  # the steps to version 2, 3, ...: none yet
LATEST = 1 + len(STEPS)
# What a statement raises when the database is unreachable, gone or refusing.
FAILURES = (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError)
# What the first two characters of an SQLSTATE say of a failure that can pass.
_PASSING = {
    "08": "the connection to the database was lost",
    "53": "the database is out of resources (disk, memory or connections)",
    "57": "the database is shutting down or restarting",
    "58": "the database had an I/O error",
    "40": "the database gave up a write that conflicted with another",
}


def reason_of(exc: BaseException) -> str | None:
    """What a failure that can pass means, in words for a user; None for any other (a bug)."""
    if isinstance(exc, TimeoutError):
        return "the database did not answer in time"
    if isinstance(exc, OSError):
        return f"the database cannot be reached ({_why(exc)})"
    if isinstance(exc, asyncpg.InterfaceError):
        return f"the connection to the database cannot be used ({exc})"
    if isinstance(exc, asyncpg.PostgresError):
        state = exc.sqlstate or ""
        if state == "25006":
            return "the database is read-only"
        if state == "53100":
            return "the database's disk is full"
        if state[:2] in _PASSING:
            return f"{_PASSING[state[:2]]} ({exc})"
    return None


def _why(exc: OSError) -> str:
    """An OS error in words: "Connection refused", not asyncio's "Connect call failed"."""
    return os.strerror(exc.errno) if exc.errno else str(exc) or type(exc).__name__


def text(value: str) -> str:
    """Text Postgres can hold: a NUL becomes U+FFFD."""
    return value.replace("\x00", "\ufffd") if "\x00" in value else value


def _scrubbed(value: Any) -> Any:
    if isinstance(value, str):
        return text(value)
    if isinstance(value, dict):
        return {text(k): _scrubbed(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_scrubbed(v) for v in value]
    return value


def encode_json(value: Any) -> str:
    """A jsonb parameter; jsonb refuses `\\u0000`, so a NUL in it becomes U+FFFD too."""
    out = json.dumps(value)
    return json.dumps(_scrubbed(value)) if "\\u0000" in out else out


async def _prepare(connection: asyncpg.Connection) -> None:
    """Each new connection of the pool: jsonb columns are Python dicts both ways."""
    await connection.set_type_codec("jsonb", encoder=encode_json, decoder=json.loads, schema="pg_catalog")


async def apply_schema(connection: asyncpg.Connection, schema: str, steps: Sequence[Step] = STEPS) -> int:
    """Bring the database to its newest version (1 + the steps); answers the version it had
    (0: new). `TooNew` when another sidechat made it newer; a failure changes nothing (one
    transaction). A step runs only on a database older than it, before `schema`."""
    latest = 1 + len(steps)
    async with connection.transaction():
        await connection.execute("SELECT pg_advisory_xact_lock($1)", LOCK)
        exists = await connection.fetchval("SELECT to_regclass('schema_version') IS NOT NULL")
        found = int(await connection.fetchval("SELECT version FROM schema_version") or 0) if exists else 0
        if found > latest:
            raise TooNew(found, latest)
        if found:
            for step in steps[found - 1 :]:
                await step(connection)
        await connection.execute(schema)
        await connection.execute(
            "INSERT INTO schema_version (id, version) VALUES (1, $1)"
            " ON CONFLICT (id) DO UPDATE SET version = excluded.version",
            latest,
        )
    if found and found < latest:
        log.info("database schema upgraded from version %d to %d", found, latest)
    return found


def opening_error(url: str, exc: BaseException) -> StartupError:
    """Why the database at `url` could not be opened, in one line."""
    where = f"the PostgreSQL database {shown(url)} (SIDECHAT_DB or --db)"
    if isinstance(exc, TooNew):
        return StartupError(f"{where} has {exc}: it was upgraded by a newer sidechat; run that one")
    if isinstance(exc, TimeoutError):
        return StartupError(f"cannot reach {where}: it did not answer in time")
    if isinstance(exc, OSError):
        return StartupError(f"cannot reach {where}: {_why(exc)}")
    if isinstance(exc, asyncpg.InvalidAuthorizationSpecificationError | asyncpg.InvalidPasswordError):
        return StartupError(f"{where} refused the connection: {exc}")
    if isinstance(exc, asyncpg.InvalidCatalogNameError):
        return StartupError(f"cannot use {where}: {exc}")
    if isinstance(exc, asyncpg.ClientConfigurationError | ValueError):
        return StartupError(f"{where} is not a usable postgresql:// URL: {exc}")
    return StartupError(f"cannot use {where}: {reason_of(exc) or exc}")


class PgDatabase:
    """The pool every statement of `chat.pg_store` goes through; a statement the database
    refuses for now is a `StorageFailed` (see above)."""

    def __init__(self, pool: asyncpg.Pool, telemetry: Telemetry = NOTHING) -> None:
        self._pool = pool
        self._telemetry = telemetry  # times each write

    @classmethod
    async def open(cls, url: str, *, timeout: float = 10.0, telemetry: Telemetry = NOTHING) -> PgDatabase:
        """The database at `url` with its schema up to date; a `StartupError` saying why not.
        `timeout` bounds the connecting and each statement, as `busy_timeout` does on SQLite."""
        schema = resource("schema_pg.sql").read_text()
        try:
            pool = await asyncpg.create_pool(
                url, min_size=1, max_size=10, timeout=timeout, command_timeout=timeout, init=_prepare
            )
        except (*FAILURES, ValueError) as exc:
            raise opening_error(url, exc) from None
        try:
            async with pool.acquire() as connection:
                await apply_schema(connection, schema)
        except BaseException as exc:
            await pool.close()
            if isinstance(exc, (TooNew, *FAILURES)):
                raise opening_error(url, exc) from None
            raise
        return cls(pool, telemetry)

    async def close(self) -> None:
        await self._pool.close()

    async def _run(self, call: Callable[[], Awaitable[T]]) -> T:
        try:
            return await call()
        except FAILURES as exc:
            reason = reason_of(exc)
            if reason is None:
                raise
            raise StorageFailed(reason) from exc

    async def rows(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        """A read's rows."""
        return await self._run(lambda: self._pool.fetch(sql, *_texts(args)))

    async def written(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        """A write's RETURNING rows."""
        with self._telemetry.db_write(sql):
            return await self._run(lambda: self._pool.fetch(sql, *_texts(args)))

    async def write(self, sql: str, *args: Any, timeout: float | None = None) -> int:
        """A write's row count; `timeout` in place of the pool's for this one statement."""
        with self._telemetry.db_write(sql):
            status = await self._run(lambda: self._pool.execute(sql, *_texts(args), timeout=timeout))
        return int(status.rpartition(" ")[2])

    async def ping(self) -> bool:
        try:
            return bool(await self._pool.fetchval("SELECT 1", timeout=5) == 1)
        except FAILURES:
            return False


def _texts(args: Sequence[Any]) -> list[Any]:
    return [text(a) if isinstance(a, str) else a for a in args]
