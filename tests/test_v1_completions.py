"""The OpenAI SDK against sidechat's /v1 door, over real sockets, through every adapter's fake:
streamed and whole completions, the usage chunk, models.list, and the turn stored and
attachable on the native API."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.fakeupstream import FakeUpstream, Reply, openai_reply
from tests.live import read_stream
from tests.openai_client import USER, door, fakes, settings_in

pytestmark = pytest.mark.anyio

PROVIDERS = ["openai", "anthropic", "gemini", "ollama"]


@pytest.mark.parametrize("name", PROVIDERS)
async def test_a_stream_and_a_whole_completion_through_each_adapter(
    name: str, upstream: FakeUpstream, tmp_path: Path
) -> None:
    fake = next(f for f in fakes(upstream.url) if f.name == name)
    upstream.add(fake.reply, fake.reply)
    async with door(settings_in(tmp_path, upstream, **fake.settings)) as sidechat:
        raw = await sidechat.sdk.chat.completions.with_raw_response.create(
            model=f"{name}/{fake.model}", messages=USER, stream=True, stream_options={"include_usage": True}
        )
        chunks = [chunk async for chunk in raw.parse()]
        whole = await sidechat.sdk.chat.completions.create(model=f"{name}/{fake.model}", messages=USER)

    message_id = raw.headers["x-message-id"]
    assert {chunk.id for chunk in chunks} == {f"chatcmpl-{message_id}"}
    assert {chunk.model for chunk in chunks} == {f"{name}/{fake.model}"}
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello"
    *_, finish, usage = chunks
    assert (finish.choices[0].finish_reason, usage.choices) == ("stop", [])
    assert usage.usage is not None
    assert (usage.usage.prompt_tokens, usage.usage.completion_tokens) == fake.usage

    assert whole.object == "chat.completion"
    assert (whole.choices[0].message.content, whole.choices[0].finish_reason) == ("Hello", "stop")
    assert whole.usage is not None and whole.usage.total_tokens == sum(fake.usage)
    assert whole.model == f"{name}/{fake.model}"
    assert len(upstream.requests) == 2


async def test_the_demo_answers_without_any_provider(tmp_path: Path, upstream: FakeUpstream) -> None:
    async with door(settings_in(tmp_path, upstream, provider="demo")) as sidechat:
        stream = await sidechat.sdk.chat.completions.create(model="demo-1", messages=USER, stream=True)
        text = "".join([c.choices[0].delta.content or "" async for c in stream])
        whole = await sidechat.sdk.chat.completions.create(model="demo/demo-1", messages=USER)
    assert text == whole.choices[0].message.content
    assert "You said: *“Say hello”*" in text
    assert upstream.requests == []


async def test_without_include_usage_the_stream_ends_at_its_finish(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    upstream.add(Reply(openai_reply("Hi")))
    async with door(settings_in(tmp_path, upstream)) as sidechat:
        stream = await sidechat.sdk.chat.completions.create(model="gpt-4o", messages=USER, stream=True)
        chunks = [chunk async for chunk in stream]
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert all(chunk.choices for chunk in chunks)
    assert upstream.requests[0].json()["model"] == "gpt-4o"  # a bare model: the default provider's


async def test_models_lists_the_configured_provider_model_ids(upstream: FakeUpstream, tmp_path: Path) -> None:
    settings = settings_in(tmp_path, upstream, model="gpt-4.1", fallback=(("demo", ""), ("gemini", "x")))
    async with door(settings) as sidechat:
        models = await sidechat.sdk.models.list()
    ids = [model.id for model in models.data]
    assert ids[0] == "openai/gpt-4.1"  # SIDECHAT_MODEL is the default provider's default
    assert {"ollama/llama3.2", "demo/demo-1"} <= set(ids)
    assert len(ids) == len(set(ids))  # the fallback's demo is demo's default: listed once
    assert not [i for i in ids if i.startswith(("gemini/", "anthropic/"))]  # no key: not usable
    assert all(model.id.startswith(model.owned_by + "/") for model in models.data)


async def test_the_turn_is_stored_and_its_reply_attachable(upstream: FakeUpstream, tmp_path: Path) -> None:
    upstream.add(Reply(openai_reply("Hel", "lo")))
    system = {"role": "system", "content": "Be brief."}
    async with door(settings_in(tmp_path, upstream)) as sidechat:
        raw = await sidechat.sdk.chat.completions.with_raw_response.create(
            model="openai/gpt-4o", messages=[system, *USER], stream=True
        )
        [chunk async for chunk in raw.parse()]
        conversation_id, message_id = raw.headers["x-conversation-id"], raw.headers["x-message-id"]
        stored = (await sidechat.http.get(f"/api/conversations/{conversation_id}")).json()
        async with sidechat.http.stream("GET", f"/api/messages/{message_id}/stream") as response:
            attached = await read_stream(response)

    assert stored["conversation"]["system"] == "Be brief."
    assert stored["conversation"]["title"] == "Say hello"
    user, reply = stored["messages"]
    assert (user["role"], user["content"]) == ("user", "Say hello")
    assert (reply["id"], reply["content"], reply["status"]) == (int(message_id), "Hello", "completed")
    assert (reply["metadata"]["provider"], reply["metadata"]["model"]) == ("openai", "gpt-4o")
    assert reply["metadata"]["usage"] == {"input_tokens": 12, "output_tokens": 2}
    assert attached.names == ["start", "token", "token", "done"]
    assert attached.text == "Hello"


async def test_a_new_call_is_stored_whole_with_the_messages_it_was_sent(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    upstream.add(Reply(openai_reply("Six")))
    sent: list[Any] = [
        {"role": "system", "content": "Answer in one word."},
        {"role": "user", "content": "two plus two?"},
        {"role": "assistant", "content": "four"},
        {"role": "system", "content": "Now in English."},
        {"role": "user", "content": "and three plus three?"},
    ]
    async with door(settings_in(tmp_path, upstream)) as sidechat:
        raw = await sidechat.sdk.chat.completions.with_raw_response.create(model="gpt-4o", messages=sent)
        conversation_id = raw.headers["x-conversation-id"]
        stored = (await sidechat.http.get(f"/api/conversations/{conversation_id}")).json()
    assert stored["conversation"]["system"] == "Answer in one word."
    assert [(m["role"], m["content"], m["status"]) for m in stored["messages"]] == [
        ("user", "two plus two?", "completed"),
        ("assistant", "four", "completed"),
        ("system", "Now in English.", "completed"),
        ("user", "and three plus three?", "completed"),
        ("assistant", "Six", "completed"),
    ]
    assert upstream.requests[0].json()["messages"] == sent  # and sent upstream as it was


async def test_x_conversation_id_continues_a_conversation_with_only_what_the_client_sent(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    upstream.add(Reply(openai_reply("One")), Reply(openai_reply("Two")))
    async with door(settings_in(tmp_path, upstream)) as sidechat:
        first = await sidechat.sdk.chat.completions.with_raw_response.create(model="gpt-4o", messages=USER)
        conversation_id = first.headers["x-conversation-id"]
        history: list[Any] = [
            *USER,
            {"role": "assistant", "content": "One"},
            {"role": "user", "content": "Again"},
        ]
        second = await sidechat.sdk.chat.completions.with_raw_response.create(
            model="gpt-4o", messages=history, extra_headers={"X-Conversation-ID": conversation_id}
        )
        stored = (await sidechat.http.get(f"/api/conversations/{conversation_id}")).json()["messages"]
        elsewhere = await sidechat.http.get("/api/conversations")

    assert second.headers["x-conversation-id"] == conversation_id
    assert [(m["role"], m["content"]) for m in stored] == [
        ("user", "Say hello"),
        ("assistant", "One"),
        ("user", "Again"),
        ("assistant", "Two"),
    ]
    assert upstream.requests[1].json()["messages"] == history  # nothing stored was added
    assert len(elsewhere.json()["conversations"]) == 1
