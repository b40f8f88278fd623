"""Generations outlive connections: shared, resumable, cancellable, and never lost."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.fakeupstream import FakeUpstream, Reply, openai_chunk, openai_reply, sse
from tests.live import EventReader, chat_stream, read_stream

pytestmark = pytest.mark.anyio
ROOT = Path(__file__).resolve().parent.parent


async def reply_row(client: httpx.AsyncClient, conversation_id: int) -> dict[str, object]:
    messages = (await client.get(f"/api/conversations/{conversation_id}")).json()["messages"]
    return messages[-1]  # type: ignore[no-any-return]


async def wait_for_status(client: httpx.AsyncClient, conversation_id: int, status: str) -> dict[str, object]:
    for _ in range(200):
        row = await reply_row(client, conversation_id)
        if row["status"] == status:
            return row
        await asyncio.sleep(0.02)
    raise AssertionError(f"reply never became {status}: {row}")


async def test_two_clients_on_one_generation_get_identical_events(
    client: httpx.AsyncClient, upstream: FakeUpstream
) -> None:
    gate = asyncio.Event()
    upstream.add(Reply([openai_chunk("one"), gate, *openai_reply(" two", " three")]))
    accepted = (await client.post("/api/chat", json={"message": "hi"})).json()

    async def attach() -> list[tuple[str | None, str, dict[str, object]]]:
        async with client.stream("GET", accepted["stream_url"]) as response:
            transcript = await read_stream(response)
        return [(e.id, e.event, e.data) for e in transcript.events]

    readers = [asyncio.create_task(attach()) for _ in range(2)]
    await asyncio.sleep(0.2)
    gate.set()
    first, second = await asyncio.gather(*readers)

    assert first == second
    assert [name for _, name, _ in first] == ["start", "token", "token", "token", "done"]
    assert [int(i or 0) for i, _, _ in first] == [1, 2, 3, 4, 5]


async def test_resume_while_running_after_every_last_event_id(
    client: httpx.AsyncClient, upstream: FakeUpstream
) -> None:
    gate = asyncio.Event()
    upstream.add(Reply([openai_chunk("a"), openai_chunk("b"), gate, *openai_reply("c")]))
    accepted = (await client.post("/api/chat", json={"message": "hi"})).json()
    await asyncio.sleep(0.2)  # start, a, b are out; the rest waits on the gate

    async def resume(after: int) -> list[str | None]:
        headers = {"last-event-id": str(after)}
        async with client.stream("GET", accepted["stream_url"], headers=headers) as response:
            return [e.id for e in (await read_stream(response)).events]

    readers = [asyncio.create_task(resume(after)) for after in range(4)]
    await asyncio.sleep(0.1)
    gate.set()
    results = await asyncio.gather(*readers)

    assert results == [[str(i) for i in range(after + 1, 6)] for after in range(4)]


async def test_disconnect_with_continue_finishes_and_stores_the_reply(
    client: httpx.AsyncClient, upstream: FakeUpstream
) -> None:
    gate = asyncio.Event()
    upstream.add(Reply([openai_chunk("kept "), gate, *openai_reply("whole")]))

    async with client.stream("POST", "/api/chat/stream", json={"message": "hi"}) as response:
        head = await EventReader(response).read(until=2)
    gate.set()

    row = await wait_for_status(client, head.events[0].data["conversation_id"], "completed")
    assert row["content"] == "kept whole"
    assert upstream.hangups == 0


@pytest.mark.parametrize("client", [{"on_disconnect": "cancel"}], indirect=True)
async def test_disconnect_with_cancel_closes_the_upstream_and_keeps_the_partial_text(
    client: httpx.AsyncClient, upstream: FakeUpstream
) -> None:
    upstream.add(Reply([openai_chunk("partial")], finish=False))

    async with client.stream("POST", "/api/chat/stream", json={"message": "hi"}) as response:
        head = await EventReader(response).read(until=2)

    await asyncio.wait_for(upstream.hung_up.wait(), timeout=1.0)
    row = await wait_for_status(client, head.events[0].data["conversation_id"], "cancelled")
    assert row["content"] == "partial"
    assert row["metadata"]["finish_reason"] == "cancelled"  # type: ignore[index]


@pytest.mark.parametrize("client", [{"on_disconnect": "cancel"}], indirect=True)
async def test_cancel_policy_waits_for_the_last_client(
    client: httpx.AsyncClient, upstream: FakeUpstream
) -> None:
    upstream.add(Reply([openai_chunk("a")], finish=False))

    first_request = client.stream("POST", "/api/chat/stream", json={"message": "hi"})
    first_reader = EventReader(await first_request.__aenter__())  # kept: dropping it closes the stream
    head = await first_reader.read(until=2)
    url = f"/api/messages/{head.events[0].data['message_id']}/stream"
    second_request = client.stream("GET", url, headers={"last-event-id": "2"})
    await second_request.__aenter__()

    await first_request.__aexit__(None, None, None)
    await asyncio.sleep(0.3)
    assert upstream.hangups == 0  # one client is still watching
    await second_request.__aexit__(None, None, None)
    await asyncio.wait_for(upstream.hung_up.wait(), timeout=1.0)
    row = await wait_for_status(client, head.events[0].data["conversation_id"], "cancelled")
    assert row["content"] == "a"


async def test_cancel_mid_stream(client: httpx.AsyncClient, upstream: FakeUpstream) -> None:
    upstream.add(Reply([openai_chunk("half")], finish=False))

    async with client.stream("POST", "/api/chat/stream", json={"message": "hi"}) as response:
        reader = EventReader(response)
        head = await reader.read(until=2)
        message_id = head.events[0].data["message_id"]
        cancelled = await client.post(f"/api/messages/{message_id}/cancel")
        rest = await asyncio.wait_for(reader.read(), timeout=1.0)

    assert cancelled.status_code == 200
    assert cancelled.json()["message"]["status"] == "cancelled"
    assert cancelled.json()["message"]["content"] == "half"
    assert rest.names == ["done"]
    assert rest.terminal.data["finish_reason"] == "cancelled"
    assert upstream.hangups == 1
    again = await client.post(f"/api/messages/{message_id}/cancel")
    assert again.status_code == 409


async def test_delete_during_a_stream_cancels_it_first(
    client: httpx.AsyncClient, upstream: FakeUpstream
) -> None:
    upstream.add(Reply([openai_chunk("doomed")], finish=False))

    async with client.stream("POST", "/api/chat/stream", json={"message": "hi"}) as response:
        reader = EventReader(response)
        head = await reader.read(until=2)
        conversation_id = head.events[0].data["conversation_id"]
        deleted = await client.delete(f"/api/conversations/{conversation_id}")
        rest = await asyncio.wait_for(reader.read(), timeout=1.0)

    assert deleted.status_code == 204
    assert rest.terminal.event == "done" and rest.terminal.data["finish_reason"] == "cancelled"
    assert upstream.hangups == 1
    assert (await client.get(f"/api/conversations/{conversation_id}")).status_code == 404


@pytest.mark.parametrize("path", ["/api/chat", "/api/chat/stream"])
async def test_same_idempotency_key_attaches_to_the_first_request(
    client: httpx.AsyncClient, upstream: FakeUpstream, path: str
) -> None:
    gate = asyncio.Event()
    upstream.add(Reply([openai_chunk("only "), gate, *openai_reply("once")]))
    headers = {"idempotency-key": "retry-123"}

    async def send() -> tuple[int, str]:
        async with client.stream("POST", path, json={"message": "hi"}, headers=headers) as response:
            if path == "/api/chat":
                await response.aread()
                return response.json()["message_id"], ""
            transcript = await read_stream(response)
            return transcript.events[0].data["message_id"], transcript.text

    first = asyncio.create_task(send())
    await asyncio.sleep(0.2)
    second = asyncio.create_task(send())
    await asyncio.sleep(0.2)
    gate.set()
    (first_id, first_text), (second_id, second_text) = await asyncio.gather(first, second)

    assert first_id == second_id
    assert first_text == second_text
    assert len(upstream.requests) == 1
    conversations = (await client.get("/api/conversations")).json()["conversations"]
    assert [c["message_count"] for c in conversations] == [2]
    # And once it is over, the same key still answers with the first turn.
    await wait_for_status(client, conversations[0]["id"], "completed")
    late = await client.post("/api/chat", json={"message": "hi"}, headers=headers)
    assert late.json()["message_id"] == first_id
    assert len(upstream.requests) == 1


async def test_hundred_generations_finishing_together_store_every_row(
    client: httpx.AsyncClient, upstream: FakeUpstream
) -> None:
    gate = asyncio.Event()
    count = 100
    upstream.add(*[Reply([openai_chunk(f"reply {i}"), gate, *openai_reply(" end")]) for i in range(count)])

    accepted = await asyncio.gather(
        *(client.post("/api/chat", json={"message": f"q{i}"}) for i in range(count))
    )
    assert {a.status_code for a in accepted} == {202}
    await asyncio.sleep(0.3)
    gate.set()

    rows = [await wait_for_status(client, a.json()["conversation_id"], "completed") for a in accepted]

    assert sorted(r["content"] for r in rows) == sorted(f"reply {i} end" for i in range(count))
    assert all(r["metadata"]["finish_reason"] == "stop" for r in rows)  # type: ignore[index]
    assert len({r["id"] for r in rows}) == count


# -- whole processes: signals ---------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def spawn(tmp_path: Path, upstream: FakeUpstream):  # type: ignore[no-untyped-def]
    processes: list[subprocess.Popen[bytes]] = []

    async def start(**env: str) -> tuple[subprocess.Popen[bytes], str]:
        port = free_port()
        environment = {
            **os.environ,
            "SIDECHAT_PROVIDER": "openai",
            "OPENAI_API_KEY": "sk-test",
            "OPENAI_BASE_URL": upstream.url,
            "SIDECHAT_SHUTDOWN_GRACE_SECONDS": "0.5",
            **env,
        }
        log = tmp_path / f"server-{port}.log"
        with log.open("wb") as output:
            process = subprocess.Popen(
                [sys.executable, "app.py", "--port", str(port), "--db", str(tmp_path / "chat.db")],
                cwd=ROOT,
                env=environment,
                stdout=output,
                stderr=subprocess.STDOUT,
            )
        processes.append(process)
        url = f"http://127.0.0.1:{port}"
        async with httpx.AsyncClient() as probe:
            for _ in range(200):
                try:
                    if (await probe.get(f"{url}/healthz")).status_code == 200:
                        return process, url
                except httpx.TransportError:
                    await asyncio.sleep(0.05)
        raise AssertionError(f"server did not start: {log.read_text()}")

    yield start
    for process in processes:
        if process.poll() is None:
            process.kill()
        process.wait()


def stored_reply(tmp_path: Path) -> tuple[str, str]:
    with sqlite3.connect(tmp_path / "chat.db") as db:
        row = db.execute(
            "SELECT status, content FROM messages WHERE role = 'assistant' ORDER BY id DESC"
        ).fetchone()
    return row[0], row[1]


async def test_sigterm_mid_stream_ends_clients_with_shutdown_and_rows_interrupted(
    spawn,
    upstream: FakeUpstream,
    tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    upstream.add(Reply([openai_chunk("cut short")], finish=False))
    process, url = await spawn()

    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        async with client.stream("POST", "/api/chat/stream", json={"message": "hi"}) as response:
            reader = EventReader(response)
            await reader.read(until=2)
            process.send_signal(signal.SIGTERM)
            rest = await asyncio.wait_for(reader.read(), timeout=5)

    assert rest.names == ["error"]
    assert rest.terminal.data["error"]["type"] == "shutdown"
    assert rest.terminal.data["partial"] is True
    # uvicorn re-raises the signal once it has shut down cleanly, so the exit is "killed by SIGTERM".
    assert await asyncio.to_thread(process.wait, 10) in (0, -signal.SIGTERM)
    assert stored_reply(tmp_path) == ("interrupted", "cut short")


async def test_sigterm_lets_a_generation_finish_within_the_grace_period(
    spawn,
    upstream: FakeUpstream,
    tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    upstream.add(Reply([openai_chunk("nearly"), 0.3, *openai_reply(" done")]))
    process, url = await spawn(SIDECHAT_SHUTDOWN_GRACE_SECONDS="5")

    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        async with client.stream("POST", "/api/chat/stream", json={"message": "hi"}) as response:
            reader = EventReader(response)
            await reader.read(until=2)
            process.send_signal(signal.SIGTERM)
            rest = await asyncio.wait_for(reader.read(), timeout=5)

    assert rest.names[-1] == "done"
    # uvicorn re-raises the signal once it has shut down cleanly, so the exit is "killed by SIGTERM".
    assert await asyncio.to_thread(process.wait, 10) in (0, -signal.SIGTERM)
    assert stored_reply(tmp_path) == ("completed", "nearly done")


async def test_sigkill_then_restart_marks_the_reply_interrupted(
    spawn,
    upstream: FakeUpstream,
    tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    upstream.add(Reply([openai_chunk("lost")], finish=False))
    process, url = await spawn()
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        async with client.stream("POST", "/api/chat/stream", json={"message": "hi"}) as response:
            head = await EventReader(response).read(until=2)
            process.kill()
    await asyncio.to_thread(process.wait, 10)
    assert stored_reply(tmp_path)[0] == "streaming"

    _, url = await spawn()
    assert stored_reply(tmp_path)[0] == "interrupted"
    stream_url = f"/api/messages/{head.events[0].data['message_id']}/stream"
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
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


@pytest.mark.parametrize("client", [{"checkpoint_seconds": 0.1}], indirect=True)
async def test_checkpoint_saves_partial_text_of_a_long_generation(
    client: httpx.AsyncClient, upstream: FakeUpstream
) -> None:
    gate = asyncio.Event()
    upstream.add(Reply([openai_chunk("so far"), gate, *openai_reply(" and the rest")]))
    accepted = (await client.post("/api/chat", json={"message": "hi"})).json()
    await asyncio.sleep(0.4)

    row = await reply_row(client, accepted["conversation_id"])
    assert (row["status"], row["content"]) == ("streaming", "so far")
    gate.set()
    row = await wait_for_status(client, accepted["conversation_id"], "completed")
    assert row["content"] == "so far and the rest"


@pytest.mark.parametrize("client", [{"replay_seconds": 0.0}], indirect=True)
async def test_finished_replies_replay_from_the_database_with_their_ending(
    client: httpx.AsyncClient, upstream: FakeUpstream
) -> None:
    upstream.add(
        Reply([openai_chunk("half"), sse({"error": {"message": "boom", "type": "server_error"}})]),
        Reply([openai_chunk("stopped")], finish=False),
    )
    failed = await chat_stream(client, {"message": "one"})
    async with client.stream("POST", "/api/chat/stream", json={"message": "two"}) as response:
        reader = EventReader(response)
        cancelled_id = (await reader.read(until=2)).events[0].data["message_id"]
        assert (await client.post(f"/api/messages/{cancelled_id}/cancel")).status_code == 200
        await reader.read()
    await asyncio.sleep(0.05)  # both replay logs are gone

    replays = []
    for message_id in (failed.events[0].data["message_id"], cancelled_id):
        async with client.stream("GET", f"/api/messages/{message_id}/stream") as response:
            replays.append(await read_stream(response))

    assert replays[0].names == ["start", "token", "error"]
    assert replays[0].text == "half"
    assert replays[0].terminal.data["error"] == failed.terminal.data["error"]
    assert replays[0].terminal.data["partial"] is True
    assert replays[1].names == ["start", "token", "done"]
    assert replays[1].text == "stopped"
    assert replays[1].terminal.data["finish_reason"] == "cancelled"


async def test_bad_configuration_stops_start_up_naming_the_variable(tmp_path: Path) -> None:
    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "app.py", "--db", str(tmp_path / "chat.db")],
        cwd=ROOT,
        env={**os.environ, "SIDECHAT_HEARTBEAT_SECONDS": "abc"},
        capture_output=True,
        timeout=30,
    )
    assert result.returncode != 0
    assert b"SIDECHAT_HEARTBEAT_SECONDS='abc'" in result.stderr


async def test_uvicorn_app_colon_app_serves_from_the_environment(tmp_path: Path) -> None:
    port = free_port()
    with (tmp_path / "server.log").open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "app:app", "--port", str(port)],
            cwd=ROOT,
            env={**os.environ, "SIDECHAT_DB": str(tmp_path / "chat.db"), "SIDECHAT_DEMO_DELAY": "0"},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            for _ in range(200):
                try:
                    await client.get("/healthz")
                    break
                except httpx.TransportError:
                    await asyncio.sleep(0.05)
            transcript = await chat_stream(client, {"message": "hi"})
        assert transcript.names[0] == "start" and transcript.names[-1] == "done"
        assert (tmp_path / "chat.db").exists()
    finally:
        process.terminate()
        await asyncio.to_thread(process.wait, 10)


async def test_a_client_that_stops_reading_slows_neither_the_generation_nor_others(
    client: httpx.AsyncClient, upstream: FakeUpstream
) -> None:
    piece = "x" * 1000
    upstream.add(
        Reply([openai_chunk(piece) for _ in range(8000)] + openai_reply("end"))
    )  # ~8 MB: past socket buffers
    accepted = (await client.post("/api/chat", json={"message": "hi"})).json()

    async with httpx.AsyncClient(base_url=str(client.base_url), timeout=10) as other:
        stalled = other.stream("GET", accepted["stream_url"])
        await stalled.__aenter__()  # attached, and never reads a byte
        try:
            async with client.stream("GET", accepted["stream_url"]) as response:
                reading = await asyncio.wait_for(read_stream(response), timeout=10)
            row = await wait_for_status(client, accepted["conversation_id"], "completed")
        finally:
            await stalled.__aexit__(None, None, None)

    assert reading.names[-1] == "done"
    assert reading.text == piece * 8000 + "end"
    assert row["content"] == reading.text
