"""Byte streams in the shape OpenAI's Responses API sends them, for the adapter's tests and the
live ones: named events, compact JSON with its `type` and `sequence_number` first and UTF-8
left unescaped, the response object repeated in created, in_progress and the terminal event.
The shapes follow the API reference and the openai-python SDK's types
(`src/openai/types/responses/`), and captured streams."""

from __future__ import annotations

import json
from typing import Any

RESPONSE_ID = "resp_68f1c2a9e0b08195a4c3b1f0d2e7a6c50c1d8e2f3a4b5c6d"
REASONING_ID = "rs_68f1c2aa1c4c8195b7d6e5f4c3b2a1900c1d8e2f3a4b5c6d"
MESSAGE_ID = "msg_68f1c2ab7f5481959e8d7c6b5a4f3e210c1d8e2f3a4b5c6d"
USAGE = {
    "input_tokens": 12,
    "input_tokens_details": {"cached_tokens": 0},
    "output_tokens": 67,
    "output_tokens_details": {"reasoning_tokens": 64},
    "total_tokens": 79,
}


def response(status: str = "in_progress", **changes: Any) -> dict[str, Any]:
    """The response object as the API repeats it in created, in_progress and the end."""
    return {
        "id": RESPONSE_ID,
        "object": "response",
        "created_at": 1760674473,
        "status": status,
        "background": False,
        "error": None,
        "incomplete_details": None,
        "instructions": None,
        "max_output_tokens": None,
        "max_tool_calls": None,
        "model": "gpt-5-mini-2025-08-07",
        "output": [],
        "parallel_tool_calls": True,
        "previous_response_id": None,
        "prompt_cache_key": None,
        "reasoning": {"effort": "medium", "summary": None},
        "safety_identifier": None,
        "service_tier": "auto",
        "store": False,
        "temperature": 1.0,
        "text": {"format": {"type": "text"}, "verbosity": "medium"},
        "tool_choice": "auto",
        "tools": [],
        "top_logprobs": 0,
        "top_p": 1.0,
        "truncation": "disabled",
        "usage": None,
        "user": None,
        "metadata": {},
        **changes,
    }


def event_list(*payloads: dict[str, Any], first: int = 0) -> list[bytes]:
    """Each event as api.openai.com sends it: its name, then its JSON, numbered from `first`."""
    out = []
    for number, payload in enumerate(payloads, start=first):
        kind = payload["type"]
        data = {"type": kind, "sequence_number": number, **payload}
        line = json.dumps(data, separators=(",", ":"), ensure_ascii=False)
        out.append(f"event: {kind}\ndata: {line}\n\n".encode())
    return out


def events(*payloads: dict[str, Any], first: int = 0) -> bytes:
    return b"".join(event_list(*payloads, first=first))


def reasoning_item(status: str | None = None, summary: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    item: dict[str, Any] = {"id": REASONING_ID, "type": "reasoning", "summary": summary or []}
    if status:
        item["status"] = status
    return item


def message_item(status: str, texts: list[str]) -> dict[str, Any]:
    content = (
        [{"type": "output_text", "annotations": [], "logprobs": [], "text": "".join(texts)}] if texts else []
    )
    return {"id": MESSAGE_ID, "type": "message", "status": status, "content": content, "role": "assistant"}


def text_delta(text: str) -> dict[str, Any]:
    return {
        "type": "response.output_text.delta",
        "item_id": MESSAGE_ID,
        "output_index": 1,
        "content_index": 0,
        "delta": text,
        "logprobs": [],
        "obfuscation": "kQ3vX",
    }


def opening() -> list[dict[str, Any]]:
    """created, in_progress, a reasoning item with no summary, and the message item opened."""
    return [
        {"type": "response.created", "response": response()},
        {"type": "response.in_progress", "response": response()},
        {"type": "response.output_item.added", "output_index": 0, "item": reasoning_item()},
        {"type": "response.output_item.done", "output_index": 0, "item": reasoning_item()},
        {"type": "response.output_item.added", "output_index": 1, "item": message_item("in_progress", [])},
        {
            "type": "response.content_part.added",
            "item_id": MESSAGE_ID,
            "output_index": 1,
            "content_index": 0,
            "part": {"type": "output_text", "annotations": [], "logprobs": [], "text": ""},
        },
    ]


def closing(texts: list[str]) -> list[dict[str, Any]]:
    """output_text.done, content_part.done and output_item.done, each repeating the text."""
    whole = "".join(texts)
    return [
        {
            "type": "response.output_text.done",
            "item_id": MESSAGE_ID,
            "output_index": 1,
            "content_index": 0,
            "text": whole,
            "logprobs": [],
        },
        {
            "type": "response.content_part.done",
            "item_id": MESSAGE_ID,
            "output_index": 1,
            "content_index": 0,
            "part": {"type": "output_text", "annotations": [], "logprobs": [], "text": whole},
        },
        {"type": "response.output_item.done", "output_index": 1, "item": message_item("completed", texts)},
    ]


def completed(texts: list[str], usage: dict[str, Any] = USAGE, **changes: Any) -> dict[str, Any]:
    output = [reasoning_item(), message_item("completed", texts)]
    return {
        "type": "response.completed",
        "response": response("completed", output=output, usage=usage, **changes),
    }


def reply(texts: list[str], usage: dict[str, Any] = USAGE) -> list[dict[str, Any]]:
    """A whole reply's events: the opening, a delta per text, the closing, and completed."""
    return [*opening(), *map(text_delta, texts), *closing(texts), completed(texts, usage)]
