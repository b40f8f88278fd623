"""Ollama's native chat API, `POST {base_url}/api/chat`.

The stream is newline-delimited JSON, not Server-Sent Events: one object per
line with `message.content`, and a last object with `"done": true`, the end
marker, carrying `done_reason` and the token counts. We stop at the `done`
object instead of waiting for the body to close. Thinking models put their
reasoning in `message.thinking`, which is never text.
"""

from __future__ import annotations

from typing import Any

from .base import ChatRequest, Finish, Usage, refuse_tools
from .errors import error_from_event, truncated_error
from .http import HTTPProvider

_DONE_REASONS = {"stop": "stop", "length": "length"}


def build_body(request: ChatRequest) -> dict[str, Any]:
    """System turns go where the client put them; tools are refused (a 400,
    `base.refuse_tools`): for them, use Ollama's OpenAI-compatible /v1 as the openai provider."""
    refuse_tools(request, "ollama")
    messages: list[dict[str, str]] = []
    if request.system:
        messages.append({"role": "system", "content": request.system})
    messages.extend({"role": turn.role, "content": turn.content} for turn in request.turns)
    body: dict[str, Any] = {"model": request.model, "messages": messages, "stream": True}
    options: dict[str, Any] = {}
    if request.temperature is not None:
        options["temperature"] = request.temperature
    if request.max_tokens is not None:
        options["num_predict"] = request.max_tokens
    if request.stop:
        options["stop"] = list(request.stop)
    if options:
        body["options"] = options
    return body


class OllamaReading:
    """Each line's text, and a `Finish` on the line that says `"done": true`."""

    __slots__ = ("provider", "usage")

    def __init__(self, provider: str = "ollama") -> None:
        self.provider = provider
        self.usage = Usage()  # Ollama counts only on its last line

    def feed(self, payload: Any) -> tuple[str, Finish | None]:
        if payload.get("error"):
            raise error_from_event(payload, self.provider)
        message = payload.get("message")
        text = (message.get("content") or "") if message else ""
        if text.__class__ is not str:
            raise TypeError("content is not a string")
        if not payload.get("done"):
            return text, None
        reason = _DONE_REASONS.get(payload.get("done_reason") or "stop", "stop")
        self.usage = Usage(payload.get("prompt_eval_count"), payload.get("eval_count"))
        return text, Finish(reason, self.usage)

    def end(self) -> Finish:
        raise truncated_error(self.provider, '"done": true')


class OllamaProvider(HTTPProvider):
    name = "ollama"
    default_base_url = "http://127.0.0.1:11434"
    default_model = "llama3.2"
    path = "/api/chat"
    headers = {"accept": "application/x-ndjson"}
    framing = "ndjson"
    json_ok = True  # some versions label the stream application/json
    build_body = staticmethod(build_body)

    def reading(self) -> OllamaReading:
        return OllamaReading(self.name)
