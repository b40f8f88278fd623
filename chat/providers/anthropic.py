"""Anthropic Messages API streaming.

`POST {base_url}/v1/messages` with `stream: true` answers named Server-Sent
Events: `message_start`, then per content block `content_block_start`,
`content_block_delta`…, `content_block_stop`, then `message_delta` (stop
reason, output usage) and `message_stop`, our end marker. `ping` may come at
any time and `error` ends the stream with an error object.

We dispatch on the JSON `type`, which repeats the event name, and ignore types
we do not know: Anthropic documents that new ones may appear. Only
`text_delta` is text; thinking, signatures and tool input never are.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx

from ..sse import SSEDecoder
from .base import DEFAULT_TIMEOUTS, ChatRequest, Finish, ProviderError, Timeouts, Usage
from .errors import error_from_event, protocol_error, truncated_error
from .upstream import HTTPProvider

DEFAULT_MODEL = "claude-sonnet-4-5"
DEFAULT_MAX_TOKENS = 4096  # required by the API
API_VERSION = "2023-06-01"

_STOP_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}


def build_body(request: ChatRequest) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": request.model,
        "max_tokens": request.max_tokens if request.max_tokens is not None else DEFAULT_MAX_TOKENS,
        "messages": [{"role": turn.role, "content": turn.content} for turn in request.turns],
        "stream": True,
    }
    if request.system:
        body["system"] = request.system
    if request.temperature is not None:
        body["temperature"] = request.temperature
    return body


class StreamState:
    """What the events so far have told us about the finish."""

    __slots__ = ("input_tokens", "output_tokens", "stop_reason", "stopped")

    def __init__(self) -> None:
        self.input_tokens: int | None = None
        self.output_tokens: int | None = None
        self.stop_reason: str | None = None
        self.stopped = False

    def finish(self) -> Finish:
        return Finish(self.stop_reason or "stop", Usage(self.input_tokens, self.output_tokens))


def _input_tokens(usage: dict[str, Any]) -> int | None:
    # Cached prompt tokens are reported apart from `input_tokens`; all were read.
    total = None
    for key in ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens"):
        value = usage.get(key)
        if value is not None:
            total = (total or 0) + value
    return total


def parse_event(payload: Any, state: StreamState, provider: str = "anthropic") -> str | None:
    """Apply one event to `state`; return its text, if it carries any."""
    if not isinstance(payload, dict):
        raise ProviderError("protocol", f"{provider} sent an event that is not an object")
    kind = payload.get("type")
    if kind == "content_block_delta":
        delta = payload["delta"]
        if delta.get("type") == "text_delta":
            text = delta["text"]
            if text.__class__ is not str:
                raise TypeError("text is not a string")
            return text
        return None  # thinking_delta, signature_delta, input_json_delta, citations_delta
    if kind == "content_block_start":
        block = payload["content_block"]
        if block.get("type") == "text" and block.get("text"):
            return str(block["text"])
    elif kind == "message_start":
        usage = payload["message"].get("usage") or {}
        state.input_tokens = _input_tokens(usage)
        state.output_tokens = usage.get("output_tokens")
    elif kind == "message_delta":
        reason = (payload.get("delta") or {}).get("stop_reason")
        if reason:
            state.stop_reason = _STOP_REASONS.get(reason, "stop")
        usage = payload.get("usage") or {}
        if usage.get("output_tokens") is not None:
            state.output_tokens = usage["output_tokens"]
        if usage.get("input_tokens") is not None:
            state.input_tokens = _input_tokens(usage)
    elif kind == "message_stop":
        state.stopped = True
    elif kind == "error":
        raise error_from_event(payload, provider)
    return None  # ping, content_block_stop, and types added later


class AnthropicProvider(HTTPProvider):
    path = "/v1/messages"
    build_body = staticmethod(build_body)
    parse_event = staticmethod(parse_event)

    def __init__(
        self,
        client: httpx.AsyncClient,
        *,
        api_key: str | None,
        base_url: str = "https://api.anthropic.com",
        default_model: str | None = None,
        timeouts: Timeouts = DEFAULT_TIMEOUTS,
        name: str = "anthropic",
    ) -> None:
        headers = {"accept": "text/event-stream", "anthropic-version": API_VERSION}
        if api_key:
            headers["x-api-key"] = api_key
        super().__init__(client, name, default_model or DEFAULT_MODEL, base_url, timeouts, headers)

    async def stream(self, request: ChatRequest) -> AsyncIterator[str | Finish]:
        name = self.name
        state = StreamState()
        async with self.open(request) as chunks:
            decoder = SSEDecoder()
            async for chunk in chunks:
                for event in decoder.feed(chunk):
                    data = event.data
                    try:
                        payload = json.loads(data)
                    except ValueError:
                        raise protocol_error(name, "a data line that is not JSON", data) from None
                    if event.event == "error" and isinstance(payload, dict):
                        raise error_from_event(payload, name)
                    try:
                        text = parse_event(payload, state, name)
                    except (AttributeError, KeyError, TypeError):
                        raise protocol_error(name, "a malformed event", data) from None
                    if text:
                        yield text
                    elif state.stopped:
                        yield state.finish()
                        return
        raise truncated_error(name, "message_stop")
