"""Gemini `streamGenerateContent` with `alt=sse`.

Each event's data is a whole `GenerateContentResponse`: text in
`candidates[0].content.parts[].text`, usage in `usageMetadata`. There is no
`[DONE]`: a candidate with a `finishReason` is the end marker, and we stop
there. Parts marked `thought: true` are reasoning, never text.

Deliberate departures from the obvious:

- A `finishReason` that means "blocked" (SAFETY, RECITATION, BLOCKLIST,
  PROHIBITED_CONTENT, SPII, IMAGE_SAFETY) raises `prompt_blocked` rather than
  finishing as `content_filter`: Gemini cuts the answer off without a word,
  so the user needs the error to know why it stopped.
- `output_tokens` counts thinking tokens too (`thoughtsTokenCount`): they are
  billed as output.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

import httpx

from ..sse import SSEDecoder
from .base import DEFAULT_TIMEOUTS, ChatRequest, Finish, ProviderError, Timeouts, Usage
from .errors import error_from_event, protocol_error, truncated_error
from .upstream import HTTPProvider

DEFAULT_MODEL = "gemini-2.5-flash"

_FINISH_REASONS = {"STOP": "stop", "MAX_TOKENS": "length"}
_BLOCKED = frozenset({"SAFETY", "RECITATION", "BLOCKLIST", "PROHIBITED_CONTENT", "SPII", "IMAGE_SAFETY"})


def build_body(request: ChatRequest) -> dict[str, Any]:
    body: dict[str, Any] = {
        "contents": [
            {
                "role": "model" if turn.role == "assistant" else "user",
                "parts": [{"text": turn.content}],
            }
            for turn in request.turns
        ]
    }
    if request.system:
        body["systemInstruction"] = {"parts": [{"text": request.system}]}
    config: dict[str, Any] = {}
    if request.temperature is not None:
        config["temperature"] = request.temperature
    if request.max_tokens is not None:
        config["maxOutputTokens"] = request.max_tokens
    if config:
        body["generationConfig"] = config
    return body


def _usage(payload: dict[str, Any]) -> Usage:
    meta = payload.get("usageMetadata") or {}
    output = meta.get("candidatesTokenCount")
    thoughts = meta.get("thoughtsTokenCount")
    if thoughts is not None:
        output = (output or 0) + thoughts
    return Usage(meta.get("promptTokenCount"), output)


def parse_event(payload: Any, provider: str = "gemini") -> tuple[str, Finish | None]:
    """The text one response chunk carries, and the `Finish` if it is the last."""
    if not isinstance(payload, dict):
        raise ProviderError("protocol", f"{provider} sent a chunk that is not an object")
    if payload.get("error"):
        raise error_from_event(payload, provider)
    candidates = payload.get("candidates")
    if not candidates:
        blocked = (payload.get("promptFeedback") or {}).get("blockReason")
        if blocked:
            raise ProviderError(
                "prompt_blocked",
                f"{provider} blocked the prompt ({blocked})",
                provider_code=blocked,
            )
        return "", None
    candidate = candidates[0]
    text = ""
    content = candidate.get("content")
    if content:
        for part in content.get("parts") or ():
            piece = part.get("text")
            if piece and not part.get("thought"):
                if piece.__class__ is not str:
                    raise TypeError("text is not a string")
                text = piece if not text else text + piece
    reason = candidate.get("finishReason")
    if not reason:
        return text, None
    if reason in _BLOCKED:
        raise ProviderError(
            "prompt_blocked",
            f"{provider} stopped the answer ({reason})",
            provider_code=reason,
        )
    return text, Finish(_FINISH_REASONS.get(reason, "stop"), _usage(payload))


class GeminiProvider(HTTPProvider):
    path = "/v1beta/models"
    build_body = staticmethod(build_body)
    parse_event = staticmethod(parse_event)

    def __init__(
        self,
        client: httpx.AsyncClient,
        *,
        api_key: str | None,
        base_url: str = "https://generativelanguage.googleapis.com",
        default_model: str | None = None,
        timeouts: Timeouts = DEFAULT_TIMEOUTS,
        name: str = "gemini",
    ) -> None:
        headers = {"accept": "text/event-stream"}
        if api_key:  # a header, not `?key=`, so it never lands in a logged URL
            headers["x-goog-api-key"] = api_key
        super().__init__(client, name, default_model or DEFAULT_MODEL, base_url, timeouts, headers)

    def url(self, model: str) -> str:
        model = model.removeprefix("models/")
        return f"{self._url}/{quote(model, safe='')}:streamGenerateContent?alt=sse"

    async def stream(self, request: ChatRequest) -> AsyncIterator[str | Finish]:
        name = self.name
        async with self.open(request) as chunks:
            decoder = SSEDecoder()
            async for chunk in chunks:
                for event in decoder.feed(chunk):
                    data = event.data
                    try:
                        payload = json.loads(data)
                    except ValueError:
                        raise protocol_error(name, "a data line that is not JSON", data) from None
                    try:
                        text, finish = parse_event(payload, name)
                    except (AttributeError, TypeError, IndexError, KeyError):
                        raise protocol_error(name, "a malformed chunk", data) from None
                    if text:
                        yield text
                    if finish is not None:
                        yield finish
                        return
        raise truncated_error(name, "a finishReason")
