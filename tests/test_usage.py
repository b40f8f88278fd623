"""Cost and usage over real sockets: `cost_usd` in `done` and in the stored reply, and
`GET /api/usage` after real generations (cached tokens, an unknown model, a cancelled reply,
a member in someone else's conversation), and its `since`/`until`."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from chat.config import Settings
from tests.backends import Backend, every_backend
from tests.fakeupstream import FakeUpstream, Reply, Step, openai_chunk, sse
from tests.live import EventReader, chat_stream, serve, until

pytestmark = [pytest.mark.anyio, every_backend]

ALICE, BOB = "alice-token-0123456789", "bob-token-0123456789ab"


def openai_reply(*tokens: str, prompt: int, cached: int, completion: int) -> list[Step]:
    """An OpenAI stream whose usage chunk reports a prompt partly read from OpenAI's cache."""
    usage = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0},
    }
    return [
        *(openai_chunk(t) for t in tokens),
        openai_chunk(finish_reason="stop"),
        sse({"id": "chatcmpl-1", "object": "chat.completion.chunk", "choices": [], "usage": usage}),
        sse("[DONE]"),
    ]


def gpt_4o_mini(prompt: int, cached: int, completion: int) -> float:
    return ((prompt - cached) * 0.15 + cached * 0.075 + completion * 0.60) / 1e6


@dataclass
class Server:
    url: str
    alice: httpx.AsyncClient
    bob: httpx.AsyncClient


@pytest.fixture
async def server(
    upstream: FakeUpstream, database: Backend, request: pytest.FixtureRequest
) -> AsyncIterator[Server]:
    settings = Settings(
        db=database.db,
        provider="openai",
        openai_api_key="sk-test",
        openai_base_url=upstream.url,
        anthropic_base_url=upstream.url,
        api_tokens=((ALICE, "alice"), (BOB, "bob")),
        demo_delay=0.05,
        shutdown_grace_seconds=0.5,
        **getattr(request, "param", {}),
    )
    async with serve(settings) as url:
        async with (
            httpx.AsyncClient(
                base_url=url, timeout=10, headers={"authorization": f"Bearer {ALICE}"}
            ) as alice,
            httpx.AsyncClient(base_url=url, timeout=10, headers={"authorization": f"Bearer {BOB}"}) as bob,
        ):
            yield Server(url, alice, bob)


async def usage_of(client: httpx.AsyncClient, query: str = "") -> dict[str, Any]:
    answer = await client.get(f"/api/usage{query}")
    assert answer.status_code == 200, answer.text
    return answer.json()  # type: ignore[no-any-return]


async def test_cost_in_done_in_the_stored_reply_and_in_usage(server: Server, upstream: FakeUpstream) -> None:
    upstream.add(
        Reply(openai_reply("Hel", "lo", prompt=2006, cached=1920, completion=300)),
        Reply(openai_reply("Again", prompt=12, cached=0, completion=2)),
    )
    first = await chat_stream(server.alice, {"message": "hi"})
    second = await chat_stream(server.alice, {"message": "hi again"})

    done = first.terminal.data
    assert first.terminal.event == "done"
    assert done["usage"] == {"input_tokens": 2006, "output_tokens": 300, "cached_input_tokens": 1920}
    assert done["cost_usd"] == pytest.approx(gpt_4o_mini(2006, 1920, 300), rel=1e-12)
    conversation = first.events[0].data["conversation_id"]
    stored = (await server.alice.get(f"/api/conversations/{conversation}")).json()["messages"][-1]
    assert stored["metadata"]["cost_usd"] == done["cost_usd"]
    assert stored["metadata"]["usage"] == done["usage"]
    assert stored["metadata"]["asked_by"] == "alice"
    assert second.terminal.data["cost_usd"] == pytest.approx(3.0e-6)  # a few millionths, not rounded

    report = await usage_of(server.alice)
    expected = gpt_4o_mini(2006, 1920, 300) + gpt_4o_mini(12, 0, 2)
    assert report["usage"] == [
        {
            "provider": "openai",
            "model": "gpt-4o-mini",
            "replies": 2,
            "input_tokens": 2018,
            "output_tokens": 302,
            "cached_input_tokens": 1920,
            "cost_usd": pytest.approx(expected, rel=1e-12),
            "unpriced_replies": 0,
        }
    ]
    total = report["total"]
    assert (total["replies"], total["input_tokens"], total["output_tokens"]) == (2, 2018, 302)
    assert total["cost_usd"] == pytest.approx(expected, rel=1e-12) and total["unpriced_replies"] == 0
    assert (await usage_of(server.bob))["usage"] == []  # alice's are alice's
    assert (await usage_of(server.bob))["total"]["cost_usd"] == 0.0


async def test_an_unknown_model_costs_null_and_the_total_counts_it_apart(
    server: Server, upstream: FakeUpstream
) -> None:
    upstream.add(
        Reply(openai_reply("ok", prompt=10, cached=0, completion=5)),
        Reply(openai_reply("ok", prompt=10, cached=0, completion=5)),
    )
    unknown = await chat_stream(server.alice, {"message": "hi", "model": "my-finetune"})
    await chat_stream(server.alice, {"message": "hi"})

    assert unknown.terminal.data["cost_usd"] is None
    assert unknown.terminal.data["usage"]["input_tokens"] == 10
    report = await usage_of(server.alice)
    by_model = {line["model"]: line for line in report["usage"]}
    assert by_model["my-finetune"]["cost_usd"] is None and by_model["my-finetune"]["unpriced_replies"] == 1
    assert by_model["gpt-4o-mini"]["cost_usd"] == pytest.approx(gpt_4o_mini(10, 0, 5))
    assert report["total"]["cost_usd"] == pytest.approx(gpt_4o_mini(10, 0, 5))  # the known part
    assert report["total"]["unpriced_replies"] == 1 and report["total"]["input_tokens"] == 20


async def test_a_cancelled_reply_keeps_what_the_provider_counted(server: Server) -> None:
    async with server.alice.stream(
        "POST", "/api/chat/stream", json={"message": "three words here", "provider": "demo"}
    ) as response:
        reader = EventReader(response)
        head = await reader.read(until=2)  # start, and the first token
        message_id = head.events[0].data["message_id"]
        cancelled = await server.alice.post(f"/api/messages/{message_id}/cancel")
        rest = await reader.read()
    assert cancelled.status_code == 200
    row = cancelled.json()["message"]
    assert row["status"] == "cancelled"
    assert row["metadata"]["usage"] == {"input_tokens": 3, "output_tokens": 0}  # told before any text
    assert row["metadata"]["cost_usd"] == 0.0  # the demo costs nothing, but it is priced
    assert rest.terminal.event == "done" and rest.terminal.data["finish_reason"] == "cancelled"
    assert rest.terminal.data["cost_usd"] == 0.0
    report = await usage_of(server.alice)
    assert report["usage"] == [
        {
            "provider": "demo",
            "model": "demo-1",
            "replies": 1,
            "input_tokens": 3,
            "output_tokens": 0,
            "cached_input_tokens": 0,
            "cost_usd": 0.0,
            "unpriced_replies": 0,
        }
    ]


async def test_a_members_replies_in_someone_elses_conversation_are_the_members(
    server: Server, upstream: FakeUpstream
) -> None:
    upstream.add(
        Reply(openai_reply("a", prompt=10, cached=0, completion=1)),
        Reply(openai_reply("b", prompt=20, cached=0, completion=2)),
        Reply(openai_reply("c", prompt=30, cached=0, completion=3)),
    )
    made = await server.alice.post("/api/chat", json={"message": "mine", "wait": True})
    conversation = made.json()["message"]["conversation_id"]
    await server.alice.post(f"/api/conversations/{conversation}/members", json={"user": "bob"})
    asked = await server.bob.post(
        "/api/chat", json={"message": "bob asks", "conversation_id": conversation, "wait": True}
    )
    assert asked.status_code == 200, asked.text
    again = await server.bob.post(
        f"/api/messages/{asked.json()['message']['id']}/regenerate", json={"wait": True}
    )
    assert again.status_code == 200, again.text

    alice, bob = await usage_of(server.alice), await usage_of(server.bob)
    assert (alice["total"]["replies"], alice["total"]["input_tokens"]) == (1, 10)
    assert (bob["total"]["replies"], bob["total"]["input_tokens"]) == (2, 50)  # the superseded one too
    assert again.json()["message"]["metadata"]["asked_by"] == "bob"


async def test_since_and_until_pick_replies_by_when_they_ended(
    server: Server, upstream: FakeUpstream
) -> None:
    upstream.add(Reply(openai_reply("ok", prompt=10, cached=0, completion=5)))
    done = await server.alice.post("/api/chat", json={"message": "hi", "wait": True})
    ended = done.json()["message"]["completed_at"]
    day = ended[:10]

    assert (await usage_of(server.alice, f"?since={day}"))["total"]["replies"] == 1
    assert (await usage_of(server.alice, f"?since={day}&until={day}"))["total"]["replies"] == 1
    assert (await usage_of(server.alice, f"?until={day}T00:00:00Z"))["total"]["replies"] == 0
    assert (await usage_of(server.alice, f"?since={ended}"))["total"]["replies"] == 1
    future = await usage_of(server.alice, "?since=2999-01-01")
    assert future == {
        "since": "2999-01-01T00:00:00.000Z",
        "until": None,
        "usage": [],
        "total": {
            "replies": 0,
            "input_tokens": 0,
            "output_tokens": 0,
            "cached_input_tokens": 0,
            "unpriced_replies": 0,
            "cost_usd": 0.0,
        },
    }
    offset = await usage_of(server.alice, "?since=2026-12-01T09:30:00%2B02:00&until=2026-12-31")
    assert (offset["since"], offset["until"]) == ("2026-12-01T07:30:00.000Z", "2027-01-01T00:00:00.000Z")


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("?since=yesterday", "since"),
        ("?since=", "since"),
        ("?since=2026-13-01", "since"),
        ("?since=2026-02-30", "since"),
        ("?until=2026-12-01T25:00:00Z", "until"),
        ("?until=1733000000", "until"),
        ("?until=9999-12-31", "until"),
        ("?since=2026-12-02&until=2026-12-01", "until"),
    ],
)
async def test_a_bad_since_or_until_is_a_422_naming_it(server: Server, query: str, field: str) -> None:
    answer = await server.alice.get(f"/api/usage{query}")
    assert answer.status_code == 422, answer.text
    error = answer.json()["error"]
    assert error["type"] == "invalid_request" and list(error["fields"]) == [field]


async def test_usage_needs_a_token(server: Server) -> None:
    async with httpx.AsyncClient(base_url=server.url) as anonymous:
        assert (await anonymous.get("/api/usage")).status_code == 401


async def test_a_running_reply_is_not_counted_until_it_ends(server: Server, upstream: FakeUpstream) -> None:
    gate = asyncio.Event()
    upstream.add(Reply([openai_chunk("hel"), gate, *openai_reply("lo", prompt=10, cached=0, completion=2)]))
    started = (await server.alice.post("/api/chat", json={"message": "hi"})).json()
    assert (await usage_of(server.alice))["total"]["replies"] == 0
    gate.set()

    async def counted() -> bool:
        return (await usage_of(server.alice))["total"]["replies"] == 1

    await until(counted, what="the reply to be counted once it ended")
    assert started["message_id"] > 0


def anthropic_start(input_tokens: int, cache_read: int) -> bytes:
    usage = {
        "input_tokens": input_tokens,
        "cache_read_input_tokens": cache_read,
        "cache_creation_input_tokens": 0,
    }
    message = {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "content": [],
        "model": "claude-sonnet-4-5",
    }
    return sse(
        {"type": "message_start", "message": {**message, "usage": {**usage, "output_tokens": 1}}},
        "message_start",
    )


def anthropic_text(text: str) -> bytes:
    delta = {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": text}}
    return sse(delta, "content_block_delta")


def sonnet(fresh: int, cached: int, output: int) -> float:
    return (fresh * 3.0 + cached * 0.30 + output * 15.0) / 1e6


@pytest.mark.parametrize("server", [{"anthropic_api_key": "sk-ant-test"}], indirect=True)
async def test_a_failed_reply_is_billed_what_the_provider_counted_before_it_failed(
    server: Server, upstream: FakeUpstream
) -> None:
    overloaded = sse(
        {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}, "error"
    )
    upstream.add(Reply([anthropic_start(20, 1000), anthropic_text("Hel"), overloaded]))
    transcript = await chat_stream(server.alice, {"message": "hi", "provider": "anthropic"})

    assert transcript.terminal.event == "error" and transcript.terminal.data["partial"] is True
    conversation = transcript.events[0].data["conversation_id"]
    row = (await server.alice.get(f"/api/conversations/{conversation}")).json()["messages"][-1]
    assert row["status"] == "failed"
    assert row["metadata"]["usage"] == {
        "input_tokens": 1020,
        "output_tokens": 1,
        "cached_input_tokens": 1000,
        "cache_write_tokens": 0,
    }
    assert row["metadata"]["cost_usd"] == pytest.approx(sonnet(20, 1000, 1))
    line = (await usage_of(server.alice))["usage"][0]
    assert (line["provider"], line["model"], line["replies"], line["cached_input_tokens"]) == (
        "anthropic",
        "claude-sonnet-4-5",
        1,
        1000,
    )


@pytest.mark.parametrize("server", [{"anthropic_api_key": "sk-ant-test"}], indirect=True)
async def test_a_cancelled_anthropic_reply_is_billed_its_prompt(
    server: Server, upstream: FakeUpstream
) -> None:
    held = asyncio.Event()
    upstream.add(Reply([anthropic_start(30, 0), anthropic_text("Hel"), held]))
    async with server.alice.stream(
        "POST", "/api/chat/stream", json={"message": "hi", "provider": "anthropic"}
    ) as response:
        reader = EventReader(response)
        head = await reader.read(until=2)
        cancelled = await server.alice.post(f"/api/messages/{head.events[0].data['message_id']}/cancel")
        await reader.read()
    metadata = cancelled.json()["message"]["metadata"]
    assert cancelled.json()["message"]["status"] == "cancelled"
    assert metadata["usage"]["input_tokens"] == 30 and metadata["cost_usd"] == pytest.approx(sonnet(30, 0, 1))
    await until(lambda: upstream.hangups == 1, what="the provider to see the hang-up")
