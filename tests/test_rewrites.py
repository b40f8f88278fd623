"""Replacing a turn (regenerate, edit), with a real store and scripted providers, no HTTP."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from chat.errors import Conflict, NotFound, RateLimited, ServiceUnavailable
from chat.providers.base import ChatRequest, Finish, ProviderError
from chat.records import Message
from chat.rewrites import RewriteRequest, edit, regenerate
from chat.services import Services
from chat.store import Store
from chat.turns import AcceptedTurn, TurnRequest, accept_turn
from tests.providers.fakes import ScriptedProvider
from tests.test_turns import Providers, finished, scripted_services

pytestmark = pytest.mark.anyio


class GatedProvider(ScriptedProvider):
    """Scripted, but each step waits for `gate`: a test holds a reply mid-stream by clearing it."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.gate = asyncio.Event()
        self.gate.set()

    async def stream(self, request: ChatRequest) -> AsyncIterator[str | Finish]:
        async for step in super().stream(request):
            await self.gate.wait()
            yield step


@pytest.fixture
def providers() -> Providers:
    made = Providers()
    made.openai = GatedProvider(name="openai", default_model="gpt-4o-mini")
    return made


@pytest.fixture
async def app(
    tmp_path: Path, providers: Providers, request: pytest.FixtureRequest
) -> AsyncIterator[Services]:
    async with scripted_services(
        tmp_path / "chat.db", providers, **getattr(request, "param", {})
    ) as services:
        yield services


async def chat(app: Services, providers: Providers, text: str, answer: str, **more: Any) -> Message:
    """A finished turn: `text` answered with `answer`."""
    providers.reply(providers.openai, answer)
    accepted = await accept_turn(app, TurnRequest(user="alice", message=text, **more))
    return await finished(app, accepted.reply)


async def again(app: Services, reply: Message, user: str = "alice", **more: Any) -> AcceptedTurn:
    return await regenerate(app, RewriteRequest(user=user, message_id=reply.id, **more))


async def rows(app: Services, conversation_id: int) -> list[Message]:
    return await app.store.list_messages(conversation_id)


def held(providers: Providers) -> asyncio.Event:
    gate = providers.openai.gate  # type: ignore[attr-defined]
    assert isinstance(gate, asyncio.Event)
    return gate


async def test_a_reply_generated_again_gets_the_history_the_first_had(
    app: Services, providers: Providers
) -> None:
    first = await chat(app, providers, "A city?", "Paris")
    old = await chat(app, providers, "Another?", "Lyon", conversation_id=first.conversation_id)
    providers.reply(providers.openai, "Nice")

    accepted = await again(app, old)
    new = await finished(app, accepted.reply)

    sent, resent = providers.openai.requests[1], providers.openai.requests[2]
    assert resent == sent
    assert [(t.role, t.content) for t in resent.turns] == [
        ("user", "A city?"),
        ("assistant", "Paris"),
        ("user", "Another?"),
    ]
    assert accepted.user_message_id == old.metadata["user_message_id"]
    assert (new.status, new.content, new.metadata["supersedes"]) == ("completed", "Nice", old.id)
    assert new.metadata["user_message_id"] == old.metadata["user_message_id"]
    stored = await rows(app, old.conversation_id)
    assert [m.id for m in stored][-2:] == [old.id, new.id]
    assert stored[-2].metadata["superseded_by"] == new.id and stored[-2].content == "Lyon"


async def test_a_failed_reply_can_be_tried_again_and_again(app: Services, providers: Providers) -> None:
    providers.openai.scripts.append([ProviderError("overloaded", "busy", retryable=False)])
    accepted = await accept_turn(app, TurnRequest(user="alice", message="hi", system="Be brief."))
    failed = await finished(app, accepted.reply)
    assert failed.status == "failed"

    providers.openai.scripts.append(["late", Finish("stop")])
    second = await finished(app, (await again(app, failed)).reply)
    providers.reply(providers.openai, "later")
    third = await finished(app, (await again(app, second)).reply)

    assert (second.status, third.status, third.content) == ("completed", "completed", "later")
    assert third.metadata["supersedes"] == second.id and second.metadata["supersedes"] == failed.id
    first_sent, *retries = providers.openai.requests
    assert retries == [first_sent, first_sent]  # the system prompt too: the conversation's
    assert first_sent.system == "Be brief."


async def test_a_reply_is_made_again_with_what_it_was_made_with_unless_asked(
    app: Services, providers: Providers
) -> None:
    old = await chat(app, providers, "hi", "hello", model="gpt-4o")
    providers.reply(providers.openai, "hey")
    same = await finished(app, (await again(app, old, temperature=0.3, max_tokens=9)).reply)
    assert (same.metadata["provider"], same.metadata["model"]) == ("openai", "gpt-4o")
    request = providers.openai.requests[-1]
    assert (request.model, request.temperature, request.max_tokens) == ("gpt-4o", 0.3, 9)

    providers.reply(providers.anthropic, "bonjour")
    other = await finished(app, (await again(app, same, provider="anthropic")).reply)
    assert (other.metadata["provider"], other.metadata["model"]) == ("anthropic", "claude-sonnet-4-5")
    assert providers.anthropic.requests[0].turns == providers.openai.requests[0].turns


async def test_an_edit_is_a_new_turn_on_the_history_before_the_old_message(
    app: Services, providers: Providers
) -> None:
    first = await chat(app, providers, "A city?", "Paris")
    old = await chat(app, providers, "Another?", "Lyon", conversation_id=first.conversation_id)
    old_question = old.metadata["user_message_id"]
    providers.reply(providers.openai, "Marseille")

    accepted = await edit(app, RewriteRequest(user="alice", message_id=old_question, message="A big one?"))
    reply = await finished(app, accepted.reply)

    assert [(t.role, t.content) for t in providers.openai.requests[-1].turns] == [
        ("user", "A city?"),
        ("assistant", "Paris"),
        ("user", "A big one?"),
    ]
    stored = await rows(app, old.conversation_id)
    asked = stored[-2]
    assert (asked.id, asked.content, asked.user_id) == (accepted.user_message_id, "A big one?", "alice")
    assert asked.metadata == {"supersedes": old_question}
    assert (reply.content, reply.metadata["supersedes"]) == ("Marseille", old.id)
    assert [m.metadata.get("superseded_by") for m in stored[2:4]] == [asked.id, reply.id]

    await chat(app, providers, "More?", "Nantes", conversation_id=old.conversation_id)
    assert [t.content for t in providers.openai.requests[-1].turns] == [
        "A city?",
        "Paris",
        "A big one?",
        "Marseille",
        "More?",
    ]


async def test_only_the_latest_can_be_replaced(app: Services, providers: Providers) -> None:
    older = await chat(app, providers, "one", "first")
    latest = await chat(app, providers, "two", "second", conversation_id=older.conversation_id)
    before = await rows(app, older.conversation_id)
    with pytest.raises(Conflict, match="only a conversation's latest reply"):
        await again(app, older)
    with pytest.raises(Conflict, match="only a conversation's latest user message"):
        await edit(app, RewriteRequest("alice", older.metadata["user_message_id"], "one!"))
    assert await rows(app, older.conversation_id) == before
    assert providers.openai.calls == 2
    providers.reply(providers.openai, "ok")
    await finished(app, (await again(app, latest)).reply)


async def test_a_replaced_message_says_what_replaced_it_and_costs_nothing(
    app: Services, providers: Providers
) -> None:
    old = await chat(app, providers, "one", "first")
    question = old.metadata["user_message_id"]
    providers.reply(providers.openai, "second")
    regenerated = await again(app, old)
    await finished(app, regenerated.reply)
    providers.reply(providers.openai, "third")
    edited = await edit(app, RewriteRequest("alice", question, "one!"))
    await finished(app, edited.reply)
    before = await rows(app, old.conversation_id)

    with pytest.raises(Conflict) as refused:  # a client retrying a regenerate that succeeded
        await again(app, old)
    assert refused.value.extra == {"status": "completed", "superseded_by": regenerated.reply.id}
    with pytest.raises(Conflict) as refused:
        await again(app, regenerated.reply)
    assert refused.value.extra["superseded_by"] == edited.reply.id
    with pytest.raises(Conflict) as refused:
        await edit(app, RewriteRequest("alice", question, "one!"))
    assert refused.value.extra == {"status": "completed", "superseded_by": edited.user_message_id}
    assert await rows(app, old.conversation_id) == before
    assert providers.openai.calls == 3 and app.limits.streams.held == {}


async def test_nothing_is_replaced_while_its_reply_streams(app: Services, providers: Providers) -> None:
    first = await chat(app, providers, "one", "first")
    held(providers).clear()
    providers.reply(providers.openai, "still going")
    running = await accept_turn(app, TurnRequest("alice", "two", conversation_id=first.conversation_id))
    question = running.user_message_id
    with pytest.raises(Conflict, match=f"reply {running.reply.id} is still being generated"):
        await again(app, running.reply)
    with pytest.raises(Conflict, match="stop it first") as refused:
        await edit(app, RewriteRequest("alice", question, "two!"))
    assert refused.value.extra == {"status": "completed"}
    held(providers).set()
    await finished(app, running.reply)
    assert providers.openai.calls == 2


async def test_a_wrong_kind_unknown_or_foreign_id_is_not_found(app: Services, providers: Providers) -> None:
    reply = await chat(app, providers, "one", "first")
    question = reply.metadata["user_message_id"]
    before = await rows(app, reply.conversation_id)
    asks = [
        regenerate(app, RewriteRequest("alice", question)),  # a user message is not a reply
        edit(app, RewriteRequest("alice", reply.id, "x")),  # nor a reply a user message
        regenerate(app, RewriteRequest("alice", 999)),
        edit(app, RewriteRequest("alice", 999, "x")),
        regenerate(app, RewriteRequest("bob", reply.id)),
        edit(app, RewriteRequest("bob", question, "x")),
    ]
    for ask in asks:
        with pytest.raises(NotFound):
            await ask
    assert await rows(app, reply.conversation_id) == before
    assert providers.openai.calls == 1 and app.limits.streams.held == {}


async def test_a_member_may_regenerate_and_edit_as_they_may_chat(app: Services, providers: Providers) -> None:
    reply = await chat(app, providers, "one", "first")
    await app.store.add_member(reply.conversation_id, "bob")
    providers.reply(providers.openai, "again")
    again_reply = await finished(app, (await again(app, reply, user="bob")).reply)
    providers.reply(providers.openai, "edited")
    question = reply.metadata["user_message_id"]
    accepted = await edit(app, RewriteRequest("bob", question, "one, by bob"))
    await finished(app, accepted.reply)
    asked = (await rows(app, reply.conversation_id))[-2]
    assert (asked.content, asked.user_id, again_reply.content) == ("one, by bob", "bob", "again")


@pytest.mark.parametrize("app", [{"rate_limit": (2, 3600.0)}], indirect=True)
async def test_the_rate_limit_applies_and_a_refusal_stores_nothing(
    app: Services, providers: Providers
) -> None:
    reply = await chat(app, providers, "one", "first")
    providers.reply(providers.openai, "second")
    second = await finished(app, (await again(app, reply)).reply)
    before = await rows(app, reply.conversation_id)
    with pytest.raises(RateLimited) as refused:
        await again(app, second)
    with pytest.raises(RateLimited):
        await edit(app, RewriteRequest("alice", reply.metadata["user_message_id"], "x"))
    assert refused.value.retry_after
    with pytest.raises(Conflict):  # a retry of one that succeeded is told so, not limited
        await again(app, reply)
    assert await rows(app, reply.conversation_id) == before
    assert providers.openai.calls == 2 and app.limits.streams.held == {}


@pytest.mark.parametrize("app", [{"max_streams_per_user": 1}], indirect=True)
async def test_a_replacement_counts_as_a_running_reply(app: Services, providers: Providers) -> None:
    reply = await chat(app, providers, "one", "first")
    held(providers).clear()
    providers.reply(providers.openai, "other")
    running = await accept_turn(app, TurnRequest("alice", "another conversation"))
    with pytest.raises(RateLimited, match="SIDECHAT_MAX_STREAMS_PER_USER"):
        await again(app, reply)
    held(providers).set()
    await finished(app, running.reply)
    assert app.limits.streams.held == {}
    providers.reply(providers.openai, "now")
    await finished(app, (await again(app, reply)).reply)
    assert app.limits.streams.held == {}


async def test_nothing_is_replaced_while_shutting_down(app: Services, providers: Providers) -> None:
    reply = await chat(app, providers, "one", "first")
    await app.generations.begin_shutdown(grace=0)
    with pytest.raises(ServiceUnavailable):
        await again(app, reply)
    assert len(await rows(app, reply.conversation_id)) == 2


class RacingStore(Store):
    """A store where a twin request replaces the reply between this request's checks and its
    write (the members are read in between)."""

    twin: int | None = None

    async def members(self, conversation_id: int) -> list[str]:
        if self.twin is None:
            newest = await self.newest_current(conversation_id)
            self.twin = (await self.regenerate_reply(newest["assistant"].id, metadata={})).id
        return await super().members(conversation_id)


async def test_of_two_racing_replacements_one_wins_and_the_other_gives_its_slot_back(
    tmp_path: Path, providers: Providers
) -> None:
    async with scripted_services(tmp_path / "racing.db", providers, RacingStore) as racing:
        reply = await chat(racing, providers, "one", "first")
        with pytest.raises(Conflict) as refused:
            await again(racing, reply)
        store = racing.store
        assert isinstance(store, RacingStore)
        assert refused.value.extra["superseded_by"] == store.twin
        assert [m.id for m in await rows(racing, reply.conversation_id)][-1] == store.twin
        assert providers.openai.calls == 1 and racing.limits.streams.held == {}
