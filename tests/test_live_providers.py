"""Each provider's wire format over real sockets: client -> uvicorn -> sidechat -> fake provider.

The fake upstream sends byte streams shaped like the real APIs' (Anthropic's named
SSE events, Gemini's `alt=sse` chunks with CRLF, Ollama's NDJSON), and records the
request it got, so both directions are checked: what the client sees, and what the
provider was sent. Then retries and fallback, end to end.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
import trustme

from chat.config import Settings
from tests.conftest import Proxy
from tests.fakeupstream import (
    FakeUpstream,
    Reply,
    Step,
    openai_chunk,
    openai_reply,
    sse,
)
from tests.live import chat_stream, serve
from tests.processes import free_port

pytestmark = pytest.mark.anyio

BODY = {"message": "Say hello", "system": "Be brief.", "temperature": 0.5, "max_tokens": 64}


@pytest.fixture
def db(tmp_path: Path) -> str:
    return str(tmp_path / "chat.db")


async def talk(settings: Settings, body: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """Stream one chat through a real server; the transcript and the stored reply."""
    async with serve(settings) as url, httpx.AsyncClient(base_url=url, timeout=10) as client:
        transcript = await chat_stream(client, body)
        conversation_id = transcript.events[0].data["conversation_id"]
        messages = (await client.get(f"/api/conversations/{conversation_id}")).json()["messages"]
    return transcript, messages[-1]


def anthropic_reply(*texts: str, usage: tuple[int, int] = (25, 15)) -> list[Step]:
    steps: list[Step] = [
        sse(
            {
                "type": "message_start",
                "message": {
                    "id": "msg_01",
                    "type": "message",
                    "role": "assistant",
                    "content": [],
                    "model": "claude-sonnet-4-5",
                    "stop_reason": None,
                    "stop_sequence": None,
                    "usage": {"input_tokens": usage[0], "output_tokens": 1},
                },
            },
            "message_start",
        ),
        sse(
            {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
            "content_block_start",
        ),
        sse({"type": "ping"}, "ping"),
    ]
    steps += [
        sse(
            {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": t}},
            "content_block_delta",
        )
        for t in texts
    ]
    steps += [
        sse({"type": "content_block_stop", "index": 0}, "content_block_stop"),
        sse(
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                "usage": {"output_tokens": usage[1]},
            },
            "message_delta",
        ),
        sse({"type": "message_stop"}, "message_stop"),
    ]
    return steps


def gemini_chunk(text: str, finish: str | None = None) -> bytes:
    candidate: dict[str, Any] = {"content": {"parts": [{"text": text}], "role": "model"}, "index": 0}
    payload: dict[str, Any] = {
        "candidates": [candidate],
        "modelVersion": "gemini-2.5-flash",
        "responseId": "r1",
    }
    if finish:
        candidate["finishReason"] = finish
        payload["usageMetadata"] = {"promptTokenCount": 8, "candidatesTokenCount": 3, "totalTokenCount": 11}
    else:
        payload["usageMetadata"] = {"promptTokenCount": 8, "totalTokenCount": 8}
    return f"data: {json.dumps(payload)}\r\n\r\n".encode()


def ollama_line(text: str, done: bool = False) -> bytes:
    payload: dict[str, Any] = {
        "model": "llama3.2",
        "created_at": "2026-01-01T00:00:00.000000Z",
        "message": {"role": "assistant", "content": text},
        "done": done,
    }
    if done:
        payload.update(
            done_reason="stop",
            total_duration=4_883_583_458,
            prompt_eval_count=26,
            eval_count=3,
            eval_duration=1_325_948_000,
        )
    return json.dumps(payload).encode() + b"\n"


async def test_openai(upstream: FakeUpstream, db: str) -> None:
    upstream.add(Reply([b": OPENROUTER PROCESSING\n\n", *openai_reply("Hel", "lo", usage=(12, 2))]))
    settings = Settings(db=db, provider="openai", openai_api_key="sk-test", openai_base_url=upstream.url)

    transcript, row = await talk(settings, {**BODY, "model": "gpt-4o"})

    assert transcript.names == ["start", "token", "token", "done"]
    assert (transcript.events[0].data["provider"], transcript.events[0].data["model"]) == ("openai", "gpt-4o")
    assert transcript.text == "Hello"
    assert transcript.terminal.data["usage"] == {"input_tokens": 12, "output_tokens": 2}
    assert (row["status"], row["content"]) == ("completed", "Hello")
    [seen] = upstream.requests
    assert (seen.method, seen.path) == ("POST", "/chat/completions")
    assert seen.headers["authorization"] == "Bearer sk-test"
    assert seen.headers["accept"] == "text/event-stream"
    assert seen.json() == {
        "model": "gpt-4o",
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hello"}],
        "stream": True,
        "stream_options": {"include_usage": True},
        "temperature": 0.5,
        "max_tokens": 64,
    }


async def test_anthropic(upstream: FakeUpstream, db: str) -> None:
    upstream.add(Reply(anthropic_reply("Hel", "lo!", usage=(25, 15))))
    settings = Settings(
        db=db, provider="anthropic", anthropic_api_key="sk-ant-test", anthropic_base_url=upstream.url
    )

    transcript, row = await talk(settings, BODY)

    assert transcript.names == ["start", "token", "token", "done"]
    assert (transcript.events[0].data["provider"], transcript.events[0].data["model"]) == (
        "anthropic",
        "claude-sonnet-4-5",
    )
    assert transcript.text == "Hello!"
    assert transcript.terminal.data["finish_reason"] == "stop"
    assert transcript.terminal.data["usage"] == {"input_tokens": 25, "output_tokens": 15}
    assert (row["status"], row["content"]) == ("completed", "Hello!")
    [seen] = upstream.requests
    assert (seen.method, seen.path) == ("POST", "/v1/messages")
    assert seen.headers["x-api-key"] == "sk-ant-test"
    assert seen.headers["anthropic-version"] == "2023-06-01"
    assert "authorization" not in seen.headers
    assert seen.json() == {
        "model": "claude-sonnet-4-5",
        "max_tokens": 64,
        "messages": [{"role": "user", "content": "Say hello"}],
        "stream": True,
        "system": "Be brief.",
        "temperature": 0.5,
    }


async def test_gemini(upstream: FakeUpstream, db: str) -> None:
    upstream.add(Reply([gemini_chunk("Hel"), gemini_chunk("lo"), gemini_chunk(" there", finish="STOP")]))
    settings = Settings(
        db=db, provider="gemini", gemini_api_key="AIza-test-key", gemini_base_url=upstream.url
    )

    transcript, row = await talk(settings, {**BODY, "model": "gemini-2.5-flash"})

    assert transcript.names == ["start", "token", "token", "token", "done"]
    assert transcript.text == "Hello there"
    assert transcript.terminal.data["usage"] == {"input_tokens": 8, "output_tokens": 3}
    assert (row["status"], row["content"]) == ("completed", "Hello there")
    [seen] = upstream.requests
    assert (seen.method, seen.path) == (
        "POST",
        "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse",
    )
    assert seen.headers["x-goog-api-key"] == "AIza-test-key"
    assert "key=" not in seen.path  # never in a URL that could be logged
    assert seen.json() == {
        "contents": [{"role": "user", "parts": [{"text": "Say hello"}]}],
        "systemInstruction": {"parts": [{"text": "Be brief."}]},
        "generationConfig": {"temperature": 0.5, "maxOutputTokens": 64},
    }


async def test_ollama(upstream: FakeUpstream, db: str) -> None:
    script: list[Step] = [ollama_line("Hel"), ollama_line("lo"), ollama_line(""), ollama_line("", done=True)]
    upstream.add(Reply(script, headers={"content-type": "application/x-ndjson"}))
    settings = Settings(db=db, provider="ollama", ollama_base_url=upstream.url)

    transcript, row = await talk(settings, {**BODY, "model": "llama3.2"})

    assert transcript.names == ["start", "token", "token", "done"]
    assert transcript.text == "Hello"
    assert transcript.terminal.data["usage"] == {"input_tokens": 26, "output_tokens": 3}
    assert (row["status"], row["content"]) == ("completed", "Hello")
    [seen] = upstream.requests
    assert (seen.method, seen.path) == ("POST", "/api/chat")
    assert seen.headers["accept"] == "application/x-ndjson"
    assert seen.json() == {
        "model": "llama3.2",
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hello"}],
        "stream": True,
        "options": {"temperature": 0.5, "num_predict": 64},
    }


# --- retries and fallback ----------------------------------------------------------------


async def test_a_503_before_the_first_token_is_retried(upstream: FakeUpstream, db: str) -> None:
    overloaded = b'{"error": {"message": "The engine is currently overloaded", "type": "server_error"}}'
    upstream.add(
        Reply([overloaded], status=503, headers={"content-type": "application/json", "retry-after-ms": "20"}),
        Reply(openai_reply("second ", "time")),
    )
    settings = Settings(db=db, provider="openai", openai_api_key="sk-test", openai_base_url=upstream.url)

    transcript, row = await talk(settings, {"message": "hi"})

    assert transcript.names == ["start", "token", "token", "done"]
    assert transcript.text == "second time"
    assert len(upstream.requests) == 2
    assert upstream.requests[0].body == upstream.requests[1].body
    assert (row["status"], row["content"], row["metadata"]["error"]) == ("completed", "second time", None)


async def test_a_retry_after_beyond_the_budget_ends_the_stream_at_once(
    upstream: FakeUpstream, db: str
) -> None:
    upstream.add(
        Reply(
            [b'{"error": {"message": "Rate limit reached"}}'],
            status=429,
            headers={"content-type": "application/json", "retry-after": "120"},
        ),
        Reply(openai_reply("too late")),
    )
    settings = Settings(db=db, provider="openai", openai_api_key="sk-test", openai_base_url=upstream.url)

    transcript, _ = await talk(settings, {"message": "hi"})

    assert transcript.names == ["start", "error"]
    error = transcript.terminal.data["error"]
    assert (error["type"], error["status"], error["retry_after"]) == ("rate_limited", 429, 120.0)
    assert transcript.terminal.at - transcript.events[0].at < 2
    assert len(upstream.requests) == 1


async def test_nothing_is_retried_after_a_token(upstream: FakeUpstream, db: str) -> None:
    upstream.add(
        Reply([openai_chunk("Half"), sse({"error": {"message": "overloaded", "type": "server_error"}})]),
        Reply(openai_reply("never")),
    )
    settings = Settings(
        db=db,
        provider="openai",
        openai_api_key="sk-test",
        openai_base_url=upstream.url,
        anthropic_api_key="sk-ant-test",
        anthropic_base_url=upstream.url,
        fallback=(("anthropic", "claude-haiku-4-5"),),
    )

    transcript, row = await talk(settings, {"message": "hi"})

    assert transcript.names == ["start", "token", "error"]
    assert transcript.terminal.data["partial"] is True
    assert len(upstream.requests) == 1
    assert (row["status"], row["content"], row["metadata"]["provider"]) == ("failed", "Half", "openai")


async def test_a_fallback_answers_and_the_stream_says_so(upstream: FakeUpstream, db: str) -> None:
    upstream.add(
        Reply(
            [
                b'{"error": {"message": "You exceeded your current quota", "type": "insufficient_quota", "code": "insufficient_quota"}}'
            ],
            status=429,
            headers={"content-type": "application/json"},
        ),
        Reply(anthropic_reply("Bonjour", usage=(9, 4))),
    )
    settings = Settings(
        db=db,
        provider="openai",
        openai_api_key="sk-test",
        openai_base_url=upstream.url,
        anthropic_api_key="sk-ant-test",
        anthropic_base_url=upstream.url,
        fallback=(
            ("gemini", "gemini-2.5-flash"),
            ("anthropic", "claude-haiku-4-5"),
        ),  # gemini: no key, skipped
    )

    transcript, row = await talk(settings, {"message": "hi", "model": "gpt-4o"})

    assert transcript.names == ["start", "provider", "token", "done"]
    start, announced, done = transcript.events[0].data, transcript.events[1].data, transcript.terminal.data
    assert (start["provider"], start["model"]) == ("openai", "gpt-4o")  # what was asked
    assert announced == {"provider": "anthropic", "model": "claude-haiku-4-5"}
    assert (done["provider"], done["model"]) == ("anthropic", "claude-haiku-4-5")
    assert done["usage"] == {"input_tokens": 9, "output_tokens": 4}
    assert transcript.text == "Bonjour"
    assert [r.path for r in upstream.requests] == ["/chat/completions", "/v1/messages"]
    assert upstream.requests[1].json()["model"] == "claude-haiku-4-5"
    meta = row["metadata"]
    assert (row["status"], row["content"]) == ("completed", "Bonjour")
    assert (meta["provider"], meta["model"]) == ("anthropic", "claude-haiku-4-5")
    assert meta["requested"] == {"provider": "openai", "model": "gpt-4o"}


async def test_without_a_fallback_the_done_event_is_unchanged(upstream: FakeUpstream, db: str) -> None:
    upstream.add(Reply(openai_reply("ok")))
    settings = Settings(db=db, provider="openai", openai_api_key="sk-test", openai_base_url=upstream.url)

    transcript, row = await talk(settings, {"message": "hi"})

    done = {"message_id", "finish_reason", "usage", "cost_usd", "duration_ms", "ttft_ms"}
    assert set(transcript.terminal.data) == done
    assert "requested" not in row["metadata"]


# --- reaching the provider ------------------------------------------------------------------


async def test_an_unreachable_provider_is_named_with_its_address(db: str) -> None:
    port = free_port()  # nothing listens there
    settings = Settings(
        db=db, provider="ollama", ollama_base_url=f"http://127.0.0.1:{port}", retry_attempts=1
    )

    transcript, row = await talk(settings, {"message": "hi"})

    assert transcript.names == ["start", "error"]
    error = transcript.terminal.data["error"]
    assert error["type"] == "upstream_error"
    assert error["message"] == f"could not connect to ollama at 127.0.0.1:{port}: Connection refused"
    assert row["metadata"]["error"] == error


async def test_a_provider_over_tls_through_a_proxy_with_a_private_ca(
    tls_upstream: FakeUpstream,
    proxy: Proxy,
    authority: trustme.CA,
    db: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    tls_upstream.add(Reply(openai_reply("Hel", "lo")))
    bundle = tmp_path / "ca.pem"
    authority.cert_pem.write_to_path(str(bundle))
    monkeypatch.setenv("HTTPS_PROXY", proxy.url)
    settings = Settings.from_env(
        {
            "SIDECHAT_DB": db,
            "OPENAI_API_KEY": "sk-test",
            "OPENAI_BASE_URL": tls_upstream.url,
            "SIDECHAT_CA_BUNDLE": str(bundle),
        }
    )

    transcript, row = await talk(settings, {"message": "hi"})

    assert transcript.names == ["start", "token", "token", "done"]
    assert (row["status"], row["content"]) == ("completed", "Hello")
    assert proxy.connections_to(tls_upstream.port) == 1


async def test_a_key_of_any_shape_echoed_by_the_provider_is_never_passed_on(
    upstream: FakeUpstream, db: str, caplog: pytest.LogCaptureFixture
) -> None:
    key = "gsk_live_9f8e7d6c5b4a3210"  # not like sk-... or AIza...: only knowing it finds it
    body = json.dumps({"error": {"message": f"Invalid API Key {key} (check your settings)"}}).encode()
    upstream.add(Reply([body], status=401, headers={"content-type": "application/json"}))
    settings = Settings(db=db, provider="openai", openai_api_key=key, openai_base_url=upstream.url)

    transcript, row = await talk(settings, {"message": "hi"})

    error = transcript.terminal.data["error"]
    assert (error["type"], error["status"]) == ("auth", 401)
    assert error["message"] == "openai: Invalid API Key [redacted] (check your settings)"
    assert key not in transcript.raw.decode()
    assert key not in json.dumps(row)
    assert key not in caplog.text
