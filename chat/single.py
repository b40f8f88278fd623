"""Without Redis, one process per database: a second one is refused at start-up.

Without `SIDECHAT_REDIS_URL`, what is live (running replies and their events, cancel,
the feeds, the limits) is in one process's memory, so a second process on the same
database (`uvicorn --workers 2`, or a second `sidechat serve`) would answer wrongly: an
attach there replays a false ending while the reply streams on in the first, and a
cancel there is a 409 while the reply runs to its end. So the serving process holds,
for its whole life, an exclusive lock on a file beside the database (`<db>.lock`, by
`flock`: the kernel lets go when the process ends, however it ends, so a crash leaves
no stale lock), and a second one that cannot take it stops with one line naming
`SIDECHAT_REDIS_URL`. The maintenance commands take no lock: they work beside a server.

Where the lock file cannot be made (a read-only directory), the server still starts (it
can serve reads, and /readyz says why it cannot write), with a warning that a second
process would go unnoticed.

On PostgreSQL the lock is a session advisory lock, held on a connection of its own for the
process's life: the server lets go when that connection ends, however the process ends. A
Postgres that restarts ends the connection too, and with it the guard (until this process
restarts): the guard is for the mistake of starting two, not a fence against every race.
"""

from __future__ import annotations

import fcntl
import logging
import os
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager

from .config import Settings
from .errors import StartupError
from .stores import is_postgres, shown

log = logging.getLogger("sidechat")

ADVISORY_KEY = 0x5C_0E_CA_7E  # pg_try_advisory_lock's key: "one sidechat serves this database"


def lock_path(db: str) -> str | None:
    """The lock file of a SQLite database; None where there is no file to guard."""
    if db == ":memory:" or db.startswith("file:") or is_postgres(db):
        return None
    return db + ".lock"


@asynccontextmanager
async def sole_process(settings: Settings) -> AsyncIterator[None]:
    """Without Redis, this process is the only one serving its database while the block lasts:
    a second one stops with a `StartupError` naming SIDECHAT_REDIS_URL."""
    if not settings.stored or settings.redis_url:
        yield
    elif is_postgres(settings.db):
        async with _sole_on_postgres(settings):
            yield
    else:
        with _sole_on_file(settings):
            yield


def _refused(settings: Settings) -> StartupError:
    return StartupError(
        f"another sidechat process is serving the database {shown(settings.db)}; more than one"
        " process (uvicorn --workers, a second sidechat serve) needs SIDECHAT_REDIS_URL,"
        " so that they share the replies that are running"
    )


@asynccontextmanager
async def _sole_on_postgres(settings: Settings) -> AsyncIterator[None]:
    import asyncpg  # type: ignore[import-untyped]  # the scale extra's; it ships no types

    from .pg_database import FAILURES

    try:
        connection = await asyncpg.connect(settings.db, timeout=10)
    except FAILURES as exc:  # the store, opened next, says it in full
        log.warning("cannot take the lock of %s (%s)", shown(settings.db), type(exc).__name__)
        yield
        return
    try:
        if not await connection.fetchval("SELECT pg_try_advisory_lock($1)", ADVISORY_KEY):
            raise _refused(settings)
        yield
    finally:
        await connection.close()


@contextmanager
def _sole_on_file(settings: Settings) -> Iterator[None]:
    """Hold the database's lock for as long as the block lasts, unless processes share
    what is live through Redis (or nothing is stored, so there is no database to share)."""
    path = lock_path(settings.db)
    if path is None:
        yield
        return
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        log.warning("cannot make %s (%s): a second process on this database would go unnoticed", path, exc)
        yield
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise _refused(settings) from None
        yield
    finally:
        os.close(fd)
