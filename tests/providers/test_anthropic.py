from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest
import respx

from chat.providers.anthropic import AnthropicProvider, AnthropicReading, build_body
from chat.providers.base import Finish, ProviderError, Turn, Usage
from chat.providers.deadlines import Timeouts

from .conftest import Framing
from .fakes import FakeBody, chat_request, collect, event_stream

pytestmark = pytest.mark.anyio

URL = "https://api.anthropic.com/v1/messages"


def event(payload: dict[str, Any], name: str | None = None) -> bytes:
    """One event as api.anthropic.com sends it: a name line, then compact JSON."""
    name = name or payload["type"]
    return f"event: {name}\ndata: ".encode() + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


MESSAGE_START = event(
    {
        "type": "message_start",
        "message": {
            "id": "msg_01XFDUDYJgAACzvnptvVoYEL",
            "type": "message",
            "role": "assistant",
            "content": [],
            "model": "claude-sonnet-4-5-20250929",
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {
                "input_tokens": 25,
                "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": 0,
                "output_tokens": 1,
            },
        },
    }
)
PING = event({"type": "ping"})


def block_start(index: int, block: dict[str, Any]) -> bytes:
    return event({"type": "content_block_start", "index": index, "content_block": block})


def delta(index: int, d: dict[str, Any]) -> bytes:
    return event({"type": "content_block_delta", "index": index, "delta": d})


def text(index: int, t: str) -> bytes:
    return delta(index, {"type": "text_delta", "text": t})


def block_stop(index: int) -> bytes:
    return event({"type": "content_block_stop", "index": index})


def message_delta(stop_reason: str, output_tokens: int) -> bytes:
    return event(
        {
            "type": "message_delta",
            "delta": {"stop_reason": stop_reason, "stop_sequence": None},
            "usage": {"output_tokens": output_tokens},
        }
    )


MESSAGE_STOP = event({"type": "message_stop"})
HELLO = (
    MESSAGE_START
    + block_start(0, {"type": "text", "text": ""})
    + PING
    + text(0, "Hello")
    + text(0, "!")
    + block_stop(0)
    + message_delta("end_turn", 15)
    + MESSAGE_STOP
)


def provider(client: httpx.AsyncClient, **kwargs: Any) -> AnthropicProvider:
    kwargs.setdefault("api_key", "sk-ant-api03-test")
    return AnthropicProvider(client, **kwargs)


def serve(router: respx.MockRouter, body: FakeBody) -> respx.Route:
    return router.post(URL).mock(return_value=event_stream(body))


async def test_streams_text_then_finish(
    client: httpx.AsyncClient, router: respx.MockRouter, framing: Framing
) -> None:
    body = FakeBody(framing(HELLO))
    serve(router, body)
    texts, finish = await collect(provider(client).stream(chat_request()))
    assert texts == ["Hello", "!"]
    assert finish == Finish("stop", Usage(25, 15, 0, 0))
    assert body.closed


async def test_thinking_signature_and_tool_input_are_never_text(
    client: httpx.AsyncClient, router: respx.MockRouter, framing: Framing
) -> None:
    data = (
        MESSAGE_START
        + block_start(0, {"type": "thinking", "thinking": "", "signature": ""})
        + delta(0, {"type": "thinking_delta", "thinking": "Let me work out 27 * 453"})
        + delta(0, {"type": "signature_delta", "signature": "EqQBCgIYAhIM1gbcDa9GJwZA2b3h"})
        + block_stop(0)
        + block_start(1, {"type": "text", "text": ""})
        + text(1, "It's 12,231.")
        + block_stop(1)
        + block_start(
            2,
            {
                "type": "tool_use",
                "id": "toolu_01T1x1fJ34qAmk2tNTrN7Up6",
                "name": "get_weather",
                "input": {},
            },
        )
        + delta(2, {"type": "input_json_delta", "partial_json": ""})
        + delta(2, {"type": "input_json_delta", "partial_json": '{"location": "San Fra'})
        + delta(2, {"type": "input_json_delta", "partial_json": 'ncisco, CA"}'})
        + block_stop(2)
        + message_delta("tool_use", 89)
        + MESSAGE_STOP
    )
    serve(router, FakeBody(framing(data)))
    texts, finish = await collect(provider(client).stream(chat_request()))
    assert texts == ["It's 12,231."]
    assert finish == Finish("tool_calls", Usage(25, 89, 0, 0))


async def test_overloaded_error_mid_stream(
    client: httpx.AsyncClient, router: respx.MockRouter, framing: Framing
) -> None:
    error = event({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})
    data = MESSAGE_START + block_start(0, {"type": "text", "text": ""}) + text(0, "Hel") + error
    serve(router, FakeBody(framing(data)))
    got: list[object] = []
    with pytest.raises(ProviderError) as info:
        async for item in provider(client).stream(chat_request()):
            got.append(item)
    assert got == [Usage(25, 1, 0, 0), "Hel"]  # the prompt was counted, and is kept
    e = info.value
    assert (e.type, e.retryable, e.provider_type) == ("overloaded", True, "overloaded_error")


async def test_body_ending_before_message_stop_is_truncated(
    client: httpx.AsyncClient, router: respx.MockRouter, framing: Framing
) -> None:
    serve(router, FakeBody(framing(HELLO[: -len(MESSAGE_STOP)])))
    with pytest.raises(ProviderError) as info:
        await collect(provider(client).stream(chat_request()))
    assert info.value.type == "truncated"


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("max_tokens", "length"),
        ("tool_use", "tool_calls"),
        ("refusal", "content_filter"),
        ("something_new", "stop"),
    ],
)
def test_stop_reasons_are_mapped(raw: str, reason: str) -> None:
    reading = AnthropicReading()
    assert reading.feed(json.loads(message_delta(raw, 3).split(b"data: ")[1])) == ("", None)
    assert reading.feed({"type": "message_stop"}) == ("", Finish(reason, Usage(None, 3)))


async def test_token_holding_an_sse_event_and_an_emoji_split(
    client: httpx.AsyncClient, router: respx.MockRouter, framing: Framing
) -> None:
    sneaky = "a\n\nevent: message_stop\ndata: {}\n\n👋🏽"
    raw = json.dumps(
        {
            "type": "content_block_delta",
            "index": 0,
            "delta": {"type": "text_delta", "text": sneaky},
        },
        ensure_ascii=False,
    )
    data = (
        MESSAGE_START
        + block_start(0, {"type": "text", "text": ""})
        + b"event: content_block_delta\ndata: "
        + raw.encode()
        + b"\n\n"
        + message_delta("end_turn", 2)
        + MESSAGE_STOP
    )
    serve(router, FakeBody(framing(data)))
    texts, finish = await collect(provider(client).stream(chat_request()))
    assert texts == [sneaky]
    assert finish.reason == "stop"


async def test_unknown_event_types_are_ignored(client: httpx.AsyncClient, router: respx.MockRouter) -> None:
    novel = event({"type": "message_annotation", "annotation": {"kind": "new"}})
    serve(router, FakeBody([MESSAGE_START, novel, HELLO[len(MESSAGE_START) :]]))
    texts, _ = await collect(provider(client).stream(chat_request()))
    assert "".join(texts) == "Hello!"


async def test_invalid_json_is_a_protocol_error(client: httpx.AsyncClient, router: respx.MockRouter) -> None:
    serve(router, FakeBody([MESSAGE_START + b'event: content_block_delta\ndata: {"type": "con\n\n']))
    with pytest.raises(ProviderError) as info:
        await collect(provider(client).stream(chat_request()))
    assert info.value.type == "protocol"
    assert '{"type": "con' in info.value.message


@pytest.mark.parametrize(
    ("status", "error_type", "type", "retryable"),
    [
        (401, "authentication_error", "auth", False),
        (429, "rate_limit_error", "rate_limited", True),
        (500, "api_error", "upstream_error", True),
        (529, "overloaded_error", "overloaded", True),
        (400, "invalid_request_error", "upstream_error", False),
    ],
)
async def test_error_answers(
    client: httpx.AsyncClient,
    router: respx.MockRouter,
    status: int,
    error_type: str,
    type: str,
    retryable: bool,
) -> None:
    body = {
        "type": "error",
        "error": {"type": error_type, "message": "something went wrong"},
        "request_id": "req_011CSHoEeqs5C35K2UUqR7Fy",
    }
    router.post(URL).mock(return_value=httpx.Response(status, headers={"retry-after": "3"}, json=body))
    with pytest.raises(ProviderError) as info:
        await collect(provider(client).stream(chat_request()))
    e = info.value
    assert (e.type, e.status, e.retryable, e.provider_type) == (type, status, retryable, error_type)
    assert e.retry_after == 3.0
    assert "something went wrong" in e.message


async def test_request_body_and_headers(client: httpx.AsyncClient, router: respx.MockRouter) -> None:
    route = serve(router, FakeBody([HELLO]))
    history = [Turn("user", "Hi"), Turn("assistant", "Hello!")]
    request = chat_request("And now?", model="", system="Be brief.", temperature=0.5, history=history)
    await collect(provider(client).stream(request))
    sent = route.calls.last.request
    assert sent.headers["x-api-key"] == "sk-ant-api03-test"
    assert sent.headers["anthropic-version"] == "2023-06-01"
    assert "authorization" not in sent.headers
    assert json.loads(sent.content) == {
        "model": "claude-sonnet-4-5",
        "max_tokens": 4096,
        "system": "Be brief.",
        "messages": [
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello!"},
            {"role": "user", "content": "And now?"},
        ],
        "stream": True,
        "temperature": 0.5,
    }


def test_build_body_passes_max_tokens() -> None:
    body = build_body(chat_request("Hi", model="claude-haiku-4-5", max_tokens=100))
    assert body == {
        "model": "claude-haiku-4-5",
        "max_tokens": 100,
        "messages": [{"role": "user", "content": "Hi"}],
        "stream": True,
    }


def test_message_start_counts_cached_input_tokens() -> None:
    reading = AnthropicReading()
    start = json.loads(MESSAGE_START.split(b"data: ")[1])
    start["message"]["usage"].update(cache_read_input_tokens=100, cache_creation_input_tokens=10)
    assert reading.feed(start) == ("", None)
    assert reading.feed({"type": "message_stop"}) == ("", Finish("stop", Usage(135, 1, 100, 10)))


async def test_stops_at_message_stop_without_waiting_for_close(
    client: httpx.AsyncClient, router: respx.MockRouter, framing: Framing
) -> None:
    body = FakeBody(framing(HELLO), hang=True)
    serve(router, body)
    async with asyncio.timeout(2):
        texts, finish = await collect(provider(client).stream(chat_request()))
    assert "".join(texts) == "Hello!"
    assert body.closed


async def test_idle_stall_after_ping_times_out(client: httpx.AsyncClient, router: respx.MockRouter) -> None:
    body = FakeBody([MESSAGE_START, PING, text(0, "Hel"), MESSAGE_STOP], stall_before=2)
    serve(router, body)
    p = provider(client, timeouts=Timeouts(connect=1, first_token=5, idle=0.05))
    async with asyncio.timeout(2):
        with pytest.raises(ProviderError) as info:
            await collect(p.stream(chat_request()))
    assert info.value.type == "timeout"
    assert body.closed


def payload_of(raw: bytes) -> Any:
    return json.loads(raw.split(b"data: ")[1])


def test_the_prompt_is_counted_from_message_start_before_any_text() -> None:
    reading = AnthropicReading()
    reading.feed(payload_of(MESSAGE_START))
    assert reading.usage == Usage(25, 1, 0, 0)  # a reply cancelled now still knows its prompt


def test_a_message_delta_with_every_count_replaces_them() -> None:
    reading = AnthropicReading()
    reading.feed(payload_of(MESSAGE_START))
    counted = {
        "input_tokens": 25,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 2048,
        "output_tokens": 15,
    }
    reading.feed({"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": counted})
    assert reading.feed({"type": "message_stop"}) == ("", Finish("stop", Usage(25 + 2048, 15, 2048, 0)))


def test_counts_left_out_or_null_keep_what_was_said_before() -> None:
    reading = AnthropicReading()
    start = payload_of(MESSAGE_START)
    start["message"]["usage"].update(cache_read_input_tokens=100, cache_creation_input_tokens=10)
    reading.feed(start)
    counted = {"input_tokens": 25, "cache_read_input_tokens": None, "output_tokens": 7}
    reading.feed({"type": "message_delta", "delta": {}, "usage": counted})
    assert reading.usage == Usage(135, 7, 100, 10)


async def test_cache_reads_and_writes_reach_the_finish(
    client: httpx.AsyncClient, router: respx.MockRouter, framing: Framing
) -> None:
    start = payload_of(MESSAGE_START)
    start["message"]["usage"].update(cache_read_input_tokens=3000, cache_creation_input_tokens=400)
    data = (
        event(start)
        + block_start(0, {"type": "text", "text": ""})
        + text(0, "Hi")
        + message_delta("end_turn", 4)
        + MESSAGE_STOP
    )
    serve(router, FakeBody(framing(data)))
    _, finish = await collect(provider(client).stream(chat_request()))
    assert finish.usage == Usage(3425, 4, 3000, 400)


async def test_the_counts_are_told_as_they_come(
    client: httpx.AsyncClient, router: respx.MockRouter, framing: Framing
) -> None:
    serve(router, FakeBody(framing(HELLO)))
    items = [item async for item in provider(client).stream(chat_request())]
    # The prompt's count from message_start before any text; the output's from message_delta.
    assert items == [
        Usage(25, 1, 0, 0),
        "Hello",
        "!",
        Usage(25, 15, 0, 0),
        Finish("stop", Usage(25, 15, 0, 0)),
    ]


async def test_a_stream_cut_before_message_stop_has_told_its_counts(
    client: httpx.AsyncClient, router: respx.MockRouter, framing: Framing
) -> None:
    serve(
        router,
        FakeBody(framing(MESSAGE_START + block_start(0, {"type": "text", "text": ""}) + text(0, "Hel"))),
    )
    seen: list[object] = []
    with pytest.raises(ProviderError) as info:
        async for item in provider(client).stream(chat_request()):
            seen.append(item)
    assert info.value.type == "truncated"
    assert seen == [Usage(25, 1, 0, 0), "Hel"]
