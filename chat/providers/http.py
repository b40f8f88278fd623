"""What the HTTP adapters share: opening a provider's stream, and the loop that reads it.

`open_stream` sends the request, checks the status and the content type,
translates httpx's exceptions wherever they surface, and hands over the body as
chunks bounded by the stream's deadlines (`deadlines.py`). `HTTPProvider` is the
rest: who an adapter is, where it posts, with which headers, and `stream()`,
which reads the body, decodes it (Server-Sent Events, or one JSON object per
line) and asks the adapter's `Reading` what each event means. An adapter is then
its wire format only: `build_body`, and a `Reading`.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Mapping
from contextlib import aclosing, asynccontextmanager, suppress
from dataclasses import replace
from typing import Any, ClassVar, Protocol

import httpx
import orjson

from ..sse import NDJSONDecoder, ServerSentEvent, SSEDecoder, TooLong
from ..telemetry import upstream_headers
from .base import ChatRequest, Finish, ProviderError, Usage
from .deadlines import DEFAULT_TIMEOUTS, Deadline, Timeouts, read_within
from .errors import (
    error_from_event,
    error_from_response,
    error_from_transport,
    excerpt,
    loads_or_none,
    protocol_error,
    truncated_error,
)

_ERROR_BODY_LIMIT = 64 * 1024
MAX_EVENT_BYTES = 16 * 1024 * 1024  # one upstream line or event: room for inline images
# What a payload of the wrong shape raises while an adapter reads it.
_MALFORMED = (AttributeError, IndexError, KeyError, TypeError)


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
    with Deadline(asyncio.get_running_loop().time() + timeouts.first_token) as deadline:
        try:
            # Compression would hold tokens back in the compressor's buffer.
            headers = {"accept-encoding": "identity", **headers}
            opening = client.stream("POST", url, json=body, headers=headers)
            deadline.waiting = True
            try:
                response = await opening.__aenter__()
            except asyncio.CancelledError as exc:
                waited = f"{provider} sent no response for {timeouts.first_token:g}s"
                raise deadline.timed_out(exc, waited) from None
            # `async with opening` written out (PEP 343), so that only entering it is timed above;
            # an AsyncExitStack would do, but every open stream would hold it (and its deque).
            try:
                deadline.waiting = False
                await _refuse_unless_a_stream(response, deadline, timeouts, provider, json_ok)
                body_chunks = read_within(response.aiter_bytes(), deadline, timeouts, provider)
                async with aclosing(body_chunks) as chunks:
                    yield chunks
            except BaseException as exc:
                if not await opening.__aexit__(type(exc), exc, exc.__traceback__):
                    raise
            else:
                await opening.__aexit__(None, None, None)
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            raise error_from_transport(exc, provider) from exc


async def _refuse_unless_a_stream(
    response: httpx.Response, deadline: Deadline, timeouts: Timeouts, provider: str, json_ok: bool
) -> None:
    """Raise the `ProviderError` for an answer that is an error, a page or a document, or that
    is compressed: we ask for `identity`, and a compressed body is never read (so never
    inflated), so a small one cannot expand into gigabytes here."""
    status = response.status_code
    encoding = response.headers.get("content-encoding", "identity").strip().lower()
    compressed = encoding not in ("", "identity")
    if not 200 <= status < 300:  # a compressed error body is not read: the status says enough
        raw = b"" if compressed else await _read_limited(response, deadline, timeouts, provider)
        raise error_from_response(status, response.headers, raw, provider)
    if compressed:
        raise ProviderError(
            "protocol", f"{provider} sent a {encoding}-compressed stream, though sidechat asks for none"
        )
    media_type = response.headers.get("content-type", "").partition(";")[0].strip().lower()
    if media_type == "text/html":
        raw = await _read_limited(response, deadline, timeouts, provider)
        raise ProviderError(
            "protocol",
            f"{provider} answered with an HTML page instead of a stream "
            f"(a captive portal or proxy?): {excerpt(raw, page=True)}",
            status=status,
        )
    if media_type == "application/json" and not json_ok:
        raw = await _read_limited(response, deadline, timeouts, provider)
        payload = loads_or_none(raw)
        if isinstance(payload, dict) and "error" in payload:
            raise error_from_event(payload, provider)
        raise ProviderError(
            "protocol",
            f"{provider} answered with a JSON document instead of a stream: {excerpt(raw)}",
            status=status,
        )


async def _read_limited(
    response: httpx.Response, deadline: Deadline, timeouts: Timeouts, provider: str
) -> bytes:
    # An error body is read best-effort: a stall or a broken connection while
    # reading it must not hide the status we already have.
    parts: list[bytes] = []
    size = 0
    with suppress(ProviderError, httpx.HTTPError):  # keep what arrived; the status is the news
        async with aclosing(read_within(response.aiter_bytes(), deadline, timeouts, provider)) as chunks:
            async for chunk in chunks:
                parts.append(chunk)
                size += len(chunk)
                if size >= _ERROR_BODY_LIMIT:
                    break
    return b"".join(parts)[:_ERROR_BODY_LIMIT]


class Reading(Protocol):
    """One stream's parse: what each payload means, given those before it. `usage` is the
    provider's latest count; a reading replaces it only when the count changes."""

    usage: Usage

    def feed(self, payload: Any) -> tuple[str, Finish | None]:
        """The text one event's JSON carries, and the `Finish` if it is the end marker."""
        ...

    def end(self) -> Finish:
        """The body ended, or (OpenAI) its `[DONE]` came: the `Finish`, or raise `truncated`."""
        ...


class HTTPProvider:
    """An adapter over HTTP; a subclass names itself and its format.

    It sets `name`, `default_model` (and `default_base_url`), `path` (appended
    to the base URL; Gemini's `url` adds the model), its `headers` and how the
    key is sent (`key_header`, `{}` standing for the key), `build_body`, and
    `reading()`. `framing` is
    `sse` or `ndjson`; `done_data` is a data line that ends the stream (OpenAI's
    `[DONE]`). Whenever the reading's `usage` changes, the new one is yielded, so a reply
    cancelled or failed before its `Finish` keeps what the provider had counted.
    """

    name: ClassVar[str]
    default_base_url: ClassVar[str]
    default_model: str
    path: ClassVar[str] = ""
    headers: ClassVar[Mapping[str, str]] = {"accept": "text/event-stream"}
    key_header: ClassVar[tuple[str, str] | None] = None
    framing: ClassVar[str] = "sse"
    done_data: ClassVar[str | None] = None
    json_ok: ClassVar[bool] = False  # see open_stream
    request_id_header: ClassVar[str | None] = None  # where the provider takes our request id

    def __init__(
        self,
        client: httpx.AsyncClient,
        *,
        api_key: str | None = None,
        base_url: str | None = None,
        default_model: str | None = None,
        timeouts: Timeouts = DEFAULT_TIMEOUTS,
        max_event_bytes: int = MAX_EVENT_BYTES,
    ) -> None:
        self.default_model = default_model or type(self).default_model
        self.max_event_bytes = max_event_bytes
        self._client = client
        base = (base_url or self.default_base_url).rstrip("/")
        self._url = base + self.path
        origin = str(httpx.URL(base).copy_with(path="/", query=None, fragment=None)).rstrip("/")
        self._urls = tuple((url, origin) for url in (self._url, base) if url != origin)  # longest first
        self._timeouts = timeouts
        self._headers = dict(self.headers)
        self._secrets = (api_key,) if api_key else ()
        if api_key:
            if self.key_header is None:
                raise TypeError(f"{self.name} takes no API key")
            header, template = self.key_header
            self._headers[header] = template.format(api_key)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(url={self._url!r})"

    @staticmethod
    def build_body(request: ChatRequest) -> dict[str, Any]:
        raise NotImplementedError

    def reading(self) -> Reading:
        raise NotImplementedError

    def url(self, model: str) -> str:
        return self._url

    async def stream(self, request: ChatRequest) -> AsyncIterator[str | Finish | Usage]:
        try:
            if not request.model:
                request = replace(request, model=self.default_model)
            name, reading, done_data = self.name, self.reading(), self.done_data
            told = reading.usage  # the count as last told: a new one goes downstream at once
            limit = self.max_event_bytes
            decoder = NDJSONDecoder(limit) if self.framing == "ndjson" else SSEDecoder(limit)
            async with open_stream(
                self._client,
                self.url(request.model),
                body=self.build_body(request),
                headers={**self._headers, **upstream_headers(self.request_id_header)},
                timeouts=self._timeouts,
                provider=name,
                json_ok=self.json_ok,
            ) as chunks:
                async for chunk in chunks:
                    overflow = None
                    try:
                        decoded = decoder.feed(chunk)
                    except TooLong as exc:  # what came before it still counts
                        decoded, overflow = exc.completed, exc
                    for event in decoded:
                        if event.data == done_data:
                            yield reading.end()
                            return
                        text, finish = _parse(reading, event, name)
                        if text:
                            yield text
                        if finish is not None:
                            yield finish
                            return
                        if reading.usage is not told:  # kept, should the reply not reach its end
                            told = reading.usage
                            yield told
                    if overflow is not None:
                        raise ProviderError("protocol", f"{name} sent a line or an event over {limit} bytes")
            # SSE drops an event the body's end cut off; in NDJSON, the end ends the last line.
            for event in decoder.close():
                try:
                    text, finish = _parse(reading, event, name)
                except ProviderError as exc:
                    if exc.type != "protocol":
                        raise
                    raise truncated_error(name, "its end marker (the last line was cut)") from None
                if text:
                    yield text
                if finish is not None:
                    yield finish
                    return
            yield reading.end()
        except ProviderError as exc:  # a provider may echo our key in any shape: never pass it on
            raise exc.scrub(self._secrets, self._urls) from exc.__cause__


def _parse(reading: Reading, event: ServerSentEvent, provider: str) -> tuple[str, Finish | None]:
    data = event.data
    try:
        payload = orjson.loads(data)  # a third of the cost of json.loads: the per-token path
    except orjson.JSONDecodeError:
        try:  # what JSON allows and orjson refuses: half a surrogate pair, a huge number, NaN
            payload = json.loads(data)
        except ValueError:
            raise protocol_error(provider, "data that is not JSON", data) from None
    if event.event == "error" and isinstance(payload, dict):
        raise error_from_event(payload, provider)
    try:
        return reading.feed(payload)
    except _MALFORMED:
        raise protocol_error(provider, "a malformed event", data) from None
