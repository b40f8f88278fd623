"""Per-user limits, checked before anything is stored: how often a user may start a
reply, how many of theirs may run at once, and how many event streams may be open.

    SIDECHAT_RATE_LIMIT=30/minute          a token bucket per user, its burst the whole allowance
    SIDECHAT_MAX_STREAMS_PER_USER=4        generations running at once (429 beyond)
    SIDECHAT_MAX_CONNECTIONS_PER_USER=256  open event streams, per user and in all (503 beyond)
    SIDECHAT_MAX_CONNECTIONS=10000

Deliberate choices:
- A bucket is two numbers, refilled lazily when it is next asked: no timer, no task,
  and nothing at all per token. A full bucket is the same as no bucket, so when
  there are many, the full ones are dropped: memory follows the users active within
  one period, not every user ever seen.
- A slot is taken when a request is admitted and given back when its generation or
  stream ends, so two requests racing for the last slot cannot both have it.
- These limits live in this process. With SIDECHAT_REDIS_URL, `live_limits` gives every
  process the same rate buckets, running-reply slots and budget tallies through Redis
  (`chat.redis_limits`), behind the same calls; admission is `async` for that alone (here it
  never waits). The open-stream caps and the typing rate stay per process even then: they
  protect this process's memory and its feeds, which are its own.
- What users may spend (`SIDECHAT_USER_BUDGET`, `chat.budgets`) is a limit too: it adds up
  the `cost_usd` each reply ends with (priced by `chat.prices`) and its tokens.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime

from .broker import Broker
from .budgets import Budgets, utc_now
from .config import Settings
from .errors import RateLimited, TooManyConnections

TYPING_RATE = (10, 5.0)  # typing updates per user per so many seconds: a person sends far fewer
STREAMS_RETRY_AFTER = 2.0  # when a user's own running replies are the limit: soon, probably
CONNECTIONS_RETRY_AFTER = 5.0


class Buckets:
    """`count` requests per `period` seconds for each user, any `count` of them at once."""

    def __init__(self, count: int, period: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.count = count
        self.rate = count / period  # requests regained per second
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # user -> (requests left, as of when)
        self._sweep_at = 1024

    def take(self, user: str) -> float | None:
        """Take one request from `user`'s bucket: None, or the seconds until one is left."""
        now = self._clock()
        left, then = self._buckets.get(user, (self.count, now))
        left = min(self.count, left + (now - then) * self.rate)
        if left < 1:
            self._buckets[user] = (left, now)
            return (1 - left) / self.rate
        self._buckets[user] = (left - 1, now)
        if len(self._buckets) >= self._sweep_at:
            self._sweep(now)
        return None

    def _sweep(self, now: float) -> None:
        rate, count = self.rate, self.count
        full = [u for u, (left, then) in self._buckets.items() if left + (now - then) * rate >= count]
        for user in full:
            del self._buckets[user]
        self._sweep_at = max(1024, 2 * len(self._buckets))

    def __len__(self) -> int:
        return len(self._buckets)


@dataclass
class Counts:
    """How many of something each user holds, and in all; users at zero are forgotten."""

    per_user: int
    total: int | None = None
    held: dict[str, int] = field(default_factory=dict)
    all: int = 0

    def take(self, user: str) -> bool:
        if self.held.get(user, 0) >= self.per_user or (self.total is not None and self.all >= self.total):
            return False
        self.held[user] = self.held.get(user, 0) + 1
        self.all += 1
        return True

    def give_back(self, user: str) -> None:
        left = self.held[user] - 1
        if left:
            self.held[user] = left
        else:
            del self.held[user]
        self.all -= 1


class Limits:
    def __init__(
        self,
        settings: Settings,
        clock: Callable[[], float] = time.monotonic,
        *,
        wall_clock: Callable[[], datetime] = utc_now,  # the budgets' calendar
    ) -> None:
        self.budgets = Budgets(settings.user_budget, clock=wall_clock)
        self.requests = Buckets(*settings.rate_limit, clock=clock)
        self.streams = Counts(settings.max_streams_per_user)
        self.connections = Counts(settings.max_connections_per_user, settings.max_connections)
        self.typing = Buckets(*TYPING_RATE, clock=clock)

    async def admit_generation(self, user: str) -> None:
        """Count a new generation of `user`'s, or raise RateLimited; `generation_ended` gives it back."""
        self.admit_here(user)

    def admit_here(self, user: str) -> None:
        """`admit_generation` by this process's counts alone, without waiting."""
        if not self.streams.take(user):
            raise RateLimited(
                f"{self.streams.per_user} of your replies are running already"
                " (SIDECHAT_MAX_STREAMS_PER_USER); wait for one to end",
                retry_after=STREAMS_RETRY_AFTER,
            )
        wait = self.requests.take(user)
        if wait is not None:
            self.streams.give_back(user)
            raise RateLimited(
                f"more than {self.requests.count} chat requests in the period (SIDECHAT_RATE_LIMIT)",
                retry_after=wait,
            )

    def admit_typing(self, user: str) -> None:
        """A typing update of `user`'s, or RateLimited: a stuck client cannot flood a feed."""
        wait = self.typing.take(user)
        if wait is not None:
            raise RateLimited(
                "too many typing updates; send one when typing starts or stops", retry_after=wait
            )

    def generation_ended(self, user: str) -> None:
        self.streams.give_back(user)

    def open_stream(self, user: str) -> None:
        """Count an open event stream, or raise TooManyConnections; `stream_closed` gives it back."""
        if not self.connections.take(user):
            mine = self.connections.held.get(user, 0) >= self.connections.per_user
            variable = "SIDECHAT_MAX_CONNECTIONS_PER_USER" if mine else "SIDECHAT_MAX_CONNECTIONS"
            whose = "you have" if mine else "the server has"
            raise TooManyConnections(
                f"{whose} too many open streams ({variable}); close one or try again shortly",
                retry_after=CONNECTIONS_RETRY_AFTER,
            )

    def stream_closed(self, user: str) -> None:
        self.connections.give_back(user)


@asynccontextmanager
async def live_limits(settings: Settings, broker: Broker) -> AsyncIterator[Limits]:
    """This process's limits; with a shared broker (SIDECHAT_REDIS_URL), limits every process
    shares through its Redis, kept up while the block lasts (`chat.redis_limits`)."""
    if type(broker) is Broker:
        yield Limits(settings)
        return
    from .redis_broker import RedisBroker
    from .redis_limits import shared_limits

    assert isinstance(broker, RedisBroker), broker
    async with shared_limits(settings, broker.redis, broker.keys.prefix) as limits:
        yield limits
