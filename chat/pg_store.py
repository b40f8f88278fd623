"""`chat.store.Store` on PostgreSQL, when SIDECHAT_DB is a `postgresql://` URL: every
statement in PostgreSQL's SQL over an asyncpg pool (`chat.pg_database`), with the same
behaviour as on SQLite (those on conversations and members are in
`chat.pg_store_conversations`, those that replace a turn in `chat.pg_store_rewrites`).

Deliberate choices:
- A subclass of `Store` that overrides every method (a test checks it), as
  `chat.store_none.MemoryStore` is: the services, the keeper and the routes take it as
  they take the SQLite one, typed as they are, and the SQLite store is not touched at all.
- The same writes: one statement each on the hot path (a turn's rows in one INSERT, a
  reply's end in one UPDATE, a checkpoint in one UPDATE), with the conversation's activity
  and the marks of a replaced row kept by PL/pgSQL triggers (schema_pg.sql), the twins of
  schema.sql's, rather than folded into the statements: the statements stay the SQLite
  ones, word for word where the dialects agree.
- Idempotency is the same unique index on `messages.idempotency_key`: of two processes
  storing a turn under one key, one INSERT wins and the other gets `KeyTaken`.
- Timestamps are text in `chat.database.stamp`'s format; metadata is jsonb, a dict both
  ways (its keys come back in jsonb's order, not the order they were written in).
- `_db`, which `chat.usage` reads through, is `chat.pg_usage.PgUsage`: it answers the usage
  statement in PostgreSQL's SQL.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import asyncpg  # type: ignore[import-untyped]  # it ships no types

from .database import ConversationGone, KeyTaken, now
from .pg_database import PgDatabase
from .pg_store_conversations import PgConversationStore, visible
from .pg_store_rewrites import PgRewriteStore, current
from .pg_usage import PgUsage
from .records import Message
from .store import MAX_ID, Store, storable
from .telemetry import NOTHING, Telemetry

_MESSAGE_COLUMNS = (
    "id, conversation_id, role, content, status, metadata, last_event_id, created_at, completed_at, user_id"
)
_MESSAGE_FIELDS = _MESSAGE_COLUMNS.split(", ")
_M_MESSAGE_COLUMNS = ", ".join("m." + column for column in _MESSAGE_FIELDS)


def _message(row: asyncpg.Record) -> Message:
    return Message(**{name: row[name] for name in _MESSAGE_FIELDS})


class PgStore(PgRewriteStore, PgConversationStore, Store):
    """The store on PostgreSQL (see the module's docstring)."""

    def __init__(self, pg: PgDatabase) -> None:
        self._pg = pg
        self._db = PgUsage(pg)

    @classmethod
    async def open(cls, path: str, *, busy_timeout: float = 10.0, telemetry: Telemetry = NOTHING) -> PgStore:
        """The store on the database at the URL `path`, its schema up to date; `busy_timeout`
        bounds connecting and each statement."""
        return cls(await PgDatabase.open(path, timeout=busy_timeout, telemetry=telemetry))

    async def close(self) -> None:
        await self._pg.close()

    async def ping(self) -> bool:
        return await self._pg.ping()

    # -- recovery ---------------------------------------------------------------------

    async def interrupt_streaming(self, error: dict[str, Any]) -> int:
        """Rows a previous process left mid-generation become `interrupted`, with `error`."""
        return await self._pg.write(
            "UPDATE messages SET status = 'interrupted', completed_at = $1,"
            " metadata = jsonb_set(metadata, '{error}', $2::jsonb)"
            " WHERE status = 'streaming'",
            now(),
            error,
        )

    async def streaming_replies(self, *, created_before: str) -> list[int]:
        """The replies still `streaming` that were stored before `created_before`."""
        rows = await self._pg.rows(
            "SELECT id FROM messages WHERE status = 'streaming' AND created_at < $1 ORDER BY id",
            created_before,
        )
        return [row[0] for row in rows]

    async def interrupt_reply(
        self, message_id: int, *, content: str | None, error: dict[str, Any], last_event_id: int | None
    ) -> bool:
        """A reply whose process died becomes `interrupted` (see `Store.interrupt_reply`)."""
        changed = await self._pg.write(
            "UPDATE messages SET status = 'interrupted', completed_at = $5,"
            " content = CASE WHEN length($2::text) > length(content) THEN $2::text ELSE content END,"
            " last_event_id = COALESCE($3::bigint, last_event_id),"
            " metadata = jsonb_set(metadata, '{error}', $4::jsonb)"
            " WHERE id = $1 AND status = 'streaming'",
            message_id,
            None if content is None else storable(content),
            last_event_id,
            error,
            now(),
        )
        return bool(changed)

    # -- messages ---------------------------------------------------------------------

    async def start_turn(
        self,
        conversation_id: int,
        text: str,
        *,
        metadata: dict[str, Any],
        idempotency_key: str | None = None,
        request_hash: str | None = None,
        author: str | None = None,
        earlier: Sequence[tuple[str, str]] = (),
    ) -> tuple[Message, Message]:
        """Store a user message and its assistant reply-to-be (status `streaming`), after the
        `earlier` (role, content) messages a client sent with it, when it owns its history.
        One statement; a trigger marks the conversation's activity."""
        stamp = now()
        values: list[Any] = [conversation_id, text, metadata, idempotency_key, request_hash, author, stamp]
        before = ""
        for role, content in earlier:
            values += [role, content]
            r, c = len(values) - 1, len(values)
            before += (
                f" ($1, ${r}::text, ${c}::text, 'completed', '{{}}', NULL, NULL, $7, $7,"
                f" CASE ${r}::text WHEN 'user' THEN $6::text END),"
            )
        try:
            rows = await self._pg.written(
                "INSERT INTO messages (conversation_id, role, content, status, metadata,"
                " idempotency_key, request_hash, created_at, completed_at, user_id)"
                " VALUES" + before + ""
                " ($1, 'user', $2, 'completed', '{}', $4, $5, $7, $7, $6),"
                " ($1, 'assistant', '', 'streaming', $3, NULL, NULL, $7, NULL, NULL)"
                " RETURNING id",
                *values,
            )
        except asyncpg.UniqueViolationError as exc:
            if exc.constraint_name == "messages_by_idempotency_key":
                raise KeyTaken(idempotency_key) from None
            raise
        except asyncpg.ForeignKeyViolationError:
            raise ConversationGone(conversation_id) from None
        user_id, assistant_id = sorted(row[0] for row in rows)[-2:]
        return (
            Message(user_id, conversation_id, "user", text, "completed", {}, 0, stamp, stamp, author),
            Message(assistant_id, conversation_id, "assistant", "", "streaming", metadata, 0, stamp, None),
        )

    async def finish_message(
        self,
        message_id: int,
        *,
        status: str,
        content: str,
        metadata: dict[str, Any],
        last_event_id: int,
    ) -> None:
        """The generation's one write at its end; only a row still `streaming` changes."""
        await self._pg.write(
            "UPDATE messages SET status = $2, content = $3, metadata = $4, last_event_id = $5,"
            " completed_at = $6 WHERE id = $1 AND status = 'streaming'",
            message_id,
            status,
            storable(content),
            metadata,
            last_event_id,
            now(),
        )

    async def checkpoint_message(self, message_id: int, content: str) -> None:
        """The partial text of a reply still being generated (off by default; never per token)."""
        await self._pg.write(
            "UPDATE messages SET content = $2 WHERE id = $1 AND status = 'streaming'",
            message_id,
            storable(content),
        )

    async def get_message(self, user_id: str, message_id: int) -> Message | None:
        rows = await self._pg.rows(
            f"SELECT {_M_MESSAGE_COLUMNS}"
            " FROM messages m JOIN conversations c ON c.id = m.conversation_id"
            f" WHERE m.id = $1 AND {visible('$2')}",
            message_id,
            user_id,
        )
        return _message(rows[0]) if rows else None

    async def list_messages(self, conversation_id: int, *, after_id: int = 0) -> list[Message]:
        rows = await self._pg.rows(
            f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE conversation_id = $1 AND id > $2 ORDER BY id",
            conversation_id,
            after_id,
        )
        return [_message(row) for row in rows]

    async def recent_messages(
        self, conversation_id: int, *, limit: int, before_id: int = MAX_ID
    ) -> list[Message]:
        """The conversation's newest `limit` messages before `before_id`, oldest first."""
        rows = await self._pg.rows(
            f"SELECT {_MESSAGE_COLUMNS} FROM messages"
            " WHERE conversation_id = $1 AND id < $2 ORDER BY id DESC LIMIT $3",
            conversation_id,
            before_id,
            limit,
        )
        return [_message(row) for row in reversed(rows)]

    async def history(self, conversation_id: int, *, limit: int, before_id: int = MAX_ID) -> list[Message]:
        """What a provider is sent of the conversation so far: its newest `limit` messages
        before `before_id` that were not replaced, oldest first."""
        rows = await self._pg.rows(
            f"SELECT {_MESSAGE_COLUMNS} FROM messages m"
            f" WHERE conversation_id = $1 AND id < $2 AND {current('m')} ORDER BY id DESC LIMIT $3",
            conversation_id,
            before_id,
            limit,
        )
        return [_message(row) for row in reversed(rows)]

    async def newest_current(self, conversation_id: int) -> dict[str, Message]:
        """The conversation's newest message of each role that was not replaced, by role."""
        rows = await self._pg.rows(
            f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE id IN (SELECT max(m.id) FROM messages m"
            f" WHERE m.conversation_id = $1 AND {current('m')} GROUP BY m.role)",
            conversation_id,
        )
        return {row["role"]: _message(row) for row in rows}

    async def find_turn(
        self, user_id: str, idempotency_key: str
    ) -> tuple[Message, Message, str | None] | None:
        """The user message stored under this key, the assistant message that answers it, and
        the hash of what was asked with the key, in a conversation `user_id` may read."""
        rows = await self._pg.rows(
            f"SELECT {_M_MESSAGE_COLUMNS}, k.request_hash"
            " FROM messages k JOIN conversations c ON c.id = k.conversation_id"
            " JOIN messages m ON m.conversation_id = k.conversation_id AND m.id >= k.id"
            f" WHERE k.idempotency_key = $1 AND {visible('$2')}"
            " ORDER BY m.id LIMIT 2",
            idempotency_key,
            user_id,
        )
        if len(rows) < 2:
            return None
        request_hash: str | None = rows[0]["request_hash"]
        return _message(rows[0]), _message(rows[1]), request_hash
