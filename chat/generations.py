"""Generations: one assistant reply being produced, independent of any connection.

A `Generation` runs as its own task and publishes its events to a topic of the
broker (`chat.broker`), which numbers them, keeps them for resume and fans them
out; clients follow the topic, never the generation. `chat.running` is this
process's registry of running ones: start, stop, and shutdown.

Deliberate choices:
- The database row is written once when the generation ends, *before* the
  terminal event is published, so a client that sees `done` and then reads the
  conversation finds the finished row.
- Stopping is task cancellation: it reaches the provider adapter wherever it is
  waiting, and the adapter's `async with client.stream(...)` closes the upstream
  response at once instead of returning it to the pool half-read.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from . import events
from .broker import Topic
from .keeping import Checkpoints, Keeper
from .outcome import Relayed, conclude
from .prices import Prices
from .providers.base import ChatRequest, Finish, Provider, ProviderError, Usage, close_stream
from .records import Message
from .waits import Flag

log = logging.getLogger("sidechat.generations")


def topic_name(message_id: int) -> str:
    return f"message:{message_id}"


class Generation:
    def __init__(
        self,
        provider: Provider,
        request: ChatRequest,
        reply: Message,
        user_message_id: int,
        topic: Topic,
        max_chars: int = 2_000_000,
        watched: dict[int, Topic] | None = None,
        user: str | None = None,
        prices: Prices | None = None,
    ) -> None:
        self.user = user  # who asked for it
        self.prices = prices  # what its usage costs (`cost_usd`); None: not priced
        self.max_chars = max_chars  # the longest reply; past it, the rest is not read
        self.watched = watched if watched is not None else {}  # conversation feeds open now
        self.provider = provider
        self.request = request
        self.reply = reply  # the row as stored when the turn was accepted
        self.metadata = {"user_message_id": user_message_id, **reply.metadata}  # what it started with
        self.topic = topic
        self.finished = Flag()
        self.task: asyncio.Task[None] | None = None
        self._stop_reason: str | None = None
        self._parts: list[str] = []
        self._started = False
        self._ending = False  # past the provider: being stored, or stored
        self._final: Callable[[], dict[str, Any]] | None = None  # the row its end is stored as
        self.settled = Flag()  # finished, or its end waits for the database to take it
        self.lost: str | None = None  # why its end could not be stored, if it could not

    @property
    def message_id(self) -> int:
        return self.reply.id

    @property
    def conversation_id(self) -> int:
        return self.reply.conversation_id

    @property
    def text(self) -> str:
        return "".join(self._parts)

    @property
    def token_count(self) -> int:
        return len(self._parts)

    def stop(self, reason: str) -> bool:
        """Ask the generation to end early; False when it already has, or was asked already."""
        if self.task is None or self._ending or self._stop_reason is not None:
            return False
        self._stop_reason = reason
        if self._started:  # a task cancelled before its first step would never run `run`
            self.task.cancel()
        return True

    @property
    def ending(self) -> bool:
        """Past the provider: its end is being stored (or waits for the database to take it)."""
        return self._ending

    def final_row(self) -> Message | None:
        """Once past the provider, its row as it is (or will be) stored."""
        return None if self._final is None else replace(self.reply, **self._final())

    def announce(self) -> None:
        """Publish `start`, before the task first runs: a client's stream then writes it with
        its response head, not after this task has opened the upstream request."""
        self.topic.publish("start", events.start(self.conversation_id, self.message_id, self.metadata))

    async def run(self, keeper: Keeper) -> None:
        started = time.monotonic()
        self._started = True
        checkpoints = keeper.checkpoints(self.message_id, lambda: self.text)
        try:
            relayed = await self._relay(started, checkpoints)
        finally:
            self._ending = True
            if checkpoints is not None:
                await checkpoints.close()
        took = time.monotonic() - started

        def row() -> dict[str, Any]:
            status, metadata = conclude(relayed, self._stop_reason, self.metadata, took, self.prices)
            return {
                "status": status,
                "metadata": metadata,
                "content": self.text,
                "last_event_id": self.topic.last_id + 1,
            }

        self._final = row
        stored = row()
        lost: str | None = "an internal error while storing it (the log has the details)"
        try:
            lost = await keeper.finish(self.message_id, stored, refused=self.settled.set)
        except Exception:
            log.exception("could not store the end of message %s", self.message_id)
        finally:  # whatever happened, its clients hear how it ended
            self.lost = lost
            if lost is None:
                terminal = events.terminal(
                    self.message_id, stored["status"], stored["metadata"], partial=bool(self._parts)
                )
            else:
                error = {"type": "storage", "message": f"the reply could not be stored: {lost}"}
                terminal = ("error", events.error(self.message_id, error, partial=bool(self._parts)))
            self.topic.publish(*terminal)
            self.topic.close()
            self.finished.set()
            self.settled.set()

    async def _relay(self, started: float, checkpoints: Checkpoints | None) -> Relayed:
        """Publish the provider's deltas as they come; what ended it, and how."""
        relayed = Relayed()
        publish, publish_text = self.topic.publish, self.topic.publish_text
        watched, conversation_id, message_id = self.watched, self.conversation_id, self.message_id
        try:
            if self._stop_reason is not None:
                raise asyncio.CancelledError  # stopped before it began: the provider is never called
            # One turn of the loop before the upstream request: the streams of the clients that
            # asked are ready behind this task, and write `start` now rather than after it.
            await asyncio.sleep(0)
            stream, chars, limit = self.provider.stream(self.request), 0, self.max_chars
            try:
                async for item in stream:
                    if isinstance(item, str):  # the hot path: one text delta
                        if not item:
                            continue
                        if relayed.ttft_ms is None:
                            relayed.ttft_ms = round((time.monotonic() - started) * 1000)
                        size = len(item)
                        chars += size
                        if chars > limit:
                            raise ProviderError(
                                "protocol", f"the reply grew past {limit} characters; the rest was not read"
                            )
                        self._parts.append(item)
                        if checkpoints is not None:
                            checkpoints.added(size)
                        publish_text("token", item)
                        if watched and (feed := watched.get(conversation_id)) is not None:
                            feed.publish("token", {"message_id": message_id, "text": item})
                    elif isinstance(item, Usage):  # the counts so far: kept should the end not come
                        relayed.usage = item
                    elif isinstance(item, Finish):
                        relayed.finish = item
                    else:
                        relayed.answerer = item
                        relayed.usage = None  # what follows is the answering provider's count
                        publish("provider", events.provider(item.provider, item.model))
            finally:
                await close_stream(stream)  # the upstream connection goes with it, now
        except ProviderError as exc:
            relayed.error = exc
        except asyncio.CancelledError:
            if self._stop_reason is None:
                raise  # not ours to swallow
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                task.uncancel()
        except Exception:
            log.exception("generation %s failed", self.message_id)
            relayed.error = ProviderError("upstream_error", "internal error while streaming the reply")
        if relayed.error is None and relayed.finish is None and self._stop_reason is None:
            relayed.error = ProviderError("truncated", "the provider's stream ended without a finish record")
        return relayed
