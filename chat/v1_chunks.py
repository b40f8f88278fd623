"""A reply's events, as OpenAI's `chat.completion.chunk` stream and its `chat.completion`.

The `/v1` door follows the same generation every other client sees: it reads the
events a reply publishes (`start`, `provider`, `token`, `done`, `error`, pings) and writes
each as OpenAI's clients expect it:

    data: {"id": "chatcmpl-42", "object": "chat.completion.chunk", ..., "delta": {"role": "assistant"}}
    data: {... "delta": {"content": "Hel"} ...}                  one per `token`
    data: {... "delta": {"tool_calls": [...]} ...}               the calls of `done`, if any
    data: {... "delta": {}, "finish_reason": "stop"}             `done`
    data: {... "choices": [], "usage": {...}}                    when asked: include_usage
    data: [DONE]

A failure is `data: {"error": {...}}` instead, and no `[DONE]` (`chat.v1_errors`).

Deliberate choices:
- A token's chunk is spliced, not built: its text is taken from the event as the broker
  holds it (`{"text": "..."}`, JSON that `chat.sse.encode_event` wrote), already escaped,
  and put between a prefix and a suffix made once per stream. So the per-token path
  decodes and encodes no JSON; anything else, rarer, is parsed.
- The chunks' `model` is `provider/model` (as `GET /v1/models` lists them): the one asked,
  or, once a fallback answered (`provider`), the one that did.
- `finish_reason` is the reply's: OpenAI's `stop`, `length`, `tool_calls` and
  `content_filter`, and sidechat's `cancelled` when a user stopped the reply.
- Usage the provider did not count is 0 in OpenAI's shape (OpenAI's SDKs want numbers);
  the stored reply keeps null.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

DONE = b"data: [DONE]\n\n"
PING = b": ping\n\n"
_TOKEN_DATA = b'{"text": '


def json_bytes(payload: object) -> bytes:
    """JSON as UTF-8; a lone surrogate (a provider may send half an emoji, UTF-8 has none) as
    JSON's escape."""
    try:
        return json.dumps(payload, ensure_ascii=False).encode()
    except UnicodeEncodeError:
        return json.dumps(payload).encode()


def data_line(payload: object) -> bytes:
    """`data: <json>` and its blank line."""
    return b"data: " + json_bytes(payload) + b"\n\n"


def native_events(chunk: bytes) -> Iterator[tuple[bytes, bytes]]:
    """(name, data) of each event in what a subscription handed out (one or several events,
    or a ping: `(b"ping", b"")`), written by `chat.sse.encode_event`."""
    for block in chunk.split(b"\n\n"):
        if not block:
            continue
        if block[0] == 0x3A:  # ":" a comment: the ping
            yield b"ping", b""
            continue
        name = data = b""
        for line in block.split(b"\n"):
            if line.startswith(b"event: "):
                name = line[7:]
            elif line.startswith(b"data: "):
                data = line[6:]
        if name:
            yield name, data


def usage_json(usage: dict[str, Any] | None) -> dict[str, Any]:
    """A reply's usage (`chat.providers.base.Usage.as_dict`) as OpenAI counts it."""
    usage = usage or {}
    prompt, completion = usage.get("input_tokens") or 0, usage.get("output_tokens") or 0
    out: dict[str, Any] = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }
    if usage.get("cached_input_tokens") is not None:
        out["prompt_tokens_details"] = {"cached_tokens": usage["cached_input_tokens"]}
    return out


def model_id(metadata: dict[str, Any]) -> str:
    """`provider/model` of who answered, from a reply's metadata or a `provider` event."""
    return f"{metadata.get('provider')}/{metadata.get('model')}"


class Chunks:
    """The chunks of one reply's stream: `id` `chatcmpl-<message id>`, one `created`."""

    def __init__(self, message_id: int, created: int, model: str) -> None:
        self.id = f"chatcmpl-{message_id}"
        self.created = created
        self.model = model
        self._made_for = ""
        self._prefix = self._suffix = b""

    def chunk(self, choices: list[dict[str, Any]], **more: Any) -> bytes:
        payload = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": None,
            "choices": choices,
            **more,
        }
        return data_line(payload)

    def delta(self, delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
        return self.chunk([{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}])

    def role(self) -> bytes:
        return self.delta({"role": "assistant", "content": ""})

    def token(self, data: bytes) -> bytes:
        """The chunk of a `token` event whose data is `data` (the per-token path)."""
        if not (data.startswith(_TOKEN_DATA) and data.endswith(b"}")):  # not as the broker writes it
            return self.delta({"content": json.loads(data)["text"]})
        if self._made_for != self.model:
            self._prefix, _, self._suffix = self.delta({"content": ""}).partition(b'"content": ""')
            self._prefix += b'"content": '
            self._made_for = self.model
        return self._prefix + data[9:-1] + self._suffix

    def tool_calls(self, calls: list[dict[str, Any]]) -> bytes:
        """The calls a reply made, whole: one piece each, as OpenAI's first piece of a call."""
        return self.delta({"tool_calls": [{"index": i, **call} for i, call in enumerate(calls)]})

    def end(self, done: dict[str, Any], include_usage: bool) -> bytes:
        """What a `done` event becomes: the calls, the finish, the usage if asked, `[DONE]`."""
        out = self.tool_calls(done["tool_calls"]) if done.get("tool_calls") else b""
        out += self.delta({}, done.get("finish_reason") or "stop")
        if include_usage:
            out += self.chunk([], usage=usage_json(done.get("usage")))
        return out + DONE


def completion(message_id: int, created: int, metadata: dict[str, Any], content: str) -> dict[str, Any]:
    """A finished reply as OpenAI's `chat.completion` (non-streaming)."""
    message: dict[str, Any] = {"role": "assistant", "content": content, "refusal": None}
    if metadata.get("tool_calls"):
        message["tool_calls"] = metadata["tool_calls"]
        message["content"] = content or None
    return {
        "id": f"chatcmpl-{message_id}",
        "object": "chat.completion",
        "created": created,
        "model": model_id(metadata),
        "system_fingerprint": None,
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": None,
                "finish_reason": metadata.get("finish_reason") or "stop",
            }
        ],
        "usage": usage_json(metadata.get("usage")),
    }
