"""Opening the SQLite database: its settings, the schema, and start-up errors in plain words.

Deliberate choices:
- WAL mode, so readers (other tools, backups) never block the writer, and
  `synchronous=NORMAL`, which in WAL mode is still safe against corruption.
- `schema.sql` is the whole schema of a new database. SQLite's `CREATE TABLE IF
  NOT EXISTS` leaves an older table as it was, so a column added since is also
  listed in `ADDED_COLUMNS` and added to an older database at start-up.
- A connection whose set-up fails is closed before the error goes up: aiosqlite
  runs each connection on a thread of its own, and a thread left running keeps
  the process from ever exiting.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import aiosqlite

from .errors import StartupError
from .resources import resource

# (table, column, declaration) for each column added to the schema after its table was.
ADDED_COLUMNS = [("messages", "request_hash", "TEXT")]


async def connect(path: str) -> aiosqlite.Connection:
    """A connection with the schema applied; a `StartupError` that says why when it cannot be had."""
    schema = resource("schema.sql").read_text()
    try:
        db = await aiosqlite.connect(path, isolation_level=None)
    except sqlite3.Error as exc:
        raise _startup_error(path, exc) from None
    try:
        db.row_factory = sqlite3.Row
        await db.execute("PRAGMA journal_mode = WAL")
        await db.execute("PRAGMA synchronous = NORMAL")
        await db.execute("PRAGMA foreign_keys = ON")
        await db.execute("PRAGMA busy_timeout = 5000")
        await db.executescript(schema)
        for table, column, declaration in ADDED_COLUMNS:
            present = {row[1] for row in await db.execute_fetchall(f"PRAGMA table_info({table})")}
            if column not in present:
                await db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {declaration}")
    except BaseException as exc:
        await db.close()
        if isinstance(exc, sqlite3.Error):
            raise _startup_error(path, exc) from None
        raise
    return db


def _startup_error(path: str, exc: sqlite3.Error) -> StartupError:
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
    return StartupError(f"cannot use {where}: {reason}")
