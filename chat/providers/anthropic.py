"""Anthropic Messages API streaming.

`POST {base_url}/v1/messages` with `stream: true` answers named Server-Sent
Events: `message_start`, then per content block `content_block_start`,
`content_block_delta`…, `content_block_stop`, then `message_delta` (stop
reason, output usage) and `message_stop`, our end marker. `ping` may come at
any time and `error` ends the stream with an error object.

We dispatch on the JSON `type`, which repeats the event name, and ignore types
we do not know: Anthropic documents that new ones may appear. Only
`text_delta` is text; thinking, signatures and tool input never are.

The prompt's tokens come in `message_start`, the output's (cumulative) in each
`message_delta`; prompt-cache reads and writes are counted apart, and priced
apart (`chat.prices`): a write, at the 5-minute rate, even when it was a 1-hour
one (sidechat asks for no caching itself; only a proxy adding `cache_control`
makes writes happen).
"""

from __future__ import annotations

from typing import Any

from .base import ChatRequest, Finish, Usage, system_apart
from .errors import error_from_event, truncated_error
from .http import HTTPProvider

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
    """Tools are refused (a 400, `base.refuse_tools`): Anthropic's are a format of their own."""
    system, turns = system_apart(request, "anthropic")
    body: dict[str, Any] = {
        "model": request.model,
        "max_tokens": request.max_tokens if request.max_tokens is not None else DEFAULT_MAX_TOKENS,
        "messages": [{"role": turn.role, "content": turn.content} for turn in turns],
        "stream": True,
    }
    if system:
        body["system"] = system
    if request.temperature is not None:
        body["temperature"] = request.temperature
    if request.stop:
        body["stop_sequences"] = list(request.stop)
    return body


def _usage(counted: dict[str, Any], before: Usage) -> Usage:
    """What one event's `usage` says, over what earlier ones said. Anthropic counts the prompt
    in three parts: `input_tokens` (not cached), `cache_read_input_tokens` and
    `cache_creation_input_tokens`; all were read, so `input_tokens` here is their sum."""
    fresh = counted.get("input_tokens")
    read = _either(counted.get("cache_read_input_tokens"), before.cached_input_tokens)
    written = _either(counted.get("cache_creation_input_tokens"), before.cache_write_tokens)
    if fresh is None:  # a message_delta with the output count only: the prompt is as it was
        input_tokens = before.input_tokens
    else:
        input_tokens = fresh + (read or 0) + (written or 0)
    return Usage(input_tokens, _either(counted.get("output_tokens"), before.output_tokens), read, written)


def _either(value: int | None, before: int | None) -> int | None:
    return before if value is None else value


class AnthropicReading:
    """What the events so far have told us: `usage` (from `message_start`, then each
    `message_delta`) and the stop reason, until `message_stop`."""

    __slots__ = ("provider", "stop_reason", "usage")

    def __init__(self, provider: str = "anthropic") -> None:
        self.provider = provider
        self.usage = Usage()
        self.stop_reason: str | None = None

    def feed(self, payload: Any) -> tuple[str, Finish | None]:
        kind = payload.get("type")
        if kind == "content_block_delta":
            delta = payload["delta"]
            if delta.get("type") == "text_delta":
                text = delta["text"]
                if text.__class__ is not str:
                    raise TypeError("text is not a string")
                return text, None
            return "", None  # thinking_delta, signature_delta, input_json_delta, citations_delta
        if kind == "content_block_start":
            block = payload["content_block"]
            if block.get("type") == "text" and block.get("text"):
                return str(block["text"]), None
        elif kind == "message_start":
            self.usage = _usage(payload["message"].get("usage") or {}, self.usage)
        elif kind == "message_delta":
            reason = (payload.get("delta") or {}).get("stop_reason")
            if reason:
                self.stop_reason = _STOP_REASONS.get(reason, "stop")
            if counted := payload.get("usage"):
                self.usage = _usage(counted, self.usage)
        elif kind == "message_stop":
            return "", Finish(self.stop_reason or "stop", self.usage)
        elif kind == "error":
            raise error_from_event(payload, self.provider)
        return "", None  # ping, content_block_stop, and types added later

    def end(self) -> Finish:
        raise truncated_error(self.provider, "message_stop")


class AnthropicProvider(HTTPProvider):
    name = "anthropic"
    default_base_url = "https://api.anthropic.com"
    default_model = "claude-sonnet-4-5"
    path = "/v1/messages"
    headers = {"accept": "text/event-stream", "anthropic-version": API_VERSION}
    key_header = ("x-api-key", "{}")
    build_body = staticmethod(build_body)

    def reading(self) -> AnthropicReading:
        return AnthropicReading(self.name)
