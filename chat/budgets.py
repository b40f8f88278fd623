"""Per-user budgets: at most so many tokens, or so many dollars, per calendar day or month
in UTC (`SIDECHAT_USER_BUDGET=5usd/day,100usd/month,2000000tokens/day`), checked before a
reply is accepted. Rate limits bound requests; this bounds cost.

Deliberate choices:
- What a user has spent is known without a query per chat: a tally per user, read from the
  database the first time they ask for a reply (`chat.usage.spent_since`; concurrent first
  asks share one read), then added to as each of their replies ends. So the hot start path
  costs a dictionary look-up; the tally is right because every reply that ends after the
  read is one this process ran (and so adds), while those that ended before it are in it.
- A period's tally starts again at zero when its period changes: nothing is swept on a
  timer. A reply counts in the period it ended in, as in `/api/usage`.
- A budget is spent when its usage reaches the amount. It is checked before a reply starts,
  never during one: a reply running when the budget is crossed finishes (cutting it off
  would waste what was paid for), so a user can go over by the replies they already had
  running (at most SIDECHAT_MAX_STREAMS_PER_USER). A retried request with its
  Idempotency-Key starts nothing, so it is never refused.
- Tokens are input plus output (cached input included: the provider processed it). A reply
  without a price (a model missing from the table) adds to token budgets only.
- Memory follows the users active lately: when there are many tallies, those untouched for
  an hour are dropped, and read again from the database if their user comes back.
- The tallies live in this process, as the rate limits do. With SIDECHAT_REDIS_URL they live
  in Redis instead (`chat.redis_budgets`, the same calls), so a reply ending on one process
  counts on all; without it, one process runs every reply, so its own tally is the whole story.
- A tally is not read again while it is kept, so deleting a conversation does not give its
  spending back; after a restart it does, since the replies are the only ledger (see the
  notes of `chat.usage`).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from .errors import QuotaExceeded
from .settings_types import Budget

IDLE_SECONDS = 3600.0  # a tally untouched this long may be dropped, and read again when needed
SWEEP_AT = 1024

# What a user spent since a time (ISO 8601, as stored): (tokens, usd).
Reader = Callable[[str, str], Awaitable[tuple[int, float]]]


def utc_now() -> datetime:
    return datetime.now(UTC)


def period_start(now: datetime, period: str) -> datetime:
    """The start of the calendar day or month (UTC) that `now` is in."""
    day = now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return day if period == "day" else day.replace(day=1)


def period_end(start: datetime, period: str) -> datetime:
    if period == "day":
        return start + timedelta(days=1)
    return (
        start.replace(year=start.year + 1, month=1)
        if start.month == 12
        else start.replace(month=start.month + 1)
    )


def stamp(when: datetime, timespec: str = "milliseconds") -> str:
    """A time as the database stores them (`chat.database.now`): UTC, milliseconds, `Z`."""
    return when.astimezone(UTC).isoformat(timespec=timespec).replace("+00:00", "Z")


def plain(amount: float) -> str:
    """An amount as written in SIDECHAT_USER_BUDGET: 2000000, 0.000002, 5 (never 2e+06)."""
    return format(Decimal(repr(amount)).normalize(), "f")


@dataclass(slots=True)
class Tally:
    """One user's spending in the periods they are counted in."""

    starts: dict[str, datetime]  # period -> the start of the one counted
    used: dict[tuple[str, str], float]  # (unit, period) -> tokens or USD so far
    touched: datetime = field(default_factory=utc_now)

    def roll(self, now: datetime) -> None:
        """A period that has changed since is counted from zero."""
        for period, start in self.starts.items():
            if (current := period_start(now, period)) != start:
                self.starts[period] = current
                for key in self.used:
                    if key[1] == period:
                        self.used[key] = 0.0


class Budgets:
    def __init__(self, budgets: tuple[Budget, ...], *, clock: Callable[[], datetime] = utc_now) -> None:
        self.budgets = budgets
        self.periods = tuple(dict.fromkeys(b.period for b in budgets))
        self._clock = clock
        self._tallies: dict[str, Tally] = {}
        self._reading: dict[str, asyncio.Future[Tally]] = {}
        self._sweep_at = SWEEP_AT

    async def check(self, user: str, read: Reader) -> None:
        """Raise `QuotaExceeded` if any of `user`'s budgets is spent; `read` tells what they
        spent since a time, the first time they are checked."""
        if not self.budgets:
            return
        now = self._clock()
        tally = self._tallies.get(user)
        if tally is None:
            tally = await self._read(user, now, read)
        tally.roll(now)
        tally.touched = now
        spent = [b for b in self.budgets if tally.used[(b.unit, b.period)] >= b.amount]
        if spent:
            raise self._refusal(spent, tally, now)

    def spent(self, user: str, tokens: int, usd: float | None) -> None:
        """A reply of `user`'s has just ended, having used `tokens` and cost `usd`."""
        tally = self._tallies.get(user)
        if tally is None:  # never read (no budgets, or dropped): a read will find this reply
            return
        now = self._clock()
        tally.roll(now)
        tally.touched = now
        for period in tally.starts:
            tally.used[("tokens", period)] += tokens
            tally.used[("usd", period)] += usd or 0.0

    def __len__(self) -> int:
        return len(self._tallies)

    async def _read(self, user: str, now: datetime, read: Reader) -> Tally:
        pending = self._reading.get(user)
        if pending is None:
            pending = asyncio.ensure_future(self._first_read(user, now, read))
            self._reading[user] = pending
            pending.add_done_callback(lambda _: self._reading.pop(user, None))
        return await asyncio.shield(pending)  # a caller that gives up does not stop the others' read

    async def _first_read(self, user: str, now: datetime, read: Reader) -> Tally:
        starts = {period: period_start(now, period) for period in self.periods}
        used: dict[tuple[str, str], float] = {}
        for period, start in starts.items():
            tokens, usd = await read(user, stamp(start))
            used[("tokens", period)], used[("usd", period)] = float(tokens), usd
        tally = self._tallies[user] = Tally(starts, used, now)
        if len(self._tallies) >= self._sweep_at:
            self._sweep(now)
        return tally

    def _sweep(self, now: datetime) -> None:
        idle = [u for u, t in self._tallies.items() if (now - t.touched).total_seconds() > IDLE_SECONDS]
        for user in idle:
            del self._tallies[user]
        self._sweep_at = max(SWEEP_AT, 2 * len(self._tallies))

    def _refusal(self, spent: list[Budget], tally: Tally, now: datetime) -> QuotaExceeded:
        # All spent budgets must reset before a reply is taken again: the last to is the news.
        budget = max(spent, key=lambda b: period_end(tally.starts[b.period], b.period))
        resets = period_end(tally.starts[budget.period], budget.period)
        used = tally.used[(budget.unit, budget.period)]
        what = (
            f"{used:,.0f} of your {budget.amount:,.0f} tokens"
            if budget.unit == "tokens"
            else f"{plain(round(used, 6))} USD of your {plain(budget.amount)} USD"
        )
        when = "today" if budget.period == "day" else "this month"
        resets_at = stamp(resets, "seconds")
        return QuotaExceeded(
            f"you have used {what} {when} (SIDECHAT_USER_BUDGET); it resets at {resets_at}",
            retry_after=max(math.ceil((resets - now).total_seconds()), 1),
            budget=f"{plain(budget.amount)}{budget.unit}/{budget.period}",
            resets_at=resets_at,
        )
