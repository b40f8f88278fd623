"""Replies survive a database that misbehaves: a lock held by another process, a full disk, a
SIGKILL, a deleted directory. Real files, real processes, a real tiny filesystem."""

from __future__ import annotations

import asyncio
import errno
import os
import shutil
import signal
import sqlite3
import subprocess
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.backends import sqlite_only
from tests.conftest import settings_for
from tests.fakeupstream import FakeUpstream, Reply, openai_chunk, openai_reply
from tests.live import EventReader, serve, until
from tests.processes import PYTHON, ROOT, free_port, running

pytestmark = [pytest.mark.anyio, sqlite_only]  # about SQLite itself: its file locked, replaced, its WAL

HOLD_LOCK = """
import sqlite3, sys
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
sys.stdin.readline()
db.execute("COMMIT")
"""


@contextmanager
def foreign_lock(path: Path) -> Iterator[subprocess.Popen[str]]:
    """Another process holding SQLite's write lock on `path` until the block ends."""
    holder = subprocess.Popen(
        [PYTHON, "-c", HOLD_LOCK, str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        yield holder
    finally:
        release(holder)
        assert holder.stdout is not None
        holder.stdout.close()


def release(holder: subprocess.Popen[str]) -> None:
    """Let the other process commit and go."""
    assert holder.stdin is not None
    if not holder.stdin.closed:
        holder.stdin.write("\n")
        holder.stdin.close()
    holder.wait(10)


def pointed_at(upstream: FakeUpstream, **env: str) -> dict[str, str]:
    """The environment of a sidechat process whose OpenAI provider is the fake upstream."""
    return {
        "SIDECHAT_PROVIDER": "openai",
        "OPENAI_API_KEY": "sk-test",
        "OPENAI_BASE_URL": upstream.url,
        **env,
    }


def rows(path: Path) -> list[tuple[str, str]]:
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        return db.execute(
            "SELECT status, content FROM messages WHERE role = 'assistant' ORDER BY id"
        ).fetchall()


async def ready(client: httpx.AsyncClient) -> dict[str, Any]:
    response = await client.get("/readyz")
    return {"code": response.status_code, **response.json()}


async def test_replies_ending_under_a_foreign_lock_are_stored_before_done(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    gate, held = asyncio.Event(), asyncio.Event()
    for i in range(2):
        upstream.add(Reply([openai_chunk(f"reply {i}"), gate, *openai_reply(" in full")]))
    upstream.add(Reply([openai_chunk("reply 2"), held, *openai_reply(" never")]))
    settings = settings_for(upstream, tmp_path, db_busy_timeout=0.05)
    async with serve(settings) as url, httpx.AsyncClient(base_url=url, timeout=20) as client:
        streams = [client.stream("POST", "/api/chat/stream", json={"message": f"q{i}"}) for i in range(3)]
        readers = [EventReader(await stream.__aenter__()) for stream in streams]
        heads = [await reader.read(until=2) for reader in readers]
        ids = [head.events[0].data["message_id"] for head in heads]
        tails = [asyncio.create_task(reader.read()) for reader in readers]
        with foreign_lock(tmp_path / "chat.db") as holder:
            gate.set()
            await until(lambda: ready_waiting(client, 2), what="two replies waiting for their final write")
            assert not any(tail.done() for tail in tails)  # no `done` while the row is not stored
            # Meanwhile: new chats are refused, reads go on, a reply is told from memory, ...
            refused = await client.post("/api/chat", json={"message": "now?"})
            refused_too = await client.post("/api/conversations", json={"title": "later"})
            listed = await client.get("/api/conversations")
            alive = await client.get("/healthz")
            async with client.stream("GET", f"/api/messages/{ids[0]}/stream") as response:
                attached = await EventReader(response).read(until=3)
            # ... a running reply can be cancelled, and one that has finished says so truly.
            cancelled = await client.post(f"/api/messages/{ids[2]}/cancel")
            finished = await client.post(f"/api/messages/{ids[1]}/cancel")
            await until(lambda: ready_waiting(client, 3), what="the cancelled reply to wait too")
            release(holder)
        ends = await asyncio.gather(*tails)
        assert (await ready(client))["code"] == 200
        for stream in streams:
            await stream.__aexit__(None, None, None)

    assert refused.status_code == refused_too.status_code == 503
    assert refused.headers["retry-after"] == "5"
    error = refused.json()["error"]
    assert (error["type"], error["cause"]) == (
        "storage_unavailable",
        "the database is locked by another process",
    )
    assert refused_too.json()["error"]["type"] == "storage_unavailable"
    assert listed.status_code == 200 and len(listed.json()["conversations"]) == 3
    assert alive.status_code == 200
    assert [e.event for e in attached.events] == ["start", "token", "token"]
    assert cancelled.status_code == 200
    assert (cancelled.json()["message"]["status"], cancelled.json()["message"]["content"]) == (
        "cancelled",
        "reply 2",
    )
    assert finished.status_code == 409 and finished.json()["error"]["status"] == "completed"
    assert [end.names[-1] for end in ends] == ["done", "done", "done"]
    assert rows(tmp_path / "chat.db") == [
        ("completed", "reply 0 in full"),
        ("completed", "reply 1 in full"),
        ("cancelled", "reply 2"),
    ]


async def ready_waiting(client: httpx.AsyncClient, count: int) -> bool:
    state = await ready(client)
    return state["code"] == 503 and state["reason"].startswith(f"{count} replies are waiting")


async def test_a_deleted_database_directory_fails_readiness_not_liveness(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    home = tmp_path / "data"
    home.mkdir()
    settings = settings_for(upstream, tmp_path, db=str(home / "chat.db"))
    async with serve(settings) as url, httpx.AsyncClient(base_url=url, timeout=10) as client:
        assert await ready(client) == {"code": 200, "status": "ok"}
        assert (await client.get("/readyz?deep=1")).status_code == 200
        shutil.rmtree(home)
        state = await ready(client)
        alive = await client.get("/healthz")
    assert state["code"] == 503 and "was deleted" in state["reason"]
    assert alive.status_code == 200


async def test_a_replaced_database_file_fails_readiness(upstream: FakeUpstream, tmp_path: Path) -> None:
    settings = settings_for(upstream, tmp_path)
    async with serve(settings) as url, httpx.AsyncClient(base_url=url, timeout=10) as client:
        (tmp_path / "other.db").write_bytes(b"")
        os.replace(tmp_path / "other.db", tmp_path / "chat.db")
        state = await ready(client)
    assert state["code"] == 503 and "was replaced" in state["reason"]


@asynccontextmanager
async def server_on_a_tiny_disk(
    upstream: FakeUpstream, tmp_path: Path, **env: str
) -> AsyncIterator[tuple[Any, Path]]:
    """`python app.py` whose database lives on a 2 MB tmpfs of its own mount namespace (no
    privileges needed: a user namespace maps us to root there); the test reaches that
    filesystem through /proc/<pid>/root."""
    disk = tmp_path / "disk"
    disk.mkdir()
    port = free_port()
    script = f'mount -t tmpfs -o size=2m tmpfs "{disk}" && exec "{PYTHON}" app.py --port {port} --db "{disk}/chat.db"'
    command = ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script]
    environment = pointed_at(upstream, SIDECHAT_SHUTDOWN_GRACE_SECONDS="0.5", **env)
    async with running(command, port=port, env=environment, log=tmp_path / "server.log", cwd=ROOT) as server:
        yield server, Path(f"/proc/{server.process.pid}/root") / disk.relative_to("/")


def fill(directory: Path) -> Path:
    """Fill the filesystem under `directory` to the last byte; the file that did it."""
    filler = directory / "filler"
    with filler.open("wb", buffering=0) as out:
        try:
            while out.write(b"\0" * 4096):
                pass
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc
    return filler


async def test_a_full_disk_refuses_new_chats_and_keeps_the_reply_in_flight(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    gate = asyncio.Event()
    upstream.add(Reply([openai_chunk("written "), gate, *openai_reply("after all")]))
    async with server_on_a_tiny_disk(upstream, tmp_path) as (server, disk):
        async with httpx.AsyncClient(base_url=server.url, timeout=20) as client:
            async with client.stream("POST", "/api/chat/stream", json={"message": "hi"}) as response:
                reader = EventReader(response)
                head = await reader.read(until=2)
                filler = fill(disk)
                refused = await client.post("/api/chat", json={"message": "more?"})
                gate.set()
                await until(lambda: ready_waiting(client, 1), what="the reply to wait for its final write")
                filler.unlink()
                rest = await reader.read()
            message_id = head.events[0].data["message_id"]
            stored = (await client.get(f"/api/conversations/{head.events[0].data['conversation_id']}")).json()
            assert (await ready(client))["code"] == 200

    assert refused.status_code == 503
    assert refused.json()["error"]["cause"] == "the disk is full"
    assert rest.names[-1] == "done"
    reply = next(m for m in stored["messages"] if m["id"] == message_id)
    assert (reply["status"], reply["content"]) == ("completed", "written after all")


async def test_sigkill_loses_at_most_what_came_since_the_last_checkpoint(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    for i in range(3):
        upstream.add(Reply([openai_chunk(f"kept part {i} ")], finish=False))
    port = free_port()
    db = tmp_path / "chat.db"
    command = [PYTHON, "app.py", "--port", str(port), "--db", str(db)]
    # Each first token is enough for a checkpoint; time alone never is.
    env = pointed_at(upstream, SIDECHAT_CHECKPOINT_BYTES="8", SIDECHAT_CHECKPOINT_SECONDS="3600")
    async with running(command, port=port, env=env, log=tmp_path / "first.log") as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
            for i in range(3):
                assert (await client.post("/api/chat", json={"message": f"q{i}"})).status_code == 202
        await until(
            lambda: all(content for _, content in rows(db)) and len(rows(db)) == 3, what="checkpoints"
        )
        server.process.send_signal(signal.SIGKILL)
        await asyncio.to_thread(server.process.wait, 10)
    async with running(command, port=port, env=env, log=tmp_path / "second.log"):
        assert sorted(rows(db)) == [("interrupted", f"kept part {i} ") for i in range(3)]


async def test_shutdown_gives_a_refused_write_one_more_try_then_says_what_was_lost(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    gate = asyncio.Event()
    upstream.add(Reply([openai_chunk("doomed "), gate, *openai_reply("text")]))
    port = free_port()
    db = tmp_path / "chat.db"
    command = [PYTHON, "app.py", "--port", str(port), "--db", str(db)]
    env = pointed_at(upstream, SIDECHAT_DB_BUSY_TIMEOUT="0.05", SIDECHAT_SHUTDOWN_GRACE_SECONDS="0.5")
    async with running(command, port=port, env=env, log=tmp_path / "server.log") as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
            async with client.stream("POST", "/api/chat/stream", json={"message": "hi"}) as response:
                reader = EventReader(response)
                head = await reader.read(until=2)
                with foreign_lock(db):
                    gate.set()
                    await until(
                        lambda: ready_waiting(client, 1), what="the reply to wait for its final write"
                    )
                    server.process.send_signal(signal.SIGTERM)
                    rest = await asyncio.wait_for(reader.read(), timeout=10)
                    await asyncio.to_thread(server.process.wait, 10)
    message_id = head.events[0].data["message_id"]
    assert rest.names == ["token", "error"]  # " text", then no `done`: it was never stored
    assert rest.terminal.data["error"]["type"] == "storage"
    assert f"LOST the end of message {message_id} (completed, 11 characters of text)" in server.output()


async def test_readiness_fails_while_a_write_cannot_go_through(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    settings = settings_for(upstream, tmp_path)
    async with serve(settings) as url, httpx.AsyncClient(base_url=url, timeout=10) as client:
        with foreign_lock(tmp_path / "chat.db"):
            locked = await ready(client)
        free = await ready(client)
    assert locked == {
        "code": 503,
        "status": "unavailable",
        "reason": "the database cannot be written: the database is locked by another process",
    }
    assert free["code"] == 200
