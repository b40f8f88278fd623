"""Every SQL statement sidechat runs, over one aiosqlite connection (those on conversations
and their members are in `chat.store_conversations`, those that replace a turn in
`chat.store_rewrites`: base classes of `Store`).

Deliberate choices:
- One connection is the one writer (`chat.database.Database`). SQLite allows a
  single writer anyway; keeping it in one place means no "database is locked"
  between our own writers, and aiosqlite runs its statements one at a time, in
  order. Reads have a connection of their own, so they go on (WAL allows it)
  while a write waits out a foreign lock.
- Every write is one statement, so atomic by itself with no transaction to hold
  open across awaits: a turn's two rows go in one INSERT, and triggers in the
  schema keep a conversation's activity time. Each aiosqlite call is a thread
  round trip (measured at ~70 us here), so a generation costs two calls when it
  is accepted and one when it ends -- and nothing per token.
- What a caller must handle comes in the store's own terms: the conflicts
  (`ConversationGone`, `KeyTaken`, `NotLatest`), a write that failed for a reason that can
  pass (`StorageFailed`: locked, full, read-only, I/O), and on opening, a
  `StartupError`; so callers need not know SQL.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from typing import Any

from .database import (
    ConversationGone,
    Database,
    KeyTaken,
    NotLatest,
    StorageFailed,
    StoreError,
    now,
)
from .records import Message
from .store_conversations import VISIBLE, ConversationStore
from .store_rewrites import RewriteStore, current
from .telemetry import NOTHING, Telemetry

__all__ = ["ConversationGone", "KeyTaken", "NotLatest", "StorageFailed", "Store", "StoreError", "now"]


MAX_ID = 2**63 - 1  # SQLite's largest integer: no id is above it


def storable(text: str) -> str:
    """Text SQLite can hold: a provider may send an emoji's UTF-16 halves in separate
    chunks (JSON's "\\ud83d" then "\\ude00"); pair them up, and replace any lone half."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return text


_MESSAGE_COLUMNS = (
    "id, conversation_id, role, content, status, metadata, last_event_id, created_at, completed_at, user_id"
)
_MESSAGE_FIELDS = _MESSAGE_COLUMNS.split(", ")
_M_MESSAGE_COLUMNS = ", ".join("m." + column for column in _MESSAGE_FIELDS)


def _message(row: sqlite3.Row) -> Message:
    values = {name: row[name] for name in _MESSAGE_FIELDS}
    values["metadata"] = json.loads(values["metadata"])
    return Message(**values)


class Store(RewriteStore, ConversationStore):
    def __init__(self, db: Database) -> None:
        self._db = db

    @classmethod
    async def open(cls, path: str, *, busy_timeout: float = 10.0, telemetry: Telemetry = NOTHING) -> Store:
        return cls(await Database.open(path, busy_timeout=busy_timeout, telemetry=telemetry))

    async def close(self) -> None:
        await self._db.close()

    async def ping(self) -> bool:
        return await self._db.ping()

    # -- recovery ---------------------------------------------------------------------

    async def interrupt_streaming(self, error: dict[str, Any]) -> int:
        """Rows a previous process left mid-generation become `interrupted`, with `error`."""
        return await self._db.write(
            "UPDATE messages SET status = 'interrupted', completed_at = :now,"
            " metadata = json_set(metadata, '$.error', json(:error))"
            " WHERE status = 'streaming'",
            {"now": now(), "error": json.dumps(error)},
        )

    async def streaming_replies(self, *, created_before: str) -> list[int]:
        """The replies still `streaming` that were stored before `created_before`: with several
        processes, those no live one has registered are orphans (`chat.orphans`)."""
        rows = await self._db.rows(
            "SELECT id FROM messages WHERE status = 'streaming' AND created_at < :before ORDER BY id",
            {"before": created_before},
        )
        return [row[0] for row in rows]

    async def interrupt_reply(
        self, message_id: int, *, content: str | None, error: dict[str, Any], last_event_id: int | None
    ) -> bool:
        """A reply whose process died becomes `interrupted` with `error`, keeping `content` (what
        it had published) where that is longer than its checkpoint; only a row still `streaming`
        changes, and whether it did is the answer."""
        changed = await self._db.write(
            "UPDATE messages SET status = 'interrupted', completed_at = :now,"
            " content = CASE WHEN length(:content) > length(content) THEN :content ELSE content END,"
            " last_event_id = COALESCE(:last_event_id, last_event_id),"
            " metadata = json_set(metadata, '$.error', json(:error))"
            " WHERE id = :id AND status = 'streaming'",
            {
                "id": message_id,
                "content": None if content is None else storable(content),
                "last_event_id": last_event_id,
                "error": json.dumps(error),
                "now": now(),
            },
        )
        return changed > 0

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

        One statement, so atomic on its own; a trigger marks the conversation's activity.
        A turn stored under an idempotency key keeps the hash of what was asked with it."""
        stamp = now()
        values: dict[str, Any] = {
            "conversation_id": conversation_id,
            "text": text,
            "metadata": json.dumps(metadata),
            "key": idempotency_key,
            "hash": request_hash,
            "author": author,
            "now": stamp,
        }
        before = ""
        for n, (role, content) in enumerate(earlier):
            values[f"role{n}"], values[f"content{n}"] = role, content
            before += (
                f" (:conversation_id, :role{n}, :content{n}, 'completed', '{{}}', NULL, NULL, :now, :now,"
                f" CASE :role{n} WHEN 'user' THEN :author END),"
            )
        try:
            rows = await self._db.written(
                "INSERT INTO messages (conversation_id, role, content, status, metadata,"
                " idempotency_key, request_hash, created_at, completed_at, user_id)"
                " VALUES" + before + ""
                " (:conversation_id, 'user', :text, 'completed', '{}', :key, :hash, :now, :now, :author),"
                " (:conversation_id, 'assistant', '', 'streaming', :metadata, NULL, NULL, :now, NULL, NULL)"
                " RETURNING id",
                values,
            )
        except sqlite3.IntegrityError as exc:
            if "messages.idempotency_key" in str(exc):
                raise KeyTaken(idempotency_key) from None
            if "FOREIGN KEY" in str(exc):
                raise ConversationGone(conversation_id) from None
            raise
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
        await self._db.write(
            "UPDATE messages SET status = :status, content = :content, metadata = :metadata,"
            " last_event_id = :last_event_id, completed_at = :now"
            " WHERE id = :id AND status = 'streaming'",
            {
                "id": message_id,
                "status": status,
                "content": storable(content),
                "metadata": json.dumps(metadata),
                "last_event_id": last_event_id,
                "now": now(),
            },
        )

    async def checkpoint_message(self, message_id: int, content: str) -> None:
        """The partial text of a reply still being generated (off by default; never per token)."""
        await self._db.write(
            "UPDATE messages SET content = :content WHERE id = :id AND status = 'streaming'",
            {"id": message_id, "content": storable(content)},
        )

    async def get_message(self, user_id: str, message_id: int) -> Message | None:
        rows = await self._db.rows(
            f"SELECT {_M_MESSAGE_COLUMNS}"
            " FROM messages m JOIN conversations c ON c.id = m.conversation_id"
            f" WHERE m.id = :id AND {VISIBLE}",
            {"id": message_id, "user_id": user_id},
        )
        return _message(rows[0]) if rows else None

    async def list_messages(self, conversation_id: int, *, after_id: int = 0) -> list[Message]:
        rows = await self._db.rows(
            f"SELECT {_MESSAGE_COLUMNS} FROM messages"
            " WHERE conversation_id = :conversation_id AND id > :after_id ORDER BY id",
            {"conversation_id": conversation_id, "after_id": after_id},
        )
        return [_message(row) for row in rows]

    async def recent_messages(
        self, conversation_id: int, *, limit: int, before_id: int = MAX_ID
    ) -> list[Message]:
        """The conversation's newest `limit` messages before `before_id`, oldest first: a page of
        it, or the history for a new turn."""
        rows = await self._db.rows(
            f"SELECT {_MESSAGE_COLUMNS} FROM messages"
            " WHERE conversation_id = :conversation_id AND id < :before_id ORDER BY id DESC LIMIT :limit",
            {"conversation_id": conversation_id, "before_id": before_id, "limit": limit},
        )
        return [_message(row) for row in reversed(rows)]

    async def history(self, conversation_id: int, *, limit: int, before_id: int = MAX_ID) -> list[Message]:
        """What a provider is sent of the conversation so far: its newest `limit` messages
        before `before_id` that were not replaced (regenerated or edited), oldest first."""
        rows = await self._db.rows(
            f"SELECT {_MESSAGE_COLUMNS} FROM messages m"
            " WHERE conversation_id = :conversation_id AND id < :before_id"
            f" AND {current('m')} ORDER BY id DESC LIMIT :limit",
            {"conversation_id": conversation_id, "before_id": before_id, "limit": limit},
        )
        return [_message(row) for row in reversed(rows)]

    async def newest_current(self, conversation_id: int) -> dict[str, Message]:
        """The conversation's newest message of each role that was not replaced, by role: the
        only ones that may be (`chat.store_rewrites`)."""
        rows = await self._db.rows(
            f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE id IN (SELECT max(m.id) FROM messages m"
            f" WHERE m.conversation_id = :conversation_id AND {current('m')} GROUP BY m.role)",
            {"conversation_id": conversation_id},
        )
        return {row["role"]: _message(row) for row in rows}

    async def find_turn(
        self, user_id: str, idempotency_key: str
    ) -> tuple[Message, Message, str | None] | None:
        """The user message stored under this key, the assistant message that answers it, and
        the hash of what was asked with the key, in a conversation `user_id` owns or is a member
        of. Keys are stored as given: callers scope them (to their user)."""
        rows = await self._db.rows(
            f"SELECT {_M_MESSAGE_COLUMNS}, k.request_hash"
            " FROM messages k JOIN conversations c ON c.id = k.conversation_id"
            " JOIN messages m ON m.conversation_id = k.conversation_id AND m.id >= k.id"
            f" WHERE k.idempotency_key = :key AND {VISIBLE}"
            " ORDER BY m.id LIMIT 2",
            {"user_id": user_id, "key": idempotency_key},
        )
        if len(rows) < 2:
            return None
        request_hash: str | None = rows[0]["request_hash"]
        return _message(rows[0]), _message(rows[1]), request_hash
