"""The statements of `chat.pg_store.PgStore` that replace a turn, in PostgreSQL's SQL: the
twins of `chat.store_rewrites`, with the same rules (only the newest message of its role
that nothing replaced, never while its reply streams; the new rows and the marks in one
INSERT, a trigger marking the replaced row).

One difference: SQLite runs one writer at a time, so the INSERT's own check settles a race
between two requests replacing the same row. Postgres runs them side by side, and both
checks may pass; the unique index `messages_replaced_once` (schema_pg.sql) then refuses the
second INSERT, which is answered `NotLatest` as on SQLite.
"""

from __future__ import annotations

from typing import Any

import asyncpg  # type: ignore[import-untyped]  # it ships no types

from .database import NotLatest, now
from .pg_database import PgDatabase
from .records import Message


def current(alias: str) -> str:
    """SQL: the row `alias` of messages was not replaced."""
    return f"({alias}.metadata ->> 'superseded_by') IS NULL"


def newest(alias: str) -> str:
    """SQL: the row `alias` is its conversation's newest message of its role not replaced."""
    return (
        f"{current(alias)} AND NOT EXISTS (SELECT 1 FROM messages n"
        f" WHERE n.conversation_id = {alias}.conversation_id AND n.role = {alias}.role"
        f" AND n.id > {alias}.id AND {current('n')})"
    )


class PgRewriteStore:
    _pg: PgDatabase

    async def regenerate_reply(self, reply_id: int, *, metadata: dict[str, Any]) -> Message:
        """A new reply-to-be (`streaming`) in place of reply `reply_id`, which is marked
        `superseded_by` it; `NotLatest` when that one may not be replaced."""
        metadata = {**metadata, "supersedes": reply_id}
        stamp = now()
        try:
            rows = await self._pg.written(
                "INSERT INTO messages (conversation_id, role, content, status, metadata, created_at)"
                " SELECT o.conversation_id, 'assistant', '', 'streaming', $2::jsonb, $3 FROM messages o"
                f" WHERE o.id = $1 AND o.role = 'assistant' AND o.status <> 'streaming' AND {newest('o')}"
                " RETURNING id, conversation_id",
                reply_id,
                metadata,
                stamp,
            )
        except asyncpg.UniqueViolationError:
            rows = []  # a twin request replaced it first
        if not rows:
            raise NotLatest(reply_id)
        (row,) = rows
        return Message(
            row["id"], row["conversation_id"], "assistant", "", "streaming", metadata, 0, stamp, None
        )

    async def edit_turn(
        self,
        user_message_id: int,
        reply_id: int | None,
        text: str,
        *,
        metadata: dict[str, Any],
        author: str | None = None,
    ) -> tuple[Message, Message]:
        """A new user message with `text` and its reply-to-be in place of user message
        `user_message_id` and its reply `reply_id` (the conversation's newest, or None if it
        has none), each marked `superseded_by` its replacement; `NotLatest` when they may not
        be replaced, or `reply_id` is not that message's reply."""
        asked: dict[str, Any] = {"supersedes": user_message_id}
        if reply_id is not None:
            metadata = {**metadata, "supersedes": reply_id}
        stamp = now()
        try:
            rows = await self._pg.written(
                "INSERT INTO messages"
                " (conversation_id, role, content, status, metadata, created_at, completed_at, user_id)"
                " SELECT o.conversation_id, v.role, v.content, v.status, v.metadata, $6, v.completed_at,"
                "  v.user_id"
                " FROM messages o, (VALUES"
                "  (1, 'user', $3::text, 'completed', $4::jsonb, $6::text, $7::text),"
                "  (2, 'assistant', '', 'streaming', $5::jsonb, NULL, NULL))"
                "  v (n, role, content, status, metadata, completed_at, user_id)"
                f" WHERE o.id = $1 AND o.role = 'user' AND {newest('o')}"
                "  AND (SELECT max(r.id) FROM messages r WHERE r.conversation_id = o.conversation_id"
                f"   AND r.role = 'assistant' AND r.id > o.id AND {current('r')})"
                "   IS NOT DISTINCT FROM $2::bigint"
                "  AND NOT EXISTS (SELECT 1 FROM messages s"
                "   WHERE s.id = $2::bigint AND s.status = 'streaming')"
                " ORDER BY v.n"
                " RETURNING id, role, conversation_id",
                user_message_id,
                reply_id,
                text,
                asked,
                metadata,
                stamp,
                author,
            )
        except asyncpg.UniqueViolationError:
            rows = []  # a twin request replaced it first
        if not rows:
            raise NotLatest(user_message_id)
        ids = {row["role"]: row["id"] for row in rows}
        conversation_id = rows[0]["conversation_id"]
        return (
            Message(ids["user"], conversation_id, "user", text, "completed", asked, 0, stamp, stamp, author),
            Message(
                ids["assistant"], conversation_id, "assistant", "", "streaming", metadata, 0, stamp, None
            ),
        )
