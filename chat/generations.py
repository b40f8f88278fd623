"""Generations: one assistant reply being produced, independent of any connection.

A `Generation` runs as its own task. It numbers its events from 1, keeps them
encoded in a replay log, and wakes whoever follows it. Followers read the log by
position, so any number of them get every event exactly once and in order, a
slow one never holds up the generation or the others, and resuming after
`Last-Event-ID` is just starting at that position.

Deliberate choices:
- The replay log lives in memory and only while it is useful: it is dropped
  `replay_seconds` after the generation ends. Later attaches are served from the
  database (see `chat.replay`).
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
from dataclasses import dataclass
from typing import Any

from .providers.base import Answerer, ChatRequest, Finish, Provider, ProviderError, Usage
from .sse import PING, encode_event
from .store import Store

log = logging.getLogger("sidechat.generations")

# Why a generation was stopped early, and how it ends.
CANCELLED = "cancelled"  # a user asked, the conversation was deleted, or every client left
SHUTDOWN = "shutdown"  # the server is stopping


@dataclass(slots=True)
class Relayed:
    """How the provider's stream went."""

    finish: Finish | None = None
    error: ProviderError | None = None
    answerer: Answerer | None = None  # set when a fallback answered instead
    ttft_ms: int | None = None


class Generation:
    def __init__(
        self,
        provider: Provider,
        request: ChatRequest,
        *,
        conversation_id: int,
        user_message_id: int,
        message_id: int,
        stop_when_abandoned: bool = False,
    ) -> None:
        self.stop_when_abandoned = stop_when_abandoned
        self.provider = provider
        self.request = request
        self.conversation_id = conversation_id
        self.user_message_id = user_message_id
        self.message_id = message_id
        self.events: list[bytes] = []
        self.followers = 0
        self.finished = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self._waiters: list[asyncio.Future[None]] = []
        self._stop_reason: str | None = None
        self._parts: list[str] = []
        self._started = False
        self._ending = False  # past the provider: being stored, or stored

    @property
    def text(self) -> str:
        return "".join(self._parts)

    @property
    def token_count(self) -> int:
        return len(self._parts)

    @property
    def last_event_id(self) -> int:
        return len(self.events)

    def publish(self, event: str, data: dict[str, Any]) -> None:
        self.events.append(encode_event(event, data, len(self.events) + 1))
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def stop(self, reason: str) -> bool:
        """Ask the generation to end early; False when it already has."""
        if self.task is None or self._ending:
            return False
        self._stop_reason = self._stop_reason or reason
        if self._started:  # a task cancelled before its first step would never run `run`
            self.task.cancel()
        return True

    def follow(self, after: int, heartbeat: float) -> Follower:
        """Encoded events after id `after`, pings while quiet, until the terminal event."""
        return Follower(self, after, heartbeat)

    def _unfollow(self) -> None:
        self.followers -= 1
        if self.followers == 0 and self.stop_when_abandoned:
            self.stop(CANCELLED)

    async def run(self, store: Store) -> None:
        started = time.monotonic()
        self.publish(
            "start",
            {
                "conversation_id": self.conversation_id,
                "message_id": self.message_id,
                "user_message_id": self.user_message_id,
                "provider": self.provider.name,
                "model": self.request.model,
            },
        )
        self._started = True
        relayed = await self._relay(started)
        self._ending = True
        status, terminal, payload, metadata = self._conclude(relayed, started)
        try:
            await asyncio.shield(
                store.finish_message(
                    self.message_id,
                    status=status,
                    content=self.text,
                    metadata=metadata,
                    last_event_id=self.last_event_id + 1,
                )
            )
        except Exception:
            log.exception("could not store the end of message %s", self.message_id)
        finally:
            self.publish(terminal, payload)
            self.finished.set()

    async def _relay(self, started: float) -> Relayed:
        """Publish the provider's deltas as they come; what ended it, and how."""
        relayed = Relayed()
        try:
            if self._stop_reason is not None:
                raise asyncio.CancelledError  # stopped before it began: the provider is never called
            async for item in self.provider.stream(self.request):
                if isinstance(item, str):  # the hot path: one text delta
                    if not item:
                        continue
                    if relayed.ttft_ms is None:
                        relayed.ttft_ms = round((time.monotonic() - started) * 1000)
                    self._parts.append(item)
                    self.publish("token", {"text": item})
                elif isinstance(item, Finish):
                    relayed.finish = item
                else:
                    relayed.answerer = item
                    self.publish("provider", {"provider": item.provider, "model": item.model})
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

    def _conclude(self, relayed: Relayed, started: float) -> tuple[str, str, dict[str, Any], dict[str, Any]]:
        """The row's status, the terminal event and its data, and the stored metadata."""
        finish = relayed.finish
        metadata: dict[str, Any] = {
            "user_message_id": self.user_message_id,
            "provider": self.provider.name,
            "model": self.request.model,
            "usage": (finish.usage if finish else Usage()).as_dict(),
            "finish_reason": None,
            "duration_ms": round((time.monotonic() - started) * 1000),
            "ttft_ms": relayed.ttft_ms,
            "error": None,
        }
        if relayed.answerer is not None:
            metadata["requested"] = {"provider": metadata["provider"], "model": metadata["model"]}
            metadata["provider"], metadata["model"] = relayed.answerer.provider, relayed.answerer.model
        if self._stop_reason == SHUTDOWN:
            metadata["error"] = {"type": "shutdown", "message": "the server is shutting down"}
            return "interrupted", "error", self._error_payload(metadata["error"]), metadata
        if self._stop_reason == CANCELLED:
            metadata["finish_reason"] = "cancelled"
            return "cancelled", "done", self._done_payload(metadata), metadata
        if relayed.error is not None:
            metadata["error"] = relayed.error.as_dict()
            return "failed", "error", self._error_payload(metadata["error"]), metadata
        assert finish is not None
        metadata["finish_reason"] = finish.reason
        return "completed", "done", self._done_payload(metadata), metadata

    def _done_payload(self, metadata: dict[str, Any]) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "message_id": self.message_id,
            "finish_reason": metadata["finish_reason"],
            "usage": metadata["usage"],
            "duration_ms": metadata["duration_ms"],
            "ttft_ms": metadata["ttft_ms"],
        }
        if "requested" in metadata:  # a fallback answered: say who
            payload["provider"], payload["model"] = metadata["provider"], metadata["model"]
        return payload

    def _error_payload(self, error: dict[str, Any]) -> dict[str, Any]:
        return {"message_id": self.message_id, "error": error, "partial": bool(self._parts)}


class Follower:
    """One client's view of a generation: its events after a position, and pings.

    It counts as following from the moment it is made (not from its first read),
    so a client that just attached is never mistaken for no client at all.

    The heartbeat is one timer per follower that is moved only when it fires: a
    stream with tokens flowing costs no timer work per token.
    """

    def __init__(self, generation: Generation, after: int, heartbeat: float) -> None:
        generation.followers += 1
        self._generation: Generation | None = generation
        self._position = after
        self._heartbeat = heartbeat
        self._loop = asyncio.get_running_loop()
        self._last_sent = self._loop.time()
        self._ping_due = False
        self._waiter: asyncio.Future[None] | None = None
        self._timer = self._loop.call_at(self._last_sent + heartbeat, self._tick)

    def _tick(self) -> None:
        due = self._last_sent + self._heartbeat
        if self._loop.time() < due:  # something was sent since this timer was set
            self._timer = self._loop.call_at(due, self._tick)
            return
        self._ping_due = True
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def __aiter__(self) -> Follower:
        return self

    async def __anext__(self) -> bytes:
        generation = self._generation
        if generation is None:
            raise StopAsyncIteration
        events = generation.events
        while True:
            position, end = self._position, len(events)
            if position < end:
                self._position = end
                self._last_sent = self._loop.time()
                if self._ping_due:  # the events go instead of the ping that was due
                    self._ping_due = False
                    self._timer = self._loop.call_at(self._last_sent + self._heartbeat, self._tick)
                # Events that queued up while this client was busy go out in one write.
                return events[position] if end == position + 1 else b"".join(events[position:end])
            if generation.finished.is_set():
                raise StopAsyncIteration
            if self._ping_due:
                self._ping_due = False
                self._last_sent = self._loop.time()
                self._timer = self._loop.call_at(self._last_sent + self._heartbeat, self._tick)
                return PING
            self._waiter = self._loop.create_future()
            generation._waiters.append(self._waiter)
            await self._waiter

    async def aclose(self) -> None:
        generation, self._generation = self._generation, None
        if generation is not None:
            self._timer.cancel()
            generation._unfollow()


class Generations:
    """The running generations of this process, by assistant message id."""

    def __init__(self, store: Store, *, replay_seconds: float, checkpoint_seconds: float = 0) -> None:
        self.store = store
        self.replay_seconds = replay_seconds
        self.checkpoint_seconds = checkpoint_seconds
        self.closing = False  # no new generations: the server is shutting down
        self._live: dict[int, Generation] = {}
        self._shutdown: asyncio.Task[None] | None = None

    def get(self, message_id: int) -> Generation | None:
        return self._live.get(message_id)

    def start(self, generation: Generation) -> Generation:
        self._live[generation.message_id] = generation
        generation.task = asyncio.create_task(self._run(generation))
        if self.closing:  # accepted while shutdown began: it ends at once, as interrupted
            generation.stop(SHUTDOWN)
        return generation

    async def _run(self, generation: Generation) -> None:
        checkpoints = asyncio.create_task(self._checkpoint(generation)) if self.checkpoint_seconds else None
        try:
            await generation.run(self.store)
        finally:
            if checkpoints is not None:
                checkpoints.cancel()
            loop = asyncio.get_running_loop()
            loop.call_later(self.replay_seconds, self._forget, generation)

    async def _checkpoint(self, generation: Generation) -> None:
        """Save a long generation's partial text now and then, so a crash loses little of it."""
        saved = 0
        while True:
            await asyncio.sleep(self.checkpoint_seconds)
            if generation.token_count != saved and not generation.finished.is_set():
                saved = generation.token_count
                await self.store.checkpoint_message(generation.message_id, generation.text)

    def _forget(self, generation: Generation) -> None:
        if self._live.get(generation.message_id) is generation:
            del self._live[generation.message_id]

    async def stop(self, generation: Generation, reason: str) -> bool:
        stopped = generation.stop(reason)
        await generation.finished.wait()
        return stopped

    async def stop_conversation(self, conversation_id: int) -> None:
        running = [g for g in self._live.values() if g.conversation_id == conversation_id]
        await asyncio.gather(*(self.stop(g, CANCELLED) for g in running))

    def begin_shutdown(self, grace: float) -> asyncio.Task[None]:
        """Refuse new generations; let running ones finish for `grace` seconds, then end the rest."""
        self.closing = True
        if self._shutdown is None:
            self._shutdown = asyncio.create_task(self._end_all(grace))
        return self._shutdown

    async def _end_all(self, grace: float) -> None:
        running = [g for g in self._live.values() if not g.finished.is_set()]
        if running and grace > 0:
            waits = [asyncio.ensure_future(g.finished.wait()) for g in running]
            await asyncio.wait(waits, timeout=grace)
            for wait in waits:
                wait.cancel()
        # Any that slipped in while we waited are ended too.
        running = [g for g in self._live.values() if not g.finished.is_set()]
        await asyncio.gather(*(self.stop(g, SHUTDOWN) for g in running))
