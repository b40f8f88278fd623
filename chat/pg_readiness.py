"""`GET /readyz` on PostgreSQL: the twin of `chat.readiness.Readiness`, asking each time that
a write goes through (the one row of `readiness`, rewritten, on the store's own pool) and
that no reply is waiting in memory for a write the database refused.

What it leaves out, and why: there is no file whose identity could change under the
process, and no quick check of the whole database to run (Postgres checksums its pages as
it reads them; `amcheck` is an extension an operator runs), so `deep` asks nothing more.
The probe's write is bounded by a short timeout of its own, so the answer is quick.
"""

from __future__ import annotations

from .database import StorageFailed, now
from .keeping import Keeper
from .pg_database import PgDatabase
from .readiness import Readiness

PROBE_SECONDS = 2.0


class PgReadiness(Readiness):
    def __init__(self, pg: PgDatabase, keeper: Keeper) -> None:  # nothing of its own to open
        self._pg = pg
        self._keeper = keeper

    async def close(self) -> None:
        return None  # the store closes the pool

    async def problem(self, *, deep: bool = False) -> str | None:
        """Why this process should not get traffic now, or None."""
        if self._keeper.pending:
            return f"{self._keeper.pending} replies are waiting for the database to take their final write"
        try:
            await self._pg.write(
                "INSERT INTO readiness (id, checked_at) VALUES (1, $1)"
                " ON CONFLICT (id) DO UPDATE SET checked_at = excluded.checked_at",
                now(),
                timeout=PROBE_SECONDS,
            )
        except StorageFailed as exc:
            return f"the database cannot be written: {exc.reason}"
        return None
