"""A finished message, told again as an event stream from its stored row.

Once a generation's in-memory log is gone, only its final text is left, so a
resume from the middle cannot send just the missing tokens. It sends `reset`
(no id: it must not move the client's Last-Event-ID) and then the whole text as
one `token`, so the client replaces what it had. The stored `last_event_id`
keeps the ids of the terminal event, and the token just before it, the same as
the live stream had them, so a client that already saw them is answered 204.

A reply cut off by a crash has no stored end: the ids its clients saw are
unknown. Its replay ends at `UNKNOWN_END`, past any id a stream could have
reached, so every client gets the stored text once and then a 204.
"""

from __future__ import annotations

from typing import Any

from .sse import encode_event
from .store import Message

INTERRUPTED = {"type": "shutdown", "message": "the server stopped before this reply was finished"}
UNKNOWN_END = 2**31 - 1


def stored_events(message: Message, after: int) -> list[bytes]:
    """Events after id `after` of a finished message: empty when the client has them all."""
    last = message.last_event_id or UNKNOWN_END
    if after >= last:
        return []
    events = []
    if after == 0:
        meta = message.metadata
        asked = meta.get("requested") or meta  # `start` names what was asked, as it did live
        events.append(
            encode_event(
                "start",
                {
                    "conversation_id": message.conversation_id,
                    "message_id": message.id,
                    "user_message_id": meta.get("user_message_id"),
                    "provider": asked.get("provider"),
                    "model": asked.get("model"),
                },
                1,
            )
        )
    elif after < last - 1:
        events.append(encode_event("reset", {"message_id": message.id}))
    if message.content and after < last - 1 and last - 1 > 1:
        events.append(encode_event("token", {"text": message.content}, last - 1))
    events.append(encode_event(*terminal_event(message), last))
    return events


def terminal_event(message: Message) -> tuple[str, dict[str, Any]]:
    meta = message.metadata
    if message.status in ("completed", "cancelled"):
        done = {
            "message_id": message.id,
            "finish_reason": meta.get("finish_reason") or message.status.replace("completed", "stop"),
            "usage": meta.get("usage"),
            "duration_ms": meta.get("duration_ms"),
            "ttft_ms": meta.get("ttft_ms"),
        }
        if meta.get("requested"):  # a fallback answered: `done` says which, as it did live
            done.update(provider=meta.get("provider"), model=meta.get("model"))
        return "done", done
    error = meta.get("error") or INTERRUPTED
    return "error", {"message_id": message.id, "error": error, "partial": bool(message.content)}
