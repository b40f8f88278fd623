from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import httpx
import pytest

from chat.providers.base import Answerer, Finish, Item, ProviderError, Usage
from chat.providers.errors import error_from_response, error_from_transport
from chat.providers.retry import RetryingProvider

from .fakes import FakeClock, ScriptedProvider, chat_request, collect

pytestmark = pytest.mark.anyio

DONE = Finish("stop", Usage(3, 2))


def answered(status: int, body: object = b"", headers: dict[str, str] | None = None) -> ProviderError:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return error_from_response(status, httpx.Headers(headers or {}), raw, "fake")


def retrying(
    inner: ScriptedProvider, clock: FakeClock, *, random: float = 1.0, **options: float
) -> RetryingProvider:
    return RetryingProvider(inner, sleep=clock.sleep, clock=clock, random=lambda: random, **options)  # type: ignore[arg-type]


async def fails(provider: RetryingProvider) -> ProviderError:
    with pytest.raises(ProviderError) as info:
        await collect(provider.stream(chat_request()))
    return info.value


@pytest.mark.parametrize(
    "error",
    [
        answered(
            429,
            {"error": {"message": "Rate limit reached", "type": "requests", "code": "rate_limit_exceeded"}},
        ),
        answered(500, {"error": {"message": "The server had an error", "type": "server_error"}}),
        answered(502, b"<html><title>502 Bad Gateway</title></html>"),
        answered(503),
        answered(529, {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}),
        answered(408),
        answered(409),
        error_from_transport(httpx.ConnectError("[Errno 111] Connection refused"), "fake"),
        error_from_transport(httpx.RemoteProtocolError("peer closed connection"), "fake"),
        ProviderError(
            "timeout", "upstream sent nothing for 120s while waiting for the first token", retryable=True
        ),
    ],
    ids=lambda e: f"{e.type}-{e.status}",
)
async def test_retries_a_retryable_failure_before_the_first_token(error: ProviderError) -> None:
    clock = FakeClock()
    inner = ScriptedProvider([error], ["Hel", "lo", DONE])
    provider = retrying(inner, clock)

    texts, finish = await collect(provider.stream(chat_request()))

    assert (texts, finish) == (["Hel", "lo"], DONE)
    assert inner.calls == 2
    assert clock.sleeps == [0.5]


async def test_backoff_grows_exponentially_up_to_its_cap() -> None:
    clock = FakeClock()
    inner = ScriptedProvider(*[[answered(500)]] * 5, ["ok", DONE])
    provider = retrying(inner, clock, attempts=6, max_seconds=100, base_delay=0.5, max_delay=3.0)

    texts, _ = await collect(provider.stream(chat_request()))

    assert texts == ["ok"]
    assert clock.sleeps == [0.5, 1.0, 2.0, 3.0, 3.0]


async def test_backoff_is_a_random_share_of_the_ceiling() -> None:
    clock = FakeClock()
    inner = ScriptedProvider([answered(503)], [answered(503)], ["ok", DONE])
    provider = retrying(inner, clock, random=0.25, base_delay=1.0)

    await collect(provider.stream(chat_request()))

    assert clock.sleeps == [0.25, 0.5]


@pytest.mark.parametrize(
    ("headers", "wait"),
    [({"retry-after": "7"}, 7.0), ({"retry-after-ms": "2500"}, 2.5), ({"retry-after-ms": "10"}, 0.5)],
)
async def test_retry_after_is_the_least_wait(headers: dict[str, str], wait: float) -> None:
    clock = FakeClock()
    inner = ScriptedProvider([answered(429, {"error": {"message": "slow down"}}, headers)], ["ok", DONE])
    provider = retrying(inner, clock)

    await collect(provider.stream(chat_request()))

    assert clock.sleeps == [wait]


@pytest.mark.parametrize(
    "error",
    [
        answered(400, {"error": {"message": "context_length_exceeded", "type": "invalid_request_error"}}),
        answered(401, {"error": {"message": "Incorrect API key", "code": "invalid_api_key"}}),
        answered(403),
        answered(404, {"error": 'model "llama9" not found'}),
        answered(
            429,
            {
                "error": {
                    "message": "You exceeded your current quota",
                    "type": "insufficient_quota",
                    "code": "insufficient_quota",
                }
            },
        ),
        answered(
            429,
            {"error": {"message": "Billing limit", "code": "billing_hard_limit_reached"}},
            {"retry-after": "1"},
        ),
        ProviderError("prompt_blocked", "fake blocked the prompt (SAFETY)"),
        ProviderError("protocol", "fake sent a data line that is not JSON"),
    ],
    ids=lambda e: f"{e.type}-{e.status}-{e.provider_code}",
)
async def test_never_retries_what_waiting_cannot_fix(error: ProviderError) -> None:
    clock = FakeClock()
    inner = ScriptedProvider([error], ["never", DONE])

    raised = await fails(retrying(inner, clock))

    assert raised is error
    assert inner.calls == 1
    assert clock.sleeps == []


async def test_a_wait_longer_than_the_budget_left_gives_up_at_once() -> None:
    clock = FakeClock()
    error = answered(429, {"error": {"message": "slow down"}}, {"retry-after": "60"})
    inner = ScriptedProvider([error], ["never", DONE])

    raised = await fails(retrying(inner, clock, max_seconds=30))

    assert raised is error
    assert raised.retry_after == 60.0
    assert inner.calls == 1
    assert clock.sleeps == []


async def test_time_spent_on_attempts_counts_against_the_budget() -> None:
    clock = FakeClock()
    first = answered(503, b"", {"retry-after": "2"})
    second = answered(503, b"", {"retry-after": "2"})
    inner = ScriptedProvider([20.0, first], [7.0, second], ["never", DONE], clock=clock)

    raised = await fails(retrying(inner, clock, attempts=5, max_seconds=30))

    # 20s, a 2s wait, 7s: 1s of the 30 is left, less than the 2s asked for.
    assert raised is second
    assert raised.retry_after == 2.0
    assert inner.calls == 2
    assert clock.sleeps == [2.0]


async def test_attempts_are_bounded_and_the_last_error_is_raised() -> None:
    clock = FakeClock()
    errors = [answered(500, {"error": {"message": f"failure {i}"}}) for i in range(4)]
    inner = ScriptedProvider(*[[e] for e in errors])

    raised = await fails(retrying(inner, clock, attempts=3))

    assert raised is errors[2]
    assert inner.calls == 3
    assert len(clock.sleeps) == 2


async def test_one_attempt_means_no_retry() -> None:
    clock = FakeClock()
    inner = ScriptedProvider([answered(503)], ["never", DONE])

    raised = await fails(retrying(inner, clock, attempts=1))

    assert raised.status == 503
    assert inner.calls == 1


async def test_never_retries_after_a_token() -> None:
    clock = FakeClock()
    error = answered(503)
    inner = ScriptedProvider(["Hel", error], ["never", DONE])
    seen: list[str | Finish | Answerer] = []

    with pytest.raises(ProviderError) as info:
        async for item in retrying(inner, clock).stream(chat_request()):
            seen.append(item)

    assert info.value is error
    assert seen == ["Hel"]
    assert inner.calls == 1
    assert clock.sleeps == []


PROMPT_COUNTED = Usage(25, 1)  # what Anthropic's message_start tells before any text


async def test_a_usage_passes_at_once_and_a_failure_after_it_is_still_retried() -> None:
    clock = FakeClock()
    error = answered(529, {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})
    inner = ScriptedProvider([PROMPT_COUNTED, error], [Usage(25, 1), "Hel", DONE])
    seen: list[Item] = []

    async for item in retrying(inner, clock).stream(chat_request()):
        seen.append(item)

    assert seen == [PROMPT_COUNTED, Usage(25, 1), "Hel", DONE]
    assert inner.calls == 2
    assert clock.sleeps == [0.5]
    assert inner.closed == 2


async def test_a_usage_then_a_token_is_never_retried() -> None:
    clock = FakeClock()
    error = answered(503)
    inner = ScriptedProvider([PROMPT_COUNTED, "Hel", error], ["never", DONE])
    seen: list[Item] = []

    with pytest.raises(ProviderError) as info:
        async for item in retrying(inner, clock).stream(chat_request()):
            seen.append(item)

    assert info.value is error
    assert seen == [PROMPT_COUNTED, "Hel"]
    assert inner.calls == 1


async def test_leaving_after_a_usage_closes_the_inner_stream() -> None:
    clock = FakeClock()
    inner = ScriptedProvider([PROMPT_COUNTED, "a", DONE])
    stream = retrying(inner, clock).stream(chat_request())

    assert await anext(stream) == PROMPT_COUNTED
    await stream.aclose()  # type: ignore[attr-defined]

    assert inner.closed == 1


async def test_the_failed_stream_is_closed_before_the_wait() -> None:
    clock = FakeClock()
    inner = ScriptedProvider([answered(500)], [answered(500)], ["ok", DONE], clock=clock)

    await collect(retrying(inner, clock).stream(chat_request()))

    assert clock.log == ["closed fake 1", "sleep 0.5", "closed fake 2", "sleep 1", "closed fake 3"]


async def test_leaving_early_closes_the_inner_stream() -> None:
    clock = FakeClock()
    inner = ScriptedProvider(["a", "b", "c", DONE])
    stream = retrying(inner, clock).stream(chat_request())

    assert await anext(stream) == "a"
    await stream.aclose()  # type: ignore[attr-defined]

    assert inner.closed == 1


async def test_every_attempt_asks_the_same_thing() -> None:
    clock = FakeClock()
    inner = ScriptedProvider([answered(500)], ["ok", DONE])
    request = chat_request("Hi there", model="m-2", system="Be brief.")

    await collect(retrying(inner, clock).stream(request))

    assert inner.requests == [request, request]


def test_keeps_the_inner_providers_name_and_model() -> None:
    provider = RetryingProvider(ScriptedProvider(name="openai", default_model="gpt-4o-mini"))
    assert (provider.name, provider.default_model) == ("openai", "gpt-4o-mini")


class Stalling:
    """A provider that fails at once with a retryable error, then never answers."""

    name = "stalling"
    default_model = "s-1"

    def __init__(self, *, counts_first: bool = False) -> None:
        self.calls = 0
        self.counts_first = counts_first  # the retry tells its prompt's count, then stalls

    async def stream(self, request: object) -> AsyncIterator[str | Usage]:
        self.calls += 1
        if self.calls == 1:
            raise ProviderError("overloaded", "busy", status=503, retryable=True, retry_after=0)
        if self.counts_first:
            yield PROMPT_COUNTED
        await asyncio.Event().wait()
        yield "never"


@pytest.mark.anyio
async def test_a_retry_never_waits_past_the_budget_even_after_a_usage() -> None:
    inner = Stalling(counts_first=True)
    provider = RetryingProvider(inner, attempts=3, max_seconds=0.2, random=lambda: 0.0)  # type: ignore[arg-type]
    seen: list[object] = []
    async with asyncio.timeout(5):
        with pytest.raises(ProviderError) as info:
            async for item in provider.stream(chat_request()):
                seen.append(item)
    assert info.value.type == "timeout" and "0.2s budget for retries" in info.value.message
    assert seen == [PROMPT_COUNTED]  # the second attempt's, told before it stalled
    assert inner.calls == 2


@pytest.mark.anyio
async def test_a_retry_never_waits_past_the_budget() -> None:
    inner = Stalling()
    provider = RetryingProvider(inner, attempts=3, max_seconds=0.2, random=lambda: 0.0)  # type: ignore[arg-type]
    async with asyncio.timeout(5):  # without the budget, the second attempt would wait forever
        with pytest.raises(ProviderError) as info:
            async for _ in provider.stream(chat_request()):
                pass
    assert (info.value.type, info.value.retryable) == ("timeout", False)
    assert "0.2s budget for retries" in info.value.message and "busy" in info.value.message
    assert inner.calls == 2
