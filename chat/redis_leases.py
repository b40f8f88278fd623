"""This process's lease, with Redis: a key it keeps renewing, and the replies it is generating
registered under it, so that when it dies the others can tell its replies are orphans
(`chat.orphans` ends them).

    <prefix>processes       every process holding a lease (its id, a uuid)
    <prefix>process:<id>    the lease: gone `ttl` seconds after the last renewal
    <prefix>runs:<id>       the replies it is generating

Deliberate choices:
- `SIDECHAT_LEASE_SECONDS` (`seconds`) is the bound on the whole: from a process's death to its
  replies ended. So the key lives `TTL_SHARE` of it, is renewed every `RENEW_SHARE`, and the
  reapers look every `chat.orphans.LOOK_SHARE`: expiry plus a look stays inside the bound,
  and a renewal may come late by half of it before the lease is lost. Every process of a
  deployment should have the same setting: a reaper's wait after trouble (a lease period,
  its own) must cover the others' renewals.
- One task writes everything: the renewal and the registry's changes, in one MULTI each
  time. `started`/`ended` only note the change and wake it (a generation's start costs no
  round trip, and nothing per token), and with one writer an end is never written before its
  start. Starts that come together go in one write.
- After a write that failed, or a renewal that found the lease gone (this process stalled,
  or Redis lost its keys, and maybe a reaper ended its replies meanwhile), the next write
  puts back the whole registry, not just what changed since: the others see again exactly
  what this process runs.
- `trouble_at` is when this process last failed to reach Redis: its reaper waits a whole
  lease period of Redis answering after it before it reaps anyone (`chat.orphans`).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from .redis_keys import Keys

log = logging.getLogger("sidechat.redis")

TTL_SHARE = 0.7  # of SIDECHAT_LEASE_SECONDS: how long the lease key lives unrenewed
RENEW_SHARE = 0.2  # of it: how often it is renewed
RETRY_SECONDS = (0.05, 0.2, 0.5, 1.0)  # between tries to write, while Redis is away


def still_wanted() -> None:
    """Raise `CancelledError` if the current task is being cancelled. A cancellation that comes
    mid-command can come back from the clients as an error of theirs (or not at all: a reaper
    cancelled in tests went on looking), which a loop that retries on errors must not take for
    one; so those loops ask, each time round and in each handler."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


class Lease:
    """This process's lease and registry (see the module's docstring); a `chat.running.Registry`."""

    def __init__(self, redis: Redis, keys: Keys, seconds: float, *, process_id: str | None = None) -> None:
        self.redis = redis
        self.keys = keys
        self.seconds = seconds
        self.id = process_id or uuid.uuid4().hex
        self.running: set[int] = set()  # the replies this process generates now
        self.trouble_at: float | None = None  # loop time of the last failure to reach Redis
        self._added: set[int] = set()  # changes not yet written
        self._removed: set[int] = set()
        self._whole = True  # the next write puts back the whole registry
        self._held = False  # a renewal has been written: the key should be there
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def ttl_ms(self) -> int:
        return max(1, round(self.seconds * TTL_SHARE * 1000))

    def started(self, message_id: int) -> None:
        self.running.add(message_id)
        self._removed.discard(message_id)
        self._added.add(message_id)
        self._wake.set()

    def ended(self, message_id: int) -> None:
        self.running.discard(message_id)
        self._added.discard(message_id)
        self._removed.add(message_id)
        self._wake.set()

    async def take(self) -> None:
        """Write the lease now (so others know this process before it runs anything, if Redis
        answers), then keep it, and the registry, written until `drop`."""
        try:
            await self._write(renew=True)
        except (RedisError, OSError) as exc:
            self._failed(exc, 0)
        self._task = asyncio.create_task(self._keep(), name=f"lease {self.id}")

    async def drop(self) -> None:
        """Stop renewing and take the lease and registry away: this process runs nothing any
        more (its generations have ended), so nobody should reap it either."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        try:
            pipe: Any = self.redis.pipeline(transaction=True)
            pipe.delete(self.keys.process(self.id), self.keys.runs(self.id))
            pipe.srem(self.keys.processes, self.id)
            await pipe.execute()
        except (RedisError, OSError) as exc:
            log.warning("could not take this process's lease out of Redis (%s); it expires by itself", exc)

    async def _keep(self) -> None:
        loop = asyncio.get_running_loop()
        every = self.seconds * RENEW_SHARE
        due = loop.time() + every
        failures = 0
        while True:
            still_wanted()
            if not (self._added or self._removed or self._whole):
                self._wake.clear()
                try:
                    async with asyncio.timeout_at(due):
                        await self._wake.wait()
                except TimeoutError:
                    pass
            renew = loop.time() >= due
            try:
                await self._write(renew=renew)
            except (RedisError, OSError) as exc:
                still_wanted()
                self._failed(exc, failures)
                await asyncio.sleep(RETRY_SECONDS[min(failures, len(RETRY_SECONDS) - 1)])
                failures += 1
                continue
            if failures:
                log.warning("this process's lease is written to Redis again, after %d failures", failures)
                failures = 0
            if renew:
                due = loop.time() + every

    async def _write(self, *, renew: bool) -> None:
        """One MULTI: the renewal (when due, or after a failure) and the registry's changes."""
        keys, whole = self.keys, self._whole
        added, removed = self._added, self._removed
        self._added, self._removed = set(), set()
        renew = renew or whole
        if not (renew or added or removed):
            return
        pipe: Any = self.redis.pipeline(transaction=True)
        if renew:
            pipe.set(keys.process(self.id), self.id, px=self.ttl_ms, get=True)
            pipe.sadd(keys.processes, self.id)
        if whole:
            pipe.delete(keys.runs(self.id))
            added, removed = set(self.running), set()
        if added:
            pipe.sadd(keys.runs(self.id), *added)
        if removed:
            pipe.srem(keys.runs(self.id), *removed)
        try:
            answers = await pipe.execute()
        except BaseException:
            self._whole = True  # whether any of it was written is unknown: all of it, next time
            raise
        self._whole = False
        if renew and answers[0] is None and self._held:
            log.warning(
                "this process's lease (%s) had expired: another process may have ended its"
                " replies as interrupted; registering them again",
                self.id,
            )
            self._whole = True
        self._held = True

    def _failed(self, exc: BaseException, failures: int) -> None:
        self.trouble_at = asyncio.get_running_loop().time()
        if failures == 0:
            log.warning("could not renew this process's lease in Redis (%s); retrying", exc)
