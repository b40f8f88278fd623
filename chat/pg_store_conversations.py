"""The conversation and member statements of `chat.pg_store.PgStore`, in PostgreSQL's SQL:
the twins of `chat.store_conversations`, with the same behaviour (who may see and change
what, the keyset-paginated list in two halves), and its parameters numbered ($1) rather
than named. `PgStore` takes them in as a base class.
"""

from __future__ import annotations

import asyncpg  # type: ignore[import-untyped]  # it ships no types

from .database import ConversationGone, now
from .pg_database import PgDatabase
from .records import Conversation


def visible(user: str) -> str:
    """SQL: the row `c` of conversations is the user in parameter `user` ($n)'s to read: they
    own it or are a member."""
    return (
        f"(c.user_id = {user} OR EXISTS"
        f" (SELECT 1 FROM members s WHERE s.conversation_id = c.id AND s.user_id = {user}))"
    )


_COLUMNS = """
    c.id, c.user_id, c.title, c.system, c.provider, c.model, c.created_at, c.updated_at,
    (SELECT count(*) FROM messages m WHERE m.conversation_id = c.id) AS message_count,
    (SELECT max(m.created_at) FROM messages m WHERE m.conversation_id = c.id) AS last_message_at
"""
# $1 the user, $2 and $3 the (updated_at, id) of the last row seen, $4 the page size.
_BEFORE = "(o.updated_at < $2 OR (o.updated_at = $2 AND o.id < $3))"
_NEWEST = "ORDER BY o.updated_at DESC, o.id DESC LIMIT $4"


def _conversation(row: asyncpg.Record) -> Conversation:
    return Conversation(**dict(row))


class PgConversationStore:
    _pg: PgDatabase

    async def create_conversation(
        self,
        user_id: str,
        *,
        title: str | None = None,
        system: str | None = None,
        provider: str | None = None,
        model: str | None = None,
    ) -> Conversation:
        rows = await self._pg.written(
            "INSERT INTO conversations (user_id, title, system, provider, model, created_at, updated_at)"
            " VALUES ($1, $2, $3, $4, $5, $6, $6)"
            " RETURNING id, user_id, title, system, provider, model, created_at, updated_at",
            user_id,
            title,
            system,
            provider,
            model,
            now(),
        )
        return _conversation(rows[0])

    async def get_conversation(self, user_id: str, conversation_id: int) -> Conversation | None:
        """The conversation, if `user_id` owns it or is a member; its `user_id` is the owner's."""
        rows = await self._pg.rows(
            f"SELECT {_COLUMNS} FROM conversations c WHERE c.id = $1 AND {visible('$2')}",
            conversation_id,
            user_id,
        )
        return _conversation(rows[0]) if rows else None

    async def list_conversations(
        self, user_id: str, *, limit: int, before: tuple[str, int] | None = None
    ) -> list[Conversation]:
        """The user's own and shared conversations, newest activity first; `before` is the
        (updated_at, id) of the last row seen."""
        updated_at, last_id = before or ("\uffff", 2**62)
        rows = await self._pg.rows(
            f"SELECT {_COLUMNS} FROM conversations c WHERE c.id IN ("
            f" SELECT id FROM (SELECT o.id FROM conversations o"
            f"  WHERE o.user_id = $1 AND {_BEFORE} {_NEWEST}) mine"
            " UNION ALL"
            f" SELECT id FROM (SELECT o.id FROM members s JOIN conversations o ON o.id = s.conversation_id"
            f"  WHERE s.user_id = $1 AND {_BEFORE} {_NEWEST}) shared"
            ") ORDER BY c.updated_at DESC, c.id DESC LIMIT $4",
            user_id,
            updated_at,
            last_id,
            limit,
        )
        return [_conversation(row) for row in rows]

    async def update_conversation(
        self, user_id: str, conversation_id: int, changes: dict[str, str | None]
    ) -> Conversation | None:
        """Changes only the owner's; answers the conversation as `user_id` may see it."""
        allowed = {"title", "system", "provider", "model"}
        assert changes.keys() <= allowed, changes
        if changes:
            sets = ", ".join(f"{column} = ${n}" for n, column in enumerate(changes, start=4))
            await self._pg.write(
                f"UPDATE conversations SET {sets}, updated_at = $3 WHERE id = $1 AND user_id = $2",
                conversation_id,
                user_id,
                now(),
                *changes.values(),
            )
        return await self.get_conversation(user_id, conversation_id)

    async def delete_conversation(self, user_id: str, conversation_id: int) -> bool:
        """Only the owner's; its messages and members go with it."""
        deleted = await self._pg.write(
            "DELETE FROM conversations WHERE id = $1 AND user_id = $2", conversation_id, user_id
        )
        return deleted > 0

    # -- members ----------------------------------------------------------------------

    async def members(self, conversation_id: int) -> list[str]:
        """Its members' user ids, sorted; the owner is not one."""
        rows = await self._pg.rows(
            'SELECT user_id FROM members WHERE conversation_id = $1 ORDER BY user_id COLLATE "C"',
            conversation_id,
        )
        return [row["user_id"] for row in rows]

    async def add_member(self, conversation_id: int, user_id: str) -> bool:
        """False when `user_id` was a member already. The caller keeps the owner out."""
        try:
            added = await self._pg.write(
                "INSERT INTO members (conversation_id, user_id, added_at) VALUES ($1, $2, $3)"
                " ON CONFLICT DO NOTHING",
                conversation_id,
                user_id,
                now(),
            )
        except asyncpg.ForeignKeyViolationError:
            raise ConversationGone(conversation_id) from None
        return added > 0

    async def remove_member(self, conversation_id: int, user_id: str) -> bool:
        """False when `user_id` was not a member."""
        removed = await self._pg.write(
            "DELETE FROM members WHERE conversation_id = $1 AND user_id = $2", conversation_id, user_id
        )
        return removed > 0
