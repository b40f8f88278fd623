"""The app as servers run it: `uvicorn app:app`, `uvicorn chat.app:app`, its start-up, and stop
signals (SIGTERM, Ctrl-C once and twice, SIGKILL and a restart), against whole processes."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sqlite3
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path

import httpx
import pytest
import uvicorn

from chat.app import create_app
from chat.config import Settings
from tests.fakeupstream import FakeUpstream, Reply, openai_chunk, openai_reply
from tests.live import EventReader, chat_stream, read_stream, serve, until
from tests.processes import PYTHON, Server, free_port, running

pytestmark = pytest.mark.anyio

Spawn = Callable[..., AbstractAsyncContextManager[Server]]


@pytest.fixture
def spawn(tmp_path: Path, upstream: FakeUpstream) -> Spawn:
    """`python app.py` on a free port, its database in tmp_path, the fake upstream as OpenAI."""

    def start(**env: str) -> AbstractAsyncContextManager[Server]:
        port = free_port()
        environment = {
            "SIDECHAT_PROVIDER": "openai",
            "OPENAI_API_KEY": "sk-test",
            "OPENAI_BASE_URL": upstream.url,
            "SIDECHAT_SHUTDOWN_GRACE_SECONDS": "0.5",
            **env,
        }
        command = [PYTHON, "app.py", "--port", str(port), "--db", str(tmp_path / "chat.db")]
        return running(command, port=port, env=environment, log=tmp_path / f"server-{port}.log")

    return start


def stored_reply(tmp_path: Path) -> tuple[str, str]:
    with sqlite3.connect(tmp_path / "chat.db") as db:
        row = db.execute(
            "SELECT status, content FROM messages WHERE role = 'assistant' ORDER BY id DESC"
        ).fetchone()
    return row[0], row[1]


async def exit_status(server: Server) -> int:
    return await asyncio.to_thread(server.process.wait, 10)


# uvicorn raises the signal again once it has shut down in order: SIGTERM kills, and
# Ctrl-C (a KeyboardInterrupt) is exit status 130.
CLEAN = {0, -signal.SIGTERM, 130}


async def test_sigterm_mid_stream_ends_clients_with_shutdown_and_rows_interrupted(
    spawn: Spawn, upstream: FakeUpstream, tmp_path: Path
) -> None:
    upstream.add(Reply([openai_chunk("cut short")], finish=False))
    async with spawn() as server, httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        async with client.stream("POST", "/api/chat/stream", json={"message": "hi"}) as response:
            reader = EventReader(response)
            await reader.read(until=2)
            server.process.send_signal(signal.SIGTERM)
            rest = await asyncio.wait_for(reader.read(), timeout=5)
        assert await exit_status(server) in CLEAN

    assert rest.names == ["error"]
    assert rest.terminal.data["error"]["type"] == "shutdown"
    assert rest.terminal.data["partial"] is True
    assert stored_reply(tmp_path) == ("interrupted", "cut short")


async def test_sigterm_lets_a_generation_finish_within_the_grace_period(
    spawn: Spawn, upstream: FakeUpstream, tmp_path: Path
) -> None:
    gate = asyncio.Event()
    upstream.add(Reply([openai_chunk("nearly"), gate, *openai_reply(" done")]))
    async with spawn(SIDECHAT_SHUTDOWN_GRACE_SECONDS="30") as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
            async with client.stream("POST", "/api/chat/stream", json={"message": "hi"}) as response:
                reader = EventReader(response)
                await reader.read(until=2)
                server.process.send_signal(signal.SIGTERM)
                await until(lambda: "shutting down" in server.output(), what="the server to hear SIGTERM")
                gate.set()
                rest = await asyncio.wait_for(reader.read(), timeout=5)
        assert await exit_status(server) in CLEAN

    assert rest.names[-1] == "done"
    assert "Ctrl-C again ends them now" in server.output()
    assert stored_reply(tmp_path) == ("completed", "nearly done")


async def test_a_second_ctrl_c_ends_running_replies_at_once(
    spawn: Spawn, upstream: FakeUpstream, tmp_path: Path
) -> None:
    upstream.add(Reply([openai_chunk("so far")], finish=False))
    async with spawn(SIDECHAT_SHUTDOWN_GRACE_SECONDS="600") as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
            async with client.stream("POST", "/api/chat/stream", json={"message": "hi"}) as response:
                reader = EventReader(response)
                await reader.read(until=2)
                server.process.send_signal(signal.SIGINT)
                await until(
                    lambda: "Ctrl-C again ends them now" in server.output(), what="the hint after Ctrl-C"
                )
                server.process.send_signal(signal.SIGINT)
                rest = await asyncio.wait_for(reader.read(), timeout=5)  # not the 600 s of grace
        assert await exit_status(server) in CLEAN

    assert rest.names == ["error"]
    assert rest.terminal.data["error"]["type"] == "shutdown"
    assert stored_reply(tmp_path) == ("interrupted", "so far")
    said = server.output()
    assert "ending 1 running replies now" in said
    assert "Application shutdown complete" in said  # the store and the upstream client were closed
    for trouble in ("Traceback", "never retrieved", "Event loop is closed", "was destroyed"):
        assert trouble not in said


async def test_sigterm_gives_a_reply_no_client_follows_the_grace_period_too(
    spawn: Spawn, upstream: FakeUpstream, tmp_path: Path
) -> None:
    gate = asyncio.Event()
    upstream.add(Reply([openai_chunk("unwatched"), gate, *openai_reply(" but kept")]))
    async with spawn(SIDECHAT_SHUTDOWN_GRACE_SECONDS="30") as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
            assert (await client.post("/api/chat", json={"message": "hi"})).status_code == 202
        await until(lambda: upstream.requests, what="the generation to ask the provider")
        server.process.send_signal(signal.SIGTERM)
        await until(lambda: "shutting down: 1 running" in server.output(), what="the server to hear SIGTERM")
        gate.set()
        assert await exit_status(server) in CLEAN
    assert stored_reply(tmp_path) == ("completed", "unwatched but kept")


async def test_sigkill_then_restart_marks_the_reply_interrupted(
    spawn: Spawn, upstream: FakeUpstream, tmp_path: Path
) -> None:
    upstream.add(Reply([openai_chunk("lost")], finish=False))
    async with spawn() as server, httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        async with client.stream("POST", "/api/chat/stream", json={"message": "hi"}) as response:
            head = await EventReader(response).read(until=2)
            server.process.kill()
        await exit_status(server)
    assert stored_reply(tmp_path)[0] == "streaming"

    async with spawn() as server, httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        assert stored_reply(tmp_path)[0] == "interrupted"
        stream_url = f"/api/messages/{head.events[0].data['message_id']}/stream"
        async with client.stream("GET", stream_url) as response:
            replay = await read_stream(response)
        # A client that saw the live events (ids 1 and 2) reconnects: the stored end, then nothing more.
        async with client.stream("GET", stream_url, headers={"last-event-id": "2"}) as response:
            resumed = await read_stream(response)
        after_end = await client.get(stream_url, headers={"last-event-id": resumed.terminal.id or ""})
    assert replay.names == ["start", "error"]
    assert replay.terminal.data["error"]["type"] == "interrupted"  # the process running it died
    assert resumed.names == ["reset", "error"]
    assert int(resumed.terminal.id or 0) > 2
    assert after_end.status_code == 204


@pytest.mark.parametrize("target", ["app:app", "chat.app:app"])
async def test_uvicorn_serves_the_app_the_environment_configures(tmp_path: Path, target: str) -> None:
    port = free_port()
    env = {"SIDECHAT_DB": str(tmp_path / "chat.db"), "SIDECHAT_DEMO_DELAY": "0"}
    command = [PYTHON, "-m", "uvicorn", target, "--port", str(port)]
    async with running(command, port=port, env=env, log=tmp_path / "server.log") as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
            transcript = await chat_stream(client, {"message": "hi"})
    assert transcript.names[0] == "start" and transcript.names[-1] == "done"
    assert (tmp_path / "chat.db").exists()


class Said(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


async def test_a_failed_start_up_is_one_line_that_says_why(tmp_path: Path) -> None:
    corrupt = tmp_path / "chat.db"
    corrupt.write_bytes(b"not a database, only text " * 100)
    server = uvicorn.Server(uvicorn.Config(create_app(Settings(db=str(corrupt))), port=0, lifespan="on"))
    said = Said()
    logging.getLogger("uvicorn.error").addHandler(said)
    try:
        with contextlib.suppress(SystemExit):  # uvicorn exits with 3 when start-up fails
            await server.serve()
    finally:
        logging.getLogger("uvicorn.error").removeHandler(said)
    assert not server.started
    reason = f"sidechat cannot start: the database {corrupt} (SIDECHAT_DB or --db) is not a SQLite database"
    assert [line for line in said.lines if "cannot start" in line] == [reason]
    assert not any("Traceback" in line for line in said.lines)


TOKEN_A = "first-token-0123456789"
TOKEN_B = "second-token-0123456789"


async def test_the_token_file_is_reread_when_it_changes_and_on_sighup(spawn: Spawn, tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text(f"{TOKEN_A}=alice\n")
    async with spawn(SIDECHAT_API_TOKENS_FILE=str(tokens)) as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:

            async def status(token: str) -> int:
                response = await http.get("/api/conversations", headers={"authorization": f"Bearer {token}"})
                return response.status_code

            assert await status(TOKEN_A) == 200 and await status(TOKEN_B) == 401
            tokens.write_text(f"{TOKEN_B}=alice\n")
            await until(lambda: _is(status(TOKEN_B), 200), what="the new token to be accepted")
            assert await status(TOKEN_A) == 401
            server.process.send_signal(signal.SIGHUP)  # read again at once, changed or not
            await until(lambda: server.output().count("read: 1 tokens") >= 2, what="the reload on SIGHUP")
            assert await status(TOKEN_B) == 200
    assert TOKEN_A not in server.output() and TOKEN_B not in server.output()


async def _is(status: Awaitable[int], expected: int) -> bool:
    return await status == expected


@pytest.mark.parametrize(
    ("changes", "warned"),
    [
        ({"host": "0.0.0.0"}, True),
        ({"host": "192.0.2.10"}, True),
        ({"host": "::1"}, False),
        ({"host": "localhost"}, False),
        ({"host": "0.0.0.0", "api_tokens": ((TOKEN_A, "alice"),)}, False),
    ],
)
async def test_listening_beyond_loopback_without_tokens_is_a_loud_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, changes: dict[str, object], warned: bool
) -> None:
    settings = Settings(db=str(tmp_path / "chat.db"), **changes)  # type: ignore[arg-type]
    with caplog.at_level(logging.WARNING, logger="sidechat"):
        async with serve(settings):
            pass
    warnings = [r.getMessage() for r in caplog.records if "SIDECHAT_API_TOKENS" in r.getMessage()]
    assert bool(warnings) == warned
    if warned:
        assert warnings[0].startswith(f"LISTENING ON {changes['host']} WITHOUT SIDECHAT_API_TOKENS")


async def test_behind_a_proxy_the_trusted_header_is_believed_by_the_proxys_own_address(spawn: Spawn) -> None:
    async with spawn(SIDECHAT_TRUSTED_USER_HEADER="X-User") as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
            forwarded = {"x-user": "carol", "x-forwarded-for": "203.0.113.5"}  # as nginx sends it
            assert (await http.get("/api/conversations", headers=forwarded)).status_code == 200
            assert (await http.get("/api/conversations")).status_code == 401


async def test_sigterm_ends_open_feeds_so_the_server_stops(spawn: Spawn) -> None:
    async with spawn() as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
            async with http.stream("GET", "/api/events") as feed:
                assert feed.status_code == 200
                server.process.send_signal(signal.SIGTERM)
                async with asyncio.timeout(5):  # the feed ends, then the server can stop
                    await feed.aread()
            assert await exit_status(server) in CLEAN


async def test_head_on_a_feed_is_its_headers_and_leaves_the_connection_usable(spawn: Spawn) -> None:
    async with spawn() as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=5) as http:
            head = await http.head("/api/events")
            assert head.status_code == 200 and head.headers["content-type"].startswith("text/event-stream")
            assert (await http.get("/healthz")).status_code == 200  # the same keep-alive connection


async def test_under_a_path_prefix_tokens_and_probes_work_as_at_the_root(tmp_path: Path) -> None:
    token = "alice-token-0123456789"
    settings = Settings(db=str(tmp_path / "chat.db"), api_tokens=((token, "alice"),))
    async with serve(settings, prefix="/chat") as url, httpx.AsyncClient(base_url=url) as http:
        assert (await http.get("/api/conversations")).status_code == 401
        signed = await http.get("/api/conversations", headers={"authorization": f"Bearer {token}"})
        assert signed.status_code == 200 and signed.json()["conversations"] == []
        foreign = await http.get("/healthz", headers={"host": "rebinding.example"})
        assert foreign.status_code == 200  # a probe, under the prefix too
        assert (await http.get("/", headers={"host": "127.0.0.1"})).status_code == 200
