"""The /v1 door's pieces without a server: OpenAI's chunks made from a reply's events, the
body's fields, `provider/model`, and the error mapping."""

from __future__ import annotations

import json
from typing import Any

import pytest

from chat.config import Settings
from chat.errors import InvalidFields, QuotaExceeded, RateLimited
from chat.providers import ProviderInfo
from chat.providers.demo import DemoProvider
from chat.sse import encode_event
from chat.v1_bodies import parse_completion_body, split_model
from chat.v1_chunks import Chunks, completion, native_events
from chat.v1_errors import from_api_error, from_stream_error, is_v1
from chat.v1_stream import translated

DEMO = DemoProvider()
PROVIDERS = {
    "openai": ProviderInfo("openai", "gpt-4o-mini", "OPENAI_API_KEY", True, DEMO),
    "anthropic": ProviderInfo("anthropic", "claude-sonnet-4-5", "ANTHROPIC_API_KEY", False, None),
}


@pytest.mark.parametrize("text", ["Hel", 'a "quoted"\nline', "emoji 😀 and \u2028", "half \ud83d"])
def test_a_spliced_token_chunk_is_the_chunk_json_would_build(text: str) -> None:
    chunks = Chunks(42, 1700000000, "openai/gpt-4o")
    event = encode_event("token", {"text": text}, 3)
    ((name, data),) = native_events(event)
    spliced = chunks.token(data)
    assert json.loads(spliced.removeprefix(b"data: ")) == json.loads(
        chunks.delta({"content": text}).removeprefix(b"data: ")
    )
    assert spliced.endswith(b"}\n\n") and name == b"token"


def test_a_backlog_of_events_becomes_its_chunks_in_order_and_ends_at_done() -> None:
    chunks = Chunks(7, 1, "openai/gpt-4o")
    backlog = b"".join(
        [
            encode_event("start", {"message_id": 7}, 1),
            encode_event("provider", {"provider": "demo", "model": "demo-1"}, 2),
            encode_event("token", {"text": "Hi"}, 3),
            b": ping\n\n",
            encode_event(
                "done", {"finish_reason": "stop", "usage": {"input_tokens": 3, "output_tokens": None}}, 4
            ),
        ]
    )
    *out, last = translated(backlog, chunks, include_usage=True)
    assert last is None  # the stream ends there
    data = [
        json.loads(line[6:])
        for part in out
        if part
        for line in part.split(b"\n\n")
        if line.startswith(b"data: {")
    ]
    assert [d["choices"][0]["delta"] if d["choices"] else d["usage"] for d in data] == [
        {"content": "Hi"},
        {},
        {"prompt_tokens": 3, "completion_tokens": 0, "total_tokens": 3},  # not counted: 0
    ]
    assert {d["model"] for d in data} == {"demo/demo-1"}  # the fallback that answered
    assert b": ping\n\n" in out and out[-1] is not None and out[-1].endswith(b"data: [DONE]\n\n")


def test_an_error_event_is_an_error_chunk_and_no_done() -> None:
    error = {"type": "timeout", "message": "openai timed out"}
    out = translated(encode_event("error", {"error": error, "partial": True}, 9), Chunks(1, 1, "m"), False)
    assert out[-1] is None
    chunk = out[0]
    assert chunk is not None and b"[DONE]" not in chunk
    assert json.loads(chunk[6:]) == {
        "error": {"message": "openai timed out", "type": "timeout", "code": None, "param": None}
    }


def test_a_completion_with_calls_has_no_content_but_the_calls() -> None:
    calls = [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}]
    metadata: dict[str, Any] = {"provider": "openai", "model": "gpt-4o", "finish_reason": "tool_calls"}
    answer = completion(5, 1, {**metadata, "tool_calls": calls, "usage": {"cached_input_tokens": 2}}, "")
    assert answer["choices"][0]["message"] == {
        "role": "assistant",
        "content": None,
        "refusal": None,
        "tool_calls": calls,
    }
    assert answer["usage"]["prompt_tokens_details"] == {"cached_tokens": 2}


@pytest.mark.parametrize(
    ("model", "split"),
    [
        ("openai/gpt-4o", ("openai", "gpt-4o")),
        ("openai/Qwen/Qwen2.5-7B", ("openai", "Qwen/Qwen2.5-7B")),
        ("meta-llama/Llama-3.1-8B", (None, "meta-llama/Llama-3.1-8B")),
        ("anthropic/claude-3.5-sonnet", (None, "anthropic/claude-3.5-sonnet")),  # not usable: a bare model
        ("openai/", ("openai", None)),
        ("gpt-4o", (None, "gpt-4o")),
    ],
)
def test_a_model_is_split_only_at_a_usable_providers_name(
    model: str, split: tuple[str | None, str | None]
) -> None:
    assert split_model(model, PROVIDERS) == split


def test_a_body_is_read_as_openai_sends_it() -> None:
    body = parse_completion_body(
        {
            "model": "openai/gpt-4o",
            "messages": [{"role": "user", "content": "hi"}],
            "stream": True,
            "stream_options": {"include_usage": True},
            "max_tokens": 10,
            "max_completion_tokens": 20,
            "stop": "END",
            "n": 1,
            "user": "u-1",
            "logprobs": False,  # unknown to sidechat: ignored
        },
        Settings(),
        PROVIDERS,
    )
    assert (body.provider, body.bare_model, body.stream, body.include_usage) == (
        "openai",
        "gpt-4o",
        True,
        True,
    )
    assert (body.max_tokens, body.stop) == (20, ("END",))
    ask = body.ask("alice", 3, "k")
    assert (ask.message, ask.conversation_id, ask.history) == ("hi", 3, body.history)


def test_every_bad_field_is_named() -> None:
    with pytest.raises(InvalidFields) as info:
        parse_completion_body(
            {"model": "", "messages": [], "stop": ["a"] * 5, "tool_choice": "sometimes", "user": 3},
            Settings(),
            PROVIDERS,
        )
    assert set(info.value.extra["fields"]) == {"model", "messages", "stop", "tool_choice", "user"}


def test_our_errors_keep_their_status_but_a_bad_body_is_a_400() -> None:
    bad = from_api_error(InvalidFields({"messages[0].role": "must be one of system, user"}))
    assert (bad.status, bad.type, bad.code, bad.param) == (
        400,
        "invalid_request_error",
        "invalid_value",
        "messages[0].role",
    )
    limited = from_api_error(RateLimited("slow down", retry_after=1.2))
    assert (limited.status, limited.code, limited.headers()) == (
        429,
        "rate_limit_exceeded",
        {"Retry-After": "2"},
    )
    spent = from_api_error(QuotaExceeded("budget spent", retry_after=3600))
    assert spent.headers() == {"Retry-After": "3600", "x-should-retry": "false"}


@pytest.mark.parametrize(
    ("error", "status"),
    [
        ({"type": "auth", "status": 403}, 502),
        ({"type": "rate_limited", "status": 429, "provider_code": "insufficient_quota"}, 429),
        ({"type": "upstream_error", "status": 422}, 400),
        ({"type": "upstream_error", "status": 409}, 502),
        ({"type": "upstream_error"}, 502),
        ({"type": "overloaded", "status": 529}, 503),
        ({"type": "timeout"}, 504),
        ({"type": "truncated"}, 502),
        ({"type": "prompt_blocked"}, 400),
        ({"type": "shutdown"}, 503),
        ({"type": "interrupted"}, 503),
    ],
)
def test_a_reply_failure_maps_to_openais_status(error: dict[str, Any], status: int) -> None:
    mapped = from_stream_error({"message": "x", **error})
    assert mapped.status == status
    if error.get("provider_code") == "insufficient_quota":
        assert mapped.headers()["x-should-retry"] == "false"  # waiting will not bring money


def test_v1_is_recognised_below_a_root_path() -> None:
    assert is_v1({"path": "/chat/v1/models", "root_path": "/chat"})
    assert not is_v1({"path": "/api/v1/x", "root_path": ""})
