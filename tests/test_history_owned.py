"""A history the client owns, on both front doors: what the provider receives is exactly what
the client sent (its system prompt included), nothing stored is added, and what is stored is
the new message and the reply."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from chat.bodies import parse_chat_body
from chat.config import Settings
from chat.errors import InvalidFields
from chat.owned_history import new_message, parse_messages
from chat.providers.base import ToolCall, Turn
from tests.fakeupstream import FakeUpstream, Reply, openai_reply
from tests.live import chat_stream
from tests.openai_client import door, fakes, settings_in
from tests.test_live_providers import anthropic_reply

pytestmark = pytest.mark.anyio

HISTORY = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Name a colour."},
    {"role": "assistant", "content": "Blue."},
    {"role": "user", "content": "Another."},
]


async def test_the_native_api_sends_the_clients_history_exactly(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    upstream.add(Reply(openai_reply("Red.")))
    async with door(settings_in(tmp_path, upstream)) as sidechat:
        transcript = await chat_stream(sidechat.http, {"messages": HISTORY, "temperature": 0.2})
        conversation_id = transcript.events[0].data["conversation_id"]
        stored = (await sidechat.http.get(f"/api/conversations/{conversation_id}")).json()

    assert transcript.text == "Red."
    sent = upstream.requests[0].json()
    assert (sent["messages"], sent["temperature"]) == (HISTORY, 0.2)
    assert stored["conversation"]["system"] == "You are terse."
    assert stored["conversation"]["title"] == "Another."
    assert [(m["role"], m["content"]) for m in stored["messages"]] == [
        ("user", "Another."),
        ("assistant", "Red."),
    ]


async def test_the_same_history_reaches_anthropic_in_its_own_shape(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    fake = next(f for f in fakes(upstream.url) if f.name == "anthropic")
    upstream.add(Reply(anthropic_reply("Red.")), Reply(anthropic_reply("Green.")))
    settings = settings_in(tmp_path, upstream, provider="anthropic", **fake.settings)
    async with door(settings) as sidechat:
        await chat_stream(sidechat.http, {"messages": HISTORY})
        await sidechat.sdk.chat.completions.create(model="claude-sonnet-4-5", messages=HISTORY)  # type: ignore[arg-type]
    native, openai_door = (seen.json() for seen in upstream.requests)
    assert native == openai_door
    assert native["system"] == "You are terse."
    assert native["messages"] == HISTORY[1:]


async def test_a_stored_conversation_continued_with_messages_adds_none_of_its_history(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    upstream.add(Reply(openai_reply("First.")), Reply(openai_reply("Second.")))
    async with door(settings_in(tmp_path, upstream)) as sidechat:
        first = await chat_stream(sidechat.http, {"message": "Stored question", "system": "Stored prompt"})
        conversation_id = first.events[0].data["conversation_id"]
        own = [{"role": "user", "content": "Only this"}]
        await chat_stream(sidechat.http, {"messages": own, "conversation_id": conversation_id})
        stored = (await sidechat.http.get(f"/api/conversations/{conversation_id}")).json()["messages"]
    assert upstream.requests[1].json()["messages"] == own  # neither the stored turns nor the prompt
    assert [m["content"] for m in stored] == ["Stored question", "First.", "Only this", "Second."]


async def test_an_idempotency_key_covers_the_history(upstream: FakeUpstream, tmp_path: Path) -> None:
    upstream.add(Reply(openai_reply("Red.")))
    key = {"idempotency-key": "colour-1"}
    async with door(settings_in(tmp_path, upstream)) as sidechat:
        first = await sidechat.http.post("/api/chat", json={"messages": HISTORY, "wait": True}, headers=key)
        again = await sidechat.http.post("/api/chat", json={"messages": HISTORY, "wait": True}, headers=key)
        other = [*HISTORY[:-1], {"role": "user", "content": "Yet another."}]
        changed = await sidechat.http.post("/api/chat", json={"messages": other}, headers=key)
        v1 = await sidechat.http.post(
            "/v1/chat/completions", json={"model": "gpt-4o", "messages": HISTORY}, headers=key
        )
    assert first.json()["message"]["id"] == again.json()["message"]["id"]
    assert len(upstream.requests) == 1  # the retry attached to the first turn: no second call
    assert (changed.status_code, changed.json()["error"]["type"]) == (422, "idempotency_key_reused")
    assert (v1.status_code, v1.json()["error"]["type"]) == (400, "idempotency_key_reused")  # model differs


@pytest.mark.parametrize(
    ("body", "fields"),
    [
        ({"message": "hi", "messages": HISTORY}, {"message"}),
        ({"messages": HISTORY, "system": "Be kind."}, {"system"}),
        ({"messages": HISTORY[:-1]}, {"messages[2].role"}),
        ({"messages": []}, {"messages"}),
        ({"messages": [{"role": "tool", "content": "x", "tool_call_id": "c"}]}, {"messages[0].role"}),
        ({"messages": [{"role": "user", "content": ""}]}, {"messages[0].content"}),
        (
            {"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]},
            {"messages[0].content"},
        ),
        ({"messages": [{"role": "user", "content": "x" * 101}]}, {"messages[0].content"}),
        (
            {"messages": [{"role": "assistant", "content": "", "tool_calls": []}, *HISTORY]},
            {"messages[0].tool_calls"},
        ),
        ({"messages": "hi"}, {"messages"}),
    ],
)
async def test_the_native_api_refuses_a_history_it_cannot_send(
    upstream: FakeUpstream, tmp_path: Path, body: dict[str, Any], fields: set[str]
) -> None:
    async with door(settings_in(tmp_path, upstream, max_message_chars=100)) as sidechat:
        answer = await sidechat.http.post("/api/chat", json=body)
    assert answer.status_code == 422
    assert set(answer.json()["error"]["fields"]) == fields
    assert upstream.requests == []


def test_openai_messages_become_turns_with_their_calls_and_results() -> None:
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    turns, problems = parse_messages(
        [
            {"role": "developer", "content": "Rules."},
            {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "c1", "content": "one"},
            {"role": "tool", "tool_call_id": "c2", "content": "two"},
        ],
        1000,
        openai=True,
    )
    assert problems == {}
    assert turns == (
        Turn("system", "Rules."),
        Turn("user", "a\nb"),
        Turn("assistant", "", tool_calls=(ToolCall("c1", "f", "{}"),)),
        Turn("tool", "one", tool_call_id="c1"),
        Turn("tool", "two", tool_call_id="c2"),
    )
    assert new_message(turns) == "one\n\ntwo"  # the results that end it are the new message


def test_a_long_history_of_bad_messages_gets_a_short_answer() -> None:
    _, problems = parse_messages([{"role": "nobody"}] * 500, 1000)
    assert len(problems) == 10


def test_a_native_body_with_messages_is_a_turn_with_that_history() -> None:
    body = parse_chat_body({"messages": HISTORY}, Settings())
    assert body.message == "Another."  # what is stored as the user's message
    assert body.history is not None and [t.role for t in body.history] == [
        "system",
        "user",
        "assistant",
        "user",
    ]
    assert body.ask("alice", None).history == body.history
    with pytest.raises(InvalidFields) as info:
        parse_chat_body({}, Settings())
    assert info.value.extra["fields"] == {"message": "required"}
