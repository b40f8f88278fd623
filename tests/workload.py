"""A real sidechat with its database in use, for the maintenance commands: a reply held
mid-stream by the fake provider (its row `streaming`), and chats that keep coming from the
demo provider while a command runs in a process of its own."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import settings_for
from tests.fakeupstream import FakeUpstream, Reply, openai_chunk, openai_reply
from tests.live import EventReader, Transcript, serve
from tests.processes import PYTHON, run


@dataclass
class Workload:
    client: httpx.AsyncClient
    db: Path
    gate: asyncio.Event  # set: the held reply goes on to its end
    conversation_id: int  # the held reply's
    message_id: int
    tail: asyncio.Task[Transcript]  # the rest of the held reply's stream

    async def finish(self) -> Transcript:
        self.gate.set()
        return await self.tail


@asynccontextmanager
async def busy(upstream: FakeUpstream, tmp_path: Path, **changes: Any) -> AsyncIterator[Workload]:
    gate = asyncio.Event()
    upstream.add(Reply([openai_chunk("held "), gate, *openai_reply("and let go")]))
    settings = settings_for(upstream, tmp_path, demo_delay=0.001, rate_limit=(100_000, 60.0), **changes)
    async with serve(settings) as url, httpx.AsyncClient(base_url=url, timeout=30) as client:
        async with client.stream("POST", "/api/chat/stream", json={"message": "hold this"}) as response:
            reader = EventReader(response)
            head = await reader.read(until=2)  # start, and the first token: the row is streaming
            assert head.names == ["start", "token"]
            start = head.events[0].data
            tail = asyncio.create_task(reader.read())
            workload = Workload(
                client, tmp_path / "chat.db", gate, start["conversation_id"], start["message_id"], tail
            )
            try:
                yield workload
            finally:
                gate.set()
                await tail


@dataclass
class Chatter:
    """Chats to the demo provider, one after another, each in a new conversation."""

    statuses: list[int] = field(default_factory=list)

    @property
    def done(self) -> int:
        return len(self.statuses)


@asynccontextmanager
async def chatting(client: httpx.AsyncClient) -> AsyncIterator[Chatter]:
    chatter = Chatter()

    async def go() -> None:
        while True:
            answer = await client.post(
                "/api/chat", json={"message": "more", "provider": "demo", "wait": True}
            )
            chatter.statuses.append(answer.status_code)

    task = asyncio.create_task(go())
    try:
        yield chatter
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def command_while_chatting(
    workload: Workload, *arguments: str, env: dict[str, str] | None = None
) -> tuple[subprocess.CompletedProcess[str], Chatter]:
    """Run `python -m chat ARGUMENTS --db <the server's>` while chats keep being written;
    answers what it printed, and the chats, at least one of which ended while it ran."""
    async with chatting(workload.client) as chatter:
        before = chatter.done
        result = await sidechat(workload.db, *arguments, env=env)
        during = chatter.done - before
    assert during >= 1, "no chat was written while the command ran"
    assert set(chatter.statuses) == {200}, chatter.statuses
    return result, chatter


async def sidechat(
    db: Path, *arguments: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`python -m chat ARGUMENTS --db DB`, and what it printed."""
    return await run([PYTHON, "-m", "chat", *arguments, "--db", str(db)], env=env)


def age(db: Path, conversation_ids: Sequence[int], days: float) -> None:
    """Make conversations last active `days` ago, as if nobody had touched them since."""
    stamp = (datetime.now(UTC) - timedelta(days=days)).isoformat(timespec="milliseconds")
    with sqlite3.connect(db, timeout=10) as connection:
        connection.executemany(
            "UPDATE conversations SET updated_at = ? WHERE id = ?",
            [(stamp.replace("+00:00", "Z"), cid) for cid in conversation_ids],
        )


def count(db: Path, sql: str, *parameters: object) -> int:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as connection:
        return int(connection.execute(sql, parameters).fetchone()[0])


@contextmanager
def held(db: Path, statements: str) -> Iterator[None]:
    """Another process that ran `statements` on `db` and holds what they took until the block ends."""
    hold = (
        "import sqlite3, sys; d = sqlite3.connect(sys.argv[1], isolation_level=None);"
        f" [d.execute(s) for s in {statements!r}.split(';')]; print('held', flush=True); sys.stdin.readline()"
    )
    holder = subprocess.Popen(
        [PYTHON, "-c", hold, str(db)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        yield
    finally:
        assert holder.stdin is not None and holder.stdout is not None
        holder.stdin.close()
        holder.wait(10)
        holder.stdout.close()
