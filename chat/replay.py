"""A finished reply, told again as an event stream from its stored row.

Once a generation's topic is gone, only its final text is left, so a resume from
the middle cannot send just the missing tokens. It sends `reset` (no id: it must
not move the client's Last-Event-ID) and then the whole text as one `token`, so
the client replaces what it had. The stored `last_event_id` keeps the ids of the
terminal event, and the token just before it, the same as the live stream had
them, so a client that already saw them is answered 204.

A reply cut off by a crash has no stored end: the ids its clients saw are
unknown. Its replay ends at `UNKNOWN_END`, past any id a stream could have
reached, so every client gets the stored text once and then a 204.
"""

from __future__ import annotations

from . import events
from .records import Message
from .sse import encode_event

UNKNOWN_END = 2**31 - 1


def stored_events(message: Message, after: int) -> list[bytes]:
    """Events after id `after` of a finished message: empty when the client has them all."""
    last = message.last_event_id or UNKNOWN_END
    if after >= last:
        return []
    out = []
    if after == 0:
        out.append(
            encode_event("start", events.start(message.conversation_id, message.id, message.metadata), 1)
        )
    elif after < last - 1:
        out.append(encode_event("reset", events.reset(message.id)))
    if message.content and after < last - 1 and last - 1 > 1:
        out.append(encode_event("token", {"text": message.content}, last - 1))
    name, payload = events.terminal(
        message.id, message.status, message.metadata, partial=bool(message.content)
    )
    out.append(encode_event(name, payload, last))
    return out
