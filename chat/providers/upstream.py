"""Opening a provider's HTTP stream, and reading it within its deadlines.

`open_stream` sends the request, checks the status and the content type,
translates httpx's exceptions wherever they surface, and hands over the body as
chunks that `read_with_deadlines` bounds: the first by `first_token`, each later
one by `idle`. `HTTPProvider` is what the HTTP adapters share around it: who
they are, where they post, with which headers, and the call to `open_stream`.

Deliberate departures from the obvious:

- The first-token deadline runs from the moment the request is sent, not from
  the response headers: a server that holds the headers back (some proxies
  do until the first token) is bounded the same way as one that sends them.
- Deadlines bound each read, never a `yield`, so a slow consumer is never
  mistaken for a stalled upstream; one lazily moved timer per stream enforces
  them (see `_Watchdog`). httpx's own read timeout stays as a backstop a little
  longer than both.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from contextlib import (
    AbstractAsyncContextManager,
    AsyncExitStack,
    aclosing,
    asynccontextmanager,
    suppress,
)
from dataclasses import replace
from typing import Any

import httpx

from .base import ChatRequest, ProviderError, Timeouts
from .errors import (
    error_from_event,
    error_from_response,
    error_from_transport,
    excerpt,
    loads_or_none,
)


class _Watchdog:
    """Cancels a task that has waited on one read past its deadline.

    `asyncio.timeout` around each read would do, but it arms and cancels a timer
    per read, which measured at a third of the per-token cost of reading a
    stream. This timer is armed once and moved only when it fires early; a read
    costs two attribute writes.
    """

    def __init__(self, deadline: float) -> None:
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.current_task()
        self.deadline = deadline
        self.reading = False
        self.expired = False
        self._arm(deadline)

    def _arm(self, when: float) -> None:
        self._armed_at = when
        self._timer = self._loop.call_at(when, self._check)

    def move(self, deadline: float) -> None:
        self.deadline = deadline
        if deadline < self._armed_at:  # only when the idle limit is shorter than the first one
            self._timer.cancel()
            self._arm(deadline)

    def _check(self) -> None:
        now = self._loop.time()
        if self.reading and now >= self.deadline and self._task is not None:
            self.expired = True
            self._task.cancel()
        else:  # the read finished, or a later read started: look again at its deadline
            self._arm(max(self.deadline, now + 0.01))

    def stop(self) -> None:
        self._timer.cancel()


async def read_with_deadlines(
    chunks: AsyncIterator[bytes], timeouts: Timeouts, *, started: float | None = None
) -> AsyncGenerator[bytes, None]:
    """Relay `chunks`, bounding the wait for the first by `first_token` (counted
    from `started`, a loop time, when given) and for each later one by `idle`."""
    loop = asyncio.get_running_loop()
    iterator = aiter(chunks)
    watchdog = _Watchdog((loop.time() if started is None else started) + timeouts.first_token)
    limit, waiting_for = timeouts.first_token, "the first token"
    try:
        while True:
            watchdog.reading = True
            try:
                chunk = await anext(iterator)
            except StopAsyncIteration:
                return
            except asyncio.CancelledError:
                if not watchdog.expired:
                    raise
                task = asyncio.current_task()
                if task is not None:
                    task.uncancel()
                raise ProviderError(
                    "timeout",
                    f"upstream sent nothing for {limit:g}s while waiting for {waiting_for}",
                    retryable=True,
                ) from None
            watchdog.reading = False
            yield chunk
            watchdog.move(loop.time() + timeouts.idle)
            limit, waiting_for = timeouts.idle, "more of the stream"
    finally:
        watchdog.stop()
        aclose = getattr(iterator, "aclose", None)
        if aclose is not None:
            await aclose()


_ERROR_BODY_LIMIT = 64 * 1024


@asynccontextmanager
async def open_stream(
    client: httpx.AsyncClient,
    url: str,
    *,
    body: dict[str, Any],
    headers: Mapping[str, str],
    timeouts: Timeouts,
    provider: str,
    json_ok: bool = False,
) -> AsyncIterator[AsyncIterator[bytes]]:
    """POST `body` and yield the response body as deadline-bounded chunks.

    A non-2xx answer, an HTML page, or (unless `json_ok`) a plain JSON document
    where a stream was expected raises `ProviderError`; so does every httpx
    exception, wherever it surfaces, including while the caller reads. Leaving
    the block closes the response at once, without draining it.
    """
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        async with AsyncExitStack() as stack:
            scope = asyncio.timeout_at(started + timeouts.first_token)
            try:
                async with scope:
                    response = await stack.enter_async_context(
                        client.stream(
                            "POST",
                            url,
                            json=body,
                            # Compression would hold tokens back in the compressor's buffer.
                            headers={"accept-encoding": "identity", **headers},
                            timeout=timeouts.httpx_timeout(),
                        )
                    )
            except TimeoutError:
                if not scope.expired():
                    raise
                raise ProviderError(
                    "timeout",
                    f"{provider} sent no response for {timeouts.first_token:g}s",
                    retryable=True,
                ) from None
            status = response.status_code
            if not 200 <= status < 300:
                raw = await _read_limited(response, timeouts)
                raise error_from_response(status, response.headers, raw, provider)
            media_type = response.headers.get("content-type", "").partition(";")[0].strip().lower()
            if media_type == "text/html":
                raw = await _read_limited(response, timeouts)
                raise ProviderError(
                    "protocol",
                    f"{provider} answered with an HTML page instead of a stream "
                    f"(a captive portal or proxy?): {excerpt(raw, page=True)}",
                    status=status,
                )
            if media_type == "application/json" and not json_ok:
                raw = await _read_limited(response, timeouts)
                payload = loads_or_none(raw)
                if isinstance(payload, dict) and "error" in payload:
                    raise error_from_event(payload, provider)
                raise ProviderError(
                    "protocol",
                    f"{provider} answered with a JSON document instead of a stream: {excerpt(raw)}",
                    status=status,
                )
            chunks = read_with_deadlines(response.aiter_bytes(), timeouts, started=started)
            async with aclosing(chunks):
                yield chunks
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        raise error_from_transport(exc, provider) from exc


async def _read_limited(response: httpx.Response, timeouts: Timeouts) -> bytes:
    # An error body is read best-effort: a stall or a broken connection while
    # reading it must not hide the status we already have.
    parts: list[bytes] = []
    size = 0
    with suppress(ProviderError, httpx.HTTPError):  # keep what arrived; the status is the news
        async with aclosing(read_with_deadlines(response.aiter_bytes(), timeouts)) as chunks:
            async for chunk in chunks:
                parts.append(chunk)
                size += len(chunk)
                if size >= _ERROR_BODY_LIMIT:
                    break
    return b"".join(parts)[:_ERROR_BODY_LIMIT]


class HTTPProvider:
    """The part of an HTTP adapter that is not about its wire format.

    A subclass sets `path` (appended to the base URL; Gemini's `url` adds the
    model), passes its headers, and has its own `build_body` and `stream`, which
    reads `self.open(request)`.
    """

    path = ""
    json_ok = False  # see open_stream

    def __init__(
        self,
        client: httpx.AsyncClient,
        name: str,
        default_model: str,
        base_url: str,
        timeouts: Timeouts,
        headers: Mapping[str, str],
        /,
    ) -> None:
        self.name = name
        self.default_model = default_model
        self._client = client
        self._url = base_url.rstrip("/") + self.path
        self._timeouts = timeouts
        self._headers = dict(headers)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, url={self._url!r})"

    @staticmethod
    def build_body(request: ChatRequest) -> dict[str, Any]:
        raise NotImplementedError

    def url(self, model: str) -> str:
        return self._url

    def open(self, request: ChatRequest) -> AbstractAsyncContextManager[AsyncIterator[bytes]]:
        """`open_stream` for `request`, asking for the default model when it names none."""
        if not request.model:
            request = replace(request, model=self.default_model)
        return open_stream(
            self._client,
            self.url(request.model),
            body=self.build_body(request),
            headers=self._headers,
            timeouts=self._timeouts,
            provider=self.name,
            json_ok=self.json_ok,
        )
