"""OpenAI Chat Completions streaming, and every server that imitates it.

`POST {base_url}/chat/completions` with `stream: true` answers Server-Sent
Events whose data is a `chat.completion.chunk` JSON object, ended by
`data: [DONE]`. Imitators (vLLM, llama.cpp, LM Studio, Ollama's /v1,
OpenRouter, Groq) differ at the edges, so we are lenient there:

- comment lines (`: OPENROUTER PROCESSING`) and `event:` names are ignored,
  except `event: error`, whose data is an error object;
- usage (asked for with `stream_options.include_usage`) may ride in its own
  chunk with empty `choices`, in the last content chunk, or (vLLM's continuous
  usage stats) in every chunk, or (Groq) in `x_groq.usage` of the last chunk;
  `prompt_tokens_details.cached_tokens` is the part of the prompt read from
  OpenAI's prompt cache;
- a body that ends after a `finish_reason` counts as finished even without
  `[DONE]`; a `[DONE]` with no `finish_reason` before it is `truncated`;
- `refusal` deltas are the answer's text; reasoning (`reasoning_content`,
  `reasoning`: DeepSeek, vLLM, OpenRouter) is not;
- `tool_calls` deltas are put together by their `index` (the first piece has the
  `id` and the name, the rest append to `arguments`; a server that sends a call
  whole in one piece, or its arguments as an object, is read too) and come out
  whole in the `Finish`; a call with no `id` gets `call_<index>`.

What a client sent of tools goes on as it sent it: `tools`, `tool_choice`, the
assistant turns' `tool_calls` and the `tool` turns with their `tool_call_id`.

We stop at `[DONE]` instead of waiting for the server to close the body.
"""

from __future__ import annotations

import json
from typing import Any

from .base import ChatRequest, Finish, ToolCall, Turn, Usage
from .errors import error_from_event, truncated_error
from .http import HTTPProvider

_FINISH_REASONS = {
    "stop": "stop",
    "length": "length",
    "tool_calls": "tool_calls",
    "function_call": "tool_calls",
    "content_filter": "content_filter",
}


_NONE: dict[str, Any] = {}


def message(turn: Turn) -> dict[str, Any]:
    """A turn as a Chat Completions message: an assistant's calls with it (its content null
    when it said nothing besides), a tool result with the id of its call."""
    if turn.tool_calls:
        return {
            "role": turn.role,
            "content": turn.content or None,
            "tool_calls": [call.as_json() for call in turn.tool_calls],
        }
    if turn.tool_call_id is not None:
        return {"role": turn.role, "tool_call_id": turn.tool_call_id, "content": turn.content}
    return {"role": turn.role, "content": turn.content}


def build_body(request: ChatRequest) -> dict[str, Any]:
    messages: list[dict[str, Any]] = []
    if request.system:
        messages.append({"role": "system", "content": request.system})
    messages.extend(message(turn) for turn in request.turns)
    body: dict[str, Any] = {
        "model": request.model,
        "messages": messages,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if request.temperature is not None:
        body["temperature"] = request.temperature
    if request.max_tokens is not None:
        body["max_tokens"] = request.max_tokens
    if request.stop:
        body["stop"] = list(request.stop)
    if request.tools:
        body["tools"] = list(request.tools)
    if request.tool_choice is not None:
        body["tool_choice"] = request.tool_choice
    return body


class ToolCalls:
    """The calls of one reply, put together from their pieces by `index`."""

    __slots__ = ("ids", "names", "arguments")

    def __init__(self) -> None:
        self.ids: dict[int, str] = {}
        self.names: dict[int, str] = {}
        self.arguments: dict[int, list[str]] = {}

    def add(self, pieces: list[Any]) -> None:
        for position, piece in enumerate(pieces):
            index = piece.get("index", position)
            if index.__class__ is not int:
                raise TypeError("a tool call's index is not an integer")
            if piece.get("id"):
                self.ids[index] = _string(piece["id"])
            function = piece.get("function") or _NONE
            if function.get("name"):
                self.names[index] = _string(function["name"])
            arguments = function.get("arguments")
            if arguments is not None and not isinstance(arguments, str):
                arguments = json.dumps(arguments)  # an object where JSON text belongs: the text of it
            self.arguments.setdefault(index, []).append(arguments or "")

    def whole(self) -> tuple[ToolCall, ...]:
        return tuple(
            ToolCall(self.ids.get(i, f"call_{i}"), self.names.get(i, ""), "".join(self.arguments[i]))
            for i in sorted(self.arguments)
        )


def _string(value: Any) -> str:
    if value.__class__ is not str:
        raise TypeError("not a string")
    return str(value)


class OpenAIReading:
    """A chunk's text goes out at once; the finish reason waits for the end, and `usage` is
    the latest the server reported."""

    __slots__ = ("provider", "reason", "usage", "calls")

    def __init__(self, provider: str = "openai") -> None:
        self.provider = provider
        self.reason: str | None = None
        self.usage = Usage()
        self.calls: ToolCalls | None = None  # made on the first tool-call piece

    def feed(self, payload: Any) -> tuple[str, Finish | None]:
        if payload.get("error"):
            raise error_from_event(payload, self.provider)
        text = ""
        choices = payload.get("choices")
        if choices:
            choice = choices[0]
            delta = choice.get("delta")
            if delta:
                content = delta.get("content")
                if content:
                    text = content
                refusal = delta.get("refusal")
                if refusal:
                    text += refusal
                if text.__class__ is not str:
                    raise TypeError("content is not a string")
                pieces = delta.get("tool_calls")
                if pieces:
                    if self.calls is None:
                        self.calls = ToolCalls()
                    self.calls.add(pieces)
            finish = choice.get("finish_reason")
            if finish:
                self.reason = _FINISH_REASONS.get(finish, "stop")
        usage = payload.get("usage") or (payload.get("x_groq") or _NONE).get("usage")
        if usage:
            details = usage.get("prompt_tokens_details") or {}
            counted = Usage(
                usage.get("prompt_tokens"), usage.get("completion_tokens"), details.get("cached_tokens")
            )
            if counted != self.usage:  # replaced only when it changes: each change is told once
                self.usage = counted
        return text, None

    def end(self) -> Finish:
        if self.reason is None:
            raise truncated_error(self.provider, "a finish_reason")
        return Finish(self.reason, self.usage, self.calls.whole() if self.calls else ())


class OpenAIProvider(HTTPProvider):
    name = "openai"
    default_base_url = "https://api.openai.com/v1"
    default_model = "gpt-4o-mini"
    path = "/chat/completions"
    key_header = ("authorization", "Bearer {}")
    done_data = "[DONE]"
    request_id_header = "x-client-request-id"  # OpenAI logs it with the request, for its support
    build_body = staticmethod(build_body)

    def reading(self) -> OpenAIReading:
        return OpenAIReading(self.name)
