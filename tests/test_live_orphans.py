"""Whole `sidechat serve` processes sharing one database (SQLite's file, or PostgreSQL) and one
Redis: when the process running a reply is SIGKILLed, a follower on another process gets the
`error` `interrupted` within the lease and the row keeps the text it had published; a worker
that starts again touches no reply a live process is running, only the real orphans; one
stopped with SIGTERM ends its own replies as shut down, then takes its lease away."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest

from chat.database import stamp
from chat.redis_broker import open_redis
from tests.backends import Backend, every_backend
from tests.fakeupstream import FakeUpstream, Reply, openai_chunk, openai_reply
from tests.live import EventReader, until
from tests.processes import PYTHON, ROOT, Server, free_port, running

if TYPE_CHECKING:
    from chat.redis_keys import Keys
    from tests.redis_server import RedisServer

pytest_plugins = ["tests.redis_server"]
pytestmark = [pytest.mark.anyio, every_backend]

LEASE = 2.0  # SIDECHAT_LEASE_SECONDS of the processes: a short bound, to test it


@asynccontextmanager
async def sidechat(
    name: str,
    tmp_path: Path,
    database: Backend,
    upstream: FakeUpstream,
    redis_server: RedisServer,
    redis_keys: Keys,
    lease: float = LEASE,
) -> AsyncIterator[Server]:
    """`python -m chat serve` on the shared database and Redis, its OpenAI the fake upstream."""
    port = free_port()
    env = {
        "SIDECHAT_DB": database.db,
        "SIDECHAT_REDIS_URL": redis_server.url,
        "SIDECHAT_REDIS_PREFIX": redis_keys.prefix,
        "SIDECHAT_LEASE_SECONDS": str(lease),
        "SIDECHAT_PROVIDER": "openai",
        "OPENAI_API_KEY": "sk-test",
        "OPENAI_BASE_URL": upstream.url,
        "SIDECHAT_SHUTDOWN_GRACE_SECONDS": "0.5",
    }
    command = [PYTHON, "-m", "chat", "serve", "--port", str(port)]
    async with running(command, port=port, env=env, log=tmp_path / f"{name}.log", cwd=ROOT) as server:
        yield server


async def status_of(database: Backend, message_id: int) -> tuple[str, str]:
    status = await database.scalar("SELECT status FROM messages WHERE id = ?", message_id)
    content = await database.scalar("SELECT content FROM messages WHERE id = ?", message_id)
    return status, content


async def has_status(database: Backend, message_id: int, status: str) -> bool:
    return (await status_of(database, message_id))[0] == status


async def test_sigkill_of_the_process_running_a_reply_ends_it_interrupted_for_followers_elsewhere(
    tmp_path: Path, database: Backend, upstream: FakeUpstream, redis_server: RedisServer, redis_keys: Keys
) -> None:
    held = asyncio.Event()  # never set: the reply is cut off mid-way
    upstream.add(Reply([openai_chunk("first "), openai_chunk("second "), held], finish=False))
    args = (tmp_path, database, upstream, redis_server, redis_keys)
    async with sidechat("a", *args) as a, sidechat("b", *args) as b:
        b_up = time.monotonic()
        async with httpx.AsyncClient(base_url=a.url, timeout=10) as on_a:
            accepted = (await on_a.post("/api/chat", json={"message": "hi"})).json()
        message_id = accepted["message_id"]
        async with (
            httpx.AsyncClient(base_url=b.url, timeout=20) as on_b,
            on_b.stream("GET", f"/api/messages/{message_id}/stream") as response,
        ):
            reader = EventReader(response)
            head = await reader.read(until=3)
            assert head.names == ["start", "token", "token"] and head.text == "first second "
            # B's reaper reaps nothing in its first lease period (Redis must have answered
            # that long): the bound holds from then on.
            await until(lambda: time.monotonic() - b_up >= LEASE, what="B to have been up a lease period")
            a.process.send_signal(signal.SIGKILL)
            killed = time.monotonic()
            rest = await asyncio.wait_for(reader.read(), timeout=LEASE + 10)
            conversation = (await on_b.get(f"/api/conversations/{accepted['conversation_id']}")).json()
        reaped = "died (its lease expired): 1 of its replies ended as interrupted"
        await until(lambda: reaped in b.output(), what="B to log it")  # once it has forgotten A

    assert rest.names == ["error"]
    assert rest.terminal.data["error"]["type"] == "interrupted" and rest.terminal.data["partial"] is True
    assert rest.terminal.id == "4"
    assert rest.terminal.at - killed <= LEASE + 0.5  # the bound, and a moment for the HTTP hop
    reply = next(m for m in conversation["messages"] if m["id"] == message_id)
    assert (reply["status"], reply["content"]) == ("interrupted", "first second ")
    assert reply["metadata"]["error"]["type"] == "interrupted"


async def test_a_worker_starting_again_ends_only_the_orphans_not_a_live_processes_reply(
    tmp_path: Path, database: Backend, upstream: FakeUpstream, redis_server: RedisServer, redis_keys: Keys
) -> None:
    orphan = await an_orphan(database)
    going = asyncio.Event()
    upstream.add(Reply([openai_chunk("kept "), going, *openai_reply("going")]))
    args = (tmp_path, database, upstream, redis_server, redis_keys)
    # A's own reaper waits out its long lease before it looks: whatever is swept here, B did.
    async with sidechat("a", *args, lease=60.0) as a:
        async with httpx.AsyncClient(base_url=a.url, timeout=20) as on_a:
            accepted = (await on_a.post("/api/chat", json={"message": "hi"})).json()
            message_id = accepted["message_id"]
            async with on_a.stream("GET", f"/api/messages/{message_id}/stream") as response:
                reader = EventReader(response)
                assert (await reader.read(until=2)).names == ["start", "token"]
                async with sidechat("b", *args) as b:
                    b.process.send_signal(signal.SIGKILL)  # a worker dies...
                    await asyncio.to_thread(b.process.wait, 10)
                async with sidechat("b-again", *args):  # ...and is started again
                    assert await has_status(database, message_id, "streaming")
                    await until(
                        lambda: has_status(database, orphan, "interrupted"),
                        timeout=LEASE * 3 + 5,
                        what="the orphan to be swept",
                    )
                    # The sweep has run, and the reply is older than a lease: still A's.
                    assert await has_status(database, message_id, "streaming")
                    going.set()
                    rest = await reader.read()
    assert rest.names[-1] == "done" and rest.text == "going"
    assert await status_of(database, message_id) == ("completed", "kept going")
    assert await status_of(database, orphan) == ("interrupted", "")


async def an_orphan(database: Backend) -> int:
    """A reply left `streaming` a minute ago by a process that never registered it."""
    store = await database.open()
    try:
        conversation = await store.create_conversation("local")
        _, reply = await store.start_turn(conversation.id, "lost", metadata={})
    finally:
        await store.close()
    old = stamp(datetime.now(UTC) - timedelta(minutes=1))
    await database.execute("UPDATE messages SET created_at = ? WHERE id = ?", old, reply.id)
    return reply.id


async def test_sigterm_ends_the_processes_own_replies_as_shut_down_then_drops_its_lease(
    tmp_path: Path, database: Backend, upstream: FakeUpstream, redis_server: RedisServer, redis_keys: Keys
) -> None:
    upstream.add(Reply([openai_chunk("so far "), asyncio.Event()], finish=False))
    args = (tmp_path, database, upstream, redis_server, redis_keys)
    redis = open_redis(redis_server.url)
    try:
        async with sidechat("a", *args) as a, sidechat("b", *args) as b:
            async with httpx.AsyncClient(base_url=a.url, timeout=10) as on_a:
                message_id = (await on_a.post("/api/chat", json={"message": "hi"})).json()["message_id"]
            async with (
                httpx.AsyncClient(base_url=b.url, timeout=20) as on_b,
                on_b.stream("GET", f"/api/messages/{message_id}/stream") as response,
            ):
                reader = EventReader(response)
                assert (await reader.read(until=2)).names == ["start", "token"]
                assert await redis.scard(redis_keys.processes) == 2
                a.process.send_signal(signal.SIGTERM)
                rest = await asyncio.wait_for(reader.read(), timeout=20)
                # uvicorn raises SIGTERM again once it has shut down in order (tests/test_app.py)
                assert await asyncio.to_thread(a.process.wait, 20) in (0, -signal.SIGTERM)
            assert await redis.scard(redis_keys.processes) == 1  # B's alone: A took its lease away
    finally:
        await redis.aclose()
    assert rest.names == ["error"] and rest.terminal.data["error"]["type"] == "shutdown"
    assert await status_of(database, message_id) == ("interrupted", "so far ")
    assert "died (its lease expired)" not in b.output()
