"""OpenAI's Responses API: byte streams in the shape api.openai.com sends them (named events,
compact JSON, a `sequence_number` on each, the whole response in the terminal event), split
at awkward places, and what the adapter sends."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest
import respx

from chat.config import Settings
from chat.labels import Labels
from chat.providers import build_providers
from chat.providers.base import (
    Answerer,
    ChatRequest,
    Finish,
    ProviderError,
    ToolCall,
    Turn,
    Usage,
    close_stream,
)
from chat.providers.deadlines import Timeouts
from chat.providers.openai_responses import OpenAIResponsesProvider, ResponsesReading, build_body
from chat.telemetry import request_id_var

from .conftest import Framing
from .fakes import FakeBody, chat_request, collect, collect_all, event_stream
from .responses_stream import (
    MESSAGE_ID,
    REASONING_ID,
    USAGE,
    closing,
    completed,
    events,
    message_item,
    opening,
    reasoning_item,
    response,
    text_delta,
)

pytestmark = pytest.mark.anyio

URL = "https://api.openai.com/v1/responses"
TEXTS = ["Hel", "lo", " there 👋🏽"]
BODY_OF_HELLO = [*opening(), *map(text_delta, TEXTS), *closing(TEXTS)]
HELLO = events(*BODY_OF_HELLO, completed(TEXTS))
HELLO_USAGE = Usage(12, 67, 0)


def provider(client: httpx.AsyncClient, **kwargs: Any) -> OpenAIResponsesProvider:
    kwargs.setdefault("api_key", "sk-test-123456")
    return OpenAIResponsesProvider(client, **kwargs)


def serve(router: respx.MockRouter, body: FakeBody, url: str = URL) -> respx.Route:
    return router.post(url).mock(return_value=event_stream(body))


def payload_of(raw: bytes) -> Any:
    return json.loads(raw.split(b"data: ", 1)[1])


async def test_streams_text_then_finish_with_usage(
    client: httpx.AsyncClient, router: respx.MockRouter, framing: Framing
) -> None:
    body = FakeBody(framing(HELLO))
    serve(router, body)
    texts, finish = await collect(provider(client).stream(chat_request()))
    assert texts == TEXTS
    assert finish == Finish("stop", HELLO_USAGE)
    assert body.closed


async def test_the_whole_stream_cut_in_two_at_every_byte(
    client: httpx.AsyncClient, router: respx.MockRouter
) -> None:
    # Every place a network read could end, the emoji's bytes and the CR-less blank lines
    # between events included; the framing fixture's byte-by-byte split is the other extreme.
    bodies = [FakeBody([HELLO[:cut], HELLO[cut:]]) for cut in range(1, len(HELLO))]
    router.post(URL).mock(side_effect=[event_stream(body) for body in bodies])
    p = provider(client)
    for cut, body in enumerate(bodies, start=1):
        texts, finish = await collect(p.stream(chat_request()))
        assert (texts, finish) == (TEXTS, Finish("stop", HELLO_USAGE)), cut
        assert body.closed, cut


async def test_reasoning_summaries_and_reasoning_text_are_never_text(
    client: httpx.AsyncClient, router: respx.MockRouter, framing: Framing
) -> None:
    summary = "**Greeting the user**\n\nThe user said hello; I should answer briefly."
    part = {"item_id": REASONING_ID, "output_index": 0, "summary_index": 0}
    data = events(
        {"type": "response.created", "response": response()},
        {"type": "response.in_progress", "response": response()},
        {"type": "response.output_item.added", "output_index": 0, "item": reasoning_item("in_progress")},
        {
            "type": "response.reasoning_summary_part.added",
            **part,
            "part": {"type": "summary_text", "text": ""},
        },
        {"type": "response.reasoning_summary_text.delta", **part, "delta": summary[:20], "obfuscation": "a"},
        {"type": "response.reasoning_summary_text.delta", **part, "delta": summary[20:], "obfuscation": "b"},
        {"type": "response.reasoning_summary_text.done", **part, "text": summary},
        {
            "type": "response.reasoning_summary_part.done",
            **part,
            "part": {"type": "summary_text", "text": summary},
        },
        # Open-weight models (gpt-oss) stream their raw reasoning as reasoning_text.
        {
            "type": "response.reasoning_text.delta",
            "item_id": REASONING_ID,
            "output_index": 0,
            "content_index": 0,
            "delta": "Let me think.",
        },
        {
            "type": "response.output_item.done",
            "output_index": 0,
            "item": reasoning_item("completed", [{"type": "summary_text", "text": summary}]),
        },
        *opening()[4:],
        *map(text_delta, TEXTS),
        *closing(TEXTS),
        completed(TEXTS),
    )
    serve(router, FakeBody(framing(data)))
    texts, finish = await collect(provider(client).stream(chat_request()))
    assert texts == TEXTS
    assert finish == Finish("stop", HELLO_USAGE)


async def test_incomplete_at_max_output_tokens_is_length_with_usage(
    client: httpx.AsyncClient, router: respx.MockRouter, framing: Framing
) -> None:
    usage = {
        **USAGE,
        "output_tokens": 16,
        "output_tokens_details": {"reasoning_tokens": 14},
        "total_tokens": 28,
    }
    incomplete = response(
        "incomplete",
        incomplete_details={"reason": "max_output_tokens"},
        max_output_tokens=16,
        output=[reasoning_item(), message_item("incomplete", TEXTS[:2])],
        usage=usage,
    )
    data = events(
        *opening(),
        *map(text_delta, TEXTS[:2]),
        {"type": "response.incomplete", "response": incomplete},
    )
    serve(router, FakeBody(framing(data)))
    texts, finish = await collect(provider(client).stream(chat_request(max_tokens=16)))
    assert texts == TEXTS[:2]
    assert finish == Finish("length", Usage(12, 16, 0))


@pytest.mark.parametrize(
    ("reason", "finish"),
    [
        ("max_output_tokens", "length"),
        ("content_filter", "content_filter"),
        ("something_new", "length"),
        (None, "length"),
    ],
)
def test_incomplete_reasons_are_mapped(reason: str | None, finish: str) -> None:
    reading = ResponsesReading()
    end = {
        "type": "response.incomplete",
        "response": response("incomplete", incomplete_details={"reason": reason}),
    }
    assert reading.feed(end) == ("", Finish(finish, Usage()))


async def test_failed_raises_its_error_and_keeps_what_was_counted(
    client: httpx.AsyncClient, router: respx.MockRouter, framing: Framing
) -> None:
    error = {"code": "server_error", "message": "The model produced invalid content. Please try again."}
    failed = response("failed", error=error, usage={**USAGE, "output_tokens": 3, "total_tokens": 15})
    data = events(*opening(), text_delta("Hel"), {"type": "response.failed", "response": failed})
    serve(router, FakeBody(framing(data)))
    seen: list[object] = []
    with pytest.raises(ProviderError) as info:
        async for item in provider(client).stream(chat_request()):
            seen.append(item)
    assert seen == ["Hel", Usage(12, 3, 0)]  # the count comes before the error: it is billed
    e = info.value
    assert (e.type, e.retryable, e.provider_code, e.status) == ("upstream_error", True, "server_error", None)
    assert e.message == "openai-responses: The model produced invalid content. Please try again."


async def test_failed_without_a_count_tells_none(client: httpx.AsyncClient, router: respx.MockRouter) -> None:
    failed = response("failed", error={"code": "server_error", "message": "An error occurred."})
    serve(router, FakeBody([events(*opening(), {"type": "response.failed", "response": failed})]))
    seen: list[object] = []
    with pytest.raises(ProviderError) as info:
        async for item in provider(client).stream(chat_request()):
            seen.append(item)
    assert seen == []
    assert info.value.type == "upstream_error"


@pytest.mark.parametrize(
    ("code", "type", "retryable"),
    [
        ("server_error", "upstream_error", True),
        ("rate_limit_exceeded", "rate_limited", True),
        ("vector_store_timeout", "timeout", True),
        ("invalid_prompt", "prompt_blocked", False),
        ("bio_policy", "prompt_blocked", False),
        ("data_residency_mismatch", "upstream_error", False),
        ("insufficient_quota", "rate_limited", False),
        ("something_new", "upstream_error", True),
    ],
)
def test_a_failed_responses_code_picks_its_error_type(code: str, type: str, retryable: bool) -> None:
    failed = {
        "type": "response.failed",
        "response": response("failed", error={"code": code, "message": "No."}),
    }
    with pytest.raises(ProviderError) as info:
        ResponsesReading().feed(failed)
    e = info.value
    assert (e.type, e.retryable, e.provider_code, e.message) == (
        type,
        retryable,
        code,
        "openai-responses: No.",
    )


def test_failed_with_no_error_object_is_still_an_error() -> None:
    with pytest.raises(ProviderError) as info:
        ResponsesReading().feed({"type": "response.failed", "response": response("failed")})
    assert (info.value.type, info.value.retryable) == ("upstream_error", True)
    assert "failed" in info.value.message


@pytest.mark.parametrize(
    ("error", "type", "retryable"),
    [
        # As the API reference documents it: code and message at the top.
        (
            {"type": "error", "code": "rate_limit_exceeded", "message": "Rate limit reached.", "param": None},
            "rate_limited",
            True,
        ),
        # As api.openai.com has been seen to send it: the usual error object, nested.
        (
            {
                "type": "error",
                "error": {
                    "type": "insufficient_quota",
                    "code": "insufficient_quota",
                    "message": "You exceeded your current quota.",
                    "param": None,
                },
            },
            "rate_limited",
            False,
        ),
        (
            {
                "type": "error",
                "error": {
                    "type": "service_unavailable_error",
                    "code": None,
                    "message": "Unable to verify model access right now. Please retry.",
                    "param": None,
                },
            },
            "upstream_error",
            True,
        ),
    ],
)
@pytest.mark.parametrize("named", [True, False], ids=["event-line", "data-only"])
async def test_an_error_event_mid_stream_raises_it(
    client: httpx.AsyncClient,
    router: respx.MockRouter,
    framing: Framing,
    error: dict[str, Any],
    type: str,
    retryable: bool,
    named: bool,
) -> None:
    raw = events(error, first=8)
    if not named:
        raw = raw.split(b"\n", 1)[1]  # a compatible server that names no events
    serve(router, FakeBody(framing(events(*opening(), text_delta("Hel")) + raw)))
    seen: list[object] = []
    with pytest.raises(ProviderError) as info:
        async for item in provider(client).stream(chat_request()):
            seen.append(item)
    assert seen == ["Hel"]
    assert (info.value.type, info.value.retryable) == (type, retryable)
    assert info.value.message.startswith("openai-responses: ")


async def test_unknown_event_types_are_ignored(
    client: httpx.AsyncClient, router: respx.MockRouter, framing: Framing
) -> None:
    novel = [
        {"type": "response.queued", "response": response("queued")},
        {
            "type": "response.output_text.annotation.added",
            "item_id": MESSAGE_ID,
            "output_index": 1,
            "content_index": 0,
            "annotation_index": 0,
            "annotation": {"type": "url_citation", "url": "https://example.com", "title": "Example"},
        },
        {"type": "response.web_search_call.searching", "output_index": 2, "item_id": "ws_1"},
        {"type": "response.something_from_next_year", "whatever": {"nested": [1, 2]}},
    ]
    data = events(
        *opening(), text_delta("Hel"), *novel, text_delta("lo"), *closing(["Hel", "lo"]), completed(["Hello"])
    )
    serve(router, FakeBody(framing(data)))
    texts, finish = await collect(provider(client).stream(chat_request()))
    assert texts == ["Hel", "lo"]
    assert finish.reason == "stop"


async def test_refusal_deltas_are_the_answers_text(
    client: httpx.AsyncClient, router: respx.MockRouter, framing: Framing
) -> None:
    refusal = {"item_id": MESSAGE_ID, "output_index": 1, "content_index": 0}
    data = events(
        *opening()[:5],
        {"type": "response.content_part.added", **refusal, "part": {"type": "refusal", "refusal": ""}},
        {"type": "response.refusal.delta", **refusal, "delta": "I can't help "},
        {"type": "response.refusal.delta", **refusal, "delta": "with that."},
        {"type": "response.refusal.done", **refusal, "refusal": "I can't help with that."},
        completed([]),
    )
    serve(router, FakeBody(framing(data)))
    texts, _ = await collect(provider(client).stream(chat_request()))
    assert texts == ["I can't help ", "with that."]


async def test_a_body_ending_before_the_terminal_event_is_truncated(
    client: httpx.AsyncClient, router: respx.MockRouter, framing: Framing
) -> None:
    serve(router, FakeBody(framing(events(*BODY_OF_HELLO))))
    seen: list[object] = []
    with pytest.raises(ProviderError) as info:
        async for item in provider(client).stream(chat_request()):
            seen.append(item)
    assert info.value.type == "truncated"
    assert "response.completed" in info.value.message
    assert seen == TEXTS


async def test_a_terminal_event_cut_short_is_truncated(
    client: httpx.AsyncClient, router: respx.MockRouter
) -> None:
    serve(router, FakeBody([HELLO[: -len(b"}}\n\n")]]))
    with pytest.raises(ProviderError) as info:
        await collect(provider(client).stream(chat_request()))
    assert info.value.type == "truncated"


async def test_stops_at_the_terminal_event_without_waiting_for_the_body_to_close(
    client: httpx.AsyncClient, router: respx.MockRouter, framing: Framing
) -> None:
    body = FakeBody(framing(HELLO), hang=True)
    serve(router, body)
    async with asyncio.timeout(2):
        texts, finish = await collect(provider(client).stream(chat_request()))
    assert (texts, finish) == (TEXTS, Finish("stop", HELLO_USAGE))
    assert body.closed


async def test_cached_and_cache_written_prompt_tokens_are_counted_apart(
    client: httpx.AsyncClient, router: respx.MockRouter
) -> None:
    usage = {
        **USAGE,
        "input_tokens": 2100,
        "input_tokens_details": {"cached_tokens": 2048, "cache_write_tokens": 0},
    }
    serve(router, FakeBody([events(*BODY_OF_HELLO, completed(TEXTS, usage=usage))]))
    _, finish, usages = await collect_all(provider(client).stream(chat_request()))
    assert finish.usage == Usage(2100, 67, 2048, 0)
    assert usages == []  # the count comes with the end, in the Finish


def test_events_before_the_end_leave_the_count_as_it_was() -> None:
    reading = ResponsesReading()
    told = reading.usage
    for event in opening():  # created and in_progress carry "usage": null
        assert reading.feed(event) == ("", None)
    assert reading.usage is told  # so the shared loop tells no new count


async def test_invalid_json_is_a_protocol_error_quoting_it(
    client: httpx.AsyncClient, router: respx.MockRouter
) -> None:
    cut = b'event: response.output_text.delta\ndata: {"type":"response.output_text.delta","del\n\n'
    serve(router, FakeBody([events(*opening()) + cut]))
    with pytest.raises(ProviderError) as info:
        await collect(provider(client).stream(chat_request()))
    assert info.value.type == "protocol"
    assert '"del' in info.value.message


async def test_a_delta_that_is_not_a_string_is_a_protocol_error(
    client: httpx.AsyncClient, router: respx.MockRouter
) -> None:
    serve(router, FakeBody([events(*opening(), {**text_delta("x"), "delta": ["x"]})]))
    with pytest.raises(ProviderError) as info:
        await collect(provider(client).stream(chat_request()))
    assert info.value.type == "protocol"


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
            {"retry-after-ms": "1500", "retry-after": "2"},
            {
                "error": {
                    "message": "Rate limit reached for gpt-5-mini in organization org-x on tokens per min "
                    "(TPM): Limit 200000, Used 199000, Requested 1500.",
                    "type": "tokens",
                    "param": None,
                    "code": "rate_limit_exceeded",
                }
            },
            "rate_limited",
            True,
            1.5,
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
    e = info.value
    assert (e.type, e.status, e.retryable, e.retry_after) == (type, status, retryable, retry_after)
    assert e.message.startswith("openai-responses: ")
    assert "abcdefghijklmnop" not in e.message


async def test_request_body_and_headers(client: httpx.AsyncClient, router: respx.MockRouter) -> None:
    route = serve(router, FakeBody([HELLO]))
    history = [Turn("user", "Hi"), Turn("assistant", "Hello!")]
    request = chat_request("And now?", system="Be brief.", temperature=0.2, max_tokens=500, history=history)
    token = request_id_var.set("req-7f3a")
    try:
        await collect(provider(client).stream(request))
    finally:
        request_id_var.reset(token)
    sent = route.calls.last.request
    assert (sent.method, str(sent.url)) == ("POST", URL)
    assert sent.headers["authorization"] == "Bearer sk-test-123456"
    assert sent.headers["accept"] == "text/event-stream"
    assert sent.headers["accept-encoding"] == "identity"
    assert sent.headers["x-client-request-id"] == "req-7f3a"
    assert json.loads(sent.content) == {
        "model": "gpt-5-mini",
        "instructions": "Be brief.",
        "input": [
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello!"},
            {"role": "user", "content": "And now?"},
        ],
        "stream": True,
        "store": False,
        "temperature": 0.2,
        "max_output_tokens": 500,
    }


def test_build_body_leaves_out_unset_options() -> None:
    assert build_body(chat_request("Hi", model="gpt-5.1")) == {
        "model": "gpt-5.1",
        "input": [{"role": "user", "content": "Hi"}],
        "stream": True,
        "store": False,
    }


WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}


@pytest.mark.parametrize(
    "request_",
    [
        ChatRequest("gpt-5-mini", [Turn("user", "Weather in Paris?")], tools=(WEATHER,)),
        ChatRequest(
            "gpt-5-mini",
            [
                Turn("user", "Weather in Paris?"),
                Turn("assistant", "", tool_calls=(ToolCall("call_1", "get_weather", '{"city": "Paris"}'),)),
                Turn("tool", '{"temp": 21}', tool_call_id="call_1"),
            ],
        ),
        ChatRequest("gpt-5-mini", [Turn("user", "Count to ten.")], stop=("5",)),
    ],
    ids=["tools", "tool turns", "stop"],
)
async def test_tools_and_stop_sequences_are_refused_with_a_400_before_anyone_is_called(
    client: httpx.AsyncClient, router: respx.MockRouter, request_: ChatRequest
) -> None:
    route = serve(router, FakeBody([HELLO]))
    with pytest.raises(ProviderError) as info:
        await collect(provider(client).stream(request_))
    assert (info.value.type, info.value.status, info.value.retryable) == ("upstream_error", 400, False)
    assert "the openai provider" in info.value.message
    assert route.call_count == 0


def test_a_clients_system_turns_stay_where_it_put_them() -> None:
    turns = [
        Turn("system", "Be brief."),
        Turn("user", "hi"),
        Turn("system", "Now in French."),
        Turn("user", "ok"),
    ]
    body = build_body(ChatRequest("gpt-5-mini", turns, system="You are sidechat."))
    assert body["instructions"] == "You are sidechat."
    assert [(m["role"], m["content"]) for m in body["input"]] == [
        ("system", "Be brief."),
        ("user", "hi"),
        ("system", "Now in French."),
        ("user", "ok"),
    ]


async def test_a_local_server_needs_no_key(client: httpx.AsyncClient, router: respx.MockRouter) -> None:
    route = serve(router, FakeBody([HELLO]), url="http://127.0.0.1:8080/v1/responses")
    p = OpenAIResponsesProvider(client, base_url="http://127.0.0.1:8080/v1")
    texts, _ = await collect(p.stream(chat_request()))
    assert texts == TEXTS
    assert "authorization" not in route.calls.last.request.headers


async def test_closing_the_stream_early_closes_the_response(
    client: httpx.AsyncClient, router: respx.MockRouter
) -> None:
    body = FakeBody([events(*opening(), text_delta("Hel"))], hang=True)
    serve(router, body)
    stream = provider(client).stream(chat_request())
    assert await anext(stream) == "Hel"
    await close_stream(stream)
    assert body.closed


# --- registered: settings, build_providers, labels --------------------------------------


def test_the_hyphenated_name_is_a_provider_setting_and_a_fallback() -> None:
    env = {
        "SIDECHAT_PROVIDER": "openai-responses",
        "SIDECHAT_FALLBACK": "openai-responses:gpt-5.1,openai",
        "OPENAI_API_KEY": "sk-test",
    }
    settings = Settings.from_env(env)
    assert settings.provider == "openai-responses"
    assert settings.fallback == (("openai-responses", "gpt-5.1"), ("openai", ""))


@pytest.mark.parametrize(
    ("env", "key_set", "available"),
    [
        ({"OPENAI_API_KEY": "sk-test"}, True, True),
        ({}, False, False),
        ({"OPENAI_BASE_URL": "http://127.0.0.1:8080/v1"}, False, True),  # a local server: no key
        ({"ANTHROPIC_API_KEY": "sk-ant-test"}, False, False),
    ],
)
async def test_it_is_usable_with_the_openai_key_or_a_local_base_url(
    client: httpx.AsyncClient, env: dict[str, str], key_set: bool, available: bool
) -> None:
    providers = build_providers(Settings.from_env(env), client, Timeouts())
    info = providers["openai-responses"]
    assert (info.key_variable, info.key_set, info.available) == ("OPENAI_API_KEY", key_set, available)
    assert info.default_model == "gpt-5-mini"
    assert info.as_json("openai")["name"] == "openai-responses"
    assert list(providers) == ["openai", "openai-responses", "anthropic", "gemini", "ollama", "demo"]


async def test_build_providers_wraps_it_to_retry_with_sidechat_model_as_its_default(
    client: httpx.AsyncClient, router: respx.MockRouter
) -> None:
    route = router.post(URL).mock(
        side_effect=[httpx.Response(503, headers={"retry-after-ms": "1"}), event_stream(FakeBody([HELLO]))]
    )
    env = {
        "OPENAI_API_KEY": "sk-test",
        "SIDECHAT_PROVIDER": "openai-responses",
        "SIDECHAT_MODEL": "gpt-5.1",
        "SIDECHAT_RETRY_ATTEMPTS": "2",
    }
    info = build_providers(Settings.from_env(env), client, Timeouts())["openai-responses"]
    assert info.default_model == "gpt-5.1"  # SIDECHAT_MODEL is the default provider's
    assert info.provider is not None
    texts, finish = await collect(info.provider.stream(chat_request()))
    assert (texts, finish) == (TEXTS, Finish("stop", HELLO_USAGE))
    assert route.call_count == 2  # the 503 was retried
    assert json.loads(route.calls.last.request.content)["model"] == "gpt-5.1"


async def test_a_fallback_chain_hands_over_to_it(client: httpx.AsyncClient, router: respx.MockRouter) -> None:
    router.post("https://api.openai.com/v1/chat/completions").mock(
        return_value=httpx.Response(500, json={"error": {"message": "The server had an error", "code": None}})
    )
    route = router.post(URL).mock(return_value=event_stream(FakeBody([HELLO])))
    env = {
        "OPENAI_API_KEY": "sk-test",
        "SIDECHAT_RETRY_ATTEMPTS": "1",
        "SIDECHAT_FALLBACK": "openai-responses:gpt-5.1",
    }
    provider = build_providers(Settings.from_env(env), client, Timeouts())["openai"].provider
    assert provider is not None
    items = [item async for item in provider.stream(chat_request(model="gpt-4o-mini"))]
    assert items == [Answerer("openai-responses", "gpt-5.1"), *TEXTS, Finish("stop", HELLO_USAGE)]
    assert json.loads(route.calls.last.request.content)["model"] == "gpt-5.1"


async def test_metric_labels_know_it() -> None:
    settings = Settings(openai_api_key="sk-test")
    labels = Labels(settings)
    assert labels.provider("openai-responses") == "openai-responses"
    async with httpx.AsyncClient() as client:
        labels.know(build_providers(settings, client, Timeouts()))
    assert labels.provider("openai-responses") == "openai-responses"
    assert labels.model("gpt-5-mini") == "gpt-5-mini"
