"""The payloads of a reply's events, whether the reply is live or told again.

A running generation (`chat.generations`) and a finished reply replayed from its row
(`chat.replay`) send the same events; both build them here from a message's ids and
its stored `metadata`, so they cannot drift. The one exception is `token`'s,
`{"text": ...}`, written where it is sent: that is the per-token path.
"""

from __future__ import annotations

from typing import Any

# The errors a reply can end with that do not come from the provider.
SHUTDOWN = {"type": "shutdown", "message": "the server shut down before this reply was finished"}
INTERRUPTED = {"type": "interrupted", "message": "the process running this reply died before it finished"}


def start(conversation_id: int, message_id: int, metadata: dict[str, Any]) -> dict[str, Any]:
    """`start` names what was asked for, even when a fallback answered instead, and the
    `X-Request-ID` of the request that started it (to find its log lines by)."""
    asked = metadata.get("requested") or metadata
    return {
        "conversation_id": conversation_id,
        "message_id": message_id,
        "user_message_id": metadata.get("user_message_id"),
        "provider": asked.get("provider"),
        "model": asked.get("model"),
        "request_id": metadata.get("request_id"),
    }


def provider(name: str, model: str) -> dict[str, Any]:
    """Who answers instead of the provider asked, sent before its first token."""
    return {"provider": name, "model": model}


def done(message_id: int, metadata: dict[str, Any]) -> dict[str, Any]:
    """`cost_usd` is null for a model without a price, and for a row stored before costs were;
    `tool_calls` is there only when the model called tools (OpenAI's shape, whole calls)."""
    payload = {
        "message_id": message_id,
        "finish_reason": metadata.get("finish_reason"),
        "usage": metadata.get("usage"),
        "cost_usd": metadata.get("cost_usd"),
        "duration_ms": metadata.get("duration_ms"),
        "ttft_ms": metadata.get("ttft_ms"),
    }
    if metadata.get("requested"):  # a fallback answered: say who
        payload.update(provider=metadata.get("provider"), model=metadata.get("model"))
    if metadata.get("tool_calls"):
        payload["tool_calls"] = metadata["tool_calls"]
    return payload


def error(message_id: int, error: dict[str, Any], *, partial: bool) -> dict[str, Any]:
    return {"message_id": message_id, "error": error, "partial": partial}


def terminal(
    message_id: int, status: str, metadata: dict[str, Any], *, partial: bool
) -> tuple[str, dict[str, Any]]:
    """The event a reply that ended with `status` ends its stream with, and its payload."""
    if status in ("completed", "cancelled"):
        if not metadata.get("finish_reason"):  # a row stored before finish reasons were
            metadata = {**metadata, "finish_reason": "stop" if status == "completed" else "cancelled"}
        return "done", done(message_id, metadata)
    return "error", error(message_id, metadata.get("error") or INTERRUPTED, partial=partial)


def reset(message_id: int) -> dict[str, Any]:
    """The client should drop the text it has: the whole text follows."""
    return {"message_id": message_id}
