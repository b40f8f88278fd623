"""Schema versions: a new database gets `schema.sql` whole; an older one is brought up to date
by numbered steps, at every start-up, before anything else touches it.

A change to the schema is one `Step` appended to `STEPS` (its number is the next version)
and the new objects in `schema.sql`.

Deliberate choices:
- The version is SQLite's own `PRAGMA user_version` (in the file's header): no table of ours
  to create first, and `sqlite3 chat.db 'PRAGMA user_version'` tells an operator.
- `schema.sql` stays the whole schema and makes a new database at the newest version in one
  go. A step does only what `CREATE ... IF NOT EXISTS` cannot do to an older database: add a
  column to a table that exists, move data. A step that adds an index or a table needs no
  code: `schema.sql` runs after the steps, in the same transaction, and adds it.
- The whole upgrade, `schema.sql` included, is one `BEGIN IMMEDIATE` transaction (SQLite's
  DDL is transactional): two processes starting at once upgrade once (the second waits, then
  finds the new version), and a step that fails leaves the database as it was. That is why
  `schema.sql` is run a statement at a time here: `executescript` commits first.
- A database newer than this code is refused: this code cannot know what the newer steps
  changed, and the rows it writes could break what they rely on.
- Version 0 is every database made before versions were recorded (sidechat 0.2.0 and
  older); version 1 is what `schema.sql` made then.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass

import aiosqlite

log = logging.getLogger("sidechat")

Change = Callable[[aiosqlite.Connection], Awaitable[None]]


async def _nothing(db: aiosqlite.Connection) -> None:
    """For a step whose objects `schema.sql` adds by itself."""


@dataclass(frozen=True)
class Step:
    version: int  # what the database is once the step is done
    why: str
    change: Change = _nothing


def add_columns(*columns: tuple[str, str, str]) -> Change:
    """A change adding each (table, column, declaration) a table made before it lacks."""

    async def change(db: aiosqlite.Connection) -> None:
        for table, column, declaration in columns:
            present = {row[1] for row in await db.execute_fetchall(f"PRAGMA table_info({table})")}
            if present and column not in present:  # no table at all: schema.sql makes it whole
                await db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {declaration}")

    return change


STEPS: tuple[Step, ...] = (
    Step(
        1,
        "the columns messages gained before versions were recorded",
        add_columns(("messages", "request_hash", "TEXT"), ("messages", "user_id", "TEXT")),
    ),
    Step(2, "an index of replies by the time they ended, for usage between two times"),
)
LATEST = STEPS[-1].version


class TooNew(Exception):
    """The database was upgraded by a newer sidechat than this one."""

    def __init__(self, found: int, known: int) -> None:
        super().__init__(f"schema version {found}, newer than this sidechat knows ({known})")
        self.found = found
        self.known = known


def statements(script: str) -> Iterator[str]:
    """The statements of an SQL script, one at a time (a trigger's body stays whole)."""
    pending = ""
    for line in script.splitlines(keepends=True):
        pending += line
        if sqlite3.complete_statement(pending):
            yield pending.strip()
            pending = ""
    if any(line.strip() and not line.strip().startswith("--") for line in pending.splitlines()):
        raise ValueError(f"the script ends in the middle of a statement: {pending.strip()[:80]!r}")


async def version_of(db: aiosqlite.Connection) -> int:
    rows = list(await db.execute_fetchall("PRAGMA user_version"))
    return int(rows[0][0])


async def _is_new(db: aiosqlite.Connection) -> bool:
    rows = list(await db.execute_fetchall("SELECT count(*) FROM sqlite_master WHERE type = 'table'"))
    return int(rows[0][0]) == 0


async def upgrade(db: aiosqlite.Connection, schema: str, steps: Sequence[Step] = STEPS) -> int:
    """Bring the database on `db` (autocommit) to the newest version; answers the version it
    had. `TooNew` when it is newer than `steps` know; a failed step changes nothing."""
    assert [step.version for step in steps] == list(range(1, len(steps) + 1)), "steps are 1, 2, 3..."
    latest = len(steps)
    await db.execute("BEGIN IMMEDIATE")
    try:
        found = await version_of(db)
        if found > latest:
            raise TooNew(found, latest)
        older = found < latest and not await _is_new(db)
        if older:
            for step in steps[found:]:
                await step.change(db)
        for statement in statements(schema):
            await db.execute(statement)
        await db.execute(f"PRAGMA user_version = {latest}")
        await db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            await db.execute("ROLLBACK")
        raise
    if older:
        log.info("database schema upgraded from version %d to %d", found, latest)
    return found
