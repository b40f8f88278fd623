"""Handing a request to the next provider when the one asked fails before answering.

`FallbackProvider` wraps the provider that was asked (already retrying, see
`retry.py`) and a chain of other providers, each with the model to ask it for
(`SIDECHAT_FALLBACK`). When a stream fails before its first item, the next one
in the chain is asked, with its own model. Before the first item of a stream
that is not the one asked for, the wrapper yields an `Answerer`, so the event
stream and the stored message can say who really answered. Once anything went
downstream, errors pass through: an answer is never stitched from two models.
A `Usage` is not a first item: a failure after it still moves on. The asked
provider's counts pass at once; a fallback's wait for its `Answerer`, so that
what follows an `Answerer` is all the answering provider's.

Deliberate departures from the obvious:

- Every error moves on to the next provider, not only the retryable ones: a bad
  key, a spent quota or an unknown model at one provider is exactly when another
  one helps. The exception is `prompt_blocked`: routing around a safety block is
  not ours to do.
- When the whole chain fails, the error raised is the first one, the asked
  provider's: that is the failure to fix, and its `retry_after` is the one that
  matters to a client that will ask that provider again. The others are logged.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import replace

from ..telemetry import NOTHING, Telemetry
from .base import Answerer, ChatRequest, Item, Provider, ProviderError, Usage, close_stream

log = logging.getLogger("sidechat.providers")


class FallbackProvider:
    def __init__(
        self, first: Provider, chain: Sequence[tuple[Provider, str]], telemetry: Telemetry = NOTHING
    ) -> None:
        self.telemetry = telemetry
        self.name = first.name
        self.default_model = first.default_model
        self.first = first
        self.chain = tuple(chain)  # (provider, model); "" is the provider's default model

    def __repr__(self) -> str:
        chain = ", ".join(f"{p.name}:{m or p.default_model}" for p, m in self.chain)
        return f"FallbackProvider({self.first!r}, chain=[{chain}])"

    def attempts(self, request: ChatRequest) -> list[tuple[Provider, ChatRequest, Answerer | None]]:
        """Who is asked, in order, with which request, and the `Answerer` that announces them."""
        asked = (self.name, request.model or self.default_model)
        out: list[tuple[Provider, ChatRequest, Answerer | None]] = [(self.first, request, None)]
        tried = {asked}
        for provider, model in self.chain:
            model = model or provider.default_model
            if (provider.name, model) in tried:
                continue
            tried.add((provider.name, model))
            out.append((provider, replace(request, model=model), Answerer(provider.name, model)))
        return out

    async def stream(self, request: ChatRequest) -> AsyncIterator[Item]:
        failure: ProviderError | None = None
        held: Usage | None = None
        for provider, asked, answerer in self.attempts(request):  # noqa: B007 (used after the break)
            stream, held = provider.stream(asked), None
            try:
                while isinstance(first := await anext(stream, None), Usage):
                    # A count of tokens is no answer: a failure after it still moves on. The
                    # asked provider's passes at once; another's waits for its Answerer.
                    if answerer is None:
                        yield first
                    else:
                        held = first
                break
            except ProviderError as exc:
                await close_stream(stream)
                if exc.type == "prompt_blocked":
                    raise
                log.warning("%s:%s failed before answering: %s", provider.name, asked.model, exc.message)
                failure = failure or exc
            except BaseException:
                await close_stream(stream)
                raise
        else:
            assert failure is not None
            raise failure
        if first is None:
            return
        try:
            if answerer is not None:
                log.warning("%s:%s answers instead", answerer.provider, answerer.model)
                self.telemetry.fell_back(self.name, answerer.provider)
                yield answerer
                if held is not None:
                    yield held
            yield first
            async for item in stream:
                yield item
        finally:
            await close_stream(stream)


def with_fallback(
    first: Provider, chain: Sequence[tuple[Provider, str]], telemetry: Telemetry = NOTHING
) -> Provider:
    """`first`, handing over to `chain` when it fails before answering; `first` itself when
    the chain is empty."""
    return FallbackProvider(first, chain, telemetry) if chain else first
