"""The statements of `chat.store.Store` that replace a turn: a reply generated again, or the
last user message edited (with a new reply). `Store` takes them in as a base class.

Deliberate choices:
- A replaced row stays, marked `superseded_by` the row that replaces it, which says whom it
  `supersedes` (both in `metadata`, where clients read them). The new rows and the marks go
  in one INSERT: a trigger in the schema marks the row a new one supersedes, so a failed
  write leaves nothing half done, and there is still no transaction held across awaits.
- Only the newest message of its role that nothing superseded may be replaced, and never
  while its reply streams. The INSERT checks this itself (its SELECT is read in full before
  any row goes in), so of two requests racing to replace one reply, one wins and the other
  gets `NotLatest`; the caller's own check beforehand is for a clear error, not for safety.
"""

from __future__ import annotations

import json
from typing import Any

from .database import Database, NotLatest, now
from .records import Message


def current(alias: str) -> str:
    """SQL: the row `alias` of messages was not replaced."""
    return f"json_extract({alias}.metadata, '$.superseded_by') IS NULL"


def newest(alias: str) -> str:
    """SQL: the row `alias` is its conversation's newest message of its role not replaced."""
    return (
        f"{current(alias)} AND NOT EXISTS (SELECT 1 FROM messages n"
        f" WHERE n.conversation_id = {alias}.conversation_id AND n.role = {alias}.role"
        f" AND n.id > {alias}.id AND {current('n')})"
    )


class RewriteStore:
    _db: Database

    async def regenerate_reply(self, reply_id: int, *, metadata: dict[str, Any]) -> Message:
        """A new reply-to-be (`streaming`) in place of reply `reply_id`, which is marked
        `superseded_by` it; `NotLatest` when that one may not be replaced (see above)."""
        metadata = {**metadata, "supersedes": reply_id}
        stamp = now()
        rows = await self._db.written(
            "INSERT INTO messages (conversation_id, role, content, status, metadata, created_at)"
            " SELECT o.conversation_id, 'assistant', '', 'streaming', :metadata, :now FROM messages o"
            f" WHERE o.id = :id AND o.role = 'assistant' AND o.status <> 'streaming' AND {newest('o')}"
            " RETURNING id, conversation_id",
            {"id": reply_id, "metadata": json.dumps(metadata), "now": stamp},
        )
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
        be replaced (see above), or `reply_id` is not that message's reply."""
        asked: dict[str, Any] = {"supersedes": user_message_id}
        if reply_id is not None:
            metadata = {**metadata, "supersedes": reply_id}
        stamp = now()
        rows = await self._db.written(
            "INSERT INTO messages"
            " (conversation_id, role, content, status, metadata, created_at, completed_at, user_id)"
            " SELECT o.conversation_id, v.column2, v.column3, v.column4, v.column5, :now,"
            "  v.column6, v.column7"
            " FROM messages o, (VALUES"
            "  (1, 'user', :text, 'completed', :asked, :now, :author),"
            "  (2, 'assistant', '', 'streaming', :metadata, NULL, NULL)) v"
            f" WHERE o.id = :id AND o.role = 'user' AND {newest('o')}"
            "  AND (SELECT max(r.id) FROM messages r WHERE r.conversation_id = o.conversation_id"
            f"   AND r.role = 'assistant' AND r.id > o.id AND {current('r')}) IS :reply"
            "  AND NOT EXISTS (SELECT 1 FROM messages s WHERE s.id = :reply AND s.status = 'streaming')"
            " ORDER BY v.column1"
            " RETURNING id, role, conversation_id",
            {
                "id": user_message_id,
                "reply": reply_id,
                "text": text,
                "asked": json.dumps(asked),
                "metadata": json.dumps(metadata),
                "author": author,
                "now": stamp,
            },
        )
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
