"""The Server-Sent Events wire format, both ways.

Upstream we decode provider streams with `SSEDecoder`, and
newline-delimited JSON (Ollama's) with `NDJSONDecoder`, both built on `LineDecoder`; downstream we
write our own events with `encode_event`, `PING` and `retry_field`. The decoder
follows the WHATWG event-stream rules:
https://html.spec.whatwg.org/multipage/server-sent-events.html#event-stream-interpretation

Deliberate departures from the obvious:

- We split lines on bytes ourselves instead of using httpx's `aiter_lines()`
  or `str.splitlines()`: those also split on U+2028, U+2029, U+0085, \\x0b,
  \\x0c and \\x1c-\\x1e, which are ordinary text in SSE. Only CRLF, LF and a
  lone CR end a line.
- A CR at the end of a read ends the line at once rather than waiting for the
  next read to show whether an LF follows; that LF, if it comes, is swallowed.
  So an event ending in CR is dispatched without delay and CRLF split across
  reads is still one line end.
- The spec decodes the whole stream as UTF-8 before splitting lines; we decode
  each field value (the data of an event in one go). Line ends are ASCII, so the
  result is the same, and a character split across reads survives because we
  never decode a partial line.
- At end of stream the unterminated line is discarded along with the
  unterminated event, as the spec says: a line without its end may be cut short
  (`id: 12` of `id: 123`), so it must not update the last event id either.
- A block with no data (say `retry: 3000` alone) is not dispatched, per the
  spec; httpx-sse yields it as an empty event. The reconnection time and the
  last event id in force are on the decoder instead.
- `encode_event` writes JSON with `ensure_ascii=False` (fewer bytes for
  non-Latin text) and falls back to `\\uXXXX` escapes when the data holds a lone
  surrogate, which UTF-8 can't carry but a provider's JSON can.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from json.encoder import encode_basestring as escape_json
from typing import Any

__all__ = [
    "PING",
    "LineDecoder",
    "TooLong",
    "ServerSentEvent",
    "SSEDecoder",
    "encode_event",
    "retry_field",
]

_BOM = b"\xef\xbb\xbf"


@dataclass(slots=True)
class ServerSentEvent:
    event: str = "message"
    data: str = ""
    id: str | None = None  # the last event id in force when dispatched
    retry: int | None = None  # only if this event's block carried a valid retry


class TooLong(ValueError):
    """A line, or an event, grew past the limit its decoder was given. `completed` holds
    what the same read completed before that (lines, or events), to be used first."""

    def __init__(self, message: str, completed: list[Any]) -> None:
        super().__init__(message)
        self.completed = completed


class LineDecoder:
    """Incremental line splitter over bytes: CRLF, LF and a lone CR end a line.

    A line that grows past `max_bytes` before it ends raises `TooLong`: a peer
    that never sends a line end must not make us hold everything it sends."""

    def __init__(self, max_bytes: int | None = None) -> None:
        self._cr_pending = False  # the last read ended in CR; skip a leading LF
        self._tail: list[bytes] = []  # pieces of the line not yet ended
        self._tail_bytes = 0
        self._max = max_bytes

    def feed(self, chunk: bytes) -> list[bytes]:
        """The lines this chunk completes, without their line ends."""
        if self._cr_pending and chunk:
            self._cr_pending = False
            if chunk[0] == 0x0A:
                chunk = chunk[1:]
        if b"\n" not in chunk and b"\r" not in chunk:
            if chunk:
                self._tail.append(chunk)
                self._tail_bytes += len(chunk)
                if self._max is not None and self._tail_bytes > self._max:
                    raise TooLong(f"a line grew past {self._max} bytes without an end", [])
            return []
        if self._tail:
            self._tail.append(chunk)
            chunk = b"".join(self._tail)
            self._tail.clear()
        if b"\r" in chunk:
            self._cr_pending = chunk.endswith(b"\r")
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        lines = chunk.split(b"\n")
        rest = lines.pop()
        self._tail_bytes = len(rest)
        if rest:
            self._tail.append(rest)
            if self._max is not None and self._tail_bytes > self._max:
                raise TooLong(f"a line grew past {self._max} bytes without an end", lines)
        return lines

    def close(self) -> list[bytes]:
        """The last line, if the stream ended without ending it."""
        rest = b"".join(self._tail)
        self._tail.clear()
        self._tail_bytes = 0
        self._cr_pending = False
        return [rest] if rest else []


class SSEDecoder:
    """Incremental WHATWG event-stream decoder over bytes; an event (or a line) that grows
    past `max_bytes` raises `TooLong`."""

    def __init__(self, max_bytes: int | None = None) -> None:
        self._head = b""  # the first bytes of the stream, while they may be a BOM
        self._started = False
        self._lines = LineDecoder(max_bytes)
        self._max = max_bytes
        self._event = ""
        self._data: list[bytes] = []
        self._data_bytes = 0
        self._block_retry: int | None = None
        self._last_event_id: str | None = None
        self._retry: int | None = None

    @property
    def last_event_id(self) -> str | None:
        return self._last_event_id

    @property
    def retry(self) -> int | None:
        """The reconnection time in milliseconds last set by the stream."""
        return self._retry

    def feed(self, chunk: bytes) -> list[ServerSentEvent]:
        """The events this chunk completes."""
        if not self._started:
            chunk = self._head + chunk
            if len(chunk) < len(_BOM) and _BOM.startswith(chunk):
                self._head = chunk
                return []
            self._started, self._head = True, b""
            if chunk.startswith(_BOM):
                chunk = chunk[len(_BOM) :]

        events: list[ServerSentEvent] = []
        overflow: TooLong | None = None
        try:
            lines = self._lines.feed(chunk)
        except TooLong as exc:
            lines, overflow = exc.completed, exc
        for line in lines:
            if not line:
                event = self._dispatch()
                if event is not None:
                    events.append(event)
                continue
            name, _, value = line.partition(b":")
            if not name:
                continue  # a comment
            if value[:1] == b" ":
                value = value[1:]
            if name == b"data":
                self._data.append(value)
                if self._max is not None:
                    self._data_bytes += len(value) + 1
                    if self._data_bytes > self._max:
                        raise TooLong(f"an event grew past {self._max} bytes", events)
            elif name == b"event":
                self._event = value.decode("utf-8", "replace")
            elif name == b"id":
                if b"\0" not in value:
                    self._last_event_id = value.decode("utf-8", "replace")
            elif name == b"retry":
                if value.isdigit():  # bytes.isdigit() is ASCII digits only
                    self._retry = self._block_retry = int(value)
        if overflow is not None:
            raise TooLong(str(overflow), events)
        return events

    def close(self) -> list[ServerSentEvent]:
        """Nothing: whatever has not ended by now is discarded (see the module docstring)."""
        self._head, self._started = b"", False
        self._lines.close()
        self._event, self._block_retry = "", None
        self._data.clear()
        self._data_bytes = 0
        return []

    def _dispatch(self) -> ServerSentEvent | None:
        event = None
        if self._data:
            event = ServerSentEvent(
                event=self._event or "message",
                data=b"\n".join(self._data).decode("utf-8", "replace"),
                id=self._last_event_id,
                retry=self._block_retry,
            )
            self._data.clear()
            self._data_bytes = 0
        self._event, self._block_retry = "", None
        return event


PING: bytes = b": ping\n\n"


# One encoder for every event: `json.dumps(…, ensure_ascii=False)` builds a new one per call.
_as_json = json.JSONEncoder(ensure_ascii=False).encode


def encode_event(event: str, data: object, id: int | None = None) -> bytes:
    if "\n" in event or "\r" in event:
        raise ValueError(f"SSE event name must not hold a line end: {event!r}")
    # JSON escapes CR and LF inside strings, so data is always one line.
    head = "" if id is None else f"id: {id}\n"
    text = f"{head}event: {event}\ndata: {_as_json(data)}\n\n"
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate: escape it as JSON can
        return f"{head}event: {event}\ndata: {json.dumps(data)}\n\n".encode()


def encode_text_event(event: str, text: str, id: int) -> bytes:
    """`encode_event(event, {"text": text}, id)`, byte for byte: the hot path, one per token.
    The string alone goes through JSON's C escaper, twenty times cheaper than a dict."""
    if "\n" in event or "\r" in event:
        raise ValueError(f"SSE event name must not hold a line end: {event!r}")
    try:
        return f'id: {id}\nevent: {event}\ndata: {{"text": {escape_json(text)}}}\n\n'.encode()
    except UnicodeEncodeError:  # a lone surrogate: escape it as JSON can
        return encode_event(event, {"text": text}, id)


def retry_field(milliseconds: int) -> bytes:
    if milliseconds < 0:
        raise ValueError(f"retry must be a non-negative number of ms: {milliseconds}")
    return f"retry: {milliseconds}\n\n".encode()


class NDJSONDecoder:
    """One JSON document per line, as events: blank lines are skipped, and the body's end
    ends its last line too (only JSON can tell whether it was whole)."""

    def __init__(self, max_bytes: int | None = None) -> None:
        self._lines = LineDecoder(max_bytes)

    def feed(self, chunk: bytes) -> list[ServerSentEvent]:
        try:
            lines = self._lines.feed(chunk)
        except TooLong as exc:
            raise TooLong(str(exc), [line_event(line) for line in exc.completed if line.strip()]) from None
        return [line_event(line) for line in lines if line.strip()]

    def close(self) -> list[ServerSentEvent]:
        return [line_event(line) for line in self._lines.close() if line.strip()]


def line_event(line: bytes) -> ServerSentEvent:
    return ServerSentEvent(data=line.decode("utf-8", "replace"))
