"""Tool calls through the /v1 door with the OpenAI SDK: tools go upstream as sent, the calls a
model streams come back as `tool_calls` (assembled by the SDK), are stored with the reply, and a
client that ran its tool continues with the results. sidechat runs no tool."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.fakeupstream import FakeUpstream, Reply, Step, openai_reply, sse
from tests.openai_client import USER, door, fakes, settings_in

pytestmark = pytest.mark.anyio

WEATHER: Any = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


def piece(delta: dict[str, Any], finish: str | None = None) -> bytes:
    choice = {"index": 0, "delta": delta, "finish_reason": finish}
    return sse(
        {"id": "chatcmpl-1", "object": "chat.completion.chunk", "model": "gpt-4o", "choices": [choice]}
    )


def calling(*arguments: str) -> list[Step]:
    """A reply that calls get_weather, its arguments streamed in `arguments`' pieces."""
    first = {
        "index": 0,
        "id": "call_abc",
        "type": "function",
        "function": {"name": "get_weather", "arguments": ""},
    }
    steps: list[Step] = [piece({"role": "assistant", "content": None, "tool_calls": [first]})]
    steps += [piece({"tool_calls": [{"index": 0, "function": {"arguments": a}}]}) for a in arguments]
    usage = {"prompt_tokens": 40, "completion_tokens": 9, "total_tokens": 49}
    return [*steps, piece({}, "tool_calls"), sse({"choices": [], "usage": usage}), sse("[DONE]")]


async def test_a_streamed_tool_call_comes_back_as_tool_calls_deltas_and_is_stored(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    upstream.add(Reply(calling('{"ci', 'ty": "Par', 'is"}')))
    async with door(settings_in(tmp_path, upstream)) as sidechat:
        async with sidechat.sdk.chat.completions.stream(
            model="openai/gpt-4o", messages=USER, tools=[WEATHER], tool_choice="auto"
        ) as stream:
            final = await stream.get_final_completion()
        message_id = final.id.removeprefix("chatcmpl-")
        reply = (await sidechat.http.get("/api/conversations")).json()["conversations"][0]
        stored = (await sidechat.http.get(f"/api/conversations/{reply['id']}")).json()["messages"][-1]

    choice = final.choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls or []
    assert (call.id, call.type) == ("call_abc", "function")
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris"}
    assert stored["id"] == int(message_id)
    assert stored["metadata"]["finish_reason"] == "tool_calls"
    function = {"name": "get_weather", "arguments": '{"city": "Paris"}'}
    assert stored["metadata"]["tool_calls"] == [{"id": "call_abc", "type": "function", "function": function}]
    sent = upstream.requests[0].json()
    assert (sent["tools"], sent["tool_choice"]) == ([WEATHER], "auto")


async def test_a_whole_completion_has_the_calls_in_its_message(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    upstream.add(Reply(calling('{"city": "Oslo"}')))
    async with door(settings_in(tmp_path, upstream)) as sidechat:
        answer = await sidechat.sdk.chat.completions.create(model="gpt-4o", messages=USER, tools=[WEATHER])
    message = answer.choices[0].message
    assert message.content is None
    assert [(c.function.name, c.function.arguments) for c in message.tool_calls or []] == [
        ("get_weather", '{"city": "Oslo"}')
    ]


async def test_a_client_continues_with_its_tools_results(upstream: FakeUpstream, tmp_path: Path) -> None:
    upstream.add(Reply(openai_reply("It is ", "21 degrees.")))
    called = {"id": "call_abc", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}
    history: list[Any] = [
        *USER,
        {"role": "assistant", "content": None, "tool_calls": [called]},
        {"role": "tool", "tool_call_id": "call_abc", "content": '{"celsius": 21}'},
    ]
    async with door(settings_in(tmp_path, upstream)) as sidechat:
        answer = await sidechat.sdk.chat.completions.with_raw_response.create(
            model="gpt-4o", messages=history, tools=[WEATHER]
        )
        conversation_id = answer.headers["x-conversation-id"]
        stored = (await sidechat.http.get(f"/api/conversations/{conversation_id}")).json()["messages"]
    assert answer.parse().choices[0].message.content == "It is 21 degrees."
    assert upstream.requests[0].json()["messages"] == history
    assert [(m["role"], m["content"]) for m in stored] == [
        ("user", "Say hello"),  # a new conversation keeps what it was sent; the call has no row
        ("user", '{"celsius": 21}'),  # what the client sent this time: its tool's result
        ("assistant", "It is 21 degrees."),
    ]


@pytest.mark.parametrize("name", ["anthropic", "gemini", "ollama"])
async def test_other_adapters_refuse_tools_with_a_400_that_says_where_they_work(
    upstream: FakeUpstream, tmp_path: Path, name: str
) -> None:
    fake = next(f for f in fakes(upstream.url) if f.name == name)
    async with door(settings_in(tmp_path, upstream, **fake.settings)) as sidechat:
        with pytest.raises(openai.BadRequestError) as info:
            await sidechat.sdk.chat.completions.create(
                model=f"{name}/{fake.model}", messages=USER, tools=[WEATHER]
            )
    assert "openai-compatible" in info.value.message
    assert upstream.requests == []  # refused before anyone was called


async def test_the_demo_answers_in_text_whatever_tools_it_is_offered(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    async with door(settings_in(tmp_path, upstream, provider="demo")) as sidechat:
        answer = await sidechat.sdk.chat.completions.create(model="demo-1", messages=USER, tools=[WEATHER])
    assert answer.choices[0].finish_reason == "stop"
    assert answer.choices[0].message.tool_calls is None


async def test_the_sdks_own_message_object_goes_back_as_history(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    upstream.add(Reply(calling('{"city": "Rome"}')), Reply(openai_reply("Sunny.")))
    async with door(settings_in(tmp_path, upstream)) as sidechat:
        history: list[Any] = list(USER)
        first = await sidechat.sdk.chat.completions.create(model="gpt-4o", messages=history, tools=[WEATHER])
        message = first.choices[0].message
        (call,) = message.tool_calls or []
        history += [message, {"role": "tool", "tool_call_id": call.id, "content": "sunny"}]
        second = await sidechat.sdk.chat.completions.create(model="gpt-4o", messages=history, tools=[WEATHER])
    assert second.choices[0].message.content == "Sunny."
    sent = upstream.requests[1].json()["messages"]
    assert sent[1] == {
        "role": "assistant",
        "content": None,
        "tool_calls": [call.model_dump(exclude={"index"})],
    }
    assert sent[2] == {"role": "tool", "tool_call_id": "call_abc", "content": "sunny"}
