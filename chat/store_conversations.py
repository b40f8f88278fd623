"""The conversation and member statements of `chat.store.Store`, kept here so neither module
grows past a screenful of SQL; `Store` takes them in as a base class, and is still the one
object every statement goes through.

Deliberate choices:
- A conversation has one owner (its `user_id`) and any number of members (the `members`
  table; the owner is never one). A read is allowed to either (`VISIBLE`, in SQL); renaming
  and deleting still name the owner in their WHERE, so a member's call changes nothing even
  if a route forgot to refuse it.
- A user's list is two keyset-paginated halves, owned and shared, each cut to the page size
  before they are merged: a page costs what it did before sharing, however many
  conversations the user has.
"""

from __future__ import annotations

import sqlite3

from .database import ConversationGone, Database, now
from .records import Conversation

# The row `c` of conversations is `:user_id`'s to read: they own it or are a member.
VISIBLE = (
    "(c.user_id = :user_id OR EXISTS"
    " (SELECT 1 FROM members s WHERE s.conversation_id = c.id AND s.user_id = :user_id))"
)

_COLUMNS = """
    c.id, c.user_id, c.title, c.system, c.provider, c.model, c.created_at, c.updated_at,
    (SELECT count(*) FROM messages m WHERE m.conversation_id = c.id) AS message_count,
    (SELECT max(m.created_at) FROM messages m WHERE m.conversation_id = c.id) AS last_message_at
"""
_BEFORE = "(o.updated_at < :updated_at OR (o.updated_at = :updated_at AND o.id < :id))"
_NEWEST = "ORDER BY o.updated_at DESC, o.id DESC LIMIT :limit"


def _conversation(row: sqlite3.Row) -> Conversation:
    return Conversation(**dict(row))


class ConversationStore:
    _db: Database

    async def create_conversation(
        self,
        user_id: str,
        *,
        title: str | None = None,
        system: str | None = None,
        provider: str | None = None,
        model: str | None = None,
    ) -> Conversation:
        rows = await self._db.written(
            "INSERT INTO conversations"
            " (user_id, title, system, provider, model, created_at, updated_at)"
            " VALUES (:user_id, :title, :system, :provider, :model, :now, :now)"
            " RETURNING id, user_id, title, system, provider, model, created_at, updated_at",
            {
                "user_id": user_id,
                "title": title,
                "system": system,
                "provider": provider,
                "model": model,
                "now": now(),
            },
        )
        return _conversation(rows[0])

    async def get_conversation(self, user_id: str, conversation_id: int) -> Conversation | None:
        """The conversation, if `user_id` owns it or is a member; its `user_id` is the owner's."""
        rows = await self._db.rows(
            f"SELECT {_COLUMNS} FROM conversations c WHERE c.id = :id AND {VISIBLE}",
            {"id": conversation_id, "user_id": user_id},
        )
        return _conversation(rows[0]) if rows else None

    async def list_conversations(
        self, user_id: str, *, limit: int, before: tuple[str, int] | None = None
    ) -> list[Conversation]:
        """The user's own and shared conversations, newest activity first; `before` is the
        (updated_at, id) of the last row seen."""
        updated_at, last_id = before or ("\uffff", 2**62)
        rows = await self._db.rows(
            f"SELECT {_COLUMNS} FROM conversations c WHERE c.id IN ("
            f" SELECT id FROM (SELECT o.id FROM conversations o"
            f"  WHERE o.user_id = :user_id AND {_BEFORE} {_NEWEST})"
            " UNION ALL"
            f" SELECT id FROM (SELECT o.id FROM members s JOIN conversations o ON o.id = s.conversation_id"
            f"  WHERE s.user_id = :user_id AND {_BEFORE} {_NEWEST})"
            ") ORDER BY c.updated_at DESC, c.id DESC LIMIT :limit",
            {"user_id": user_id, "updated_at": updated_at, "id": last_id, "limit": limit},
        )
        return [_conversation(row) for row in rows]

    async def update_conversation(
        self, user_id: str, conversation_id: int, changes: dict[str, str | None]
    ) -> Conversation | None:
        """Changes only the owner's; answers the conversation as `user_id` may see it."""
        allowed = {"title", "system", "provider", "model"}
        assert changes.keys() <= allowed, changes
        if changes:
            sets = ", ".join(f"{column} = :{column}" for column in changes)
            await self._db.write(
                f"UPDATE conversations SET {sets}, updated_at = :now WHERE id = :id AND user_id = :user_id",
                {**changes, "now": now(), "id": conversation_id, "user_id": user_id},
            )
        return await self.get_conversation(user_id, conversation_id)

    async def delete_conversation(self, user_id: str, conversation_id: int) -> bool:
        """Only the owner's; its messages and members go with it."""
        deleted = await self._db.write(
            "DELETE FROM conversations WHERE id = :id AND user_id = :user_id",
            {"id": conversation_id, "user_id": user_id},
        )
        return deleted > 0

    # -- members ----------------------------------------------------------------------

    async def members(self, conversation_id: int) -> list[str]:
        """Its members' user ids, sorted; the owner is not one."""
        rows = await self._db.rows(
            "SELECT user_id FROM members WHERE conversation_id = :id ORDER BY user_id",
            {"id": conversation_id},
        )
        return [row["user_id"] for row in rows]

    async def add_member(self, conversation_id: int, user_id: str) -> bool:
        """False when `user_id` was a member already. The caller keeps the owner out."""
        try:
            added = await self._db.write(
                "INSERT INTO members (conversation_id, user_id, added_at) VALUES (:id, :user_id, :now)"
                " ON CONFLICT DO NOTHING",
                {"id": conversation_id, "user_id": user_id, "now": now()},
            )
        except sqlite3.IntegrityError as exc:
            if "FOREIGN KEY" in str(exc):
                raise ConversationGone(conversation_id) from None
            raise
        return added > 0

    async def remove_member(self, conversation_id: int, user_id: str) -> bool:
        """False when `user_id` was not a member."""
        removed = await self._db.write(
            "DELETE FROM members WHERE conversation_id = :id AND user_id = :user_id",
            {"id": conversation_id, "user_id": user_id},
        )
        return removed > 0
