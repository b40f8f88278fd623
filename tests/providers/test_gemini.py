from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest
import respx

from chat.providers.base import Finish, ProviderError, Turn, Usage
from chat.providers.gemini import GeminiProvider, GeminiReading, build_body

from .conftest import Framing
from .fakes import FakeBody, chat_request, collect, collect_all, event_stream

pytestmark = pytest.mark.anyio

BASE = "https://generativelanguage.googleapis.com"
URL = f"{BASE}/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse"


def response(
    parts: list[dict[str, Any]], finish: str | None = None, usage: dict[str, Any] | None = None
) -> bytes:
    """One event as the Gemini API sends it (it ends lines with CRLF itself)."""
    candidate: dict[str, Any] = {"content": {"parts": parts, "role": "model"}, "index": 0}
    if finish:
        candidate["finishReason"] = finish
    payload = {
        "candidates": [candidate],
        "usageMetadata": usage or {"promptTokenCount": 8, "totalTokenCount": 8},
        "modelVersion": "gemini-2.5-flash",
        "responseId": "mEjNaPKJJ5-Bz7IPoJ_R4Qg",
    }
    return b"data: " + json.dumps(payload, ensure_ascii=False).encode() + b"\n\n"


USAGE = {
    "promptTokenCount": 8,
    "candidatesTokenCount": 12,
    "totalTokenCount": 45,
    "thoughtsTokenCount": 25,
}
HELLO = (
    response([{"text": "**Greeting the user**\n\nI will say hi.", "thought": True}])
    + response([{"text": "Hello"}])
    + response([{"text": " there, 👋🏽"}])
    + response([{"text": "!"}], "STOP", USAGE)
)


def provider(client: httpx.AsyncClient, **kwargs: Any) -> GeminiProvider:
    kwargs.setdefault("api_key", "AIzaSyD-test-key-0000000000000000000")
    return GeminiProvider(client, **kwargs)


def serve(router: respx.MockRouter, body: FakeBody, url: str = URL) -> respx.Route:
    return router.post(url).mock(return_value=event_stream(body))


async def test_streams_text_skipping_thoughts(
    client: httpx.AsyncClient, router: respx.MockRouter, framing: Framing
) -> None:
    body = FakeBody(framing(HELLO))
    serve(router, body)
    texts, finish = await collect(provider(client).stream(chat_request()))
    assert texts == ["Hello", " there, 👋🏽", "!"]
    assert finish == Finish("stop", Usage(8, 12 + 25))
    assert body.closed


async def test_max_tokens_is_length(
    client: httpx.AsyncClient, router: respx.MockRouter, framing: Framing
) -> None:
    serve(router, FakeBody(framing(response([{"text": "Hel"}]) + response([], "MAX_TOKENS", USAGE))))
    texts, finish = await collect(provider(client).stream(chat_request()))
    assert texts == ["Hel"]
    assert finish.reason == "length"


@pytest.mark.parametrize("reason", ["SAFETY", "RECITATION", "PROHIBITED_CONTENT"])
async def test_blocked_answer_is_an_error(
    client: httpx.AsyncClient, router: respx.MockRouter, framing: Framing, reason: str
) -> None:
    serve(router, FakeBody(framing(response([{"text": "Hel"}]) + response([{"text": ""}], reason))))
    got: list[object] = []
    with pytest.raises(ProviderError) as info:
        async for item in provider(client).stream(chat_request()):
            got.append(item)
    assert got == ["Hel", Usage(8, None)]  # what was counted before the block is kept
    assert (info.value.type, info.value.provider_code) == ("prompt_blocked", reason)


async def test_blocked_prompt_is_an_error(client: httpx.AsyncClient, router: respx.MockRouter) -> None:
    payload = {
        "promptFeedback": {
            "blockReason": "SAFETY",
            "safetyRatings": [{"category": "HARM_CATEGORY_DANGEROUS_CONTENT", "probability": "HIGH"}],
        },
        "usageMetadata": {"promptTokenCount": 8, "totalTokenCount": 8},
        "modelVersion": "gemini-2.5-flash",
    }
    serve(router, FakeBody([b"data: " + json.dumps(payload).encode() + b"\r\n\r\n"]))
    with pytest.raises(ProviderError) as info:
        await collect(provider(client).stream(chat_request()))
    assert info.value.type == "prompt_blocked"


async def test_body_ending_before_finish_reason_is_truncated(
    client: httpx.AsyncClient, router: respx.MockRouter, framing: Framing
) -> None:
    serve(router, FakeBody(framing(response([{"text": "Hel"}]) + response([{"text": "lo"}]))))
    with pytest.raises(ProviderError) as info:
        await collect(provider(client).stream(chat_request()))
    assert info.value.type == "truncated"


async def test_error_object_mid_stream(client: httpx.AsyncClient, router: respx.MockRouter) -> None:
    error = {
        "error": {
            "code": 503,
            "message": "The model is overloaded. Please try again later.",
            "status": "UNAVAILABLE",
        }
    }
    serve(
        router,
        FakeBody([response([{"text": "Hel"}]), b"data: " + json.dumps(error).encode() + b"\n\n"]),
    )
    with pytest.raises(ProviderError) as info:
        await collect(provider(client).stream(chat_request()))
    assert (info.value.type, info.value.retryable, info.value.provider_type) == (
        "overloaded",
        True,
        "UNAVAILABLE",
    )


async def test_invalid_key_answer_is_auth(client: httpx.AsyncClient, router: respx.MockRouter) -> None:
    body = {
        "error": {
            "code": 400,
            "message": "API key not valid. Please pass a valid API key.",
            "status": "INVALID_ARGUMENT",
            "details": [
                {
                    "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                    "reason": "API_KEY_INVALID",
                    "domain": "googleapis.com",
                    "metadata": {"service": "generativelanguage.googleapis.com"},
                }
            ],
        }
    }
    router.post(URL).mock(return_value=httpx.Response(400, json=body))
    with pytest.raises(ProviderError) as info:
        await collect(provider(client).stream(chat_request()))
    e = info.value
    assert (e.type, e.status, e.provider_type, e.provider_code) == (
        "auth",
        400,
        "INVALID_ARGUMENT",
        "API_KEY_INVALID",
    )


async def test_request_url_body_and_headers(client: httpx.AsyncClient, router: respx.MockRouter) -> None:
    route = serve(router, FakeBody([HELLO]))
    request = chat_request(
        "And now?",
        model="",
        system="Be brief.",
        temperature=0.7,
        max_tokens=256,
        history=[Turn("user", "Hi"), Turn("assistant", "Hello!")],
    )
    await collect(provider(client).stream(request))
    sent = route.calls.last.request
    assert str(sent.url) == URL
    assert sent.headers["x-goog-api-key"] == "AIzaSyD-test-key-0000000000000000000"
    assert "key=" not in str(sent.url)
    assert json.loads(sent.content) == {
        "contents": [
            {"role": "user", "parts": [{"text": "Hi"}]},
            {"role": "model", "parts": [{"text": "Hello!"}]},
            {"role": "user", "parts": [{"text": "And now?"}]},
        ],
        "systemInstruction": {"parts": [{"text": "Be brief."}]},
        "generationConfig": {"temperature": 0.7, "maxOutputTokens": 256},
    }


def test_build_body_minimal() -> None:
    assert build_body(chat_request("Hi")) == {"contents": [{"role": "user", "parts": [{"text": "Hi"}]}]}


def test_parse_event_joins_parts() -> None:
    payload = json.loads(response([{"text": "a"}, {"text": "b", "thought": True}, {"text": "c"}])[6:])
    assert GeminiReading().feed(payload) == ("ac", None)


async def test_stops_at_finish_reason_without_waiting_for_close(
    client: httpx.AsyncClient, router: respx.MockRouter, framing: Framing
) -> None:
    body = FakeBody(framing(HELLO), hang=True)
    serve(router, body)
    async with asyncio.timeout(2):
        texts, _ = await collect(provider(client).stream(chat_request()))
    assert "".join(texts) == "Hello there, 👋🏽!"
    assert body.closed


async def test_cached_content_tokens_are_counted_apart(
    client: httpx.AsyncClient, router: respx.MockRouter, framing: Framing
) -> None:
    cached = {**USAGE, "promptTokenCount": 5000, "cachedContentTokenCount": 4096}
    data = response([{"text": "Hello"}]) + response([{"text": "!"}], "STOP", cached)
    serve(router, FakeBody(framing(data)))
    _, finish = await collect(provider(client).stream(chat_request()))
    assert finish.usage == Usage(5000, 12 + 25, 4096)


def test_the_reading_keeps_each_chunks_counts_so_far() -> None:
    reading = GeminiReading()
    reading.feed(
        json.loads(response([{"text": "Hel"}], usage={"promptTokenCount": 8, "candidatesTokenCount": 1})[6:])
    )
    assert reading.usage == Usage(8, 1)
    last = json.loads(response([{"text": "lo"}], "STOP")[6:])
    del last["usageMetadata"]  # a last chunk without counts: the latest ones stand
    assert reading.feed(last) == ("lo", Finish("stop", Usage(8, 1)))


def test_the_same_counts_again_are_not_a_new_usage() -> None:
    reading = GeminiReading()
    reading.feed(json.loads(response([{"text": "Hel"}])[6:]))
    counted = reading.usage
    reading.feed(json.loads(response([{"text": "lo"}])[6:]))
    assert reading.usage is counted  # a stream tells a Usage when it changes, not per chunk


async def test_each_change_of_the_counts_is_told_once(
    client: httpx.AsyncClient, router: respx.MockRouter, framing: Framing
) -> None:
    serve(router, FakeBody(framing(HELLO)))
    texts, finish, usages = await collect_all(provider(client).stream(chat_request()))
    assert usages == [Usage(8, None)]  # the same count on every chunk until the last, with the Finish
    assert finish.usage == Usage(8, 12 + 25)
