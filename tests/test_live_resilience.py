"""Generations outlive connections: shared, resumable, cancellable, and never lost."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import httpx
import pytest

from tests.backends import every_backend
from tests.fakeupstream import FakeUpstream, Reply, openai_chunk, openai_reply, sse
from tests.live import EventReader, chat_stream, read_stream, until

pytestmark = [pytest.mark.anyio, every_backend]
ROOT = Path(__file__).resolve().parent.parent


async def reply_row(client: httpx.AsyncClient, conversation_id: int) -> dict[str, object]:
    messages = (await client.get(f"/api/conversations/{conversation_id}")).json()["messages"]
    return messages[-1]  # type: ignore[no-any-return]


async def wait_for_status(client: httpx.AsyncClient, conversation_id: int, status: str) -> dict[str, object]:
    async def reached() -> dict[str, object] | None:
        row = await reply_row(client, conversation_id)
        return row if row["status"] == status else None

    return await until(reached, what=f"the reply to become {status}")  # type: ignore[no-any-return]


async def test_two_clients_on_one_generation_get_identical_events(
    client: httpx.AsyncClient, upstream: FakeUpstream
) -> None:
    gate = asyncio.Event()
    upstream.add(Reply([openai_chunk("one"), gate, *openai_reply(" two", " three")]))
    accepted = (await client.post("/api/chat", json={"message": "hi"})).json()

    async def attach(live: asyncio.Event) -> list[tuple[str | None, str, dict[str, object]]]:
        async with client.stream("GET", accepted["stream_url"]) as response:
            reader = EventReader(response)
            head = await reader.read(until=2)  # start and "one": following while it runs
            live.set()
            rest = await reader.read()
        return [(e.id, e.event, e.data) for e in head.events + rest.events]

    following = [asyncio.Event(), asyncio.Event()]
    readers = [asyncio.create_task(attach(live)) for live in following]
    await asyncio.gather(*(live.wait() for live in following))
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
    async with client.stream("GET", accepted["stream_url"]) as response:
        await EventReader(response).read(until=3)  # start, a, b are out; the rest waits on the gate

    async with contextlib.AsyncExitStack() as stack:
        responses = [  # each is attached once its headers are here
            await stack.enter_async_context(
                client.stream("GET", accepted["stream_url"], headers={"last-event-id": str(after)})
            )
            for after in range(4)
        ]
        gate.set()
        results = [[e.id for e in (await read_stream(response)).events] for response in responses]

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
    gate = asyncio.Event()
    upstream.add(Reply([openai_chunk("a"), gate, openai_chunk("b")], finish=False))

    first_request = client.stream("POST", "/api/chat/stream", json={"message": "hi"})
    first_reader = EventReader(await first_request.__aenter__())  # kept: dropping it closes the stream
    head = await first_reader.read(until=2)
    url = f"/api/messages/{head.events[0].data['message_id']}/stream"
    second_request = client.stream("GET", url, headers={"last-event-id": "2"})
    second_reader = EventReader(await second_request.__aenter__())

    await first_request.__aexit__(None, None, None)
    # A request on a new connection, answered after the server has read the first one's
    # close (it came first), so the first client's leaving has been handled by now.
    async with httpx.AsyncClient(base_url=str(client.base_url)) as other:
        assert (await other.get("/healthz")).status_code == 200
    gate.set()
    more = await second_reader.read(until=1)
    assert more.names == ["token"] and more.text == "b"  # still running for the client that stayed
    assert upstream.hangups == 0
    await second_request.__aexit__(None, None, None)
    await asyncio.wait_for(upstream.hung_up.wait(), timeout=1.0)
    row = await wait_for_status(client, head.events[0].data["conversation_id"], "cancelled")
    assert row["content"] == "ab"


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

    async def send(accepted: asyncio.Event) -> tuple[int, str]:
        async with client.stream("POST", path, json={"message": "hi"}, headers=headers) as response:
            accepted.set()  # its headers are here: the turn was accepted (or found)
            if path == "/api/chat":
                await response.aread()
                return response.json()["message_id"], ""
            transcript = await read_stream(response)
            return transcript.events[0].data["message_id"], transcript.text

    accepted = [asyncio.Event(), asyncio.Event()]
    first = asyncio.create_task(send(accepted[0]))
    await until(lambda: upstream.requests, what="the first request to reach the provider")
    second = asyncio.create_task(send(accepted[1]))
    await accepted[1].wait()  # while the first generation still waits on the gate
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


@pytest.mark.parametrize("client", [{"max_streams_per_user": 200, "rate_limit": (200, 60.0)}], indirect=True)
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
    await until(lambda: len(upstream.requests) == count, what="every generation to be waiting upstream")
    gate.set()

    rows = [await wait_for_status(client, a.json()["conversation_id"], "completed") for a in accepted]

    assert sorted(r["content"] for r in rows) == sorted(f"reply {i} end" for i in range(count))
    assert all(r["metadata"]["finish_reason"] == "stop" for r in rows)  # type: ignore[index]
    assert len({r["id"] for r in rows}) == count


@pytest.mark.parametrize("client", [{"checkpoint_seconds": 0.1}], indirect=True)
async def test_checkpoint_saves_partial_text_of_a_long_generation(
    client: httpx.AsyncClient, upstream: FakeUpstream
) -> None:
    gate = asyncio.Event()
    upstream.add(Reply([openai_chunk("so far"), gate, *openai_reply(" and the rest")]))
    accepted = (await client.post("/api/chat", json={"message": "hi"})).json()

    async def saved() -> dict[str, object] | None:
        row = await reply_row(client, accepted["conversation_id"])
        return row if row["content"] else None

    row = await until(saved, what="the partial text to be checkpointed")
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


@pytest.mark.parametrize("client", [{"max_reply_chars": 20_000_000}], indirect=True)  # 8 MB here
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


async def test_two_racing_cancels_answer_once_each_way(
    client: httpx.AsyncClient, upstream: FakeUpstream
) -> None:
    upstream.add(Reply([openai_chunk("held")], finish=False))
    accepted = (await client.post("/api/chat", json={"message": "hi"})).json()
    await until(lambda: upstream.requests, what="the generation to reach the provider")
    url = f"/api/messages/{accepted['message_id']}/cancel"
    answers = await asyncio.gather(client.post(url), client.post(url))
    assert sorted(a.status_code for a in answers) == [200, 409]
    assert upstream.hangups == 1


async def test_two_racing_deletes_answer_once_each_way(
    client: httpx.AsyncClient, upstream: FakeUpstream
) -> None:
    upstream.add(Reply([openai_chunk("held")], finish=False))
    accepted = (await client.post("/api/chat", json={"message": "hi"})).json()
    await until(lambda: upstream.requests, what="the generation to reach the provider")
    url = f"/api/conversations/{accepted['conversation_id']}"
    answers = await asyncio.gather(client.delete(url), client.delete(url))
    assert sorted(a.status_code for a in answers) == [204, 404]
    assert (await client.get(url)).status_code == 404
