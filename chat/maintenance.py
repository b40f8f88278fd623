"""The maintenance commands' common ground: opening a database a running server may be using,
and their errors in one line; `sidechat stats` and `sidechat backup` (prune and export have
modules of their own).

Deliberate choices:
- A command never creates a database: a mistyped `--db` is an error, not a new empty file.
- Commands that only read (stats, export, backup) open the file as it is, with `query_only`:
  they never write, so they work on a database of any version up to this code's (a newer one
  is refused: what its steps changed is unknown here). `prune` writes, so it opens the
  database as the server does, upgraded first (`chat.database.connect`).
- Every wait for a lock is bounded by SIDECHAT_DB_BUSY_TIMEOUT; a lock held past it is a
  `CommandError`, never a traceback. In WAL mode the server's writes never block a reader.
- A backup is SQLite's online backup API in one step: one read transaction, so the copy is
  one moment of the database even while the server writes (WAL lets those writes go on).
  It goes to a temporary file beside the target, is checked, and only then renamed over the
  target, so a failed backup never leaves a half file where the last good one was.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

import aiosqlite

from .database import connect, opening_error
from .errors import StartupError
from .upgrades import LATEST, version_of

STATUSES = ("streaming", "completed", "failed", "cancelled", "interrupted")


class CommandError(Exception):
    """A maintenance command could not do its work; the message is the one line that says why."""


def _described(path: str, exc: sqlite3.Error | StartupError, busy_timeout: float) -> CommandError:
    message = str(opening_error(path, exc) if isinstance(exc, sqlite3.Error) else exc)
    if "locked" in message:
        message += f" (waited {busy_timeout:g} s: SIDECHAT_DB_BUSY_TIMEOUT)"
    return CommandError(message)


def _existing(path: str) -> Path:
    file = Path(path)
    if not file.is_file():
        raise CommandError(f"there is no database at {path} (SIDECHAT_DB or --db)")
    return file


@asynccontextmanager
async def reading(path: str, *, busy_timeout: float) -> AsyncIterator[aiosqlite.Connection]:
    """A connection that only reads the existing database at `path`."""
    uri = _existing(path).resolve().as_uri() + "?mode=rw"  # rw: a missing file is not made
    try:
        db = await aiosqlite.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
    except sqlite3.Error as exc:
        raise _described(path, exc, busy_timeout) from None
    try:
        db.row_factory = sqlite3.Row
        await db.execute(f"PRAGMA busy_timeout = {round(busy_timeout * 1000)}")
        await db.execute("PRAGMA query_only = ON")
        found = await version_of(db)
        if found > LATEST:
            raise CommandError(
                f"the database {path} has schema version {found}, newer than this sidechat knows"
                f" ({LATEST}): use the sidechat that upgraded it"
            )
        yield db
    except sqlite3.Error as exc:
        raise _described(path, exc, busy_timeout) from None
    finally:
        await db.close()


@asynccontextmanager
async def writing(path: str, *, busy_timeout: float) -> AsyncIterator[aiosqlite.Connection]:
    """A connection to the existing database at `path` as the server opens it: upgraded,
    foreign keys on (so a conversation's messages and members go with it)."""
    _existing(path)
    try:
        db = await connect(path, busy_timeout=busy_timeout)
    except StartupError as exc:
        raise _described(path, exc, busy_timeout) from None
    try:
        yield db
    except sqlite3.Error as exc:
        raise _described(path, exc, busy_timeout) from None
    finally:
        await db.close()


async def value(db: aiosqlite.Connection, sql: str, parameters: Mapping[str, object] | None = None) -> int:
    rows = list(await db.execute_fetchall(sql, parameters or {}))
    return int(rows[0][0] or 0)


def size_of(path: str | Path) -> int:
    return os.path.getsize(path) if os.path.exists(path) else 0


def many(count: int, thing: str) -> str:
    return f"{count} {thing}" if count == 1 else f"{count} {thing}s"


def size_text(size: int) -> str:
    """A size for a person: KiB below one MiB, MiB below one GiB, else GiB."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size / 2**10:.0f} KiB"


# -- stats ---------------------------------------------------------------------------------


@dataclass(slots=True)
class Stats:
    database: str
    schema_version: int
    conversations: int
    messages: int
    messages_by_role: dict[str, int]
    replies: dict[str, int]  # assistant messages by status, every status named
    file_bytes: int
    wal_bytes: int  # the write-ahead log beside it, not yet copied into the file
    free_bytes: int  # pages inside the file that new rows reuse
    auto_vacuum: str  # "incremental": prune gives space back as it goes

    def as_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    def as_text(self) -> str:
        version = f"schema version {self.schema_version}"
        if self.schema_version < LATEST:
            version += f"; the server upgrades it to {LATEST} when it starts"
        sizes = (self.file_bytes + self.wal_bytes, self.file_bytes, self.wal_bytes)
        whole, file, log = (size_text(n) for n in sizes)
        reclaim = (
            "incremental: prune gives space back as it deletes"
            if self.auto_vacuum == "incremental"
            else f"{self.auto_vacuum}: the file keeps its size; `prune --vacuum` shrinks it once"
        )
        users, replies = self.messages_by_role["user"], self.messages_by_role["assistant"]
        return "\n".join(
            [
                f"database       {self.database} ({version})",
                f"size           {whole}: file {file}, write-ahead log {log};"
                f" {size_text(self.free_bytes)} free inside",
                f"vacuum         {reclaim}",
                f"conversations  {self.conversations}",
                f"messages       {self.messages}: {users} from users, {replies} from the assistant",
                "replies        " + ", ".join(f"{n} {status}" for status, n in self.replies.items()),
            ]
        )


async def stats(path: str, *, busy_timeout: float) -> Stats:
    async with reading(path, busy_timeout=busy_timeout) as db:
        await db.execute("BEGIN")  # one moment: the counts agree with each other
        conversations = await value(db, "SELECT count(*) FROM conversations")
        rows = list(await db.execute_fetchall("SELECT role, status, count(*) FROM messages GROUP BY 1, 2"))
        await db.execute("COMMIT")
        page_size = await value(db, "PRAGMA page_size")
        free = await value(db, "PRAGMA freelist_count") * page_size
        mode = ("none", "full", "incremental")[await value(db, "PRAGMA auto_vacuum")]
        found = await version_of(db)
    by_role = dict.fromkeys(("user", "assistant", "system"), 0)
    replies = dict.fromkeys(STATUSES, 0)
    for role, status, count in rows:
        by_role[role] = by_role.get(role, 0) + count
        if role == "assistant":
            replies[status] = count
    return Stats(
        database=path,
        schema_version=found,
        conversations=conversations,
        messages=sum(by_role.values()),
        messages_by_role=by_role,
        replies=replies,
        file_bytes=size_of(path),
        wal_bytes=size_of(path + "-wal"),
        free_bytes=free,
        auto_vacuum=mode,
    )


# -- backup --------------------------------------------------------------------------------


@dataclass(slots=True)
class Backup:
    target: Path
    size: int
    conversations: int
    messages: int

    def as_text(self, source: str) -> str:
        return (
            f"backed up {source} to {self.target}: {self.conversations} conversations,"
            f" {self.messages} messages, {size_text(self.size)}"
        )


def backup_target(source: str, target: str) -> Path:
    """Where the copy goes: `target`, or a timestamped file inside it when it is a directory."""
    chosen = Path(target)
    if chosen.is_dir():
        chosen /= f"sidechat-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.db"
    if not chosen.parent.is_dir():
        raise CommandError(f"cannot write the backup {target}: the directory {chosen.parent} does not exist")
    if chosen.exists() and chosen.resolve() == Path(source).resolve():
        raise CommandError(f"the backup {target} would overwrite the database itself")
    return chosen


async def backup(path: str, target: str, *, busy_timeout: float) -> Backup:
    """A consistent copy of the database at `path`, made while a server may be writing to it."""
    _existing(path)
    chosen = backup_target(path, target)
    partial = chosen.with_name(f".{chosen.name}.partial")
    try:
        partial.unlink(missing_ok=True)
        async with reading(path, busy_timeout=busy_timeout) as source:
            conversations, messages = await _copy(source, partial, f"cannot back up {path} to {chosen}")
        os.replace(partial, chosen)
    except OSError as exc:
        raise CommandError(f"cannot write the backup {chosen}: {exc.strerror or exc}") from None
    finally:
        partial.unlink(missing_ok=True)
    return Backup(chosen, size_of(chosen), conversations, messages)


async def _copy(source: aiosqlite.Connection, partial: Path, failed: str) -> tuple[int, int]:
    """Copy `source` into the new file `partial`, check it; its conversations and messages."""
    try:
        copy = await aiosqlite.connect(partial, isolation_level=None, check_same_thread=False)
    except sqlite3.Error as exc:
        raise CommandError(f"{failed}: {exc}") from None
    try:
        await source.backup(copy)  # pages=0: every page in one step, so one snapshot
        await copy.execute("PRAGMA journal_mode = DELETE")  # one self-contained file
        check = [row[0] for row in await copy.execute_fetchall("PRAGMA quick_check")]
        if check != ["ok"]:
            raise CommandError(f"{failed}: the copy failed its check: {'; '.join(check)[:200]}")
        conversations = await value(copy, "SELECT count(*) FROM conversations")
        return conversations, await value(copy, "SELECT count(*) FROM messages")
    except sqlite3.Error as exc:
        raise CommandError(f"{failed}: {exc}") from None
    finally:
        await copy.close()
