"""Budget tallies every process shares through Redis (SIDECHAT_REDIS_URL), so a reply that ends
on one process counts against its user's next request on any other.

    <prefix>spent:<period>:<start>:<user>   a hash {tokens, usd}: what the user spent in the
                                            day or month starting at <start> (UTC, ISO 8601);
                                            it expires a day after that period ends

Deliberate choices:
- A tally is seeded from the database the first time any process needs it, by a script that
  writes it only if it is still missing: processes seeding at once read the same ledger and
  keep the first one's figures, so they agree, and a tally is never read twice while it lasts.
- A reply's end adds to the tallies that exist and to no other (`ADD`): a tally not seeded
  yet will be read from the database, which holds the reply. As in one process, a reply that
  ends while its user's tally is being first read may be counted twice or not at all; the
  window is that of one read.
- The adds are made off the reply's end (which must not wait for or fail on Redis): queued,
  and sent by the limits' keeper (`chat.redis_limits`) within moments; one that fails is sent
  again. One whose answer was lost may count twice: a budget errs towards refusing.
- A check costs one round trip (the tallies of every period at once), two more when a tally
  is seeded. Redis unreachable is a 503 (`LiveUnavailable`): a budget is never skipped.
- The period is of this process's clock (its calendar, as for one process): processes whose
  clocks differ disagree only about the moment a day or month ends.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from .budgets import Budgets, Reader, Tally, period_end, period_start, stamp, utc_now
from .errors import LiveUnavailable
from .settings_types import Budget

KEEP_AFTER = timedelta(days=1)  # a tally outlives its period by this, for clocks that lag
UNREACHABLE = (RedisError, OSError, TimeoutError)  # what "Redis is away" looks like
CHECK_SECONDS = 2.0  # a check that Redis does not answer within this is refused (503)
RETRY_AFTER = 2.0

# KEYS: tallies; ARGV: (tokens, usd, expire-at) per key. Returns {tokens, usd} per key.
SEED = """
local out = {}
for i, key in ipairs(KEYS) do
  if redis.call('EXISTS', key) == 0 then
    redis.call('HSET', key, 'tokens', ARGV[3 * i - 2], 'usd', ARGV[3 * i - 1])
    redis.call('EXPIREAT', key, ARGV[3 * i])
  end
  local v = redis.call('HMGET', key, 'tokens', 'usd')
  table.insert(out, v[1] or '0')
  table.insert(out, v[2] or '0')
end
return out
"""

# KEYS: tallies; ARGV: (tokens, usd) per key. Adds to the tallies that exist.
ADD = """
for i, key in ipairs(KEYS) do
  if redis.call('EXISTS', key) == 1 then
    redis.call('HINCRBYFLOAT', key, 'tokens', ARGV[2 * i - 1])
    redis.call('HINCRBYFLOAT', key, 'usd', ARGV[2 * i])
  end
end
return 0
"""


def unavailable(what: str, exc: BaseException) -> LiveUnavailable:
    reason = str(exc) or type(exc).__name__
    return LiveUnavailable(
        f"the {what} shared by sidechat's processes cannot be checked: Redis (SIDECHAT_REDIS_URL)"
        f" is unreachable ({reason}); try again shortly",
        retry_after=RETRY_AFTER,
    )


class SharedBudgets(Budgets):
    def __init__(
        self,
        budgets: tuple[Budget, ...],
        redis: Redis,
        prefix: str,
        *,
        wake: asyncio.Event,
        clock: Callable[[], datetime] = utc_now,
        check_seconds: float = CHECK_SECONDS,
    ) -> None:
        super().__init__(budgets, clock=clock)
        self.redis = redis
        self.prefix = prefix
        self.check_seconds = check_seconds
        self.pending: list[tuple[str, float, float]] = []  # (tally, tokens, usd) to add
        self._wake = wake  # the keeper's: it sends `pending`
        self._seed = redis.register_script(SEED)
        self._add = redis.register_script(ADD)

    def key(self, user: str, period: str, start: datetime) -> str:
        return f"{self.prefix}spent:{period}:{stamp(start, 'seconds')}:{user}"

    async def check(self, user: str, read: Reader) -> None:
        if not self.budgets:
            return
        now = self._clock()
        starts = {period: period_start(now, period) for period in self.periods}
        keys = [self.key(user, period, start) for period, start in starts.items()]
        try:
            async with asyncio.timeout(self.check_seconds):
                found = await self._found(keys)
        except UNREACHABLE as exc:
            raise unavailable("budgets", exc) from None
        if any(value is None for value in found):
            seeds: list[Any] = []
            for period, start in starts.items():  # the database first: its errors are its own
                tokens, usd = await read(user, stamp(start))
                expires = math.ceil((period_end(start, period) + KEEP_AFTER).timestamp())
                seeds += [tokens, repr(float(usd)), expires]
            try:
                async with asyncio.timeout(self.check_seconds):
                    flat = await self._seed(keys=keys, args=seeds)
            except UNREACHABLE as exc:
                raise unavailable("budgets", exc) from None
            found = [(float(flat[i]), float(flat[i + 1])) for i in range(0, len(flat), 2)]
        used: dict[tuple[str, str], float] = {}
        for period, value in zip(starts, found, strict=True):
            assert value is not None
            used[("tokens", period)], used[("usd", period)] = value
        tally = Tally(starts, used, now)
        spent = [b for b in self.budgets if used[(b.unit, b.period)] >= b.amount]
        if spent:
            raise self._refusal(spent, tally, now)

    def spent(self, user: str, tokens: int, usd: float | None) -> None:
        if not self.budgets:
            return
        now = self._clock()
        for period in self.periods:
            self.pending.append((self.key(user, period, period_start(now, period)), tokens, usd or 0.0))
        self._wake.set()

    async def send_pending(self) -> None:
        """Add what ended replies spent to the shared tallies; kept to send again if it fails."""
        sending = self.pending[:]
        if not sending:
            return
        args: list[Any] = []
        for _, tokens, usd in sending:
            args += [tokens, repr(usd)]
        await self._add(keys=[key for key, _, _ in sending], args=args)
        del self.pending[: len(sending)]

    async def _found(self, keys: list[str]) -> list[tuple[float, float] | None]:
        pipe: Any = self.redis.pipeline(transaction=False)
        for key in keys:
            pipe.hmget(key, "tokens", "usd")
        rows = await pipe.execute()
        return [None if tokens is None else (float(tokens), float(usd or 0)) for tokens, usd in rows]

    def __len__(self) -> int:
        return 0  # nothing is kept here
