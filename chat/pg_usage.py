"""What `chat.usage` reads on PostgreSQL. `chat.usage` runs its one statement itself, over
the store's `_db` (`usage._database`), in SQLite's SQL; on PostgreSQL that `_db` is
`PgUsage`, which answers that statement with its PostgreSQL twin, and refuses any other:
a new statement run through `_db` must get its twin here, and a test of it on both
backends says so at once.

(The tidier shape is a `usage_rows` method on both stores, called by `chat.usage`; until
then this keeps `chat.usage` untouched.)
"""

from __future__ import annotations

import sqlite3
from typing import Any, cast

from .database import Database
from .pg_database import PgDatabase

# usage._USAGE, with $1 the user, $2 since and $3 until (timestamps as text).
_USAGE = """
SELECT m.metadata ->> 'provider' AS provider,
       m.metadata ->> 'model' AS model,
       count(*) AS replies,
       coalesce(sum((m.metadata #>> '{usage,input_tokens}')::numeric), 0)::bigint AS input_tokens,
       coalesce(sum((m.metadata #>> '{usage,output_tokens}')::numeric), 0)::bigint AS output_tokens,
       coalesce(sum((m.metadata #>> '{usage,cached_input_tokens}')::numeric), 0)::bigint
           AS cached_input_tokens,
       sum((m.metadata ->> 'cost_usd')::float8) AS cost_usd,
       count(*) - count(m.metadata ->> 'cost_usd') AS unpriced_replies
FROM conversations c JOIN messages m ON m.conversation_id = c.id
WHERE c.id IN (SELECT id FROM conversations WHERE user_id = $1
               UNION SELECT conversation_id FROM members WHERE user_id = $1)
  AND m.role = 'assistant' AND m.completed_at >= $2 AND m.completed_at < $3
  AND coalesce(m.metadata ->> 'asked_by',
               (SELECT q.user_id FROM messages q WHERE q.id = (m.metadata ->> 'user_message_id')::bigint),
               c.user_id) = $1
GROUP BY 1, 2  -- in SQLite's order: bytewise, nulls first
ORDER BY (m.metadata ->> 'provider') COLLATE "C" NULLS FIRST, (m.metadata ->> 'model') COLLATE "C" NULLS FIRST
"""


class PgUsage(Database):
    """The store's `_db` on PostgreSQL: the usage statement only (see above)."""

    def __init__(self, pg: PgDatabase) -> None:  # the store's pool: nothing more is opened
        self._pg = pg

    async def close(self) -> None:
        return None  # the store closes its pool

    async def rows(self, sql: str, parameters: dict[str, Any]) -> list[sqlite3.Row]:
        from .usage import _USAGE as SQLITE_USAGE

        if sql != SQLITE_USAGE:
            raise NotImplementedError(f"no PostgreSQL twin of this statement yet: {sql.strip()[:80]!r}")
        found = await self._pg.rows(_USAGE, parameters["user"], parameters["since"], parameters["until"])
        return cast(list[sqlite3.Row], found)  # read by column name, as sqlite3.Row is

    async def written(self, sql: str, parameters: dict[str, Any]) -> list[sqlite3.Row]:
        raise NotImplementedError("PostgreSQL writes go through chat.pg_store")

    async def write(self, sql: str, parameters: dict[str, Any]) -> int:
        raise NotImplementedError("PostgreSQL writes go through chat.pg_store")

    async def ping(self) -> bool:
        return await self._pg.ping()
