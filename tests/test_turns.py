"""Accepting a turn, with a real store and scripted providers and no HTTP in sight."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from chat.broker import Broker
from chat.config import Settings
from chat.errors import (
    InvalidFields,
    KeyReused,
    NotFound,
    RateLimited,
    ServiceUnavailable,
    StorageUnavailable,
)
from chat.feeds import Feeds
from chat.keeping import Keeper
from chat.limits import Limits
from chat.providers import ProviderInfo
from chat.providers.base import Finish, Usage
from chat.records import Message
from chat.running import Generations
from chat.services import Services
from chat.store import Store
from chat.turns import TurnRequest, accept_turn, title_from
from tests.providers.fakes import ScriptedProvider

pytestmark = pytest.mark.anyio

DONE = Finish("stop", Usage(1, 1))


class Providers:
    def __init__(self) -> None:
        self.openai = ScriptedProvider(name="openai", default_model="gpt-4o-mini")
        self.anthropic = ScriptedProvider(name="anthropic", default_model="claude-sonnet-4-5")

    def reply(self, provider: ScriptedProvider, *texts: str) -> None:
        provider.scripts.append([*texts, DONE])

    def registry(self) -> dict[str, ProviderInfo]:
        return {
            "openai": ProviderInfo("openai", "gpt-4o-mini", "OPENAI_API_KEY", True, self.openai),
            "anthropic": ProviderInfo(
                "anthropic", "claude-sonnet-4-5", "ANTHROPIC_API_KEY", True, self.anthropic
            ),
            "gemini": ProviderInfo("gemini", "gemini-2.5-flash", "GEMINI_API_KEY", False, None),
        }


class VanishingStore(Store):
    """A store whose conversation is deleted between being read and the turn being stored."""

    async def history(self, conversation_id: int, *, limit: int, before_id: int = 0) -> list[Message]:
        await self.delete_conversation("alice", conversation_id)
        return []


@pytest.fixture
def providers() -> Providers:
    return Providers()


@asynccontextmanager
async def scripted_services(
    path: Path, providers: Providers, store_class: type[Store] = Store, **changes: Any
) -> AsyncIterator[Services]:
    """The whole service over a real store at `path`, its providers scripted."""
    settings = Settings(db=str(path), provider="openai", **changes)
    store = await store_class.open(settings.db)
    broker = Broker(retention=30)
    generations = Generations(broker, Keeper(store, checkpoint_seconds=0))
    feeds = Feeds(broker, settings)
    try:
        yield Services(settings, store, broker, generations, providers.registry(), Limits(settings), feeds)
    finally:
        await generations.begin_shutdown(grace=0)  # none outlives the store it writes to
        await store.close()


@pytest.fixture
async def app(
    tmp_path: Path, providers: Providers, request: pytest.FixtureRequest
) -> AsyncIterator[Services]:
    async with scripted_services(
        tmp_path / "chat.db", providers, **getattr(request, "param", {})
    ) as services:
        yield services


async def finished(app: Services, reply: Message) -> Message:
    generation = app.generations.get(reply.id)
    if generation is not None:
        await generation.finished.wait()
    message = await app.store.get_message("alice", reply.id)
    assert message is not None
    return message


@pytest.mark.parametrize(
    ("text", "title"),
    [("hi", "hi"), ("  many\n\nlines   here ", "many lines here"), ("x" * 60, "x" * 49 + "…")],
)
def test_title_from_first_message(text: str, title: str) -> None:
    assert title_from(text) == title


def test_the_fingerprint_is_of_what_was_asked_not_who_asked_or_under_which_key() -> None:
    asked = TurnRequest(user="alice", message="hi", temperature=0.5, idempotency_key="k1")
    assert asked.fingerprint() == TurnRequest(user="bob", message="hi", temperature=0.5).fingerprint()
    assert asked.fingerprint() != TurnRequest(user="alice", message="hi", temperature=0.6).fingerprint()
    assert asked.fingerprint() != TurnRequest(user="alice", message="hi!", temperature=0.5).fingerprint()


async def test_a_first_turn_creates_a_titled_conversation_and_runs(
    app: Services, providers: Providers
) -> None:
    providers.reply(providers.openai, "Hello")
    accepted = await accept_turn(app, TurnRequest(user="alice", message="Plan my trip"))
    assert accepted.reply.status == "streaming"
    conversation = await app.store.get_conversation("alice", accepted.conversation_id)
    assert conversation is not None and conversation.title == "Plan my trip"
    stored = await finished(app, accepted.reply)
    assert (stored.status, stored.content, stored.metadata["model"]) == ("completed", "Hello", "gpt-4o-mini")


async def test_the_next_turn_sends_the_conversation_so_far(app: Services, providers: Providers) -> None:
    providers.reply(providers.openai, "Paris")
    providers.reply(providers.openai, "Lyon")
    first = await accept_turn(app, TurnRequest(user="alice", message="A city?"))
    await finished(app, first.reply)
    second = await accept_turn(
        app, TurnRequest(user="alice", message="Another?", conversation_id=first.conversation_id)
    )
    await finished(app, second.reply)
    turns = providers.openai.requests[1].turns
    assert [(t.role, t.content) for t in turns] == [
        ("user", "A city?"),
        ("assistant", "Paris"),
        ("user", "Another?"),
    ]


async def test_a_retry_with_the_same_key_attaches_to_the_first_turn(
    app: Services, providers: Providers
) -> None:
    providers.reply(providers.openai, "once")
    asked = TurnRequest(user="alice", message="hi", idempotency_key="retry-1")
    first = await accept_turn(app, asked)
    again = await accept_turn(app, asked)
    assert (again.user_message_id, again.reply.id) == (first.user_message_id, first.reply.id)
    await finished(app, first.reply)
    late = await accept_turn(app, asked)
    assert late.reply.id == first.reply.id
    assert providers.openai.calls == 1


async def test_a_key_reused_for_another_request_is_refused(app: Services, providers: Providers) -> None:
    providers.reply(providers.openai, "once")
    await accept_turn(app, TurnRequest(user="alice", message="hi", idempotency_key="k"))
    with pytest.raises(KeyReused):
        await accept_turn(app, TurnRequest(user="alice", message="something else", idempotency_key="k"))
    assert providers.openai.calls == 1


async def test_keys_are_per_user(app: Services, providers: Providers) -> None:
    providers.reply(providers.openai, "for alice")
    providers.reply(providers.openai, "for bob")
    alice = await accept_turn(app, TurnRequest(user="alice", message="hi", idempotency_key="k"))
    bob = await accept_turn(app, TurnRequest(user="bob", message="hi", idempotency_key="k"))
    assert alice.reply.id != bob.reply.id


async def test_a_conversation_keeps_its_model_unless_another_provider_is_asked(
    app: Services, providers: Providers
) -> None:
    providers.reply(providers.openai, "a")
    providers.reply(providers.openai, "b")
    providers.reply(providers.anthropic, "c")
    first = await accept_turn(app, TurnRequest(user="alice", message="hi", model="gpt-4o"))
    await finished(app, first.reply)
    same = await accept_turn(
        app, TurnRequest(user="alice", message="more", conversation_id=first.conversation_id)
    )
    other = await accept_turn(
        app,
        TurnRequest(user="alice", message="and", conversation_id=first.conversation_id, provider="anthropic"),
    )
    asked = {"asked_by": "alice", "request_id": None}  # no HTTP request here, so no request id
    assert same.reply.metadata == {"provider": "openai", "model": "gpt-4o", **asked}
    assert other.reply.metadata == {"provider": "anthropic", "model": "claude-sonnet-4-5", **asked}
    await finished(app, same.reply)
    await finished(app, other.reply)


async def test_an_unknown_or_foreign_conversation_is_not_found(app: Services, providers: Providers) -> None:
    providers.reply(providers.openai, "x")
    mine = await accept_turn(app, TurnRequest(user="alice", message="hi"))
    await finished(app, mine.reply)
    for user, conversation_id in (("alice", 999), ("bob", mine.conversation_id)):
        with pytest.raises(NotFound):
            await accept_turn(app, TurnRequest(user=user, message="hi", conversation_id=conversation_id))


async def test_a_conversation_deleted_while_the_turn_is_accepted_is_not_found(
    tmp_path: Path, app: Services, providers: Providers
) -> None:
    store = await VanishingStore.open(str(tmp_path / "other.db"))
    try:
        conversation = await store.create_conversation("alice")
        app = Services(
            app.settings,
            store,
            app.broker,
            Generations(app.broker, Keeper(store, checkpoint_seconds=0)),
            app.providers,
            app.limits,
            app.feeds,
        )
        with pytest.raises(NotFound):
            await accept_turn(app, TurnRequest(user="alice", message="hi", conversation_id=conversation.id))
    finally:
        await store.close()
    assert providers.openai.calls == 0


@pytest.mark.parametrize(
    ("provider", "problem"), [("skynet", "unknown provider"), ("gemini", "GEMINI_API_KEY")]
)
async def test_a_provider_that_cannot_answer_is_named(app: Services, provider: str, problem: str) -> None:
    with pytest.raises(InvalidFields) as info:
        await accept_turn(app, TurnRequest(user="alice", message="hi", provider=provider))
    assert problem in info.value.extra["fields"]["provider"]
    assert await app.store.list_conversations("alice", limit=10) == []


async def test_no_turn_is_accepted_while_shutting_down(app: Services) -> None:
    await app.generations.begin_shutdown(grace=0)
    with pytest.raises(ServiceUnavailable) as info:
        await accept_turn(app, TurnRequest(user="alice", message="hi"))
    assert info.value.retry_after == 5
    assert await app.store.list_conversations("alice", limit=10) == []


async def test_no_turn_is_accepted_while_too_many_replies_wait_to_be_stored(app: Services) -> None:
    app.generations.keeper.pending = app.generations.keeper.max_pending
    with pytest.raises(StorageUnavailable) as info:
        await accept_turn(app, TurnRequest(user="alice", message="hi"))
    assert info.value.retry_after == 5
    assert await app.store.list_conversations("alice", limit=10) == []
    app.generations.keeper.pending = 0


async def count_messages(app: Services, user: str) -> int:
    conversations = await app.store.list_conversations(user, limit=100)
    return sum(c.message_count for c in conversations)


@pytest.mark.parametrize("app", [{"max_streams_per_user": 1}], indirect=True)
async def test_a_user_at_the_running_cap_is_refused_and_nothing_is_stored(
    app: Services, providers: Providers
) -> None:
    for text in ("first", "bob's", "second"):
        providers.reply(providers.openai, text)
    first = await accept_turn(app, TurnRequest(user="alice", message="one", idempotency_key="k1"))
    with pytest.raises(RateLimited) as refused:
        await accept_turn(app, TurnRequest(user="alice", message="two"))
    assert refused.value.retry_after
    assert await count_messages(app, "alice") == 2  # only the first turn's two rows
    again = await accept_turn(app, TurnRequest(user="alice", message="one", idempotency_key="k1"))
    assert again.reply.id == first.reply.id  # a retry starts nothing, so the cap does not apply
    other = app.generations.get((await accept_turn(app, TurnRequest(user="bob", message="mine"))).reply.id)
    assert other is not None  # a cap per user: bob's runs
    await finished(app, first.reply)
    await other.finished.wait()
    assert app.limits.streams.held == {}
    await finished(app, (await accept_turn(app, TurnRequest(user="alice", message="two"))).reply)


@pytest.mark.parametrize("app", [{"rate_limit": (2, 3600.0)}], indirect=True)
async def test_the_rate_limit_stores_nothing_and_names_the_wait(app: Services, providers: Providers) -> None:
    for text in ("a", "b"):
        providers.reply(providers.openai, text)
        await finished(app, (await accept_turn(app, TurnRequest(user="alice", message=text))).reply)
    with pytest.raises(RateLimited) as refused:
        await accept_turn(app, TurnRequest(user="alice", message="c"))
    assert 1700 < (refused.value.retry_after or 0) <= 1800
    assert refused.value.headers()["Retry-After"] == str(int(refused.value.retry_after or 0) + 1)
    assert await count_messages(app, "alice") == 4
    assert app.limits.streams.held == {}


@pytest.mark.parametrize("app", [{"max_streams_per_user": 1}], indirect=True)
async def test_a_refused_turn_gives_its_slot_back(app: Services, providers: Providers) -> None:
    with pytest.raises(NotFound):
        await accept_turn(app, TurnRequest(user="alice", message="hi", conversation_id=999))
    with pytest.raises(InvalidFields):
        await accept_turn(app, TurnRequest(user="alice", message="hi", provider="gemini"))
    assert app.limits.streams.held == {}
    providers.reply(providers.openai, "fine")
    await finished(app, (await accept_turn(app, TurnRequest(user="alice", message="hi"))).reply)
