from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
import respx

from chat.config import Settings
from chat.providers import build_providers
from chat.providers.base import Answerer, ChatRequest, Finish, Item, ProviderError, Usage
from chat.providers.deadlines import Timeouts
from chat.providers.fallback import FallbackProvider, with_fallback
from chat.providers.retry import RetryingProvider

from .fakes import FakeClock, ScriptedProvider, chat_request

pytestmark = pytest.mark.anyio

DONE = Finish("stop", Usage(3, 2))


def server_error(name: str = "openai") -> ProviderError:
    return ProviderError("upstream_error", f"{name} answered HTTP 500", status=500, retryable=True)


async def drain(stream: AsyncIterator[Item]) -> tuple[list[Item], ProviderError | None]:
    items: list[Item] = []
    try:
        async for item in stream:
            items.append(item)
    except ProviderError as exc:
        return items, exc
    return items, None


def pair() -> tuple[ScriptedProvider, ScriptedProvider]:
    return (
        ScriptedProvider(name="openai", default_model="gpt-4o-mini"),
        ScriptedProvider(name="anthropic", default_model="claude-sonnet-4-5"),
    )


async def test_after_the_first_fails_and_its_retries_run_out_the_next_answers() -> None:
    clock = FakeClock()
    openai, anthropic = pair()
    openai.scripts = [[server_error()]] * 3
    anthropic.scripts = [["Hel", "lo", DONE]]
    first = RetryingProvider(openai, attempts=3, sleep=clock.sleep, clock=clock, random=lambda: 1.0)
    provider = FallbackProvider(first, [(anthropic, "claude-haiku-4-5")])
    request = chat_request("hi", model="gpt-4o", system="Be brief.")

    items, error = await drain(provider.stream(request))

    assert error is None
    assert items == [Answerer("anthropic", "claude-haiku-4-5"), "Hel", "lo", DONE]
    assert openai.calls == 3 and len(clock.sleeps) == 2
    assert anthropic.requests == [
        ChatRequest(model="claude-haiku-4-5", turns=request.turns, system="Be brief.")
    ]
    assert openai.closed == 3  # every failed stream was closed before the next was asked


async def test_a_usage_is_no_answer_the_next_still_answers_and_counts_after_its_answerer() -> None:
    openai, anthropic = pair()
    openai.scripts = [[Usage(40, 0), server_error()]]
    anthropic.scripts = [[Usage(38, 1), "Hi", DONE]]
    provider = FallbackProvider(openai, [(anthropic, "")])

    items, error = await drain(provider.stream(chat_request("hi")))

    assert error is None
    # The asked provider's count passes at once; the fallback's waits for its Answerer, so
    # everything after the Answerer is the answering provider's.
    assert items == [Usage(40, 0), Answerer("anthropic", "claude-sonnet-4-5"), Usage(38, 1), "Hi", DONE]
    assert openai.closed == anthropic.closed == 1


async def test_a_usage_then_a_token_is_never_routed_around() -> None:
    openai, anthropic = pair()
    openai.scripts = [[Usage(40, 0), "Hel", server_error()]]
    anthropic.scripts = [["never", DONE]]
    provider = FallbackProvider(openai, [(anthropic, "")])

    items, error = await drain(provider.stream(chat_request("hi")))

    assert items == [Usage(40, 0), "Hel"]
    assert error is not None and anthropic.calls == 0


async def test_no_fallback_after_a_token() -> None:
    openai, anthropic = pair()
    error = server_error()
    openai.scripts = [["Half", error]]
    anthropic.scripts = [["never", DONE]]

    items, raised = await drain(FallbackProvider(openai, [(anthropic, "")]).stream(chat_request()))

    assert items == ["Half"]
    assert raised is error
    assert anthropic.calls == 0


async def test_the_first_answering_needs_no_answerer() -> None:
    openai, anthropic = pair()
    openai.scripts = [["fine", DONE]]

    items, error = await drain(
        FallbackProvider(openai, [(anthropic, "")]).stream(chat_request(model="gpt-4o"))
    )

    assert (items, error) == (["fine", DONE], None)
    assert anthropic.calls == 0


@pytest.mark.parametrize(
    "error",
    [
        ProviderError("auth", "openai: Incorrect API key provided", status=401),
        ProviderError(
            "rate_limited",
            "openai: You exceeded your current quota",
            status=429,
            provider_code="insufficient_quota",
        ),
        ProviderError("upstream_error", "openai: model not found", status=404),
    ],
)
async def test_errors_waiting_cannot_fix_move_on_too(error: ProviderError) -> None:
    openai, anthropic = pair()
    openai.scripts = [[error]]
    anthropic.scripts = [["ok", DONE]]

    items, raised = await drain(
        FallbackProvider(openai, [(anthropic, "")]).stream(chat_request(model="gpt-4o"))
    )

    assert raised is None
    assert items == [Answerer("anthropic", "claude-sonnet-4-5"), "ok", DONE]


async def test_a_blocked_prompt_is_not_routed_around() -> None:
    openai, anthropic = pair()
    blocked = ProviderError("prompt_blocked", "openai blocked the prompt")
    openai.scripts = [[blocked]]
    anthropic.scripts = [["never", DONE]]

    items, raised = await drain(FallbackProvider(openai, [(anthropic, "")]).stream(chat_request()))

    assert (items, raised) == ([], blocked)
    assert anthropic.calls == 0


async def test_when_all_fail_the_first_error_is_raised() -> None:
    openai, anthropic = pair()
    gemini = ScriptedProvider(name="gemini", default_model="gemini-2.5-flash")
    first = ProviderError("rate_limited", "openai: slow down", status=429, retry_after=20.0, retryable=True)
    openai.scripts = [[first]]
    anthropic.scripts = [[server_error("anthropic")]]
    gemini.scripts = [[server_error("gemini")]]

    items, raised = await drain(
        FallbackProvider(openai, [(anthropic, ""), (gemini, "")]).stream(chat_request(model="gpt-4o"))
    )

    assert (items, raised) == ([], first)
    assert (openai.calls, anthropic.calls, gemini.calls) == (1, 1, 1)
    assert raised is not None and raised.retry_after == 20.0


async def test_a_fallback_that_fails_too_hands_on_to_the_next() -> None:
    openai, anthropic = pair()
    gemini = ScriptedProvider(name="gemini", default_model="gemini-2.5-flash")
    openai.scripts = [[server_error()]]
    anthropic.scripts = [[server_error("anthropic")]]
    gemini.scripts = [["ok", DONE]]

    items, _ = await drain(
        FallbackProvider(openai, [(anthropic, ""), (gemini, "gemini-2.5-pro")]).stream(chat_request())
    )

    assert items == [Answerer("gemini", "gemini-2.5-pro"), "ok", DONE]


async def test_the_chain_skips_what_was_already_asked() -> None:
    openai, _ = pair()
    openai.scripts = [[server_error()], ["mini", DONE]]
    chain = [(openai, "gpt-4o"), (openai, ""), (openai, "gpt-4o-mini")]

    items, _ = await drain(FallbackProvider(openai, chain).stream(chat_request(model="gpt-4o")))

    # gpt-4o was the model asked; "" is openai's default, gpt-4o-mini, asked once.
    assert items == [Answerer("openai", "gpt-4o-mini"), "mini", DONE]
    assert [r.model for r in openai.requests] == ["gpt-4o", "gpt-4o-mini"]


async def test_leaving_early_closes_the_answering_stream() -> None:
    openai, anthropic = pair()
    openai.scripts = [[server_error()]]
    anthropic.scripts = [["a", "b", DONE]]
    stream = FallbackProvider(openai, [(anthropic, "")]).stream(chat_request())

    assert await anext(stream) == Answerer("anthropic", "claude-sonnet-4-5")
    assert await anext(stream) == "a"
    await stream.aclose()  # type: ignore[attr-defined]

    assert (openai.closed, anthropic.closed) == (1, 1)


def test_with_fallback_and_no_chain_is_the_provider_itself() -> None:
    openai, anthropic = pair()
    assert with_fallback(openai, []) is openai
    wrapped = with_fallback(openai, [(anthropic, "")])
    assert (wrapped.name, wrapped.default_model) == ("openai", "gpt-4o-mini")


# --- wired up by build_providers -------------------------------------------------------


async def test_build_providers_wires_retries_and_the_fallback_chain(
    client: httpx.AsyncClient, router: respx.MockRouter
) -> None:
    openai = router.post("https://api.openai.com/v1/chat/completions").mock(
        return_value=httpx.Response(
            401, json={"error": {"message": "Incorrect API key", "code": "invalid_api_key"}}
        )
    )
    anthropic = router.post("https://api.anthropic.com/v1/messages").mock(
        return_value=httpx.Response(
            200,
            headers={"content-type": "text/event-stream"},
            content=(
                b'event: message_start\ndata: {"type": "message_start", "message": {"usage": {"input_tokens": 5, "output_tokens": 1}}}\n\n'
                b'event: content_block_delta\ndata: {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hi"}}\n\n'
                b'event: message_delta\ndata: {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 2}}\n\n'
                b'event: message_stop\ndata: {"type": "message_stop"}\n\n'
            ),
        )
    )
    settings = Settings.from_env(
        {
            "OPENAI_API_KEY": "sk-test",
            "ANTHROPIC_API_KEY": "sk-ant-test",
            "SIDECHAT_FALLBACK": "gemini:gemini-2.5-flash,anthropic:claude-haiku-4-5",  # gemini has no key
        }
    )
    providers = build_providers(settings, client, Timeouts())
    provider = providers["openai"].provider
    assert provider is not None and providers["gemini"].provider is None

    items, error = await drain(provider.stream(chat_request(model="gpt-4o-mini")))

    assert error is None
    # The fallback's prompt count waits for its Answerer; the output's comes before the Finish.
    counted = [Usage(5, 1), "Hi", Usage(5, 2), Finish("stop", Usage(5, 2))]
    assert items == [Answerer("anthropic", "claude-haiku-4-5"), *counted]
    assert openai.call_count == 1  # a 401 is not retried
    assert anthropic.call_count == 1


async def test_build_providers_retries_without_a_chain(
    client: httpx.AsyncClient, router: respx.MockRouter
) -> None:
    route = router.post("https://api.openai.com/v1/chat/completions").mock(
        side_effect=[
            httpx.Response(503, headers={"retry-after-ms": "1"}),
            httpx.Response(
                200,
                headers={"content-type": "text/event-stream"},
                content=b'data: {"choices": [{"delta": {"content": "ok"}, "finish_reason": "stop"}]}\n\ndata: [DONE]\n\n',
            ),
        ]
    )
    settings = Settings.from_env({"OPENAI_API_KEY": "sk-test", "SIDECHAT_RETRY_ATTEMPTS": "2"})
    provider = build_providers(settings, client, Timeouts())["openai"].provider
    assert provider is not None
    assert isinstance(provider, RetryingProvider) and provider.attempts == 2
    provider.base_delay = 0.001  # keep the real wait short

    items, error = await drain(provider.stream(chat_request(model="gpt-4o-mini")))

    assert (items, error) == (["ok", Finish("stop", Usage())], None)
    assert route.call_count == 2
