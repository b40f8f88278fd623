"""The store that keeps nothing (SIDECHAT_STORE=none): what a live reply needs, for as long
as its replay window, and nothing else; and the whole service over it, with no HTTP."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest

from chat.config import Settings
from chat.database import ConversationGone, KeyTaken, NotLatest
from chat.services import open_services
from chat.store import Store
from chat.store_none import LINGER_SECONDS, MemoryStore, NoDatabase, clock_ids
from chat.turns import TurnRequest, accept_turn
from chat.usage import spent_since, usage_report
from tests.live import until

pytestmark = pytest.mark.anyio

DONE = {"status": "completed", "content": "hello", "metadata": {"finish_reason": "stop"}, "last_event_id": 3}


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def memory(clock: Clock, keep: float = 5.0) -> MemoryStore:
    return MemoryStore(keep_seconds=keep, clock=clock, first_id=100)


def test_every_method_of_the_store_is_its_own() -> None:
    # One the memory store inherited would reach for a database it does not have.
    public = {
        name
        for klass in Store.__mro__
        if klass is not object
        for name, value in vars(klass).items()
        if not name.startswith("_") and inspect.iscoroutinefunction(getattr(value, "__func__", value))
    }
    assert {"open", "start_turn", "create_conversation", "regenerate_reply"} <= public
    assert sorted(public - set(vars(MemoryStore))) == []


async def test_it_is_never_opened_on_a_path(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="opens no database"):
        await MemoryStore.open(str(tmp_path / "chat.db"))
    assert list(tmp_path.iterdir()) == []


async def test_a_turn_has_increasing_ids_and_only_its_asker_sees_it() -> None:
    store = memory(Clock())
    asked, reply = await store.start_turn(7, "hi", metadata={"provider": "demo"}, author="alice")
    again, second = await store.start_turn(8, "hey", metadata={}, author="alice")

    assert 100 < asked.id < reply.id < again.id < second.id
    assert (reply.conversation_id, reply.role, reply.status, reply.content) == (
        7,
        "assistant",
        "streaming",
        "",
    )
    assert (asked.role, asked.content, asked.user_id, asked.status) == ("user", "hi", "alice", "completed")
    assert await store.get_message("alice", reply.id) == reply
    assert await store.get_message("alice", asked.id) == asked
    assert await store.get_message("bob", reply.id) is None
    assert await store.get_message("alice", 99_999) is None


async def test_a_running_reply_is_kept_however_long_it_runs() -> None:
    clock = Clock()
    store = memory(clock)
    _, reply = await store.start_turn(1, "hi", metadata={}, idempotency_key="alice:k", author="alice")
    clock.now += 10_000

    found = await store.get_message("alice", reply.id)
    assert found is not None and found.status == "streaming"
    assert await store.find_turn("alice", "alice:k") is not None


async def test_a_finished_reply_is_kept_for_its_window_then_forgotten() -> None:
    clock = Clock()
    store = memory(clock, keep=5.0)
    asked, reply = await store.start_turn(1, "hi", metadata={}, idempotency_key="alice:k", author="alice")
    await store.finish_message(reply.id, **DONE)  # type: ignore[arg-type]

    clock.now += 4.9
    finished = await store.get_message("alice", reply.id)
    assert finished is not None
    assert (finished.status, finished.content, finished.last_event_id) == ("completed", "hello", 3)
    assert finished.metadata == {"finish_reason": "stop"} and finished.completed_at is not None
    assert await store.find_turn("alice", "alice:k") == (asked, finished, None)

    clock.now += 0.1
    assert await store.get_message("alice", reply.id) is None
    assert await store.get_message("alice", asked.id) is None
    assert await store.find_turn("alice", "alice:k") is None
    assert store.held == {"turns": 0, "keys": 0, "ended": 0}


async def test_memory_stays_bounded_over_many_replies() -> None:
    clock = Clock()
    store = memory(clock, keep=1.0)
    most = 0
    for number in range(5000):
        _, reply = await store.start_turn(
            number, "hi", metadata={}, idempotency_key=f"alice:{number}", author="alice"
        )
        await store.finish_message(reply.id, **DONE)  # type: ignore[arg-type]
        clock.now += 0.01  # a hundred replies a second, each kept for a second
        most = max(most, store.held["turns"], store.held["keys"])
    assert 90 <= most <= 101
    clock.now += 1.0
    assert store.held == {"turns": 0, "keys": 0, "ended": 0}


async def test_a_key_is_taken_while_its_turn_is_kept_and_free_after() -> None:
    clock = Clock()
    store = memory(clock, keep=1.0)
    asked, reply = await store.start_turn(
        1, "hi", metadata={}, idempotency_key="alice:k", request_hash="h", author="alice"
    )
    with pytest.raises(KeyTaken):
        await store.start_turn(2, "hi", metadata={}, idempotency_key="alice:k", author="alice")
    assert await store.find_turn("alice", "alice:k") == (asked, reply, "h")
    assert await store.find_turn("bob", "alice:k") is None  # another user's
    await store.finish_message(reply.id, **DONE)  # type: ignore[arg-type]
    clock.now += 1.0

    await store.start_turn(3, "hi", metadata={}, idempotency_key="alice:k")
    assert store.held["keys"] == 1


async def test_only_a_streaming_reply_takes_an_end() -> None:
    store = memory(Clock())
    asked, reply = await store.start_turn(1, "hi", metadata={}, author="alice")
    await store.finish_message(reply.id, **DONE)  # type: ignore[arg-type]
    await store.finish_message(reply.id, **{**DONE, "status": "failed", "content": "later"})  # type: ignore[arg-type]
    await store.finish_message(asked.id, **DONE)  # type: ignore[arg-type]
    await store.finish_message(12345, **DONE)  # type: ignore[arg-type]

    finished = await store.get_message("alice", reply.id)
    assert finished is not None and (finished.status, finished.content) == ("completed", "hello")
    assert await store.get_message("alice", asked.id) == asked
    assert store.held["ended"] == 1


async def test_a_checkpoint_changes_nothing() -> None:
    store = memory(Clock())
    _, reply = await store.start_turn(1, "hi", metadata={}, author="alice")
    await store.checkpoint_message(reply.id, "partial")
    assert await store.get_message("alice", reply.id) == reply


async def test_a_lone_utf16_half_is_replaced_as_the_database_would() -> None:
    store = memory(Clock())
    _, reply = await store.start_turn(1, "hi", metadata={}, author="alice")
    await store.finish_message(reply.id, **{**DONE, "content": "ok \ud83d"})  # type: ignore[arg-type]
    finished = await store.get_message("alice", reply.id)
    assert finished is not None and finished.content == "ok \ufffd"


async def test_what_it_answers_is_the_callers_own() -> None:
    store = memory(Clock())
    _, reply = await store.start_turn(1, "hi", metadata={"provider": "demo"}, author="alice")
    reply.metadata["provider"] = "changed"
    found = await store.get_message("alice", reply.id)
    assert found is not None
    found.metadata["model"] = "changed"
    again = await store.get_message("alice", reply.id)
    assert again is not None and again.metadata == {"provider": "demo"}


async def test_no_conversation_is_kept() -> None:
    store = memory(Clock())
    first = await store.create_conversation("alice", title="t", system="s", provider="demo", model="m")
    second = await store.create_conversation("alice")
    assert 100 < first.id < second.id
    assert (first.user_id, first.title, first.system, first.provider, first.model) == (
        "alice",
        "t",
        "s",
        "demo",
        "m",
    )

    assert await store.get_conversation("alice", first.id) is None
    assert await store.list_conversations("alice", limit=20) == []
    assert await store.update_conversation("alice", first.id, {"title": "new"}) is None
    assert await store.delete_conversation("alice", first.id) is False
    assert await store.members(first.id) == []
    with pytest.raises(ConversationGone):
        await store.add_member(first.id, "bob")
    assert await store.remove_member(first.id, "bob") is False


async def test_no_history_and_no_turn_to_replace() -> None:
    store = memory(Clock())
    asked, reply = await store.start_turn(1, "hi", metadata={}, author="alice")
    assert await store.history(1, limit=40) == []
    assert await store.recent_messages(1, limit=20) == []
    assert await store.list_messages(1) == []
    assert await store.newest_current(1) == {}
    with pytest.raises(NotLatest):
        await store.regenerate_reply(reply.id, metadata={})
    with pytest.raises(NotLatest):
        await store.edit_turn(asked.id, reply.id, "again", metadata={})


async def test_nothing_was_left_running_and_closing_forgets_all() -> None:
    store = memory(Clock())
    await store.start_turn(1, "hi", metadata={}, idempotency_key="alice:k", author="alice")
    assert await store.interrupt_streaming({"type": "interrupted"}) == 0
    assert await store.ping()
    await store.close()
    assert store.held == {"turns": 0, "keys": 0, "ended": 0}


async def test_ids_start_from_the_clock_so_a_restart_gives_none_out_again() -> None:
    before = clock_ids()
    earlier = MemoryStore(keep_seconds=1.0)
    _, last = await earlier.start_turn(1, "hi", metadata={})
    later = MemoryStore(keep_seconds=1.0)
    first, _ = await later.start_turn(1, "hi", metadata={})
    assert before < last.id < 2**53
    assert (await later.create_conversation("alice")).id > before
    assert first.id > before


async def test_its_database_reads_nothing_and_refuses_writes() -> None:
    database = NoDatabase()
    assert await database.rows("SELECT 1", {}) == []
    assert await database.ping()
    with pytest.raises(RuntimeError, match="SIDECHAT_STORE=none"):
        await database.write("DELETE FROM messages", {})
    with pytest.raises(RuntimeError, match="SIDECHAT_STORE=none"):
        await database.written("INSERT INTO messages DEFAULT VALUES RETURNING id", {})
    await database.close()


async def test_usage_reports_nothing_stored() -> None:
    store = memory(Clock())
    report = await usage_report(store, "alice", "2026-01-01", None)
    assert report["usage"] == [] and report["total"]["replies"] == 0
    assert await spent_since(store, "alice", "2026-01-01T00:00:00.000Z") == (0, 0.0)


# -- the service over it -----------------------------------------------------------------


def relay_settings(tmp_path: Path, **changes: object) -> Settings:
    values: dict[str, object] = {
        "store": "none",
        "db": str(tmp_path / "chat.db"),
        "provider": "demo",
        "demo_delay": 0.0,
        "rate_limit": (10_000, 60.0),
        **changes,
    }
    return Settings(**values)  # type: ignore[arg-type]


async def test_a_database_in_a_missing_directory_is_never_opened(tmp_path: Path) -> None:
    settings = relay_settings(tmp_path, db=str(tmp_path / "missing" / "chat.db"))
    async with open_services(settings) as services:
        accepted = await accept_turn(services, TurnRequest(user="alice", message="hi"))
        generation = services.generations.get(accepted.reply.id)
        assert generation is not None
        await generation.finished.wait()
        finished = await services.store.get_message("alice", accepted.reply.id)
        assert finished is not None and finished.status == "completed" and finished.content
    assert list(tmp_path.iterdir()) == []


async def test_the_service_forgets_its_replies_after_many(tmp_path: Path) -> None:
    async with open_services(relay_settings(tmp_path, replay_seconds=0.0)) as services:
        store = services.store
        assert isinstance(store, MemoryStore)
        for number in range(200):
            ask = TurnRequest(user="alice", message=f"hi {number}", idempotency_key=str(number))
            accepted = await accept_turn(services, ask)
            generation = services.generations.get(accepted.reply.id)
            if generation is not None:
                await generation.finished.wait()
        assert services.generations.running == 0
        # With no replay window, a moment after the last ended nothing of any of them is left.
        await until(
            lambda: store.held == {"turns": 0, "keys": 0, "ended": 0},
            timeout=LINGER_SECONDS + 10,
            what="the replies to be forgotten",
        )
        assert services.broker.get(f"message:{accepted.reply.id}") is None
        assert await store.find_turn("alice", "alice:0") is None
