"""Several real sidechat processes on one database and one Redis, behind the shipped nginx site
with a round-robin upstream (so a client's attach usually lands on another process than its
POST), and `uvicorn app:app --workers 2`: every attach, resume and cancel is answered as if
there were one process."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from tests.backends import Backend, every_backend
from tests.fakeupstream import FakeUpstream, Reply, openai_chunk, openai_reply
from tests.fleet import fleet, fleet_env
from tests.live import EventReader, Transcript, until
from tests.nginx import Nginx, nginx
from tests.processes import PYTHON, free_port, running

if TYPE_CHECKING:
    from chat.redis_keys import Keys
    from tests.redis_server import RedisServer

pytest_plugins = ["tests.redis_server"]
pytestmark = pytest.mark.anyio


@dataclass
class Fronted:
    proxy: Nginx
    http: httpx.AsyncClient
    addresses: list[str]  # the processes' host:port, as nginx's log names them


@pytest.fixture
async def fronted(
    upstream: FakeUpstream, tmp_path: Path, database: Backend, redis_server: RedisServer, redis_keys: Keys
) -> AsyncIterator[Fronted]:
    env = fleet_env(upstream, database.db, redis_server.url, redis_keys.prefix)
    async with fleet(3, env, tmp_path / "fleet") as servers:
        addresses = [server.url.removeprefix("http://") for server in servers]
        upstreams = " ".join(f"server {address};" for address in addresses)
        async with (
            nginx(servers[0].url, tmp_path / "nginx", {"server 127.0.0.1:8000;": upstreams}) as proxy,
            httpx.AsyncClient(base_url=proxy.url, timeout=20) as http,
        ):
            yield Fronted(proxy, http, addresses)


def held_reply(*tokens: str) -> tuple[Reply, asyncio.Event]:
    gate = asyncio.Event()
    return Reply([openai_chunk(tokens[0]), gate, *openai_reply(*tokens[1:])]), gate


async def started(http: httpx.AsyncClient) -> dict[str, Any]:
    response = await http.post("/api/chat", json={"message": "hi"})
    assert response.status_code == 202, response.text
    accepted: dict[str, Any] = response.json()
    return accepted


async def attached(http: httpx.AsyncClient, message_id: int, after: int = 0) -> Transcript:
    headers = {"last-event-id": str(after)} if after else {}
    async with http.stream("GET", f"/api/messages/{message_id}/stream", headers=headers) as response:
        assert response.status_code == 200, await response.aread()
        return await EventReader(response).read()


async def stored_reply(http: httpx.AsyncClient, conversation_id: int) -> dict[str, Any]:
    messages = (await http.get(f"/api/conversations/{conversation_id}/messages")).json()["messages"]
    reply: dict[str, Any] = messages[-1]
    return reply


def requests_seen(proxy: Nginx) -> list[tuple[str, str]]:
    """Each request nginx passed on, as (method and path, the process it went to), in order."""
    return re.findall(r'"([A-Z]+ [^ ?"]+)[^"]*".* upstream=(\S+)', proxy.access_log)


def served_by(proxy: Nginx, request: str) -> set[str]:
    """The processes nginx sent `request` (method and path) to."""
    return {upstream for seen, upstream in requests_seen(proxy) if seen == request}


@every_backend
async def test_through_round_robin_every_attach_and_resume_is_the_stored_reply_exactly(
    fronted: Fronted, upstream: FakeUpstream
) -> None:
    reply, gate = held_reply("Round", " and", " round")
    upstream.add(reply)
    accepted = await started(fronted.http)
    message_id = accepted["message_id"]
    live = [asyncio.ensure_future(attached(fronted.http, message_id)) for _ in range(3)]
    await until(lambda: len(upstream.requests) == 1, what="the upstream call")
    gate.set()
    followed = await asyncio.gather(*live)
    whole = followed[0]
    assert whole.names == ["start", "token", "token", "token", "done"]
    ids = [int(event.id or 0) for event in whole.events]
    assert ids == sorted(set(ids)) and ids[0] == 1
    for transcript in followed:
        assert [(e.id, e.event, e.data) for e in transcript.events] == [
            (e.id, e.event, e.data) for e in whole.events
        ]
    for seen in range(len(whole.events)):
        resumed = await attached(fronted.http, message_id, after=seen)
        assert [(e.id, e.event, e.data) for e in resumed.events] == [
            (e.id, e.event, e.data) for e in whole.events[seen:]
        ]
    row = await stored_reply(fronted.http, accepted["conversation_id"])
    assert (row["status"], row["content"]) == ("completed", whole.text) == ("completed", "Round and round")
    assert len(served_by(fronted.proxy, f"GET /api/messages/{message_id}/stream")) >= 2


async def test_a_cancel_through_round_robin_stops_the_reply_wherever_it_runs(
    fronted: Fronted, upstream: FakeUpstream
) -> None:
    landed: list[bool] = []  # whether each cancel landed on another process than its reply
    for number in range(1, 4):  # three cancels: most land on a process that does not run it
        reply, _ = held_reply("cut", " off")
        upstream.add(reply)
        accepted = await started(fronted.http)
        await until(lambda: len(upstream.requests) == number, what="the upstream call")  # noqa: B023
        cancelled = await fronted.http.post(f"/api/messages/{accepted['message_id']}/cancel")
        assert cancelled.status_code == 200, cancelled.text
        assert cancelled.json()["message"]["status"] == "cancelled"
        await until(lambda: upstream.hangups == number, what="the upstream call to close")  # noqa: B023
        row = await stored_reply(fronted.http, accepted["conversation_id"])
        assert (row["status"], row["content"]) == ("cancelled", "cut")
        ran = [upstream for seen, upstream in requests_seen(fronted.proxy) if seen == "POST /api/chat"]
        asked = served_by(fronted.proxy, f"POST /api/messages/{accepted['message_id']}/cancel")
        landed.append(asked != {ran[-1]})
    assert any(landed), "every cancel landed on the process that ran its reply"


async def test_uvicorn_workers_share_what_is_live_through_redis(
    upstream: FakeUpstream, tmp_path: Path, redis_server: RedisServer, redis_keys: Keys
) -> None:
    port = free_port()
    env = fleet_env(upstream, str(tmp_path / "chat.db"), redis_server.url, redis_keys.prefix)
    command = [PYTHON, "-m", "uvicorn", "app:app", "--port", str(port), "--workers", "2"]
    async with running(command, port=port, env=env, log=tmp_path / "uvicorn.log") as server:
        for number in range(1, 5):
            reply, gate = held_reply("two", " workers")
            upstream.add(reply)
            async with httpx.AsyncClient(base_url=server.url, timeout=20) as http:
                accepted = await started(http)
            # Each on a connection of its own, which the kernel gives to either worker.
            clients = [httpx.AsyncClient(base_url=server.url, timeout=20) for _ in range(4)]
            live = [asyncio.ensure_future(attached(c, accepted["message_id"])) for c in clients]
            await until(lambda: len(upstream.requests) == number, what="the upstream call")  # noqa: B023
            gate.set()
            for transcript in await asyncio.gather(*live):
                assert transcript.names == ["start", "token", "token", "done"]
                assert transcript.text == "two workers"
            for client in clients:
                await client.aclose()
