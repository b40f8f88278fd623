"""How long sidechat waits for a provider: every upstream timeout is set here.

`Timeouts` holds the three the settings name, and each is enforced in one place:

- `connect`: opening the TCP (and TLS) connection, by the transport, given to
  the shared client as its httpx timeout (`Timeouts.for_client`);
- `first_token`: from sending the request to the first chunk of the body, the
  wait for the response headers included;
- `idle`: between one chunk of the body and the next.

The last two are one `Deadline` per stream (below). The client's read timeout is
only a backstop derived from them, a little longer than both, so it never fires
first.

Deliberate departures from the obvious:

- The first-token deadline runs from the moment the request is sent, not from
  the response headers: a server that holds the headers back (some proxies do,
  until the first token) is bounded the same way as one that sends them.
- A deadline bounds each wait for the provider, never a `yield`, so a slow
  consumer is never mistaken for a stalled upstream.
- `asyncio.timeout` around each read would do, but it arms and cancels a timer
  per read, which measured at a third of the per-token cost of reading a stream.
  A `Deadline` is one timer, armed once and moved only when it fires early; a
  read costs two attribute writes.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass

import httpx

from .base import ProviderError

_BACKSTOP = 5.0  # seconds past the longer deadline before the socket read gives up


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Seconds: to connect; from sending the request to the first chunk; between chunks."""

    connect: float = 10
    first_token: float = 120
    idle: float = 60

    def for_client(self) -> httpx.Timeout:
        return httpx.Timeout(
            connect=self.connect,
            read=max(self.first_token, self.idle) + _BACKSTOP,
            write=self.connect,
            pool=self.connect,
        )


DEFAULT_TIMEOUTS = Timeouts()


class Deadline:
    """Cancels the task that made it when one wait (`waiting` is true) runs past `when`.

    Its timer runs until `stop`, which leaving a `with Deadline(...)` block calls. Slotted:
    one per open stream, held for as long as it lasts."""

    __slots__ = ("_loop", "_task", "when", "waiting", "expired", "_armed_at", "_timer")

    def __init__(self, when: float) -> None:
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.current_task()
        self.when = when
        self.waiting = False
        self.expired = False
        self._arm(when)

    def _arm(self, when: float) -> None:
        self._armed_at = when
        self._timer = self._loop.call_at(when, self._check)

    def move(self, when: float) -> None:
        self.when = when
        if when < self._armed_at:  # only when the idle limit is shorter than the first one
            self._timer.cancel()
            self._arm(when)

    def _check(self) -> None:
        now = self._loop.time()
        if self.waiting and now >= self.when and self._task is not None:
            self.expired = True
            self._task.cancel()
        else:  # the wait finished, or a later one started: look again at its deadline
            self._arm(max(self.when, now + 0.01))

    def timed_out(self, error: asyncio.CancelledError, message: str) -> ProviderError:
        """The timeout to raise in place of a cancellation this deadline caused; else `error` again."""
        if not self.expired:
            raise error
        task = asyncio.current_task()
        if task is not None:
            task.uncancel()
        return ProviderError("timeout", message, retryable=True)

    def stop(self) -> None:
        self._timer.cancel()

    def __enter__(self) -> Deadline:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


async def read_within(
    chunks: AsyncIterator[bytes], deadline: Deadline, timeouts: Timeouts, provider: str
) -> AsyncGenerator[bytes, None]:
    """Relay `chunks`: the first must come by `deadline`, each later one within `idle`."""
    loop = asyncio.get_running_loop()
    iterator = aiter(chunks)
    limit, waiting_for = timeouts.first_token, "its first token"
    try:
        while True:
            deadline.waiting = True
            try:
                chunk = await anext(iterator)
            except StopAsyncIteration:
                return
            except asyncio.CancelledError as exc:
                raise deadline.timed_out(
                    exc, f"{provider} sent nothing for {limit:g}s while we waited for {waiting_for}"
                ) from None
            deadline.waiting = False
            yield chunk
            deadline.move(loop.time() + timeouts.idle)
            limit, waiting_for = timeouts.idle, "more of its stream"
    finally:
        aclose = getattr(iterator, "aclose", None)
        if aclose is not None:
            await aclose()
