"""The per-user limits: the rate bucket, running generations, open streams."""

from __future__ import annotations

import pytest

from chat.config import ConfigError, Settings
from chat.errors import RateLimited, TooManyConnections
from chat.limits import Buckets, Counts, Limits


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_burst_is_the_whole_allowance_then_one_per_interval() -> None:
    clock = Clock()
    buckets = Buckets(3, 60.0, clock)
    assert [buckets.take("alice") for _ in range(3)] == [None, None, None]
    wait = buckets.take("alice")
    assert wait == pytest.approx(20.0)
    clock.now += 19.0
    assert buckets.take("alice") == pytest.approx(1.0)  # refused ones cost nothing
    clock.now += 1.0
    assert buckets.take("alice") is None
    assert buckets.take("alice") == pytest.approx(20.0)


def test_each_user_has_a_bucket_of_their_own() -> None:
    buckets = Buckets(1, 60.0, Clock())
    assert buckets.take("alice") is None
    assert buckets.take("alice") is not None
    assert buckets.take("bob") is None


def test_a_bucket_never_holds_more_than_the_allowance() -> None:
    clock = Clock()
    buckets = Buckets(2, 1.0, clock)
    clock.now += 3600
    assert [buckets.take("alice") is None for _ in range(3)] == [True, True, False]


def test_full_buckets_are_forgotten_so_memory_follows_the_active_users() -> None:
    clock = Clock()
    buckets = Buckets(5, 1.0, clock)
    for n in range(5000):
        buckets.take(f"user{n}")
        clock.now += 0.01  # each bucket is full again a second after its one request
    assert len(buckets) < 2048


def test_counts_per_user_and_in_all() -> None:
    counts = Counts(per_user=2, total=3)
    assert counts.take("alice") and counts.take("alice")
    assert not counts.take("alice")
    assert counts.take("bob")
    assert not counts.take("carol")  # the total
    counts.give_back("alice")
    assert counts.take("carol")
    for user in ("alice", "bob", "carol"):
        counts.give_back(user)
    assert counts.held == {} and counts.all == 0


@pytest.mark.anyio
async def test_a_running_cap_refusal_does_not_spend_the_rate() -> None:
    limits = Limits(Settings(rate_limit=(2, 60.0), max_streams_per_user=1), Clock())
    await limits.admit_generation("alice")
    with pytest.raises(RateLimited, match="SIDECHAT_MAX_STREAMS_PER_USER") as refused:
        await limits.admit_generation("alice")
    assert refused.value.retry_after is not None and refused.value.retry_after > 0
    limits.generation_ended("alice")
    limits.admit_here("alice")  # the second of two: the refusal above took none
    limits.generation_ended("alice")
    with pytest.raises(RateLimited, match="SIDECHAT_RATE_LIMIT") as limited:
        await limits.admit_generation("alice")
    assert limited.value.extra["retry_after"] == pytest.approx(30.0)
    assert limits.streams.held == {}  # the rate refusal gave its slot back


def test_connection_caps_name_their_variable() -> None:
    limits = Limits(Settings(max_connections_per_user=1, max_connections=2))
    limits.open_stream("alice")
    with pytest.raises(TooManyConnections, match="SIDECHAT_MAX_CONNECTIONS_PER_USER"):
        limits.open_stream("alice")
    limits.open_stream("bob")
    with pytest.raises(TooManyConnections, match="SIDECHAT_MAX_CONNECTIONS\\b"):
        limits.open_stream("carol")
    limits.stream_closed("alice")
    limits.open_stream("carol")


@pytest.mark.parametrize(
    ("raw", "parsed"), [("30/minute", (30, 60.0)), ("3/second", (3, 1.0)), ("1000/day", (1000, 86400.0))]
)
def test_rate_limit_setting(raw: str, parsed: tuple[int, float]) -> None:
    assert Settings.from_env({"SIDECHAT_RATE_LIMIT": raw}).rate_limit == parsed


@pytest.mark.parametrize("raw", ["30", "0/minute", "-1/minute", "30/fortnight", "x/minute", "30 per minute"])
def test_rate_limit_setting_refused(raw: str) -> None:
    with pytest.raises(ConfigError, match="SIDECHAT_RATE_LIMIT"):
        Settings.from_env({"SIDECHAT_RATE_LIMIT": raw})
