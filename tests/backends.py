"""The two databases a store test runs on: a SQLite file of the test's own, or a new database
on the session's PostgreSQL (tests/postgres.py). A test that must reach under the store
(to set a time outright, count rows, make the database refuse a write) does it through
`Backend`, in SQL both dialects read, with `?` for each parameter.

A test served over HTTP (the `database` fixture, and `client` in tests/conftest.py) runs on
SQLite alone unless it, or its module, is marked `every_backend`; a test about SQLite itself
(its file, its locking, WAL, the CLI's db commands) inside such a module is marked
`sqlite_only`, so it still runs, once, where it means something.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from chat.config import Settings
from chat.store import Store
from chat.stores import open_database

BACKENDS = ("sqlite", "postgres")

every_backend = pytest.mark.backends(*BACKENDS)
sqlite_only = pytest.mark.backends("sqlite")


def numbered(sql: str) -> str:
    """`?` parameters as Postgres's `$1, $2, ...`."""
    parts = sql.split("?")
    return "".join(part + (f"${n}" if n < len(parts) else "") for n, part in enumerate(parts, start=1))


@dataclass(frozen=True)
class Backend:
    kind: str  # "sqlite" or "postgres"
    db: str  # what SIDECHAT_DB would be: the file's path or the database's URL

    async def open(self) -> Store:
        """The store, opened as sidechat opens it (chat.stores)."""
        return await open_database(Settings(db=self.db))

    async def execute(self, sql: str, *args: Any) -> None:
        """A statement run beside the store, on a connection of its own."""
        if self.kind == "sqlite":
            with sqlite3.connect(self.db) as db:
                db.execute(sql, args)
            return
        connection = await asyncpg.connect(self.db)
        try:
            await connection.execute(numbered(sql), *args)
        finally:
            await connection.close()

    async def scalar(self, sql: str, *args: Any) -> Any:
        """The first column of the first row of a query run beside the store."""
        if self.kind == "sqlite":
            with sqlite3.connect(self.db) as db:
                return db.execute(sql, args).fetchone()[0]
        connection = await asyncpg.connect(self.db)
        try:
            return await connection.fetchval(numbered(sql), *args)
        finally:
            await connection.close()

    async def refuse_marks(self, role: str) -> None:
        """From now on the database refuses to change the metadata of a `role` message."""
        if self.kind == "sqlite":
            await self.execute(
                "CREATE TRIGGER refuse_mark BEFORE UPDATE OF metadata ON messages"
                f" WHEN NEW.role = '{role}' BEGIN SELECT RAISE(ABORT, 'refused'); END"
            )
            return
        await self.execute(
            "CREATE FUNCTION refuse_mark() RETURNS trigger LANGUAGE plpgsql AS"
            " $$ BEGIN RAISE EXCEPTION 'refused'; END; $$"
        )
        await self.execute(
            "CREATE TRIGGER refuse_mark BEFORE UPDATE OF metadata ON messages"
            f" FOR EACH ROW WHEN (NEW.role = '{role}') EXECUTE FUNCTION refuse_mark()"
        )

    @property
    def refused(self) -> type[Exception]:
        """What a statement the database refuses (as `refuse_marks` makes it) raises."""
        return sqlite3.IntegrityError if self.kind == "sqlite" else asyncpg.RaiseError


@contextmanager
def new_backend(
    kind: str, directory: Path, request: pytest.FixtureRequest, *, schema: bool = False
) -> Iterator[Backend]:
    """A database of a test's own: a SQLite file in `directory`, or a new database on the
    session's PostgreSQL (the `postgres` fixture), dropped after; with `schema`, a Postgres
    one has sidechat's schema already (tests/postgres.py), as a served test needs."""
    if kind == "sqlite":
        yield Backend("sqlite", str(directory / "chat.db"))
        return
    server = request.getfixturevalue("postgres")
    url = server.database(schema=schema)
    try:
        yield Backend("postgres", url)
    finally:
        server.drop(url)
