"""Which store a `db` setting (SIDECHAT_DB / --db) opens: a SQLite file by its path, as ever,
or PostgreSQL by a `postgresql://` (or `postgres://`) URL.

`chat.services` calls `open_database` where it opened `Store` itself, and `open_readiness`
where it opened `Readiness`; the SQLite path goes straight to `Store.open` and
`Readiness.open`, so it is exactly as it was.
"""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

from .config import Settings
from .errors import StartupError
from .keeping import Keeper
from .readiness import Readiness
from .store import Store
from .telemetry import NOTHING, Telemetry

SCHEMES = ("postgresql://", "postgres://")


def is_postgres(db: str) -> bool:
    """Whether a SIDECHAT_DB / --db value names a PostgreSQL database rather than a file."""
    return db.startswith(SCHEMES)


def shown(db: str) -> str:
    """The setting as a message may show it: a URL without its password."""
    parts = urlsplit(db)
    if not is_postgres(db) or parts.password is None:
        return db
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{parts.username}:***@{host}"))


async def open_database(settings: Settings, telemetry: Telemetry = NOTHING) -> Store:
    """The store on the database `settings.db` names, its schema up to date; a `StartupError`
    in one line when it cannot be had."""
    if is_postgres(settings.db):
        try:  # asyncpg is the `scale` extra's: imported only when asked for
            from .pg_store import PgStore
        except ImportError as exc:
            raise StartupError(
                f"SIDECHAT_DB (or --db) is a PostgreSQL URL, which needs {exc.name}:"
                " pip install 'sidechat[scale]'"
            ) from None

        return await PgStore.open(settings.db, busy_timeout=settings.db_busy_timeout, telemetry=telemetry)
    return await Store.open(settings.db, busy_timeout=settings.db_busy_timeout, telemetry=telemetry)


async def open_readiness(settings: Settings, store: Store, keeper: Keeper) -> Readiness | None:
    """What `/readyz` asks of the database `store` is on (see `Readiness.open` for None)."""
    if is_postgres(settings.db):
        from .pg_readiness import PgReadiness
        from .pg_store import PgStore

        assert isinstance(store, PgStore), store
        return PgReadiness(store._pg, keeper)
    return await Readiness.open(settings.db, keeper)
