"""`SIDECHAT_STORE=none`: a store that keeps nothing, for a pure relay.

`MemoryStore` answers every call of `chat.store.Store` without a database: no file is
created or opened, and nothing is written anywhere. It holds only what a live reply
needs, so that the routes and the generations work unchanged: the reply and the
message it answers, while the reply runs and for its replay window after it ends
(`SIDECHAT_REPLAY_SECONDS`), and the idempotency key it was asked under. Everything
else reads as never stored: no conversation is found (their routes answer 404, the
list is empty), no history is sent upstream, no turn can be replaced.

Deliberate choices:
- A subclass of `Store` that overrides every method (a test checks it), so the services,
  the keeper and the routes take it as they take the real one, typed as they are.
- Its ids count up in memory from the clock (milliseconds × 1000, as a feed's event ids
  do), so a restarted process does not give out again an id a client may still hold
  and resume with; they stay well below 2**53, so JavaScript reads them exactly.
- A finished reply is forgotten `keep_seconds` after its end: the replay window and a
  moment more (`LINGER_SECONDS`), so the store never forgets a reply the broker still
  replays, and `"wait": true` or a cancel reading the finished row right after its end
  finds it however short the window is. Between the two, a resume is told from the row
  (a `reset`, then the whole text), as with a database. Replies end in the order their
  times run out, so forgetting is a queue, popped lazily on the next call: no timer.
- Memory is bounded by the replies running and those that ended within the window,
  which is what the broker holds for them too; keys go with their turn.
- Its database (`_db`, which `chat.usage` reads) is `NoDatabase`: every read finds
  nothing, so `/api/usage` reports nothing stored and a budget counts only the replies
  this process ran; a write would be a bug, and raises.
"""

from __future__ import annotations

import sqlite3
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from .database import ConversationGone, Database, KeyTaken, NotLatest, now
from .records import Conversation, Message
from .store import MAX_ID, Store, storable
from .telemetry import NOTHING, Telemetry

LINGER_SECONDS = 1.0  # a finished reply is kept this much longer than its replay window


def clock_ids() -> int:
    """Where ids start: the clock in milliseconds × 1000."""
    return int(time.time() * 1000) * 1000


class NoDatabase(Database):
    """Where a store that keeps nothing keeps it: every read finds no rows."""

    def __init__(self) -> None:  # no connection: nothing is opened
        pass

    async def close(self) -> None:
        return None

    async def rows(self, sql: str, parameters: dict[str, Any]) -> list[sqlite3.Row]:
        return []

    async def written(self, sql: str, parameters: dict[str, Any]) -> list[sqlite3.Row]:
        raise RuntimeError("storage is off (SIDECHAT_STORE=none): nothing may be written")

    async def write(self, sql: str, parameters: dict[str, Any]) -> int:
        raise RuntimeError("storage is off (SIDECHAT_STORE=none): nothing may be written")

    async def ping(self) -> bool:
        return True


@dataclass(slots=True)
class _Turn:
    owner: str  # the user who asked: the only one who may see it
    asked: Message
    reply: Message
    key: str | None
    request_hash: str | None


def _copy(message: Message) -> Message:
    """A row as the database would give it: the caller's own, which the store never changes."""
    return replace(message, metadata=dict(message.metadata))


class MemoryStore(Store):
    """The live turns of a process that stores nothing (see the module's docstring)."""

    def __init__(
        self,
        *,
        keep_seconds: float,
        clock: Callable[[], float] = time.monotonic,
        first_id: int | None = None,
    ) -> None:
        self._db = NoDatabase()
        self._keep = keep_seconds
        self._clock = clock
        start = clock_ids() if first_id is None else first_id
        self._next_message = start
        self._next_conversation = start
        self._messages: dict[int, _Turn] = {}  # by the id of either of its two messages
        self._keys: dict[str, _Turn] = {}
        self._ended: deque[tuple[float, _Turn]] = deque()  # (when it is forgotten, turn), in order

    @classmethod
    async def open(
        cls, path: str, *, busy_timeout: float = 10.0, telemetry: Telemetry = NOTHING
    ) -> MemoryStore:
        """Not a database's: one is made with `MemoryStore(keep_seconds=...)`, opening nothing."""
        raise TypeError("a MemoryStore opens no database; make one with MemoryStore(keep_seconds=...)")

    @property
    def held(self) -> dict[str, int]:
        """What is in memory now: turns, idempotency keys, ended turns waiting to be forgotten."""
        self._forget()
        return {"turns": len(self._messages) // 2, "keys": len(self._keys), "ended": len(self._ended)}

    async def close(self) -> None:
        self._messages.clear()
        self._keys.clear()
        self._ended.clear()

    async def ping(self) -> bool:
        return True

    async def interrupt_streaming(self, error: dict[str, Any]) -> int:
        """No earlier process left anything behind: it kept nothing."""
        return 0

    async def streaming_replies(self, *, created_before: str) -> list[int]:
        """None is another process's orphan: this one holds only its own replies."""
        return []

    async def interrupt_reply(
        self, message_id: int, *, content: str | None, error: dict[str, Any], last_event_id: int | None
    ) -> bool:
        """Another process's reply is not here to end: it kept it in its own memory."""
        return False

    # -- the live turns -----------------------------------------------------------------

    async def start_turn(
        self,
        conversation_id: int,
        text: str,
        *,
        metadata: dict[str, Any],
        idempotency_key: str | None = None,
        request_hash: str | None = None,
        author: str | None = None,
        earlier: Sequence[tuple[str, str]] = (),  # nothing earlier is kept either
    ) -> tuple[Message, Message]:
        self._forget()
        if idempotency_key is not None and idempotency_key in self._keys:
            raise KeyTaken(idempotency_key)
        asked_id, reply_id = self._next_message + 1, self._next_message + 2
        self._next_message = reply_id
        stamp = now()
        asked = Message(asked_id, conversation_id, "user", text, "completed", {}, 0, stamp, stamp, author)
        reply = Message(
            reply_id, conversation_id, "assistant", "", "streaming", dict(metadata), 0, stamp, None
        )
        turn = _Turn(author or "", asked, reply, idempotency_key, request_hash)
        self._messages[asked_id] = self._messages[reply_id] = turn
        if idempotency_key is not None:
            self._keys[idempotency_key] = turn
        return _copy(asked), _copy(reply)

    async def finish_message(
        self,
        message_id: int,
        *,
        status: str,
        content: str,
        metadata: dict[str, Any],
        last_event_id: int,
    ) -> None:
        """The reply's end, kept for its replay window; only a reply still `streaming` changes."""
        self._forget()
        turn = self._messages.get(message_id)
        if turn is None or turn.reply.id != message_id or turn.reply.status != "streaming":
            return
        turn.reply = replace(
            turn.reply,
            status=status,
            content=storable(content),  # as the database would: it is sent as JSON
            metadata=dict(metadata),
            last_event_id=last_event_id,
            completed_at=now(),
        )
        self._ended.append((self._clock() + self._keep, turn))

    async def checkpoint_message(self, message_id: int, content: str) -> None:
        """Nothing to save: the running reply's text is in its generation (and a process
        that dies takes it with it, as it takes everything else)."""
        return None

    async def get_message(self, user_id: str, message_id: int) -> Message | None:
        self._forget()
        turn = self._messages.get(message_id)
        if turn is None or turn.owner != user_id:
            return None
        return _copy(turn.reply if turn.reply.id == message_id else turn.asked)

    async def find_turn(
        self, user_id: str, idempotency_key: str
    ) -> tuple[Message, Message, str | None] | None:
        self._forget()
        turn = self._keys.get(idempotency_key)
        if turn is None or turn.owner != user_id:
            return None
        return _copy(turn.asked), _copy(turn.reply), turn.request_hash

    def _forget(self) -> None:
        """Let go of the turns whose replay window is over."""
        ended, moment = self._ended, self._clock()
        while ended and ended[0][0] <= moment:
            turn = ended.popleft()[1]
            del self._messages[turn.asked.id], self._messages[turn.reply.id]
            if turn.key is not None and self._keys.get(turn.key) is turn:
                del self._keys[turn.key]

    # -- what is never stored ---------------------------------------------------------

    async def list_messages(self, conversation_id: int, *, after_id: int = 0) -> list[Message]:
        return []

    async def recent_messages(
        self, conversation_id: int, *, limit: int, before_id: int = MAX_ID
    ) -> list[Message]:
        return []

    async def history(self, conversation_id: int, *, limit: int, before_id: int = MAX_ID) -> list[Message]:
        """No history: a turn is its own message alone, unless the caller sends the history."""
        return []

    async def newest_current(self, conversation_id: int) -> dict[str, Message]:
        return {}

    async def regenerate_reply(self, reply_id: int, *, metadata: dict[str, Any]) -> Message:
        raise NotLatest(reply_id)  # no conversation is kept, so none has a turn to replace

    async def edit_turn(
        self,
        user_message_id: int,
        reply_id: int | None,
        text: str,
        *,
        metadata: dict[str, Any],
        author: str | None = None,
    ) -> tuple[Message, Message]:
        raise NotLatest(user_message_id)

    async def create_conversation(
        self,
        user_id: str,
        *,
        title: str | None = None,
        system: str | None = None,
        provider: str | None = None,
        model: str | None = None,
    ) -> Conversation:
        """A new conversation's id (a turn's replies are told with it), kept nowhere."""
        self._next_conversation += 1
        stamp = now()
        return Conversation(self._next_conversation, user_id, title, system, provider, model, stamp, stamp)

    async def get_conversation(self, user_id: str, conversation_id: int) -> Conversation | None:
        return None

    async def list_conversations(
        self, user_id: str, *, limit: int, before: tuple[str, int] | None = None
    ) -> list[Conversation]:
        return []

    async def update_conversation(
        self, user_id: str, conversation_id: int, changes: dict[str, str | None]
    ) -> Conversation | None:
        return None

    async def delete_conversation(self, user_id: str, conversation_id: int) -> bool:
        return False

    async def members(self, conversation_id: int) -> list[str]:
        return []

    async def add_member(self, conversation_id: int, user_id: str) -> bool:
        raise ConversationGone(conversation_id)

    async def remove_member(self, conversation_id: int, user_id: str) -> bool:
        return False
