"""OpenAI Chat Completions streaming, and every server that imitates it.

`POST {base_url}/chat/completions` with `stream: true` answers Server-Sent
Events whose data is a `chat.completion.chunk` JSON object, ended by
`data: [DONE]`. Imitators (vLLM, llama.cpp, LM Studio, Ollama's /v1,
OpenRouter, Groq) differ at the edges, so we are lenient there:

- comment lines (`: OPENROUTER PROCESSING`) and `event:` names are ignored,
  except `event: error`, whose data is an error object;
- usage may ride in its own chunk with empty `choices` or in the last content
  chunk;
- a body that ends after a `finish_reason` counts as finished even without
  `[DONE]`; a `[DONE]` with no `finish_reason` before it is `truncated`;
- `refusal` deltas are the answer's text; tool-call deltas and reasoning
  (`reasoning_content`, `reasoning`: DeepSeek, vLLM, OpenRouter) are not.

We stop at `[DONE]` instead of waiting for the server to close the body.
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

DEFAULT_MODEL = "gpt-4o-mini"

_FINISH_REASONS = {
    "stop": "stop",
    "length": "length",
    "tool_calls": "tool_calls",
    "function_call": "tool_calls",
    "content_filter": "content_filter",
}


def build_body(request: ChatRequest) -> dict[str, Any]:
    messages: list[dict[str, str]] = []
    if request.system:
        messages.append({"role": "system", "content": request.system})
    messages.extend({"role": turn.role, "content": turn.content} for turn in request.turns)
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
    return body


def parse_event(payload: Any, provider: str = "openai") -> tuple[str, str | None, Usage | None]:
    """The text, finish reason (ours) and usage one chunk carries."""
    if not isinstance(payload, dict):
        raise ProviderError("protocol", f"{provider} sent a chunk that is not an object")
    if "error" in payload and payload["error"]:
        raise error_from_event(payload, provider)
    text = ""
    reason = None
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
        finish = choice.get("finish_reason")
        if finish:
            reason = _FINISH_REASONS.get(finish, "stop")
    usage = None
    raw = payload.get("usage")
    if raw:
        usage = Usage(raw.get("prompt_tokens"), raw.get("completion_tokens"))
    return text, reason, usage


class OpenAIProvider(HTTPProvider):
    path = "/chat/completions"
    build_body = staticmethod(build_body)
    parse_event = staticmethod(parse_event)

    def __init__(
        self,
        client: httpx.AsyncClient,
        *,
        api_key: str | None,
        base_url: str = "https://api.openai.com/v1",
        default_model: str | None = None,
        timeouts: Timeouts = DEFAULT_TIMEOUTS,
        name: str = "openai",
    ) -> None:
        headers = {"accept": "text/event-stream"}
        if api_key:
            headers["authorization"] = f"Bearer {api_key}"
        super().__init__(client, name, default_model or DEFAULT_MODEL, base_url, timeouts, headers)

    async def stream(self, request: ChatRequest) -> AsyncIterator[str | Finish]:
        name = self.name
        reason: str | None = None
        usage: Usage | None = None
        async with self.open(request) as chunks:
            decoder = SSEDecoder()
            async for chunk in chunks:
                for event in decoder.feed(chunk):
                    data = event.data
                    if data == "[DONE]":
                        if reason is None:
                            raise truncated_error(name, "any finish_reason ([DONE] came first)")
                        yield Finish(reason, usage or Usage())
                        return
                    try:
                        payload = json.loads(data)
                    except ValueError:
                        raise protocol_error(name, "a data line that is not JSON", data) from None
                    if event.event == "error" and isinstance(payload, dict):
                        raise error_from_event(payload, name)
                    try:
                        text, finish, found = parse_event(payload, name)
                    except (AttributeError, TypeError, IndexError, KeyError):
                        raise protocol_error(name, "a malformed chunk", data) from None
                    if text:
                        yield text
                    if finish is not None:
                        reason = finish
                    if found is not None:
                        usage = found
        if reason is None:
            raise truncated_error(name, "a finish_reason")
        yield Finish(reason, usage or Usage())
