"""Streams through real nginx running the shipped `deploy/nginx.conf` (tests/nginx.py): tokens
as they are produced, heartbeats against `proxy_read_timeout`, a client's hang-up passed on.

Each test starts a real sidechat on a loopback port, pointed at a fake provider, and nginx in
front of it; clients speak only to nginx. The two controls change one thing (nginx ignoring
`X-Accel-Buffering` on a gzipped stream; heartbeats slower than nginx's read timeout) and show
the failure the shipped setup avoids, so the passing tests cannot pass by accident.
tests/test_nginx_site.py covers the rest of the site: the `/chat/` prefix, headers, limits.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import pytest

from tests.fakeupstream import FakeUpstream
from tests.live import EventReader, Transcript, until
from tests.nginx import chat, fronted, held, through

pytestmark = pytest.mark.anyio

SHORT_READ_TIMEOUT = {"proxy_read_timeout 300s;": "proxy_read_timeout 2s;"}


GZIP = "gzip_types text/css text/javascript application/javascript application/json image/svg+xml;"
GZIPPED_STREAMS = {GZIP: GZIP.replace("text/css", "text/event-stream text/css")}  # an operator's slip
IGNORING_THE_HEADER = {"proxy_buffering on;": "proxy_buffering on; proxy_ignore_headers X-Accel-Buffering;"}


# -- tokens as they come, with nginx's buffering on ---------------------------------------------


# The header guards against more than buffering: nginx 1.22, buffering, passes on what it reads
# to a client that keeps up even without it (the third case); with gzip on the stream too, only
# the header keeps the tokens coming (the second case, and the control after it).
@pytest.mark.parametrize(
    "edits",
    [{}, GZIPPED_STREAMS, IGNORING_THE_HEADER],
    ids=["shipped", "streams-in-gzip_types", "header-ignored"],
)
async def test_tokens_pass_through_nginx_while_the_provider_is_still_sending(
    edits: dict[str, str], upstream: FakeUpstream, tmp_path: Path
) -> None:
    hold = asyncio.Event()
    upstream.add(held(hold))
    async with (
        fronted(upstream, tmp_path, edits) as (_, proxy),
        through(proxy) as http,
        chat(http) as response,
    ):
        assert response.headers.get("content-encoding") == ("gzip" if edits == GZIPPED_STREAMS else None)
        reader = EventReader(response, decoded=True)
        first = await asyncio.wait_for(reader.read(until=2), 10)
        assert (first.names, first.text) == (["start", "token"], "Hel")
        assert not hold.is_set() and not upstream.hung_up.is_set()  # the provider is mid-reply
        hold.set()
        rest = await reader.read()
    assert (rest.names, rest.text) == (["token", "done"], "lo")


async def test_control_nginx_ignoring_x_accel_buffering_holds_a_gzipped_stream_back(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    hold = asyncio.Event()
    upstream.add(held(hold))
    readers: list[EventReader] = []

    async def read_all() -> Transcript:
        async with chat(http) as response:
            readers.append(EventReader(response, decoded=True))
            return await readers[0].read()

    edits = {**GZIPPED_STREAMS, **IGNORING_THE_HEADER}
    async with fronted(upstream, tmp_path, edits) as (url, proxy), through(proxy) as http:
        reading = asyncio.create_task(read_all())
        # sidechat has sent the token: a client on its own port has it ...
        async with httpx.AsyncClient(base_url=url, timeout=10) as direct:

            async def reply_id() -> int | None:
                listed = (await direct.get("/api/conversations")).json()["conversations"]
                if not listed:
                    return None
                messages = (await direct.get(f"/api/conversations/{listed[0]['id']}")).json()["messages"]
                return next((m["id"] for m in messages if m["role"] == "assistant"), None)

            path = f"/api/messages/{await until(reply_id)}/stream"
            async with direct.stream("GET", path) as attached:
                assert (await EventReader(attached).read(until=2)).names == ["start", "token"]
        # ... and through nginx not even the response's headers have come.
        with pytest.raises(AssertionError, match="timed out"):
            await until(lambda: readers, timeout=1.0, what="an answer through nginx")
        released = time.monotonic()
        hold.set()
        transcript = await reading
    assert transcript.names == ["start", "token", "token", "done"]
    assert transcript.events[1].at >= released


# -- heartbeats against proxy_read_timeout ------------------------------------------------------


async def test_heartbeats_keep_a_stream_open_past_nginx_read_timeout(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    hold = asyncio.Event()
    upstream.add(held(hold))
    changes = {"heartbeat_seconds": 0.5, "idle_timeout": 30.0}
    async with fronted(upstream, tmp_path, SHORT_READ_TIMEOUT, **changes) as (_, proxy):
        async with through(proxy) as http, chat(http) as response:
            reader = EventReader(response)
            quiet_from = (await reader.read(until=2)).events[-1].at
            reading = asyncio.create_task(reader.read())

            def quiet_for_3s() -> bool:
                return bool(reader.transcript.pings) and reader.transcript.pings[-1] - quiet_from > 3.0

            await until(quiet_for_3s, what="pings through nginx for longer than its read timeout")
            hold.set()
            rest = await reading
    assert (rest.names, rest.text) == (["token", "done"], "lo")
    assert rest.events[0].at - quiet_from > 3.0  # the provider really was silent that long
    assert "upstream timed out" not in proxy.error_log


async def test_control_without_heartbeats_nginx_cuts_a_silent_stream(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    hold = asyncio.Event()
    upstream.add(held(hold))
    changes = {"heartbeat_seconds": 30.0, "idle_timeout": 30.0}
    async with fronted(upstream, tmp_path, SHORT_READ_TIMEOUT, **changes) as (_, proxy):
        try:
            async with through(proxy) as http, chat(http) as response:
                reader = EventReader(response)
                quiet_from = (await reader.read(until=2)).events[-1].at
                with pytest.raises(httpx.RemoteProtocolError):  # the chunked body never ends
                    await reader.read()
            cut_at = time.monotonic()
        finally:
            hold.set()
    assert reader.transcript.names == ["start", "token"]  # no terminal event
    assert cut_at - quiet_from >= 1.9
    assert "upstream timed out" in proxy.error_log


# -- a client that leaves --------------------------------------------------------------------------


async def test_a_client_hanging_up_at_nginx_cancels_the_reply(upstream: FakeUpstream, tmp_path: Path) -> None:
    hold = asyncio.Event()
    upstream.add(held(hold))
    # no ping before the test ends: nginx must pass the hang-up on, not trip on it writing one
    async with fronted(upstream, tmp_path, on_disconnect="cancel", heartbeat_seconds=60.0) as (url, proxy):
        async with through(proxy) as http, chat(http) as response:
            conversation = response.headers["x-conversation-id"]
            assert (await EventReader(response).read(until=2)).text == "Hel"
        # the connection to nginx is closed here, mid-reply
        await until(upstream.hung_up.is_set, what="sidechat to close the provider's stream")
        async with httpx.AsyncClient(base_url=url, timeout=10) as direct:

            async def cancelled() -> dict[str, object] | None:
                messages = (await direct.get(f"/api/conversations/{conversation}")).json()["messages"]
                return next(
                    (m for m in messages if m["role"] == "assistant" and m["status"] == "cancelled"), None
                )

            reply = await until(cancelled, what="the reply to be stored as cancelled")
    assert reply["content"] == "Hel"
    assert not hold.is_set()
