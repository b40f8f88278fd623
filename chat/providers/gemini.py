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

from typing import Any
from urllib.parse import quote

from .base import ChatRequest, Finish, ProviderError, Usage, system_apart
from .errors import error_from_event, truncated_error
from .http import HTTPProvider

_FINISH_REASONS = {"STOP": "stop", "MAX_TOKENS": "length"}
_BLOCKED = frozenset({"SAFETY", "RECITATION", "BLOCKLIST", "PROHIBITED_CONTENT", "SPII", "IMAGE_SAFETY"})


def build_body(request: ChatRequest) -> dict[str, Any]:
    """Tools are refused (a 400, `base.refuse_tools`): Gemini's are a format of their own."""
    system, turns = system_apart(request, "gemini")
    body: dict[str, Any] = {
        "contents": [
            {
                "role": "model" if turn.role == "assistant" else "user",
                "parts": [{"text": turn.content}],
            }
            for turn in turns
        ]
    }
    if system:
        body["systemInstruction"] = {"parts": [{"text": system}]}
    config: dict[str, Any] = {}
    if request.temperature is not None:
        config["temperature"] = request.temperature
    if request.max_tokens is not None:
        config["maxOutputTokens"] = request.max_tokens
    if request.stop:
        config["stopSequences"] = list(request.stop)
    if config:
        body["generationConfig"] = config
    return body


def _usage(meta: dict[str, Any]) -> Usage:
    output = meta.get("candidatesTokenCount")
    thoughts = meta.get("thoughtsTokenCount")
    if thoughts is not None:
        output = (output or 0) + thoughts
    # `cachedContentTokenCount` is the part of `promptTokenCount` read from a cache.
    return Usage(meta.get("promptTokenCount"), output, meta.get("cachedContentTokenCount"))


class GeminiReading:
    """Each chunk is a whole response: its text, its `usageMetadata` (the counts so far, kept
    as `usage`), and a `Finish` on the one with a finishReason."""

    __slots__ = ("provider", "usage")

    def __init__(self, provider: str = "gemini") -> None:
        self.provider = provider
        self.usage = Usage()

    def feed(self, payload: Any) -> tuple[str, Finish | None]:
        provider = self.provider
        if payload.get("error"):
            raise error_from_event(payload, provider)
        if (meta := payload.get("usageMetadata")) and (usage := _usage(meta)) != self.usage:
            self.usage = usage  # replaced only when it changes: each change is told once
        candidates = payload.get("candidates")
        if not candidates:
            blocked = (payload.get("promptFeedback") or {}).get("blockReason")
            if blocked:
                raise ProviderError(
                    "prompt_blocked", f"{provider} blocked the prompt ({blocked})", provider_code=blocked
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
                "prompt_blocked", f"{provider} stopped the answer ({reason})", provider_code=reason
            )
        return text, Finish(_FINISH_REASONS.get(reason, "stop"), self.usage)

    def end(self) -> Finish:
        raise truncated_error(self.provider, "a finishReason")


class GeminiProvider(HTTPProvider):
    name = "gemini"
    default_base_url = "https://generativelanguage.googleapis.com"
    default_model = "gemini-2.5-flash"
    path = "/v1beta/models"
    key_header = ("x-goog-api-key", "{}")  # a header, not `?key=`, so it never lands in a logged URL
    build_body = staticmethod(build_body)

    def url(self, model: str) -> str:
        model = model.removeprefix("models/")
        return f"{self._url}/{quote(model, safe='')}:streamGenerateContent?alt=sse"

    def reading(self) -> GeminiReading:
        return GeminiReading(self.name)
