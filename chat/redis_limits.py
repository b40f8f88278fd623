"""The per-user limits every process shares through Redis (SIDECHAT_REDIS_URL), so N processes
allow what one would, not N times as much.

    <prefix>rate:<user>      a hash {left, at}: the user's SIDECHAT_RATE_LIMIT bucket; it expires
                             after one period, when it would be full again anyway
    <prefix>streams:<user>   a sorted set: the user's running replies (a token per admission),
                             each scored by when it lapses unless its process refreshes it
    (and the budget tallies of `chat.redis_budgets`)

Deliberate choices:
- An admission is one script (`ADMIT`), atomic in Redis: drop the lapsed slots, refuse at
  SIDECHAT_MAX_STREAMS_PER_USER, refill and take from the bucket, take a slot. So two processes
  racing for the last slot or request cannot both have it, and a refusal for running replies
  spends no request, as in one process. The clock is Redis's (TIME), so the processes' clocks
  do not matter.
- A slot lapses LAPSE_SECONDS after its process last refreshed it: the process's keeper
  (`SharedLimits.keep_up`, one task) refreshes all its slots in one round trip every
  REFRESH_SECONDS, so the slots of a process that died come back within LAPSE_SECONDS. A slot
  that lapsed while Redis was away is put back by the next refresh: its reply still runs.
- A reply's end never waits for Redis nor fails on it: its slot is forgotten here at once, and
  the keeper removes it in Redis within moments (sent again if that fails; if Redis stays
  away, the slot lapses). An admission whose answer is lost (a timeout, a client gone) leaves
  a slot nobody refreshes, which lapses the same way.
- Redis unreachable at admission is a 503 `live_unavailable` with Retry-After: a limit is
  never skipped, and admission resumes when Redis answers, without a restart.
- The open-stream caps (SIDECHAT_MAX_CONNECTIONS_PER_USER, SIDECHAT_MAX_CONNECTIONS) and the
  typing rate stay per process (`chat.limits`): they protect this process's memory and feeds.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from datetime import datetime

from redis.asyncio import Redis

from .budgets import utc_now
from .config import Settings
from .errors import RateLimited
from .limits import STREAMS_RETRY_AFTER, Limits
from .redis_budgets import CHECK_SECONDS, UNREACHABLE, SharedBudgets, unavailable

log = logging.getLogger("sidechat.redis")

LAPSE_SECONDS = 10.0  # a running reply's slot outlives its process's last refresh by this
REFRESH_SECONDS = 3.0

# KEYS: the bucket, the slots; ARGV: count, period, cap, token, lapse. Returns {verdict, wait}.
ADMIT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local count, period = tonumber(ARGV[1]), tonumber(ARGV[2])
local cap, lapse = tonumber(ARGV[3]), tonumber(ARGV[5])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
if redis.call('ZCARD', KEYS[2]) >= cap then
  return {'streams', '0'}
end
local rate = count / period
local bucket = redis.call('HMGET', KEYS[1], 'left', 'at')
local left = tonumber(bucket[1]) or count
local at = tonumber(bucket[2]) or now
left = math.min(count, left + math.max(0, now - at) * rate)
local verdict, wait = 'ok', 0
if left < 1 then
  verdict, wait = 'rate', (1 - left) / rate
else
  left = left - 1
  redis.call('ZADD', KEYS[2], now + lapse, ARGV[4])
  redis.call('PEXPIRE', KEYS[2], math.ceil(lapse * 1000))
end
redis.call('HSET', KEYS[1], 'left', tostring(left), 'at', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(period * 1000))
return {verdict, tostring(wait)}
"""

# KEYS: one user's slots per token; ARGV: lapse, how many to refresh, then the tokens. The
# first ones are refreshed (put back if they lapsed), the rest removed.
KEEP = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local lapse, kept = tonumber(ARGV[1]), tonumber(ARGV[2])
for i, key in ipairs(KEYS) do
  if i <= kept then
    redis.call('ZADD', key, now + lapse, ARGV[i + 2])
    redis.call('PEXPIRE', key, math.ceil(lapse * 1000))
  else
    redis.call('ZREM', key, ARGV[i + 2])
  end
end
return 0
"""


class SharedLimits(Limits):
    def __init__(
        self,
        settings: Settings,
        redis: Redis,
        prefix: str,
        *,
        lapse: float = LAPSE_SECONDS,
        refresh: float = REFRESH_SECONDS,
        check_seconds: float = CHECK_SECONDS,
        wall_clock: Callable[[], datetime] = utc_now,
    ) -> None:
        super().__init__(settings, wall_clock=wall_clock)
        self.redis = redis
        self.prefix = prefix
        self.lapse, self.refresh, self.check_seconds = lapse, refresh, check_seconds
        self._wake = asyncio.Event()
        self.budgets: SharedBudgets = SharedBudgets(
            settings.user_budget,
            redis,
            prefix,
            wake=self._wake,
            clock=wall_clock,
            check_seconds=check_seconds,
        )
        self.held: dict[str, list[str]] = {}  # user -> tokens of the slots this process holds
        self.released: list[tuple[str, str]] = []  # (user, token) to remove in Redis
        self._admit = redis.register_script(ADMIT)
        self._keep = redis.register_script(KEEP)
        self._away = False  # the keeper has logged that Redis is away
        self._stopping = False

    def slots_key(self, user: str) -> str:
        return f"{self.prefix}streams:{user}"

    def rate_key(self, user: str) -> str:
        return f"{self.prefix}rate:{user}"

    async def admit_generation(self, user: str) -> None:
        token = uuid.uuid4().hex
        count, period = self.requests.count, self.requests.count / self.requests.rate
        args: list[str | int] = [count, repr(period), self.streams.per_user, token, repr(self.lapse)]
        try:
            async with asyncio.timeout(self.check_seconds):
                verdict, wait = await self._admit(keys=[self.rate_key(user), self.slots_key(user)], args=args)
        except UNREACHABLE as exc:
            raise unavailable("limits", exc) from None
        verdict = verdict.decode() if isinstance(verdict, bytes) else verdict  # however it decodes
        if verdict == "streams":
            raise RateLimited(
                f"{self.streams.per_user} of your replies are running already"
                " (SIDECHAT_MAX_STREAMS_PER_USER, counted on every process); wait for one to end",
                retry_after=STREAMS_RETRY_AFTER,
            )
        if verdict == "rate":
            raise RateLimited(
                f"more than {count} chat requests in the period"
                " (SIDECHAT_RATE_LIMIT, counted on every process)",
                retry_after=float(wait),
            )
        self.held.setdefault(user, []).append(token)

    def admit_here(self, user: str) -> None:
        raise TypeError("shared limits admit with `await admit_generation`")

    def generation_ended(self, user: str) -> None:
        tokens = self.held.get(user)
        if not tokens:  # every slot of theirs here is given back already
            return
        self.released.append((user, tokens.pop()))
        if not tokens:
            del self.held[user]
        self._wake.set()

    async def keep_up(self) -> None:
        """Run until `stop`: refresh this process's slots, send what was given back or spent."""
        while not self._stopping:
            with suppress(TimeoutError):
                async with asyncio.timeout(self.refresh):
                    await self._wake.wait()
            self._wake.clear()
            await self.send()

    def stop(self) -> None:
        """`keep_up` returns after the round it is in (no cancel: a cancelled Redis command
        could cut a round in half, and a cancel swallowed on the way would keep it running)."""
        self._stopping = True
        self._wake.set()

    async def send(self) -> bool:
        """One round of the keeper: False (and logged once) while Redis does not answer."""
        try:
            async with asyncio.timeout(self.check_seconds):
                await self._send()
        except UNREACHABLE as exc:
            if not self._away:
                log.warning("Redis is unreachable; the shared limits will catch up when it answers: %s", exc)
            self._away = True
            return False
        if self._away:
            log.info("Redis answers again; the shared limits are up to date")
        self._away = False
        return True

    async def _send(self) -> None:
        released = self.released[:]
        kept = [(user, token) for user, tokens in self.held.items() for token in tokens]
        if released or kept:
            slots = [*kept, *released]
            keys = [self.slots_key(user) for user, _ in slots]
            await self._keep(keys=keys, args=[repr(self.lapse), len(kept), *(token for _, token in slots)])
            del self.released[: len(released)]
        await self.budgets.send_pending()

    def give_back_all(self) -> None:
        """This process is done: every slot it holds is given back."""
        for user, tokens in self.held.items():
            self.released += [(user, token) for token in tokens]
        self.held.clear()


@asynccontextmanager
async def shared_limits(settings: Settings, redis: Redis, prefix: str) -> AsyncIterator[SharedLimits]:
    """Limits shared through `redis` under `prefix`, their keeper running while the block lasts;
    on the way out (after the generations ended) what is left is sent once more."""
    limits = SharedLimits(settings, redis, prefix)
    keeper = asyncio.create_task(limits.keep_up(), name="sidechat shared limits")
    try:
        yield limits
    finally:
        limits.stop()
        await keeper
        limits.give_back_all()
        await limits.send()
