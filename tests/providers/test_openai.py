from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest
import respx

from chat.providers.base import Finish, ProviderError, ToolCall, Turn, Usage
from chat.providers.deadlines import Timeouts
from chat.providers.openai import OpenAIProvider, OpenAIReading, build_body

from .conftest import Framing
from .fakes import FakeBody, chat_request, collect, collect_all, event_stream

pytestmark = pytest.mark.anyio

URL = "https://api.openai.com/v1/chat/completions"
USAGE = {
    "prompt_tokens": 12,
    "completion_tokens": 3,
    "total_tokens": 15,
    "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
    "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0},
}


def chunk(
    delta: dict[str, Any] | None = None,
    finish: str | None = None,
    *,
    usage: dict[str, Any] | None = None,
    choices: bool = True,
) -> bytes:
    """One `data:` line as api.openai.com sends it."""
    payload: dict[str, Any] = {
        "id": "chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT",
        "object": "chat.completion.chunk",
        "created": 1741570283,
        "model": "gpt-4o-mini-2024-07-18",
        "service_tier": "default",
        "system_fingerprint": "fp_06737a9306",
        "choices": [{"index": 0, "delta": delta or {}, "logprobs": None, "finish_reason": finish}]
        if choices
        else [],
        "usage": usage,
    }
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


def content(text: str) -> bytes:
    return chunk({"content": text})


FIRST = chunk({"role": "assistant", "content": "", "refusal": None})
DONE = b"data: [DONE]\n\n"
HELLO = FIRST + content("Hel") + content("lo") + content(" there") + chunk(finish="stop")
USAGE_CHUNK = chunk(choices=False, usage=USAGE)


def provider(client: httpx.AsyncClient, **kwargs: Any) -> OpenAIProvider:
    kwargs.setdefault("api_key", "sk-test-123456")
    return OpenAIProvider(client, **kwargs)


def serve(router: respx.MockRouter, body: FakeBody, url: str = URL, **kwargs: Any) -> respx.Route:
    return router.post(url).mock(return_value=event_stream(body, **kwargs))


async def test_streams_text_then_finish_with_usage_chunk(
    client: httpx.AsyncClient, router: respx.MockRouter, framing: Framing
) -> None:
    body = FakeBody(framing(HELLO + USAGE_CHUNK + DONE))
    serve(router, body)
    texts, finish = await collect(provider(client).stream(chat_request()))
    assert texts == ["Hel", "lo", " there"]
    assert finish == Finish("stop", Usage(12, 3, 0))
    assert body.closed


async def test_json_that_orjson_refuses_and_json_allows_is_still_read(
    client: httpx.AsyncClient, router: respx.MockRouter, framing: Framing
) -> None:
    # Half a surrogate pair (a server that cut an emoji in two), a number past 64 bits, NaN.
    odd = b'data: {"choices": [{"index": 0, "delta": {"content": "\\ud83d"}}], "n": 123456789012345678901234567890}\n\n'
    odd += b'data: {"choices": [{"index": 0, "delta": {"content": "\\ude00"}}], "x": NaN}\n\n'
    serve(router, FakeBody(framing(FIRST + odd + chunk(finish="stop") + DONE)))
    texts, finish = await collect(provider(client).stream(chat_request()))
    assert "".join(texts).encode("utf-16", "surrogatepass").decode("utf-16") == "😀"
    assert finish is not None and finish.reason == "stop"


async def test_usage_in_last_content_chunk(
    client: httpx.AsyncClient, router: respx.MockRouter, framing: Framing
) -> None:
    data = FIRST + content("Hi") + chunk({"content": "!"}, "stop", usage=USAGE) + DONE
    serve(router, FakeBody(framing(data)))
    texts, finish = await collect(provider(client).stream(chat_request()))
    assert "".join(texts) == "Hi!"
    assert finish == Finish("stop", Usage(12, 3, 0))


async def test_end_of_body_after_finish_reason_is_success(
    client: httpx.AsyncClient, router: respx.MockRouter, framing: Framing
) -> None:
    serve(router, FakeBody(framing(HELLO + USAGE_CHUNK)))  # no [DONE]
    texts, finish = await collect(provider(client).stream(chat_request()))
    assert "".join(texts) == "Hello there"
    assert finish == Finish("stop", Usage(12, 3, 0))


async def test_done_without_finish_reason_is_truncated(
    client: httpx.AsyncClient, router: respx.MockRouter, framing: Framing
) -> None:
    serve(router, FakeBody(framing(FIRST + content("Hel") + DONE)))
    got: list[str] = []
    with pytest.raises(ProviderError) as info:
        async for item in provider(client).stream(chat_request()):
            got.append(item)  # type: ignore[arg-type]
    assert info.value.type == "truncated"
    assert got == ["Hel"]


async def test_body_ending_early_is_truncated(
    client: httpx.AsyncClient, router: respx.MockRouter, framing: Framing
) -> None:
    data = FIRST + content("Hel") + content("lo")[:20]  # cut inside an event
    serve(router, FakeBody(framing(data)))
    with pytest.raises(ProviderError) as info:
        await collect(provider(client).stream(chat_request()))
    assert info.value.type == "truncated"


async def test_refusal_delta_is_answer_text(
    client: httpx.AsyncClient, router: respx.MockRouter, framing: Framing
) -> None:
    data = (
        FIRST
        + chunk({"refusal": "I'm sorry, "})
        + chunk({"refusal": "I can't help with that."})
        + chunk(finish="stop")
        + DONE
    )
    serve(router, FakeBody(framing(data)))
    texts, finish = await collect(provider(client).stream(chat_request()))
    assert "".join(texts) == "I'm sorry, I can't help with that."
    assert finish.reason == "stop"


async def test_tool_call_deltas_are_not_text_but_a_whole_call_in_the_finish(
    client: httpx.AsyncClient, router: respx.MockRouter, framing: Framing
) -> None:
    call = {
        "index": 0,
        "id": "call_DdmO9pD3xa9XTPNJ32zg2hcA",
        "type": "function",
        "function": {"name": "get_weather", "arguments": ""},
    }
    data = (
        chunk({"role": "assistant", "content": None, "tool_calls": [call], "refusal": None})
        + chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"location'}}]})
        + chunk({"tool_calls": [{"index": 0, "function": {"arguments": '": "Paris"}'}}]})
        + chunk(finish="tool_calls")
        + USAGE_CHUNK
        + DONE
    )
    serve(router, FakeBody(framing(data)))
    texts, finish = await collect(provider(client).stream(chat_request()))
    assert texts == []
    call_made = ToolCall("call_DdmO9pD3xa9XTPNJ32zg2hcA", "get_weather", '{"location": "Paris"}')
    assert finish == Finish("tool_calls", Usage(12, 3, 0), (call_made,))


async def test_reasoning_deltas_are_not_text(
    client: httpx.AsyncClient, router: respx.MockRouter, framing: Framing
) -> None:
    data = (
        chunk({"role": "assistant", "content": "", "reasoning_content": "Let me think"})
        + chunk({"content": None, "reasoning_content": " step by step."})
        + chunk({"content": None, "reasoning": "OpenRouter spells it so."})
        + content("42")
        + chunk(finish="stop")
        + DONE
    )
    serve(router, FakeBody(framing(data)))
    texts, _ = await collect(provider(client).stream(chat_request()))
    assert texts == ["42"]


async def test_openrouter_comments_and_event_lines_are_tolerated(
    client: httpx.AsyncClient, router: respx.MockRouter, framing: Framing
) -> None:
    data = (
        b": OPENROUTER PROCESSING\n\n"
        + b": OPENROUTER PROCESSING\n\n"
        + b"event: message\n"
        + FIRST
        + b"event: completion\n"
        + content("Hi")
        + b": keep-alive\n\n"
        + chunk(finish="stop", usage=USAGE)
        + DONE
    )
    serve(router, FakeBody(framing(data)), url="https://openrouter.ai/api/v1/chat/completions")
    p = provider(client, base_url="https://openrouter.ai/api/v1/")
    texts, finish = await collect(p.stream(chat_request()))
    assert texts == ["Hi"]
    assert finish == Finish("stop", Usage(12, 3, 0))


async def test_error_object_mid_stream_raises(
    client: httpx.AsyncClient, router: respx.MockRouter, framing: Framing
) -> None:
    error = {
        "id": "gen-1740000000-abc",
        "object": "chat.completion.chunk",
        "error": {"code": "server_error", "message": "Provider disconnected unexpectedly"},
        "choices": [{"index": 0, "delta": {"content": ""}, "finish_reason": "error"}],
    }
    data = FIRST + content("Hel") + b"data: " + json.dumps(error).encode() + b"\n\n" + DONE
    serve(router, FakeBody(framing(data)))
    got: list[object] = []
    with pytest.raises(ProviderError) as info:
        async for item in provider(client).stream(chat_request()):
            got.append(item)
    assert got == ["Hel"]
    assert info.value.type == "upstream_error"
    assert info.value.provider_code == "server_error"
    assert "Provider disconnected" in info.value.message


async def test_error_event_with_rate_limit_raises(
    client: httpx.AsyncClient, router: respx.MockRouter
) -> None:
    error = {"error": {"message": "Rate limit reached", "type": "rate_limit_exceeded"}}
    data = b"event: error\ndata: " + json.dumps(error).encode() + b"\n\n"
    serve(router, FakeBody([data]))
    with pytest.raises(ProviderError) as info:
        await collect(provider(client).stream(chat_request()))
    assert (info.value.type, info.value.retryable) == ("rate_limited", True)


async def test_invalid_json_is_a_protocol_error_quoting_it(
    client: httpx.AsyncClient, router: respx.MockRouter, framing: Framing
) -> None:
    data = FIRST + b'data: {"choices": [{"delta": {"content": "oops"\n\n' + DONE
    serve(router, FakeBody(framing(data)))
    with pytest.raises(ProviderError) as info:
        await collect(provider(client).stream(chat_request()))
    assert info.value.type == "protocol"
    assert '{"choices": [{"delta": {"content": "oops"' in info.value.message


async def test_html_page_with_200_is_a_protocol_error(
    client: httpx.AsyncClient, router: respx.MockRouter
) -> None:
    page = b"<!DOCTYPE html><html><head><title>Hotel WiFi Login</title></head><body>...</body></html>"
    router.post(URL).mock(
        return_value=httpx.Response(200, headers={"content-type": "text/html; charset=utf-8"}, content=page)
    )
    with pytest.raises(ProviderError) as info:
        await collect(provider(client).stream(chat_request()))
    assert info.value.type == "protocol"
    assert "Hotel WiFi Login" in info.value.message
    assert "<html>" not in info.value.message


@pytest.mark.parametrize(
    ("status", "headers", "body", "type", "retryable", "retry_after"),
    [
        (
            401,
            {},
            {
                "error": {
                    "message": "Incorrect API key provided: sk-proj-abcdefghijklmnopqrstu. "
                    "You can find your API key at https://platform.openai.com/account/api-keys.",
                    "type": "invalid_request_error",
                    "param": None,
                    "code": "invalid_api_key",
                }
            },
            "auth",
            False,
            None,
        ),
        (
            429,
            {"retry-after": "20"},
            {
                "error": {
                    "message": "Rate limit reached for gpt-4o-mini in organization org-x on "
                    "requests per min (RPM): Limit 3, Used 3, Requested 1.",
                    "type": "requests",
                    "param": None,
                    "code": "rate_limit_exceeded",
                }
            },
            "rate_limited",
            True,
            20.0,
        ),
        (
            429,
            {},
            {
                "error": {
                    "message": "You exceeded your current quota, please check your plan and billing details.",
                    "type": "insufficient_quota",
                    "param": None,
                    "code": "insufficient_quota",
                }
            },
            "rate_limited",
            False,
            None,
        ),
        (
            500,
            {},
            {
                "error": {
                    "message": "The server had an error while processing your request.",
                    "type": "server_error",
                    "param": None,
                    "code": None,
                }
            },
            "upstream_error",
            True,
            None,
        ),
    ],
)
async def test_error_answers(
    client: httpx.AsyncClient,
    router: respx.MockRouter,
    status: int,
    headers: dict[str, str],
    body: dict[str, Any],
    type: str,
    retryable: bool,
    retry_after: float | None,
) -> None:
    router.post(URL).mock(return_value=httpx.Response(status, headers=headers, json=body))
    with pytest.raises(ProviderError) as info:
        await collect(provider(client).stream(chat_request()))
    error = info.value
    assert (error.type, error.status, error.retryable, error.retry_after) == (
        type,
        status,
        retryable,
        retry_after,
    )
    assert "abcdefghijklmnop" not in error.message


async def test_connection_refused_is_retryable_upstream_error(
    client: httpx.AsyncClient, router: respx.MockRouter
) -> None:
    router.post(URL).mock(side_effect=httpx.ConnectError("[Errno 111] Connection refused"))
    with pytest.raises(ProviderError) as info:
        await collect(provider(client).stream(chat_request()))
    assert (info.value.type, info.value.retryable) == ("upstream_error", True)


async def test_token_holding_an_sse_event_stays_text(
    client: httpx.AsyncClient, router: respx.MockRouter, framing: Framing
) -> None:
    sneaky = "done.\n\nevent: done\ndata: {}\n\n"
    serve(router, FakeBody(framing(FIRST + content(sneaky) + chunk(finish="stop") + DONE)))
    texts, finish = await collect(provider(client).stream(chat_request()))
    assert texts == [sneaky]
    assert finish.reason == "stop"


async def test_utf8_char_split_across_chunks(
    client: httpx.AsyncClient, router: respx.MockRouter, framing: Framing
) -> None:
    # ensure_ascii=False: the emoji travels as raw UTF-8 bytes, which the framing splits
    payload = {"choices": [{"index": 0, "delta": {"content": "hi 👋🏽 żółw"}, "finish_reason": None}]}
    line = b"data: " + json.dumps(payload, ensure_ascii=False).encode() + b"\n\n"
    serve(router, FakeBody(framing(FIRST + line + chunk(finish="stop") + DONE)))
    texts, _ = await collect(provider(client).stream(chat_request()))
    assert texts == ["hi 👋🏽 żółw"]


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("length", "length"),
        ("content_filter", "content_filter"),
        ("function_call", "tool_calls"),
        ("eos", "stop"),
    ],
)
async def test_finish_reasons_are_mapped(
    client: httpx.AsyncClient, router: respx.MockRouter, raw: str, reason: str
) -> None:
    serve(router, FakeBody([FIRST + content("x") + chunk(finish=raw) + DONE]))
    _, finish = await collect(provider(client).stream(chat_request()))
    assert finish.reason == reason


async def test_request_body_and_headers(client: httpx.AsyncClient, router: respx.MockRouter) -> None:
    route = serve(router, FakeBody([HELLO + DONE]))
    history = [Turn("user", "Hi"), Turn("assistant", "Hello!")]
    request = chat_request(
        "And now?", model="", system="Be brief.", temperature=0.2, max_tokens=50, history=history
    )
    await collect(provider(client).stream(request))
    sent = route.calls.last.request
    assert sent.headers["authorization"] == "Bearer sk-test-123456"
    assert sent.headers["accept"] == "text/event-stream"
    assert json.loads(sent.content) == {
        "model": "gpt-4o-mini",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello!"},
            {"role": "user", "content": "And now?"},
        ],
        "stream": True,
        "stream_options": {"include_usage": True},
        "temperature": 0.2,
        "max_tokens": 50,
    }


async def test_no_key_sends_no_authorization(client: httpx.AsyncClient, router: respx.MockRouter) -> None:
    route = serve(router, FakeBody([HELLO + DONE]), url="http://127.0.0.1:8080/v1/chat/completions")
    p = OpenAIProvider(client, api_key=None, base_url="http://127.0.0.1:8080/v1")
    await collect(p.stream(chat_request()))
    assert "authorization" not in route.calls.last.request.headers


def test_build_body_leaves_out_unset_options() -> None:
    body = build_body(chat_request("Hi", model="gpt-4.1"))
    assert body == {
        "model": "gpt-4.1",
        "messages": [{"role": "user", "content": "Hi"}],
        "stream": True,
        "stream_options": {"include_usage": True},
    }


def test_reading_keeps_the_finish_reason_and_usage_for_the_end() -> None:
    reading = OpenAIReading()
    assert reading.feed(json.loads(chunk({"content": "Hi"}, "length")[6:])) == ("Hi", None)
    assert reading.feed(json.loads(USAGE_CHUNK[6:])) == ("", None)
    assert reading.end() == Finish("length", Usage(12, 3, 0))


def test_reading_ended_without_a_finish_reason_is_truncated() -> None:
    reading = OpenAIReading()
    reading.feed(json.loads(chunk({"content": "Hi"})[6:]))
    with pytest.raises(ProviderError) as info:
        reading.end()
    assert info.value.type == "truncated"


async def test_stops_at_done_without_waiting_for_the_body_to_close(
    client: httpx.AsyncClient, router: respx.MockRouter, framing: Framing
) -> None:
    body = FakeBody(framing(HELLO + USAGE_CHUNK + DONE), hang=True)
    serve(router, body)
    async with asyncio.timeout(2):
        texts, finish = await collect(provider(client).stream(chat_request()))
    assert "".join(texts) == "Hello there"
    assert finish == Finish("stop", Usage(12, 3, 0))
    assert body.closed


async def test_closing_the_stream_early_closes_the_response(
    client: httpx.AsyncClient, router: respx.MockRouter
) -> None:
    body = FakeBody([FIRST, content("Hel"), content("lo")], hang=True)
    serve(router, body)
    stream = provider(client).stream(chat_request())
    assert await anext(stream) == "Hel"
    await stream.aclose()  # type: ignore[attr-defined]
    assert body.closed
    assert body.sent == 2  # not drained


async def test_cancelling_the_consumer_closes_the_response(
    client: httpx.AsyncClient, router: respx.MockRouter
) -> None:
    body = FakeBody([FIRST, content("Hel")], hang=True)
    serve(router, body)
    got: list[object] = []

    async def consume() -> None:
        async for item in provider(client).stream(chat_request()):
            got.append(item)

    task = asyncio.create_task(consume())
    while not got:
        await asyncio.sleep(0.001)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert body.closed


@pytest.mark.parametrize("stall_before", [0, 2])
async def test_stalled_stream_times_out(
    client: httpx.AsyncClient, router: respx.MockRouter, stall_before: int
) -> None:
    body = FakeBody([FIRST, content("Hel"), content("lo"), DONE], stall_before=stall_before)
    serve(router, body)
    p = provider(client, timeouts=Timeouts(connect=1, first_token=0.05, idle=0.05))
    async with asyncio.timeout(2):
        with pytest.raises(ProviderError) as info:
            await collect(p.stream(chat_request()))
    assert info.value.type == "timeout"
    assert body.closed


async def test_headers_held_back_time_out_as_first_token(
    client: httpx.AsyncClient, router: respx.MockRouter
) -> None:
    async def slow(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(3600)
        raise AssertionError("unreachable")

    router.post(URL).mock(side_effect=slow)
    p = provider(client, timeouts=Timeouts(connect=1, first_token=0.05, idle=5))
    async with asyncio.timeout(2):
        with pytest.raises(ProviderError) as info:
            await collect(p.stream(chat_request()))
    assert info.value.type == "timeout"


async def test_real_socket_closed_at_done_while_server_keeps_it_open() -> None:
    # Over a real connection: the adapter returns at [DONE] and hangs up at once
    # instead of draining a body the server never ends.
    hung_up = asyncio.Event()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
        )
        for piece in (HELLO, USAGE_CHUNK, DONE):
            writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            await writer.drain()
        await reader.read()  # the request body, then EOF when the client hangs up
        hung_up.set()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with httpx.AsyncClient() as client:
            p = OpenAIProvider(client, api_key=None, base_url=f"http://127.0.0.1:{port}/v1")
            async with asyncio.timeout(5):
                texts, finish = await collect(p.stream(chat_request()))
                await hung_up.wait()
        assert "".join(texts) == "Hello there"
        assert finish == Finish("stop", Usage(12, 3, 0))
    finally:
        server.close()
        await server.wait_closed()


async def test_cached_prompt_tokens_are_counted_apart(
    client: httpx.AsyncClient, router: respx.MockRouter, framing: Framing
) -> None:
    usage = {
        **USAGE,
        "prompt_tokens": 2006,
        "prompt_tokens_details": {"cached_tokens": 1920, "audio_tokens": 0},
    }
    serve(router, FakeBody(framing(HELLO + chunk(choices=False, usage=usage) + DONE)))
    _, finish = await collect(provider(client).stream(chat_request()))
    assert finish.usage == Usage(2006, 3, 1920)


def test_reading_keeps_the_latest_usage_a_server_reports_with_every_chunk() -> None:
    reading = OpenAIReading()
    assert reading.usage == Usage()  # nothing counted before the server says
    reading.feed(json.loads(chunk({"content": "Hi"}, usage={"prompt_tokens": 9, "completion_tokens": 1})[6:]))
    assert reading.usage == Usage(9, 1)  # vLLM's continuous usage stats: no details, no cache
    reading.feed(json.loads(chunk({"content": "!"}, usage={"prompt_tokens": 9, "completion_tokens": 2})[6:]))
    assert reading.usage == Usage(9, 2)


def test_the_same_counts_again_are_not_a_new_usage() -> None:
    reading = OpenAIReading()
    reading.feed(json.loads(USAGE_CHUNK[6:]))
    counted = reading.usage
    reading.feed(json.loads(USAGE_CHUNK[6:]))
    assert reading.usage is counted


async def test_the_usage_chunk_is_told_before_the_finish(
    client: httpx.AsyncClient, router: respx.MockRouter, framing: Framing
) -> None:
    serve(router, FakeBody(framing(HELLO + USAGE_CHUNK + DONE)))
    texts, finish, usages = await collect_all(provider(client).stream(chat_request()))
    assert usages == [Usage(12, 3, 0)] and finish.usage == Usage(12, 3, 0)


def groq_chunk(
    delta: dict[str, Any], finish: str | None = None, x_groq: dict[str, Any] | None = None
) -> bytes:
    """A chunk as api.groq.com sends it: its usage rides in `x_groq` on the last one."""
    payload: dict[str, Any] = {
        "id": "chatcmpl-3c1b2e8f-52f3-4d0a-9b5e-7c1f0a2b9d11",
        "object": "chat.completion.chunk",
        "created": 1741570283,
        "model": "llama-3.3-70b-versatile",
        "system_fingerprint": "fp_c0cfa69934",
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        "x_groq": x_groq or {"id": "req_01jnxyz"},
    }
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


async def test_groq_usage_in_x_groq_of_the_last_chunk_is_counted(
    client: httpx.AsyncClient, router: respx.MockRouter, framing: Framing
) -> None:
    groq_usage = {
        "queue_time": 0.02,
        "prompt_tokens": 41,
        "prompt_time": 0.003,
        "completion_tokens": 2,
        "completion_time": 0.007,
        "total_tokens": 43,
        "total_time": 0.01,
    }
    data = (
        groq_chunk({"role": "assistant", "content": ""})
        + groq_chunk({"content": "Hi"})
        + groq_chunk({}, "stop", {"id": "req_01jnxyz", "usage": groq_usage})
        + DONE
    )
    serve(router, FakeBody(framing(data)))
    texts, finish = await collect(provider(client).stream(chat_request()))
    assert texts == ["Hi"]
    assert finish == Finish("stop", Usage(41, 2, None))
