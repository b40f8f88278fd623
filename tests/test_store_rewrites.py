"""Replacing a turn in the store: new rows and the marks on the old ones in one write."""

from __future__ import annotations

import pytest

from chat.records import Message
from chat.store import NotLatest, Store
from tests.backends import Backend

pytestmark = pytest.mark.anyio


async def finish(store: Store, reply: Message, text: str, status: str = "completed") -> None:
    await store.finish_message(
        reply.id, status=status, content=text, metadata=reply.metadata, last_event_id=3
    )


async def turn(store: Store, conversation_id: int, text: str, answer: str) -> tuple[Message, Message]:
    asked, reply = await store.start_turn(conversation_id, text, metadata={"provider": "p"}, author="alice")
    await finish(store, reply, answer)
    return asked, reply


async def rows(store: Store, conversation_id: int) -> list[tuple[int, str, str, dict[str, object]]]:
    return [(m.id, m.role, m.content, m.metadata) for m in await store.list_messages(conversation_id)]


def marks(message: tuple[int, str, str, dict[str, object]]) -> dict[str, object]:
    return {k: v for k, v in message[3].items() if k in ("supersedes", "superseded_by")}


async def test_a_regenerated_reply_replaces_the_old_one_which_stays_marked(store: Store) -> None:
    conversation = await store.create_conversation("alice")
    await turn(store, conversation.id, "one", "first")
    asked, old = await turn(store, conversation.id, "two", "second")

    new = await store.regenerate_reply(old.id, metadata={"provider": "p", "model": "m"})

    assert (new.role, new.status, new.content) == ("assistant", "streaming", "")
    assert new.metadata == {"provider": "p", "model": "m", "supersedes": old.id}
    stored = await store.list_messages(conversation.id)
    assert [m.id for m in stored][-3:] == [asked.id, old.id, new.id]
    assert stored[-2].metadata["superseded_by"] == new.id and stored[-2].content == "second"
    assert stored[-1] == new


async def test_only_the_latest_finished_reply_can_be_regenerated(store: Store) -> None:
    conversation = await store.create_conversation("alice")
    _, older = await turn(store, conversation.id, "one", "first")
    _, latest = await turn(store, conversation.id, "two", "second")
    before = await rows(store, conversation.id)
    with pytest.raises(NotLatest):
        await store.regenerate_reply(older.id, metadata={})
    new = await store.regenerate_reply(latest.id, metadata={})
    with pytest.raises(NotLatest):  # a twin of the request that just won
        await store.regenerate_reply(latest.id, metadata={})
    with pytest.raises(NotLatest):  # the new reply is still streaming
        await store.regenerate_reply(new.id, metadata={})
    after = await rows(store, conversation.id)
    assert len(after) == len(before) + 1
    await finish(store, new, "again", status="failed")
    assert (await store.regenerate_reply(new.id, metadata={})).metadata["supersedes"] == new.id


async def test_a_user_message_id_is_not_a_reply_to_regenerate(store: Store) -> None:
    conversation = await store.create_conversation("alice")
    asked, _ = await turn(store, conversation.id, "one", "first")
    with pytest.raises(NotLatest):
        await store.regenerate_reply(asked.id, metadata={})
    with pytest.raises(NotLatest):
        await store.regenerate_reply(12345, metadata={})


async def test_an_edit_replaces_the_message_and_its_reply_in_one_write(store: Store) -> None:
    conversation = await store.create_conversation("alice")
    await turn(store, conversation.id, "one", "first")
    old_asked, old_reply = await turn(store, conversation.id, "two", "second")

    asked, reply = await store.edit_turn(
        old_asked.id, old_reply.id, "two, better", metadata={"provider": "p"}, author="bob"
    )

    assert (asked.role, asked.content, asked.user_id, asked.metadata) == (
        "user",
        "two, better",
        "bob",
        {"supersedes": old_asked.id},
    )
    assert (reply.status, reply.metadata) == ("streaming", {"provider": "p", "supersedes": old_reply.id})
    assert asked.id < reply.id
    stored = await rows(store, conversation.id)
    assert [marks(m) for m in stored[2:]] == [
        {"superseded_by": asked.id},
        {"superseded_by": reply.id},
        {"supersedes": old_asked.id},
        {"supersedes": old_reply.id},
    ]
    assert (await store.list_messages(conversation.id))[-2:] == [asked, reply]


async def test_an_edit_after_a_regenerate_replaces_the_newest_reply(store: Store) -> None:
    conversation = await store.create_conversation("alice")
    old_asked, first = await turn(store, conversation.id, "one", "first")
    second = await store.regenerate_reply(first.id, metadata={})
    await finish(store, second, "second")
    with pytest.raises(NotLatest):  # not its reply any more
        await store.edit_turn(old_asked.id, first.id, "one!", metadata={})
    asked, reply = await store.edit_turn(old_asked.id, second.id, "one!", metadata={})
    stored = await rows(store, conversation.id)
    assert [marks(m) for m in stored] == [
        {"superseded_by": asked.id},
        {"superseded_by": second.id},
        {"supersedes": first.id, "superseded_by": reply.id},
        {"supersedes": old_asked.id},
        {"supersedes": second.id},
    ]


async def test_only_the_latest_user_message_can_be_edited_and_not_while_its_reply_streams(
    store: Store,
) -> None:
    conversation = await store.create_conversation("alice")
    older, older_reply = await turn(store, conversation.id, "one", "first")
    latest, streaming = await store.start_turn(conversation.id, "two", metadata={})
    before = await rows(store, conversation.id)
    for message, reply in ((older, older_reply), (latest, streaming), (streaming, None), (latest, None)):
        with pytest.raises(NotLatest):
            await store.edit_turn(message.id, reply.id if reply else None, "new", metadata={})
    assert await rows(store, conversation.id) == before
    await finish(store, streaming, "", status="cancelled")
    await store.edit_turn(latest.id, streaming.id, "new", metadata={})
    with pytest.raises(NotLatest):  # once edited, it is not the latest any more
        await store.edit_turn(latest.id, streaming.id, "newer", metadata={})


@pytest.mark.parametrize("which", ["user", "assistant"])
async def test_a_write_that_fails_while_marking_leaves_nothing_half_done(
    store: Store, backend: Backend, which: str
) -> None:
    conversation = await store.create_conversation("alice")
    old_asked, old_reply = await turn(store, conversation.id, "one", "first")
    before = await rows(store, conversation.id)
    await backend.refuse_marks(which)  # the database refuses one of the marks
    with pytest.raises(backend.refused):
        await store.edit_turn(old_asked.id, old_reply.id, "one!", metadata={})
    if which == "assistant":
        with pytest.raises(backend.refused):
            await store.regenerate_reply(old_reply.id, metadata={})
    assert await rows(store, conversation.id) == before


async def test_the_history_leaves_out_what_was_replaced(store: Store) -> None:
    conversation = await store.create_conversation("alice")
    first_asked, first = await turn(store, conversation.id, "one", "first")
    second = await store.regenerate_reply(first.id, metadata={})
    await finish(store, second, "again")
    asked, _ = await store.edit_turn(first_asked.id, second.id, "one!", metadata={})

    history = await store.history(conversation.id, limit=10)
    assert [(m.role, m.content) for m in history] == [("user", "one!"), ("assistant", "")]
    assert await store.history(conversation.id, limit=10, before_id=asked.id) == []
    assert len(await store.recent_messages(conversation.id, limit=10)) == 5  # what a client reads
    newest = await store.newest_current(conversation.id)
    assert {role: m.id for role, m in newest.items()} == {"user": asked.id, "assistant": asked.id + 1}
