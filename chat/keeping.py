"""Keeping a reply: its partial text saved while it runs, and its end written whatever the disk does.

Deliberate choices:
- Checkpoints come every `seconds`, or sooner once `chars` of new text have
  arrived. The hot path pays an addition and a comparison per token; the time
  limit is one timer, armed by the first new text after a save. A save writes
  the whole text so far, so the size limit grows with the text (an eighth of
  what is saved): a long reply costs a few dozen saves, not thousands.
- The final write waits out a database that refuses it for now (locked by
  another process, a full disk, read-only, an I/O error): the reply stays in
  memory, its clients keep their streams (and heartbeats), and the write is
  tried again with backoff. Only a shutdown makes it give up, after one last
  try, and then the loss is logged, loudly, with what was lost.
- How many replies may wait is bounded (`max_pending`); past it, new chats
  are refused rather than piling more replies into memory.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from .store import StorageFailed, Store
from .waits import first_of

log = logging.getLogger("sidechat.keeping")

_FIRST_RETRY, _LAST_RETRY = 0.05, 5.0  # seconds between tries of a final write


class Keeper:
    """How this process keeps its replies, and how many wait in memory for their final write."""

    def __init__(
        self,
        store: Store,
        *,
        checkpoint_seconds: float = 2.0,
        checkpoint_chars: int = 2048,
        max_pending: int = 1000,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    ) -> None:
        self.store = store
        self.checkpoint_seconds = checkpoint_seconds
        self.checkpoint_chars = checkpoint_chars
        self.max_pending = max_pending
        self.pending = 0  # replies whose final write was refused and is being tried again
        self._sleep = sleep
        self._give_up = asyncio.Event()

    @property
    def full(self) -> bool:
        return self.pending >= self.max_pending

    def give_up(self) -> None:
        """Shutdown: each waiting write is tried once more, then abandoned."""
        self._give_up.set()

    def checkpoints(self, message_id: int, text: Callable[[], str]) -> Checkpoints | None:
        if not self.checkpoint_seconds:
            return None
        return Checkpoints(self.store, message_id, text, self.checkpoint_seconds, self.checkpoint_chars)

    async def finish(
        self, message_id: int, values: dict[str, Any], *, refused: Callable[[], object]
    ) -> str | None:
        """Write the end of a reply (`Store.finish_message`'s arguments), `refused()` called when
        the first try fails: None once it is stored, or the reason it was finally not."""
        delay, waiting = _FIRST_RETRY, False
        try:
            while True:
                try:
                    await asyncio.shield(self.store.finish_message(message_id, **values))
                    if waiting:
                        log.warning("stored the end of message %s after all", message_id)
                    return None
                except StorageFailed as exc:
                    reason = exc.reason
                if self._give_up.is_set():
                    log.error(
                        "LOST the end of message %s (%s, %d characters of text): %s",
                        message_id,
                        values["status"],
                        len(values["content"]),
                        reason,
                    )
                    return reason
                if not waiting:
                    waiting = True
                    self.pending += 1
                    refused()
                    log.warning(
                        "could not store the end of message %s (%s); trying again", message_id, reason
                    )
                await self._wait(delay)
                delay = min(delay * 2, _LAST_RETRY)
        finally:
            if waiting:
                self.pending -= 1

    async def _wait(self, seconds: float) -> None:
        """Sleep `seconds`, or less if shutdown asks to give up (then one last try follows)."""
        await first_of(self._sleep(seconds), self._give_up.wait())


class Checkpoints:
    """One running reply's partial text, saved every `seconds` or `chars` of new text."""

    __slots__ = (
        "_closed",
        "_again",
        "_chars",
        "_limit",
        "_loop",
        "_seconds",
        "_store",
        "_text",
        "_timer",
        "_writing",
        "id",
        "unsaved",
    )

    def __init__(
        self, store: Store, message_id: int, text: Callable[[], str], seconds: float, chars: int
    ) -> None:
        self.id = message_id
        self.unsaved = 0  # characters since the last save
        self._store = store
        self._text = text
        self._seconds = seconds
        self._chars = chars
        self._limit = chars  # new characters that bring the next save forward
        self._loop = asyncio.get_running_loop()
        self._timer: asyncio.TimerHandle | None = None
        self._writing: asyncio.Task[None] | None = None
        self._again = False
        self._closed = False

    def added(self, chars: int) -> None:
        """New text arrived (the per-token path)."""
        self.unsaved += chars
        if self.unsaved >= self._limit:
            self._save()
        elif self._timer is None:
            self._timer = self._loop.call_later(self._seconds, self._due)

    def _due(self) -> None:
        self._timer = None
        if self.unsaved and not self._closed:
            self._save()

    def _save(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._writing is not None:  # one write at a time; the next takes all that came since
            self._again = True
            return
        text = self._text()
        self.unsaved = 0
        self._limit = max(self._chars, len(text) // 8)
        self._writing = asyncio.create_task(self._write(text))

    async def _write(self, text: str) -> None:
        try:
            await self._store.checkpoint_message(self.id, text)
        except StorageFailed as exc:  # try again when the interval is over, not at every token
            log.warning("could not checkpoint message %s: %s", self.id, exc.reason)
            self.unsaved, self._limit, self._again = max(self.unsaved, 1), 1 << 62, False
            if self._timer is None and not self._closed:
                self._timer = self._loop.call_later(self._seconds, self._due)
        finally:
            self._writing = None
        if self._again and not self._closed:
            self._again = False
            self._save()

    async def close(self) -> None:
        """The reply ended: no more saves, and the one under way is done before its end is written."""
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._writing is not None:
            try:
                await asyncio.shield(self._writing)
            except Exception:  # the end is written all the same
                log.exception("a checkpoint of message %s failed", self.id)
