"""Ollama's native chat API, `POST {base_url}/api/chat`.

The stream is newline-delimited JSON, not Server-Sent Events: one object per
line with `message.content`, and a last object with `"done": true`, the end
marker, carrying `done_reason` and the token counts. We split lines on bytes
so a UTF-8 character or a line cut across reads survives, and stop at the
`done` object instead of waiting for the body to close. Thinking models put
their reasoning in `message.thinking`, which is never text.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx

from .base import DEFAULT_TIMEOUTS, ChatRequest, Finish, ProviderError, Timeouts, Usage
from .errors import error_from_event, protocol_error, truncated_error
from .upstream import HTTPProvider

DEFAULT_MODEL = "llama3.2"

_DONE_REASONS = {"stop": "stop", "length": "length"}


def build_body(request: ChatRequest) -> dict[str, Any]:
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
    if options:
        body["options"] = options
    return body


def parse_event(payload: Any, provider: str = "ollama") -> tuple[str, Finish | None]:
    """The text one line carries, and the `Finish` if it is the last."""
    if not isinstance(payload, dict):
        raise ProviderError("protocol", f"{provider} sent a line that is not an object")
    if payload.get("error"):
        raise error_from_event(payload, provider)
    message = payload.get("message")
    text = (message.get("content") or "") if message else ""
    if text.__class__ is not str:
        raise TypeError("content is not a string")
    if not payload.get("done"):
        return text, None
    reason = _DONE_REASONS.get(payload.get("done_reason") or "stop", "stop")
    usage = Usage(payload.get("prompt_eval_count"), payload.get("eval_count"))
    return text, Finish(reason, usage)


class OllamaProvider(HTTPProvider):
    path = "/api/chat"
    json_ok = True  # some versions label the stream application/json
    build_body = staticmethod(build_body)
    parse_event = staticmethod(parse_event)

    def __init__(
        self,
        client: httpx.AsyncClient,
        *,
        base_url: str = "http://127.0.0.1:11434",
        api_key: str | None = None,
        default_model: str | None = None,
        timeouts: Timeouts = DEFAULT_TIMEOUTS,
        name: str = "ollama",
    ) -> None:
        headers = {"accept": "application/x-ndjson"}
        if api_key:  # Ollama itself wants none; a proxy in front may
            headers["authorization"] = f"Bearer {api_key}"
        super().__init__(client, name, default_model or DEFAULT_MODEL, base_url, timeouts, headers)

    async def stream(self, request: ChatRequest) -> AsyncIterator[str | Finish]:
        name = self.name
        async with self.open(request) as chunks:
            pending = b""
            ended = False
            while not ended:
                try:
                    chunk = await anext(chunks)
                except StopAsyncIteration:
                    # The body's end ends its last line too; JSON tells whether it is whole.
                    chunk, ended = b"\n", True
                if b"\n" not in chunk:
                    pending += chunk
                    continue
                lines = (pending + chunk).split(b"\n")
                pending = lines.pop()
                for line in lines:
                    if not line.strip():
                        continue
                    try:
                        text, finish = parse_event(json.loads(line), name)
                    except ValueError:
                        if ended:
                            raise truncated_error(name, '"done": true (cut mid-line)') from None
                        raise protocol_error(name, "a line that is not JSON", line) from None
                    except (AttributeError, TypeError):
                        raise protocol_error(name, "a malformed line", line) from None
                    if text:
                        yield text
                    if finish is not None:
                        yield finish
                        return
        raise truncated_error(name, '"done": true')
