"""How the /v1 door fails, as the OpenAI SDK sees it: a provider's error before the first token
is an HTTP error that raises the SDK's matching exception (and its own retries apply), a
failure once the stream has started is an error chunk, and a bad body is OpenAI's 400."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.fakeupstream import FakeUpstream, Reply, openai_chunk, openai_reply, sse
from tests.openai_client import USER, door, settings_in

pytestmark = pytest.mark.anyio

JSON = {"content-type": "application/json"}


def refusal(status: int, error: dict[str, Any], **headers: str) -> Reply:
    return Reply([json.dumps({"error": error}).encode()], status=status, headers={**JSON, **headers})


BAD_KEY = refusal(401, {"message": "Incorrect API key provided: sk-te**", "code": "invalid_api_key"})
SLOW_DOWN = refusal(429, {"message": "Rate limit reached", "type": "requests"}, **{"retry-after": "3"})
BROKEN = refusal(500, {"message": "The server had an error", "type": "server_error"})
TOO_LONG = refusal(400, {"message": "maximum context length", "code": "context_length_exceeded"})
NO_MODEL = refusal(404, {"message": "The model `gpt-9` does not exist", "code": "model_not_found"})
CASES = [
    (BAD_KEY, openai.InternalServerError, 502, "upstream_auth", "invalid_api_key"),
    (SLOW_DOWN, openai.RateLimitError, 429, "rate_limited", "requests"),
    (BROKEN, openai.InternalServerError, 502, "upstream_error", "server_error"),
    (TOO_LONG, openai.BadRequestError, 400, "upstream_error", "context_length_exceeded"),
    (NO_MODEL, openai.NotFoundError, 404, "upstream_error", "model_not_found"),
]


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
@pytest.mark.parametrize(
    ("reply", "raised", "status", "kind", "code"), CASES, ids=[c[3] + str(c[2]) for c in CASES]
)
async def test_a_provider_error_before_the_first_token_raises_the_sdks_exception(
    upstream: FakeUpstream,
    tmp_path: Path,
    stream: bool,
    reply: Reply,
    raised: type[openai.APIStatusError],
    status: int,
    kind: str,
    code: str,
) -> None:
    upstream.add(reply)
    async with door(settings_in(tmp_path, upstream)) as sidechat:
        with pytest.raises(raised) as info:
            await sidechat.sdk.chat.completions.create(model="gpt-4o", messages=USER, stream=stream)
        conversation_id = info.value.response.headers["x-conversation-id"]
        stored = (await sidechat.http.get(f"/api/conversations/{conversation_id}")).json()["messages"]
    error = info.value
    assert (error.status_code, error.type, error.code) == (status, kind, code)
    assert isinstance(error.body, dict) and set(error.body) == {"message", "type", "code", "param"}
    assert stored[-1]["status"] == "failed"  # the turn is stored, failed, as on the native API
    if status == 429:
        assert error.response.headers["retry-after"] == "3"


async def test_upstream_auth_is_not_retried_by_the_sdk(upstream: FakeUpstream, tmp_path: Path) -> None:
    upstream.add(BAD_KEY, BAD_KEY)
    async with door(settings_in(tmp_path, upstream), max_retries=1) as sidechat:
        with pytest.raises(openai.InternalServerError) as info:
            await sidechat.sdk.chat.completions.create(model="gpt-4o", messages=USER)
    assert info.value.response.headers["x-should-retry"] == "false"  # our key is wrong: waiting won't help
    assert len(upstream.requests) == 1


async def test_the_sdks_max_retries_rides_over_a_provider_429(upstream: FakeUpstream, tmp_path: Path) -> None:
    busy = refusal(429, {"message": "Rate limit reached"}, **{"retry-after-ms": "10"})
    upstream.add(busy, busy, Reply(openai_reply("third ", "time")))
    async with door(settings_in(tmp_path, upstream), max_retries=2) as sidechat:
        answer = await sidechat.sdk.chat.completions.create(model="gpt-4o", messages=USER)
    assert answer.choices[0].message.content == "third time"
    assert len(upstream.requests) == 3  # one per attempt of the SDK's: sidechat itself retried none


async def test_the_sdks_max_retries_waits_out_our_own_rate_limit(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    upstream.add(Reply(openai_reply("one")), Reply(openai_reply("two")))
    statuses: list[int] = []

    async def seen(response: httpx.Response) -> None:
        statuses.append(response.status_code)

    settings = settings_in(tmp_path, upstream, rate_limit=(1, 1.0))
    async with door(settings) as sidechat:
        hooked = httpx.AsyncClient(event_hooks={"response": [seen]})
        sdk = openai.AsyncOpenAI(
            base_url=f"{sidechat.url}/v1", api_key="x", max_retries=3, http_client=hooked
        )
        async with sdk:
            await sdk.chat.completions.create(model="gpt-4o", messages=USER)
            started = time.monotonic()
            again = await sdk.chat.completions.create(model="gpt-4o", messages=USER)
    assert again.choices[0].message.content == "two"
    assert statuses[0] == 200 and statuses[-1] == 200 and 429 in statuses
    assert time.monotonic() - started >= 0.5  # the SDK waited as Retry-After said


async def test_a_failure_after_the_first_token_is_an_error_chunk_the_sdk_raises(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    upstream.add(Reply([openai_chunk("Hel"), openai_chunk("lo")]))  # and then the body ends
    async with door(settings_in(tmp_path, upstream)) as sidechat:
        stream = await sidechat.sdk.chat.completions.create(model="gpt-4o", messages=USER, stream=True)
        texts: list[str] = []
        with pytest.raises(openai.APIError) as info:
            async for chunk in stream:
                texts.append(chunk.choices[0].delta.content or "")
    assert "".join(texts) == "Hello"
    assert info.value.type == "truncated"
    assert "finish_reason" in info.value.message


async def read_raw(response: httpx.Response) -> list[tuple[float, bytes]]:
    return [(time.monotonic(), chunk) async for chunk in response.aiter_raw()]


async def test_a_slow_first_token_starts_the_stream_after_one_heartbeat_then_a_failure_is_a_chunk(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    release = asyncio.Event()
    upstream.add(Reply([release, b'{"error": {"message": "boom"}}'], status=500, headers=JSON))
    settings = settings_in(tmp_path, upstream, heartbeat_seconds=0.2)
    body = {"model": "gpt-4o", "messages": USER, "stream": True}
    async with door(settings) as sidechat:
        asked = time.monotonic()
        async with sidechat.http.stream("POST", "/v1/chat/completions", json=body) as response:
            started = time.monotonic()
            assert response.status_code == 200  # the status could not wait any longer
            chunks = response.aiter_raw()
            first = await anext(chunks)
            ping = await anext(chunks)
            release.set()
            rest = b"".join([chunk async for chunk in chunks])
    assert 0.15 < started - asked < 3  # held one heartbeat interval, not until the provider answered
    assert b'"role": "assistant"' in first
    assert ping == b": ping\n\n"
    (error,) = [json.loads(line[6:]) for line in rest.split(b"\n\n") if line.startswith(b"data: ")]
    assert error["error"]["type"] == "upstream_error"
    assert b"[DONE]" not in rest


async def test_a_slow_first_token_that_comes_is_streamed_to_done(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    release = asyncio.Event()
    upstream.add(Reply([release, *openai_reply("late")]))
    settings = settings_in(tmp_path, upstream, heartbeat_seconds=0.2)
    async with door(settings) as sidechat:
        stream = await sidechat.sdk.chat.completions.create(model="gpt-4o", messages=USER, stream=True)
        release.set()
        chunks = [chunk async for chunk in stream]
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "late"
    assert chunks[-1].choices[0].finish_reason == "stop"


async def test_a_failure_within_the_first_heartbeat_keeps_its_status(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    upstream.add(
        Reply([0.05, sse({"error": {"message": "overloaded", "type": "overloaded_error"}}, "error")])
    )
    async with door(settings_in(tmp_path, upstream, heartbeat_seconds=5.0)) as sidechat:
        with pytest.raises(openai.InternalServerError) as info:
            await sidechat.sdk.chat.completions.create(model="gpt-4o", messages=USER, stream=True)
    assert (info.value.status_code, info.value.type) == (503, "overloaded")


async def test_a_sidechat_token_is_the_sdks_api_key(upstream: FakeUpstream, tmp_path: Path) -> None:
    upstream.add(Reply(openai_reply("Hi")))
    settings = settings_in(tmp_path, upstream, api_tokens=(("tok-alice-0123456789", "alice"),))
    async with door(settings, api_key="tok-alice-0123456789") as sidechat:
        answer = await sidechat.sdk.chat.completions.with_raw_response.create(model="gpt-4o", messages=USER)
        reply_id = answer.headers["x-message-id"]
        mine = await sidechat.http.get(f"/api/messages/{reply_id}/stream")
        wrong = openai.AsyncOpenAI(base_url=f"{sidechat.url}/v1", api_key="tok-mallory", max_retries=0)
        with pytest.raises(openai.AuthenticationError) as info:
            await wrong.models.list()
        await wrong.close()
    assert mine.status_code == 200
    assert (info.value.type, info.value.code) == ("unauthorized", "invalid_api_key")


async def test_with_auth_off_the_sdks_authorization_header_is_ignored(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    async with door(settings_in(tmp_path, upstream), api_key="anything at all") as sidechat:
        assert (await sidechat.sdk.models.list()).data


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": USER}, "model"),
        ({"model": "gpt-4o"}, "messages"),
        ({"model": "gpt-4o", "messages": USER, "temperature": "hot"}, "temperature"),
        ({"model": "gpt-4o", "messages": USER, "stream": "yes"}, "stream"),
        (
            {"model": "gpt-4o", "messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
            "messages[0].content[0]",
        ),
        ({"model": "gpt-4o", "messages": [{"role": "wizard", "content": "hi"}]}, "messages[0].role"),
        ({"model": "gpt-4o", "messages": USER, "n": 2}, "n"),
        ({"model": "gpt-4o", "messages": USER, "tools": [{"type": "function"}]}, "tools[0]"),
    ],
)
async def test_a_bad_body_is_openais_400_naming_the_field(
    upstream: FakeUpstream, tmp_path: Path, body: dict[str, Any], param: str
) -> None:
    async with door(settings_in(tmp_path, upstream)) as sidechat:
        answer = await sidechat.http.post("/v1/chat/completions", json=body)
        conversations = (await sidechat.http.get("/api/conversations")).json()["conversations"]
    assert answer.status_code == 400
    error = answer.json()["error"]
    assert (error["type"], error["param"]) == ("invalid_request_error", param)
    assert error["code"] in ("missing_required_parameter", "invalid_type", "invalid_value")
    assert conversations == [] and upstream.requests == []


async def test_a_body_that_is_no_json_and_an_unknown_route_are_openai_shaped(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    async with door(settings_in(tmp_path, upstream)) as sidechat:
        broken = await sidechat.http.post("/v1/chat/completions", content=b"{", headers=JSON)
        unknown = await sidechat.http.post("/v1/embeddings", json={})
        with pytest.raises(openai.NotFoundError):
            await sidechat.sdk.embeddings.create(model="x", input="hi")
    assert (broken.status_code, broken.json()["error"]["code"]) == (400, "invalid_json")
    assert unknown.status_code == 404 and set(unknown.json()["error"]) == {"message", "type", "code", "param"}


async def test_an_unknown_conversation_is_a_404(upstream: FakeUpstream, tmp_path: Path) -> None:
    async with door(settings_in(tmp_path, upstream)) as sidechat:
        with pytest.raises(openai.NotFoundError):
            await sidechat.sdk.chat.completions.create(
                model="gpt-4o", messages=USER, extra_headers={"X-Conversation-ID": "999"}
            )
        with pytest.raises(openai.BadRequestError) as info:
            await sidechat.sdk.chat.completions.create(
                model="gpt-4o", messages=USER, extra_headers={"X-Conversation-ID": "seven"}
            )
    assert info.value.param == "X-Conversation-ID"


async def test_a_provider_without_its_key_says_which_variable_to_set(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    async with door(
        settings_in(tmp_path, upstream, openai_api_key=None, openai_base_url="https://api.openai.com/v1")
    ) as sidechat:
        with pytest.raises(openai.BadRequestError) as info:
            await sidechat.sdk.chat.completions.create(model="gpt-4o", messages=USER)
    assert "OPENAI_API_KEY" in info.value.message
