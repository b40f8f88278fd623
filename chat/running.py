"""The running generations of this process, by assistant message id: start, stop, shutdown.

Deliberate choices:
- Shutdown gives running generations a grace period, whether or not a client
  still follows them; `hurry` (a second Ctrl-C) ends them at once, each with its
  partial text stored.
- Each generation runs in a task of its own, inside the telemetry's watch of it,
  so a trace span made current there is the upstream request's parent.
- With several processes, a `Registry` (`chat.redis_leases.Lease`) is told of each
  generation as it starts and once its end is stored, so the others know whose it is;
  one call each way per generation, none per token, and none at all without Redis.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Protocol

from .broker import Broker, Topic
from .generations import Generation, topic_name
from .keeping import Keeper
from .outcome import CANCELLED, SHUTDOWN
from .prices import Prices
from .providers.base import ChatRequest, Provider
from .records import Message
from .telemetry import NOTHING, Telemetry
from .waits import first_of


class Registry(Protocol):
    """Where this process says which replies it is generating (a lease other processes see)."""

    def started(self, message_id: int) -> None: ...

    def ended(self, message_id: int) -> None: ...


class Generations:
    """The running generations of this process, by assistant message id."""

    def __init__(
        self,
        broker: Broker,
        keeper: Keeper,
        *,
        max_reply_chars: int = 2_000_000,
        watched: dict[int, Topic] | None = None,
        telemetry: Telemetry = NOTHING,
        prices: Prices | None = None,
        registry: Registry | None = None,
    ) -> None:
        self.registry = registry  # told of each start and end; None: this process is the only one
        self.telemetry = telemetry
        self.prices = prices  # what a reply's usage costs (`cost_usd`); None: not priced
        self.broker = broker
        self.keeper = keeper
        self.max_reply_chars = max_reply_chars
        self.watched = watched  # the conversation feeds (`chat.feeds`), which get the tokens too
        self.closing = False  # no new generations: the server is shutting down
        self._running: dict[int, Generation] = {}
        self._shutdown: asyncio.Task[None] | None = None
        self._now = asyncio.Event()  # shutdown was asked twice: end the rest without waiting

    def get(self, message_id: int) -> Generation | None:
        return self._running.get(message_id)

    def start(
        self,
        provider: Provider,
        request: ChatRequest,
        reply: Message,
        *,
        user_message_id: int,
        stop_when_abandoned: bool = False,
        on_end: Callable[[Generation], object] | None = None,
        user: str | None = None,
    ) -> Generation:
        """Run a generation of `reply` (stored, `streaming`); its topic is open on return."""
        topic = self.broker.open(topic_name(reply.id))
        generation = Generation(
            provider,
            request,
            reply,
            user_message_id,
            topic,
            self.max_reply_chars,
            self.watched,
            user,
            self.prices,
        )
        if stop_when_abandoned:
            generation.topic.on_abandoned = lambda: generation.stop(CANCELLED)
        self._running[reply.id] = generation
        generation.announce()
        if self.registry is not None:
            self.registry.started(reply.id)
        generation.task = asyncio.create_task(self._run(generation, on_end))
        if self.closing:  # accepted while shutdown began: it ends at once, as interrupted
            generation.stop(SHUTDOWN)
        return generation

    async def _run(self, generation: Generation, on_end: Callable[[Generation], object] | None) -> None:
        try:
            with self.telemetry.generation(generation):
                await generation.run(self.keeper)
        finally:
            del self._running[generation.message_id]
            if self.registry is not None:  # its end is stored (or given up on): no orphan
                self.registry.ended(generation.message_id)
            if on_end is not None:
                on_end(generation)

    async def stop(self, generation: Generation, reason: str) -> bool:
        """Stop it and wait until it has ended, or its end waits for a database that refuses
        it (that may take long, and the reply is safe in memory meanwhile)."""
        stopped = generation.stop(reason)
        await generation.settled.wait()
        return stopped

    async def stop_conversation(self, conversation_id: int) -> None:
        running = [g for g in self._running.values() if g.conversation_id == conversation_id]
        await asyncio.gather(*(self.stop(g, CANCELLED) for g in running))

    def begin_shutdown(self, grace: float) -> asyncio.Task[None]:
        """Refuse new generations; let running ones finish for `grace` seconds, then end the rest.
        Asked again, the same shutdown."""
        if self._shutdown is None:
            self.closing = True
            self._shutdown = asyncio.create_task(self._end_all(grace))
        return self._shutdown

    def hurry(self) -> None:
        """End the running generations now rather than at the end of the grace period."""
        self._now.set()

    @property
    def running(self) -> int:
        return len(self._running)

    async def _end_all(self, grace: float) -> None:
        running = list(self._running.values())
        if running and grace > 0:
            # Until all have finished, or we are asked to hurry, or the grace is over.
            all_finished = asyncio.gather(*(g.finished.wait() for g in running))
            await first_of(all_finished, self._now.wait(), timeout=grace)
        # Any that slipped in while we waited are ended too; a final write still refused gets
        # one more try, then its loss is logged.
        self.keeper.give_up()
        await asyncio.gather(*(self.stop(g, SHUTDOWN) for g in list(self._running.values())))
