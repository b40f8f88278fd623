from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from chat import events
from chat.store import ConversationGone, KeyTaken, Store
from tests.backends import Backend

pytestmark = pytest.mark.anyio


async def test_schema_applies_twice_and_sets_wal_and_foreign_keys(tmp_path: Path) -> None:
    path = str(tmp_path / "chat.db")
    for _ in range(2):
        store = await Store.open(path)
        await store.close()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"conversations", "messages"} <= tables


async def test_turn_then_finish_writes_the_reply_once(store: Store) -> None:
    conversation = await store.create_conversation("local")
    user, reply = await store.start_turn(
        conversation.id, "hello", metadata={"provider": "demo", "model": "m"}
    )
    assert (user.status, reply.status, reply.content) == ("completed", "streaming", "")

    await store.finish_message(
        reply.id, status="completed", content="hi!", metadata={"finish_reason": "stop"}, last_event_id=4
    )
    await store.finish_message(reply.id, status="failed", content="late", metadata={}, last_event_id=9)

    stored = await store.get_message("local", reply.id)
    assert stored is not None
    assert (stored.status, stored.content, stored.metadata, stored.last_event_id) == (
        "completed",
        "hi!",
        {"finish_reason": "stop"},
        4,
    )
    assert stored.completed_at is not None
    activity = await store.get_conversation("local", conversation.id)
    assert activity is not None and activity.updated_at == stored.completed_at  # the schema's trigger
    assert activity.message_count == 2


async def test_rows_left_streaming_become_interrupted(backend: Backend) -> None:
    store = await backend.open()
    conversation = await store.create_conversation("local")
    _, reply = await store.start_turn(conversation.id, "hello", metadata={})
    await store.close()

    reopened = await backend.open()
    assert await reopened.interrupt_streaming(events.INTERRUPTED) == 1
    stored = await reopened.get_message("local", reply.id)
    assert stored is not None and stored.status == "interrupted"
    assert stored.metadata["error"] == events.INTERRUPTED
    assert stored.completed_at is not None
    assert await reopened.interrupt_streaming(events.INTERRUPTED) == 0
    await reopened.close()


async def test_delete_cascades_to_messages(store: Store) -> None:
    conversation = await store.create_conversation("local")
    user, reply = await store.start_turn(conversation.id, "hello", metadata={})
    assert await store.delete_conversation("local", conversation.id)
    assert await store.get_message("local", user.id) is None
    assert await store.list_messages(conversation.id) == []


async def test_turn_in_a_missing_conversation_is_refused(store: Store) -> None:
    with pytest.raises(ConversationGone):
        await store.start_turn(12345, "hello", metadata={})
    assert await store.list_messages(12345) == []


async def test_another_users_rows_are_invisible(store: Store) -> None:
    conversation = await store.create_conversation("alice")
    _, reply = await store.start_turn(conversation.id, "hello", metadata={})
    assert await store.get_conversation("bob", conversation.id) is None
    assert await store.get_message("bob", reply.id) is None
    assert not await store.delete_conversation("bob", conversation.id)
    assert await store.list_conversations("bob", limit=10) == []


async def test_idempotency_key_finds_the_first_turn(store: Store) -> None:
    conversation = await store.create_conversation("local")
    user, reply = await store.start_turn(conversation.id, "hello", metadata={}, idempotency_key="local:k1")
    found = await store.find_turn("local", "local:k1")
    assert found is not None and (found[0].id, found[1].id) == (user.id, reply.id)
    with pytest.raises(KeyTaken):
        await store.start_turn(conversation.id, "hello", metadata={}, idempotency_key="local:k1")
    assert len(await store.list_messages(conversation.id)) == 2
    assert await store.find_turn("bob", "local:k1") is None


async def test_a_turn_under_a_key_keeps_the_hash_of_what_was_asked(store: Store) -> None:
    conversation = await store.create_conversation("local")
    user, reply = await store.start_turn(
        conversation.id, "hello", metadata={}, idempotency_key="local:k1", request_hash="abc"
    )
    found = await store.find_turn("local", "local:k1")
    assert found is not None and (found[0].id, found[1].id, found[2]) == (user.id, reply.id, "abc")
    assert found[0].metadata == {}  # the hash is not part of the message a client sees


async def test_an_older_database_gains_the_columns_added_since(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as db:  # a messages table from before request_hash and user_id
        db.execute(
            "CREATE TABLE conversations (id INTEGER PRIMARY KEY, user_id TEXT NOT NULL DEFAULT 'local',"
            " title TEXT, system TEXT, provider TEXT, model TEXT, created_at TEXT NOT NULL, updated_at TEXT NOT NULL)"
        )
        db.execute(
            "CREATE TABLE messages (id INTEGER PRIMARY KEY, conversation_id INTEGER NOT NULL"
            " REFERENCES conversations (id) ON DELETE CASCADE, role TEXT NOT NULL, content TEXT NOT NULL DEFAULT '',"
            " status TEXT NOT NULL, metadata TEXT NOT NULL DEFAULT '{}', last_event_id INTEGER NOT NULL DEFAULT 0,"
            " idempotency_key TEXT, created_at TEXT NOT NULL, completed_at TEXT)"
        )
    store = await Store.open(str(path))
    try:
        conversation = await store.create_conversation("local")
        await store.start_turn(
            conversation.id, "hi", metadata={}, idempotency_key="local:k", request_hash="h", author="local"
        )
        found = await store.find_turn("local", "local:k")
        assert found is not None and found[2] == "h" and found[0].user_id == "local"
    finally:
        await store.close()


async def test_recent_messages_are_the_last_ones_oldest_first(store: Store) -> None:
    conversation = await store.create_conversation("local")
    for text in ("one", "two", "three"):
        await store.start_turn(conversation.id, text, metadata={})
    recent = await store.recent_messages(conversation.id, limit=3)
    assert [(m.role, m.content) for m in recent] == [("assistant", ""), ("user", "three"), ("assistant", "")]


async def test_a_member_reads_what_the_owner_does_but_changes_nothing(store: Store) -> None:
    conversation = await store.create_conversation("alice", title="plans")
    user, reply = await store.start_turn(conversation.id, "hello", metadata={}, idempotency_key="bob:k1")
    assert await store.add_member(conversation.id, "bob")

    shared = await store.get_conversation("bob", conversation.id)
    assert shared is not None and shared.user_id == "alice"  # still the owner's
    assert shared.message_count == 2
    message = await store.get_message("bob", reply.id)
    assert message is not None and message.id == reply.id
    found = await store.find_turn("bob", "bob:k1")
    assert found is not None and (found[0].id, found[1].id) == (user.id, reply.id)
    assert [c.id for c in await store.list_conversations("bob", limit=10)] == [conversation.id]

    assert not await store.delete_conversation("bob", conversation.id)
    assert await store.update_conversation("bob", conversation.id, {"title": "mine"}) == shared
    for stranger in ("carol", "bo", "%"):
        assert await store.get_conversation(stranger, conversation.id) is None
        assert await store.get_message(stranger, reply.id) is None
        assert await store.find_turn(stranger, "bob:k1") is None
        assert await store.list_conversations(stranger, limit=10) == []


async def test_members_are_added_once_listed_sorted_and_removed(store: Store) -> None:
    conversation = await store.create_conversation("alice")
    assert await store.members(conversation.id) == []
    assert await store.add_member(conversation.id, "carol")
    assert await store.add_member(conversation.id, "bob")
    assert not await store.add_member(conversation.id, "bob")
    assert await store.members(conversation.id) == ["bob", "carol"]

    assert await store.remove_member(conversation.id, "carol")
    assert not await store.remove_member(conversation.id, "carol")
    assert not await store.remove_member(conversation.id, "alice")  # the owner is not a member
    assert await store.members(conversation.id) == ["bob"]
    assert await store.get_conversation("carol", conversation.id) is None


async def test_a_member_of_a_missing_conversation_is_refused(store: Store) -> None:
    with pytest.raises(ConversationGone):
        await store.add_member(12345, "bob")


async def test_a_deleted_conversations_members_go_with_it(store: Store, backend: Backend) -> None:
    conversation = await store.create_conversation("alice")
    await store.add_member(conversation.id, "bob")
    assert await store.delete_conversation("alice", conversation.id)
    assert await backend.scalar("SELECT count(*) FROM members") == 0
    again = await store.create_conversation("alice")
    # SQLite hands the id out again (Postgres does not) ...
    assert (again.id == conversation.id) == (backend.kind == "sqlite")
    assert await store.get_conversation("bob", again.id) is None  # ... but not its members


async def test_the_list_merges_own_and_shared_conversations_by_activity(
    store: Store, backend: Backend
) -> None:
    mine = [await store.create_conversation("bob") for _ in range(3)]
    shared = [await store.create_conversation("alice") for _ in range(3)]
    for conversation in shared:
        await store.add_member(conversation.id, "bob")
    await store.create_conversation("alice")  # not shared
    # Activity times set outright (a turn's are too close to order by); two tie, across halves.
    order = [mine[2], shared[1], mine[0], shared[2], mine[1], shared[0]]
    stamps = ["2024-01-06", "2024-01-05", "2024-01-04", "2024-01-04", "2024-01-02", "2024-01-01"]
    for conversation, stamp in zip(order, stamps, strict=True):
        await backend.execute("UPDATE conversations SET updated_at = ? WHERE id = ?", stamp, conversation.id)
    assert shared[2].id > mine[0].id  # so the tie goes to the shared one first

    pages: list[list[int]] = []
    before = None
    while page := await store.list_conversations("bob", limit=4, before=before):
        pages.append([c.id for c in page])
        before = (page[-1].updated_at, page[-1].id)
    ids = [c.id for c in order]
    assert pages == [[ids[0], ids[1], ids[3], ids[2]], ids[4:]]
