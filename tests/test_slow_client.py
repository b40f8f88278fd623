"""Clients that stop reading, over real sockets: they cost the server a bounded amount of
memory, they are let go after `client_stall_seconds` while the generation goes on, and they
resume with `Last-Event-ID`; a client that reads slowly but steadily is kept.

The clients here are raw sockets with a small receive buffer, so the server's writes back
up at once, as they would for a phone on a bad network: httpx would read into buffers of
its own and hide what the server does.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import sqlite3
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from chat.responses import RETRY, EventStreamResponse
from chat.sse import SSEDecoder
from chat.subscription import CHUNK_BYTES
from tests.conftest import settings_for
from tests.fakeupstream import FakeUpstream, Reply, openai_chunk, openai_reply
from tests.live import read_stream, serve, until
from tests.processes import PYTHON, free_port, running

pytestmark = pytest.mark.anyio

PIECE = "x" * 1000
PIECES = 8000  # ~8 MB of reply: well past what the kernel buffers for one connection


class RawClient:
    """One HTTP/1.1 GET on a socket of our own, read only when the test says so."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.raw = bytearray()
        self.ended = False  # the server closed the connection (EOF or reset)

    @property
    def port(self) -> int:
        return int(self.sock.getsockname()[1])

    async def read(self, size: int = 65536) -> bytes:
        """Up to `size` more bytes; b"" once the connection has ended."""
        try:
            data = await asyncio.get_running_loop().sock_recv(self.sock, size)
        except ConnectionResetError:
            data = b""
        self.raw += data
        self.ended = not data
        return data

    async def read_to_end(self) -> None:
        while await self.read():
            pass

    @property
    def finished(self) -> bool:
        """The body's last chunk came: the server ended the stream (not just the connection).
        No other chunk ends so: each holds whole events, which end in a blank line."""
        return self.raw.endswith(b"\r\n0\r\n\r\n")

    def body(self) -> bytes:
        """The body so far, its chunks joined; a chunk still arriving is left out."""
        start = self.raw.index(b"\r\n\r\n") + 4
        assert self.raw.startswith(b"HTTP/1.1 200"), bytes(self.raw[:start])
        pieces = []
        while (line_end := self.raw.find(b"\r\n", start)) != -1:
            size = int(self.raw[start:line_end], 16)
            if size == 0 or line_end + 2 + size + 2 > len(self.raw):
                break
            pieces.append(self.raw[line_end + 2 : line_end + 2 + size])
            start = line_end + 2 + size + 2
        return b"".join(pieces)

    def events(self) -> list[tuple[str | None, str, dict[str, Any]]]:
        """(id, event, data) of every whole event received."""
        return [(e.id, e.event, json.loads(e.data)) for e in SSEDecoder().feed(self.body())]

    def text(self) -> str:
        return "".join(data["text"] for _, event, data in self.events() if event == "token")


@contextlib.asynccontextmanager
async def attached(url: str, path: str, *, receive_buffer: int) -> AsyncIterator[RawClient]:
    """A client with a receive buffer of `receive_buffer` bytes that has sent its GET for
    `path` and reads nothing yet; its socket is closed after the block."""
    host, port = httpx.URL(url).host, httpx.URL(url).port
    assert port is not None
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)  # before connect: the window
    sock.setblocking(False)
    try:
        loop = asyncio.get_running_loop()
        await loop.sock_connect(sock, (host, port))
        request = f"GET {path} HTTP/1.1\r\nhost: {host}:{port}\r\naccept: text/event-stream\r\n\r\n"
        await loop.sock_sendall(sock, request.encode())
        yield RawClient(sock)
    finally:
        sock.close()


def pushed(server_port: int, client_port: int) -> int:
    """Bytes the kernel holds, not yet taken in, on the server's side of the connection to
    `client_port` (its `tx_queue` in /proc/net/tcp)."""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, remote, state, queues = line.split()[1:5]
        if (int(local.split(":")[1], 16), int(remote.split(":")[1], 16), state) == (
            server_port,
            client_port,
            "01",  # established
        ):
            return int(queues.split(":")[0], 16)
    return 0


def filled(server_port: int, client: RawClient) -> Callable[[], bool]:
    return lambda: pushed(server_port, client.port) >= 256 * 1024


def memory_kib(pid: int, field: str) -> int:
    """A `Vm…` line of /proc/<pid>/status (VmRSS: resident now, VmHWM: the peak), in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/{pid}/status")


def stored_reply(db: Path) -> tuple[str, str]:
    """(status, content) of the newest reply, as the database has it."""
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as connection:
        row = connection.execute(
            "SELECT status, content FROM messages WHERE role = 'assistant' ORDER BY id DESC LIMIT 1"
        ).fetchone()
    return ("", "") if row is None else (row[0], row[1])


def reply_is(db: Path, status: str) -> Callable[[], bool]:
    return lambda: stored_reply(db)[0] == status


def let_go(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    """The log's lines about clients let go for not reading."""
    return [r for r in caplog.records if r.name == "sidechat" and "took in nothing" in r.getMessage()]


async def test_clients_that_attach_late_and_never_read_cost_far_less_than_the_reply(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    upstream.add(Reply([openai_chunk(PIECE) for _ in range(PIECES)] + openai_reply("end")))
    port, db = free_port(), tmp_path / "chat.db"
    env = {
        "SIDECHAT_PROVIDER": "openai",
        "OPENAI_API_KEY": "sk-test",
        "OPENAI_BASE_URL": upstream.url,
        "SIDECHAT_MAX_REPLY_CHARS": "20000000",
        "SIDECHAT_REPLAY_SECONDS": "600",  # the finished reply stays in its topic: late clients read the log
        "SIDECHAT_CLIENT_STALL_SECONDS": "600",  # no one is let go while we measure
        # glibc gives back every freed block of 128 KiB or more at once, so RSS shows what the
        # server holds rather than what malloc kept from a passing peak.
        "MALLOC_MMAP_THRESHOLD_": "131072",
    }
    command = [PYTHON, "app.py", "--port", str(port), "--db", str(db)]
    async with running(command, port=port, env=env, log=tmp_path / "server.log") as server:
        pid = server.process.pid
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
            accepted = (await client.post("/api/chat", json={"message": "hi"})).json()
            await until(reply_is(db, "completed"), what="the reply to be stored")
            # A client that reads gets the whole reply; it also leaves the server warmed up,
            # with the memory that answering an attach takes (the row is read) already in hand.
            async with client.stream("GET", accepted["stream_url"]) as response:
                reading = await read_stream(response)
            Path(f"/proc/{pid}/clear_refs").write_text("5")  # VmHWM, the peak, starts again from here
            before = memory_kib(pid, "VmRSS")
            async with contextlib.AsyncExitStack() as stack:
                # One at a time, each until the kernel holds 256 KiB for it (more than a chunk
                # and uvicorn's buffer together: the server is pushing to it), so that the
                # attaches do not overlap: what is measured is what the server holds for
                # clients that do not read, not ten handlers answering at once.
                for _ in range(10):
                    stalled = await stack.enter_async_context(
                        attached(server.url, accepted["stream_url"], receive_buffer=4096)
                    )
                    await until(filled(port, stalled), what="the server to fill a stalled client's socket")
                held, peak = memory_kib(pid, "VmRSS") - before, memory_kib(pid, "VmHWM") - before

    assert reading.names[-1] == "done" and reading.text == PIECE * PIECES + "end"
    # Held for the ten together: less than half of one copy of the reply (a chunk and a
    # transport buffer each: about 2 MB for an 8 MB reply when this was written, 160 MB
    # before backlogs went out in chunks). The peak adds what answering one attach takes
    # (today the handler reads the stored row, text and all: about twice the reply).
    reply = len(reading.raw) // 1024
    said = f"ten stalled clients: +{held} KiB held, +{peak} KiB at the peak; the reply is {reply} KiB"
    assert held < reply / 2, said
    assert peak < 5 * reply, said


async def test_a_client_that_stops_reading_is_let_go_while_the_reply_goes_on(
    upstream: FakeUpstream, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="sidechat")
    gate = asyncio.Event()
    upstream.add(Reply([openai_chunk(PIECE) for _ in range(PIECES)] + [gate, *openai_reply("end")]))
    settings = settings_for(upstream, tmp_path, client_stall_seconds=1.0, max_reply_chars=20_000_000)
    db = tmp_path / "chat.db"
    async with serve(settings) as url, httpx.AsyncClient(base_url=url, timeout=10) as client:
        accepted = (await client.post("/api/chat", json={"message": "hi"})).json()
        async with attached(url, accepted["stream_url"], receive_buffer=4096) as stalled:
            await until(lambda: let_go(caplog), what="the client that stopped reading to be let go")
            assert stored_reply(db)[0] == "streaming"  # the generation goes on without it
            gate.set()
            await until(reply_is(db, "completed"), what="the reply to be stored")
            # Read now, it gets what the server had buffered for it, then the connection's end.
            await asyncio.wait_for(stalled.read_to_end(), 10)
        seen = stalled.events()
        last = int(str(seen[-1][0]))
        async with client.stream(
            "GET", accepted["stream_url"], headers={"last-event-id": str(last)}
        ) as response:
            rest = await read_stream(response)

    assert stalled.ended and not stalled.finished  # cut off, not told the stream was over
    assert [e[0] for e in seen] == [str(n) for n in range(1, last + 1)]
    assert [e.id for e in rest.events] == [str(n) for n in range(last + 1, last + 1 + len(rest.events))]
    assert stalled.text() + rest.text == PIECE * PIECES + "end" == stored_reply(db)[1]
    assert rest.names[-1] == "done" and upstream.hangups == 0
    assert len(let_go(caplog)) == 1


async def test_with_on_disconnect_cancel_letting_go_of_the_last_client_stops_the_reply(
    upstream: FakeUpstream, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="sidechat")
    gate = asyncio.Event()
    upstream.add(Reply([openai_chunk(PIECE) for _ in range(PIECES)] + [gate, *openai_reply("end")]))
    settings = settings_for(
        upstream, tmp_path, client_stall_seconds=1.0, max_reply_chars=20_000_000, on_disconnect="cancel"
    )
    db = tmp_path / "chat.db"
    async with serve(settings) as url, httpx.AsyncClient(base_url=url, timeout=10) as client:
        accepted = (await client.post("/api/chat", json={"message": "hi"})).json()
        async with attached(url, accepted["stream_url"], receive_buffer=4096):
            # A client let go is a client gone: it was the only one following, so the reply stops.
            await until(reply_is(db, "cancelled"), what="the reply to be cancelled")
    assert len(let_go(caplog)) == 1 and upstream.hangups == 1
    assert not gate.is_set()


async def test_a_client_that_reads_slowly_but_steadily_is_kept(
    upstream: FakeUpstream, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="sidechat")
    upstream.add(Reply([openai_chunk(PIECE) for _ in range(PIECES)] + openai_reply("end")))
    # Each write waits until the client has taken in much of what the kernel buffers for it
    # (on loopback, MBs: about 0.6 s at this pace), so the stall is set well above that.
    stall = 2.0
    settings = settings_for(upstream, tmp_path, client_stall_seconds=stall, max_reply_chars=20_000_000)
    db = tmp_path / "chat.db"
    async with serve(settings) as url, httpx.AsyncClient(base_url=url, timeout=10) as client:
        accepted = (await client.post("/api/chat", json={"message": "hi"})).json()
        await until(reply_is(db, "completed"), what="the reply to be stored")
        loop = asyncio.get_running_loop()
        async with attached(url, accepted["stream_url"], receive_buffer=65536) as slow:
            started = loop.time()
            while not slow.finished:
                assert await slow.read(), "the server ended the connection"
                await asyncio.sleep(0.02)  # the client's pace: about 3 MB/s, far slower than the server's
            took = loop.time() - started

    assert took > stall  # the server waited on this client, write after write, for longer than the stall
    assert slow.text() == PIECE * PIECES + "end" and slow.events()[-1][1] == "done"
    assert let_go(caplog) == []


# The response alone, called as uvicorn calls it, with a `send` we control.

SCOPE = {"type": "http", "method": "GET", "path": "/api/messages/1/stream", "client": ("127.0.0.1", 5)}


async def told(*chunks: bytes) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk


async def never_disconnects() -> dict[str, Any]:
    await asyncio.Event().wait()
    raise AssertionError("unreachable")


async def test_a_chunk_longer_than_a_piece_goes_to_the_server_a_piece_at_a_time() -> None:
    long = bytes(range(256)) * (3 * CHUNK_BYTES // 256) + b"tail"
    bodies: list[tuple[bytes, bool]] = []

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.body":
            bodies.append((message["body"], message["more_body"]))

    response = EventStreamResponse(contextlib.nullcontext(told(b"first", long)))
    await response(SCOPE, never_disconnects, send)

    assert bodies[:2] == [(RETRY, True), (b"first", True)]
    assert bodies[-1] == (b"", False)
    pieces = [body for body, _ in bodies[2:-1]]
    assert b"".join(pieces) == long and max(len(p) for p in pieces) == CHUNK_BYTES


async def test_a_send_that_does_not_finish_ends_the_response_after_the_stall(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="sidechat")
    sent: list[bytes] = []
    released = asyncio.Event()

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.body":
            sent.append(message["body"])
            if message["body"] == b"stuck":
                await asyncio.Event().wait()  # the client's buffers are full and stay so

    @contextlib.asynccontextmanager
    async def events() -> AsyncIterator[AsyncIterator[bytes]]:
        try:
            yield told(b"one", b"stuck", b"never")
        finally:
            released.set()

    loop = asyncio.get_running_loop()
    started = loop.time()
    response = EventStreamResponse(events(), stall=0.2)
    await asyncio.wait_for(response(SCOPE, never_disconnects, send), 5)

    assert loop.time() - started >= 0.2
    assert sent == [RETRY, b"one", b"stuck"] and released.is_set()
    assert [r.getMessage() for r in let_go(caplog)] == [
        "GET /api/messages/1/stream: let the client at 127.0.0.1:5 go, it took in nothing for 0.2s"
        " (it can resume with Last-Event-ID)"
    ]
