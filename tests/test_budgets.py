"""Budgets without a server: the tally read once and added to, refusals that say when they end,
each user's own, periods that reset at their end (the clock is the test's), bounded memory."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta, timezone
from functools import partial
from pathlib import Path

import httpx
import pytest

from chat.budgets import SWEEP_AT, Budgets, period_end, period_start
from chat.config import Settings
from chat.errors import QuotaExceeded
from chat.settings_parsers import budget
from chat.store import Store
from chat.usage import spent_since
from tests.conftest import settings_for
from tests.fakeupstream import FakeUpstream, Reply, openai_chunk, openai_reply
from tests.live import serve, until

pytestmark = pytest.mark.anyio


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


class Ledger:
    """What the database says each user spent: (tokens, usd), the same for any period, and
    how often it was asked."""

    def __init__(self, **spent: tuple[int, float]) -> None:
        self.spent = spent
        self.reads: list[tuple[str, str]] = []
        self.gate: asyncio.Event | None = None

    async def __call__(self, user: str, since: str) -> tuple[int, float]:
        self.reads.append((user, since))
        if self.gate is not None:
            await self.gate.wait()
        return self.spent.get(user, (0, 0.0))


NOON = datetime(2026, 12, 15, 12, 0, tzinfo=UTC)


def budgets(spec: str, clock: Clock) -> Budgets:
    return Budgets(budget(spec), clock=clock)


def test_periods_are_calendar_days_and_months_in_utc() -> None:
    late = datetime(2026, 12, 31, 23, 59, 59, tzinfo=UTC)
    assert period_start(late, "day") == datetime(2026, 12, 31, tzinfo=UTC)
    assert period_end(period_start(late, "day"), "day") == datetime(2027, 1, 1, tzinfo=UTC)
    assert period_end(period_start(late, "month"), "month") == datetime(2027, 1, 1, tzinfo=UTC)
    assert period_end(datetime(2026, 2, 1, tzinfo=UTC), "month") == datetime(2026, 3, 1, tzinfo=UTC)
    elsewhere = datetime(2026, 12, 1, 1, 0, tzinfo=UTC).astimezone(timezone(timedelta(hours=5)))
    assert period_start(elsewhere, "day") == datetime(2026, 12, 1, tzinfo=UTC)


async def test_without_budgets_nothing_is_read_or_refused() -> None:
    ledger = Ledger(alice=(10**9, 10**6))
    limits = budgets("1usd/day", Clock(NOON))
    limits.budgets = ()
    await limits.check("alice", ledger)
    assert ledger.reads == [] and len(limits) == 0


async def test_the_database_is_read_once_then_each_reply_adds_to_the_tally() -> None:
    clock, ledger = Clock(NOON), Ledger(alice=(100, 4.0))
    limits = budgets("5usd/day,100usd/month", clock)
    await limits.check("alice", ledger)
    assert ledger.reads == [("alice", "2026-12-15T00:00:00.000Z"), ("alice", "2026-12-01T00:00:00.000Z")]
    limits.spent("alice", 50, 0.9)
    await limits.check("alice", ledger)  # 4.9 of 5: still under
    limits.spent("alice", 50, 0.1)
    with pytest.raises(QuotaExceeded) as info:
        await limits.check("alice", ledger)
    assert len(ledger.reads) == 2  # never read again
    error = info.value
    assert (error.status, error.type) == (429, "quota_exceeded")
    assert error.extra["budget"] == "5usd/day"
    assert error.extra["resets_at"] == "2026-12-16T00:00:00Z"
    assert error.retry_after == 12 * 3600
    assert error.headers() == {"Retry-After": str(12 * 3600)}
    assert "5 USD of your 5 USD today (SIDECHAT_USER_BUDGET)" in error.message
    assert "resets at 2026-12-16T00:00:00Z" in error.message


async def test_a_token_budget_counts_input_and_output() -> None:
    clock, ledger = Clock(NOON), Ledger(alice=(1_999_990, 0.0))
    limits = budgets("2000000tokens/day", clock)
    await limits.check("alice", ledger)
    limits.spent("alice", 10, None)  # an unpriced reply still counts its tokens
    with pytest.raises(QuotaExceeded) as info:
        await limits.check("alice", ledger)
    assert "2,000,000 of your 2,000,000 tokens today" in info.value.message
    assert info.value.extra["budget"] == "2000000tokens/day"


async def test_a_small_budget_is_said_as_it_was_written() -> None:
    limits = budgets("0.000003usd/month", Clock(NOON))
    with pytest.raises(QuotaExceeded) as info:
        await limits.check("alice", Ledger(alice=(14, 0.000003)))
    assert "0.000003 USD of your 0.000003 USD this month" in info.value.message
    assert info.value.extra == {
        "retry_after": 16 * 86400 + 12 * 3600,
        "budget": "0.000003usd/month",
        "resets_at": "2027-01-01T00:00:00Z",
    }


async def test_each_user_has_their_own_tally() -> None:
    clock, ledger = Clock(NOON), Ledger(alice=(0, 5.0))
    limits = budgets("5usd/day", clock)
    with pytest.raises(QuotaExceeded):
        await limits.check("alice", ledger)
    await limits.check("bob", ledger)
    limits.spent("bob", 1, 4.99)
    await limits.check("bob", ledger)
    with pytest.raises(QuotaExceeded):
        await limits.check("alice", ledger)


async def test_a_day_budget_resets_at_midnight_and_a_month_one_on_the_first() -> None:
    clock, ledger = Clock(datetime(2026, 12, 31, 23, 0, tzinfo=UTC)), Ledger()
    limits = budgets("1usd/day,3usd/month", clock)
    await limits.check("alice", ledger)
    limits.spent("alice", 1, 1.0)
    with pytest.raises(QuotaExceeded) as info:
        await limits.check("alice", ledger)
    assert info.value.extra["resets_at"] == "2027-01-01T00:00:00Z"
    assert info.value.retry_after == 3600

    clock.now = datetime(2027, 1, 1, 0, 0, 1, tzinfo=UTC)  # a new day, and a new month
    await limits.check("alice", ledger)
    assert len(ledger.reads) == 2  # the new periods start from zero: no read needed

    for day in (1, 2):
        clock.now = datetime(2027, 1, day, 12, tzinfo=UTC)
        limits.spent("alice", 1, 1.0)
    clock.now = datetime(2027, 1, 3, 12, tzinfo=UTC)
    limits.spent("alice", 1, 0.5)
    await limits.check("alice", ledger)  # 2.5 of 3 this month; today 0.5 of 1
    limits.spent("alice", 1, 0.5)
    with pytest.raises(QuotaExceeded) as spent:  # both are spent: the month resets last
        await limits.check("alice", ledger)
    assert spent.value.extra["budget"] == "3usd/month"
    assert spent.value.extra["resets_at"] == "2027-02-01T00:00:00Z"
    clock.now = datetime(2027, 2, 1, tzinfo=UTC)
    await limits.check("alice", ledger)


async def test_a_reply_that_ends_after_midnight_counts_for_the_new_day() -> None:
    clock, ledger = Clock(datetime(2026, 12, 15, 23, 59, tzinfo=UTC)), Ledger()
    limits = budgets("1usd/day", clock)
    await limits.check("alice", ledger)
    clock.now = datetime(2026, 12, 16, 0, 1, tzinfo=UTC)
    limits.spent("alice", 1, 1.0)
    with pytest.raises(QuotaExceeded):
        await limits.check("alice", ledger)


async def test_first_checks_at_once_share_one_read() -> None:
    clock, ledger = Clock(NOON), Ledger(alice=(0, 1.0))
    ledger.gate = asyncio.Event()
    limits = budgets("5usd/day", clock)
    checks = [asyncio.ensure_future(limits.check("alice", ledger)) for _ in range(5)]
    await asyncio.sleep(0)
    ledger.gate.set()
    await asyncio.gather(*checks)
    assert ledger.reads == [("alice", "2026-12-15T00:00:00.000Z")]


async def test_a_check_that_gives_up_does_not_stop_the_read_the_others_wait_for() -> None:
    clock, ledger = Clock(NOON), Ledger(alice=(0, 9.0))
    ledger.gate = asyncio.Event()
    limits = budgets("5usd/day", clock)
    first = asyncio.ensure_future(limits.check("alice", ledger))
    second = asyncio.ensure_future(limits.check("alice", ledger))
    await asyncio.sleep(0)
    first.cancel()
    ledger.gate.set()
    with pytest.raises(QuotaExceeded):
        await second
    assert len(ledger.reads) == 1


async def test_memory_follows_the_users_active_lately() -> None:
    clock, ledger = Clock(NOON), Ledger()
    limits = budgets("5usd/day", clock)
    for n in range(SWEEP_AT - 1):
        await limits.check(f"user{n}", ledger)
    clock.now = NOON + timedelta(hours=2)
    await limits.check("user0", ledger)  # touched again: kept
    await limits.check("late", ledger)  # the tally that reaches the sweep
    assert len(limits) == 2
    limits.spent("user1", 1, 1.0)  # dropped: nothing to add to, a read will find it
    assert len(limits) == 2


async def test_the_first_read_finds_what_replies_that_ended_today_cost(store: Store) -> None:
    conversation = await store.create_conversation("alice")
    meta = {"provider": "openai", "model": "gpt-4o-mini", "asked_by": "alice"}
    for cost in (0.75, 0.25, None):
        _, reply = await store.start_turn(conversation.id, "hi", metadata=meta, author="alice")
        ended = {**meta, "usage": {"input_tokens": 10, "output_tokens": 5}, "cost_usd": cost}
        await store.finish_message(
            reply.id, status="completed", content="ok", metadata=ended, last_event_id=3
        )
    _, running = await store.start_turn(conversation.id, "more", metadata=meta, author="alice")

    assert await spent_since(store, "alice", "2000-01-01T00:00:00.000Z") == (45, 1.0)
    assert await spent_since(store, "bob", "2000-01-01T00:00:00.000Z") == (0, 0.0)
    assert await spent_since(store, "alice", "2999-01-01T00:00:00.000Z") == (0, 0.0)
    limits = Budgets(budget("1usd/day"))
    with pytest.raises(QuotaExceeded):
        await limits.check("alice", partial(spent_since, store))
    assert running.status == "streaming"  # not counted: it has not ended


# -- over real sockets -------------------------------------------------------------------

ALICE, BOB = "alice-token-0123456789", "bob-token-0123456789ab"


def two_users(upstream: FakeUpstream, tmp_path: Path, user_budget: str) -> Settings:
    return settings_for(
        upstream,
        tmp_path,
        api_tokens=((ALICE, "alice"), (BOB, "bob")),
        user_budget=budget(user_budget),
    )


def as_user(url: str, token: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=url, timeout=10, headers={"authorization": f"Bearer {token}"})


@pytest.mark.parametrize("spent", ["14tokens/day", "0.000003usd/day"])
async def test_over_budget_a_chat_is_a_429_saying_when_it_resets(
    upstream: FakeUpstream, tmp_path: Path, spent: str
) -> None:
    upstream.add(*[Reply(openai_reply("ok", usage=(12, 2)))] * 3)  # 14 tokens, $0.0000030 each
    async with serve(two_users(upstream, tmp_path, spent)) as url, as_user(url, ALICE) as alice:
        key = {"idempotency-key": "first-turn"}
        first = await alice.post("/api/chat", json={"message": "hi", "wait": True}, headers=key)
        assert first.status_code == 200, first.text
        reply = first.json()["message"]

        refused = await alice.post("/api/chat", json={"message": "more"})
        streamed = await alice.post("/api/chat/stream", json={"message": "more"})
        again = await alice.post(f"/api/messages/{reply['id']}/regenerate", json={})
        edited = await alice.post(
            f"/api/messages/{reply['metadata']['user_message_id']}/edit", json={"message": "x"}
        )
        retried = await alice.post("/api/chat", json={"message": "hi", "wait": True}, headers=key)

    for answer in (refused, streamed, again, edited):
        assert answer.status_code == 429, answer.text
        error = answer.json()["error"]
        assert error["type"] == "quota_exceeded" and error["budget"] == spent
        resets = datetime.fromisoformat(error["resets_at"])
        assert resets == period_end(period_start(datetime.now(UTC), "day"), "day")
        assert int(answer.headers["retry-after"]) == pytest.approx(
            (resets - datetime.now(UTC)).total_seconds(), abs=5
        )
        assert error["retry_after"] > 0 and "SIDECHAT_USER_BUDGET" in error["message"]
    # A retry of the first request starts nothing, so it is never refused: it attaches.
    assert retried.status_code == 200 and retried.json()["message"]["id"] == reply["id"]
    assert len(upstream.requests) == 1  # nothing else reached the provider


async def test_another_user_is_not_blocked_and_a_restart_remembers(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    upstream.add(*[Reply(openai_reply("ok", usage=(12, 2)))] * 3)
    settings = two_users(upstream, tmp_path, "20tokens/day")
    async with serve(settings) as url, as_user(url, ALICE) as alice, as_user(url, BOB) as bob:
        for _ in range(2):  # 14 tokens, then 28: the second is let in (14 < 20) and goes over
            assert (await alice.post("/api/chat", json={"message": "hi", "wait": True})).status_code == 200
        assert (await alice.post("/api/chat", json={"message": "hi"})).status_code == 429
        assert (await bob.post("/api/chat", json={"message": "hi", "wait": True})).status_code == 200
    async with serve(settings) as url, as_user(url, ALICE) as alice:  # read again from the database
        answer = await alice.post("/api/chat", json={"message": "hi"})
    assert answer.status_code == 429 and "28 of your 20 tokens today" in answer.json()["error"]["message"]


async def test_a_reply_running_when_the_budget_is_crossed_finishes(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    gate = asyncio.Event()
    upstream.add(
        Reply([openai_chunk("long"), gate, *openai_reply(" answer", usage=(12, 2))]),
        Reply(openai_reply("quick", usage=(12, 2))),
    )
    async with serve(two_users(upstream, tmp_path, "10tokens/day")) as url, as_user(url, ALICE) as alice:
        running = (await alice.post("/api/chat", json={"message": "a long one"})).json()
        await until(lambda: len(upstream.requests) == 1, what="the long reply to be asked")
        # Nothing was spent when this one was asked; when it ends, the budget is crossed.
        assert (await alice.post("/api/chat", json={"message": "hi", "wait": True})).status_code == 200
        assert (await alice.post("/api/chat", json={"message": "hi"})).status_code == 429
        gate.set()
        finished = await alice.get(running["stream_url"])
        message = (await alice.get(f"/api/conversations/{running['conversation_id']}")).json()["messages"][-1]
    assert finished.status_code == 200 and "event: done" in finished.text
    assert (message["status"], message["content"]) == ("completed", "long answer")
