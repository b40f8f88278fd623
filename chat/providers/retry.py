"""Retrying a provider's stream, but only before anything of it went downstream.

`RetryingProvider` wraps a provider and is one itself, under the same name and
default model. When the inner stream raises a `ProviderError` marked
`retryable` (connection errors, 408/409/429/5xx/529, timeouts, a stream cut off)
before it yielded anything, the wrapper closes it and asks again after a pause;
everything else, and anything after the first item, passes through unchanged.
A `Usage` (the provider's count of the prompt, say, before any text) is not a
first item: it passes through at once, and a failure after it is still retried
(the next attempt's counts then replace it).
Which errors are retryable is decided where they are made, in `errors.py`:
auth failures, 400/404 and quota or spend-limit 429s never are.

Deliberate departures from the obvious:

- The pause is exponential backoff with full jitter (a random share of
  `base_delay * 2**n`, capped at `max_delay`), so many clients that failed
  together do not come back together; the provider's `retry_after` is a floor.
- The whole affair is bounded by `max_seconds`, counted from the first request.
  A pause that would not fit in what is left is not shortened: we give up at
  once and raise the last error, `retry_after` and all, so the client can
  decide for itself.
- The inner stream is closed before the pause, never after it: a half-read
  response must not hold a pooled connection while we sleep.
- A retry never starts, nor waits for its first item, past what is left of the
  budget, whatever its own timeouts would allow. The first attempt is bounded by
  its own timeouts only: a slow model's first token may take longer than the
  budget for retrying a failure.
"""

from __future__ import annotations

import asyncio
import logging
import random as _random
import time
from collections.abc import AsyncIterator, Awaitable, Callable

from ..telemetry import NOTHING, Telemetry
from .base import ChatRequest, Item, Provider, ProviderError, Usage, close_stream

log = logging.getLogger("sidechat.providers")


class RetryingProvider:
    def __init__(
        self,
        inner: Provider,
        *,
        attempts: int = 3,
        max_seconds: float = 30.0,
        base_delay: float = 0.5,
        max_delay: float = 8.0,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
        random: Callable[[], float] = _random.random,
        telemetry: Telemetry = NOTHING,
    ) -> None:
        self.telemetry = telemetry  # hears of every failure of the inner stream
        assert attempts >= 1, attempts
        self.name = inner.name
        self.default_model = inner.default_model
        self.inner = inner
        self.attempts = attempts
        self.max_seconds = max_seconds
        self.base_delay = base_delay
        self.max_delay = max_delay
        self._sleep = sleep
        self._clock = clock
        self._random = random

    def __repr__(self) -> str:
        return f"RetryingProvider({self.inner!r}, attempts={self.attempts}, max_seconds={self.max_seconds:g})"

    def backoff(self, attempt: int, error: ProviderError) -> float:
        """Seconds to wait after failed attempt number `attempt` (from 1)."""
        ceiling = min(self.max_delay, self.base_delay * 2.0 ** (attempt - 1))
        return max(self._random() * ceiling, error.retry_after or 0.0)

    async def stream(self, request: ChatRequest) -> AsyncIterator[Item]:
        deadline = self._clock() + self.max_seconds
        attempt = 1
        error: ProviderError | None = None
        while True:
            stream = self.inner.stream(request)
            try:
                retrying = None if error is None else (deadline, error)
                while isinstance(first := await self._next(stream, retrying), Usage):
                    yield first  # a count of tokens is no answer: a failure after it is still retried
                break
            except ProviderError as exc:
                await close_stream(stream)
                error = failed = exc
            except BaseException:
                await close_stream(stream)
                raise
            wait = self.backoff(attempt, failed) if failed.retryable and attempt < self.attempts else None
            left = deadline - self._clock()
            self.telemetry.upstream_failed(self.name, failed, retried=wait is not None and wait <= left)
            if wait is None:
                raise failed
            if wait > left:
                log.warning(
                    "not retrying %s: a %.1fs wait is more than the %.1fs left of the budget; after: %s",
                    self.name,
                    wait,
                    max(left, 0.0),
                    failed.message,
                )
                raise failed
            attempt += 1
            log.warning(
                "retrying %s in %.2fs (attempt %d of %d) after: %s",
                self.name,
                wait,
                attempt,
                self.attempts,
                failed.message,
            )
            await self._sleep(wait)
            if deadline - self._clock() <= 0:  # nothing left to wait for a first item with
                raise failed
        if first is None:
            return
        try:
            # Something goes downstream: from here on, nothing is retried.
            yield first
            async for item in stream:
                yield item
        except ProviderError as exc:
            self.telemetry.upstream_failed(self.name, exc, retried=False)
            raise
        finally:
            await close_stream(stream)

    async def _next(
        self, stream: AsyncIterator[Item], retrying: tuple[float, ProviderError] | None
    ) -> Item | None:
        """The stream's next item. A retry (`retrying`: the deadline, and the error that made
        it) never waits for one past what is left of the budget, whatever its own timeouts
        would allow; the first attempt is bounded by its own timeouts only."""
        if retrying is None:
            return await anext(stream, None)
        deadline, error = retrying
        budget = asyncio.timeout(max(deadline - self._clock(), 0.0))
        try:
            async with budget:
                return await anext(stream, None)
        except TimeoutError:
            if not budget.expired():
                raise
            raise ProviderError(  # the budget ran out while this retry waited
                "timeout",
                f"{self.name} did not answer within the {self.max_seconds:g}s budget for retries"
                f" (after: {error.message})",
                retryable=False,
                status=error.status,
                retry_after=error.retry_after,
            ) from None
