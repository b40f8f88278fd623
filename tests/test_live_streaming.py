"""The whole path, over real sockets: client -> uvicorn -> sidechat -> fake provider."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from tests.backends import every_backend
from tests.fakeupstream import FakeUpstream, Reply, openai_chunk, openai_reply, sse
from tests.live import EventReader, chat_stream, read_stream

pytestmark = [pytest.mark.anyio, every_backend]


async def test_stream_answers_with_spec_headers_and_event_order(
    client: httpx.AsyncClient, upstream: FakeUpstream
) -> None:
    upstream.add(Reply(openai_reply("Hel", "lo")))

    transcript = await chat_stream(client, {"message": "hi"})

    assert transcript.status == 200
    assert transcript.headers["content-type"] == "text/event-stream; charset=utf-8"
    assert transcript.headers["cache-control"] == "no-cache, no-transform"
    assert transcript.headers["x-accel-buffering"] == "no"
    assert transcript.raw.startswith(b"retry: 3000\n\n")
    assert transcript.names == ["start", "token", "token", "done"]
    assert [e.id for e in transcript.events] == ["1", "2", "3", "4"]
    start, done = transcript.events[0].data, transcript.terminal.data
    assert transcript.headers["x-conversation-id"] == str(start["conversation_id"])
    assert transcript.headers["x-message-id"] == str(start["message_id"])
    assert start["user_message_id"] < start["message_id"]
    assert (start["provider"], start["model"]) == ("openai", "gpt-4o-mini")
    assert transcript.text == "Hello"
    assert done["finish_reason"] == "stop"
    assert done["usage"] == {"input_tokens": 12, "output_tokens": 2}
    assert done["message_id"] == start["message_id"]


async def test_first_token_is_relayed_before_upstream_sends_the_last(
    client: httpx.AsyncClient, upstream: FakeUpstream
) -> None:
    gate = asyncio.Event()
    upstream.add(Reply([openai_chunk("first"), gate, *openai_reply(" second")]))

    async with client.stream("POST", "/api/chat/stream", json={"message": "hi"}) as response:
        reader = EventReader(response)
        head = await reader.read(until=2)
        assert head.names == ["start", "token"]
        assert head.text == "first"
        assert not gate.is_set()  # the upstream is still holding the rest
        gate.set()
        rest = await reader.read()

    assert rest.names == ["token", "done"]
    assert rest.text == " second"


@pytest.mark.parametrize("client", [{"heartbeat_seconds": 0.1}], indirect=True)
async def test_heartbeats_while_upstream_is_slow_to_start(
    client: httpx.AsyncClient, upstream: FakeUpstream
) -> None:
    upstream.add(Reply([0.6, *openai_reply("late")]))

    transcript = await chat_stream(client, {"message": "hi"})

    first_token = next(e for e in transcript.events if e.event == "token")
    pings_before = [t for t in transcript.pings if t < first_token.at]
    assert len(pings_before) >= 3
    assert transcript.names == ["start", "token", "done"]


async def test_rows_after_done(client: httpx.AsyncClient, upstream: FakeUpstream) -> None:
    upstream.add(Reply(openai_reply("Hello", " there")))

    transcript = await chat_stream(client, {"message": "Say hello"})
    start = transcript.events[0].data

    answer = await client.get(f"/api/conversations/{start['conversation_id']}")
    assert answer.status_code == 200
    conversation, messages = answer.json()["conversation"], answer.json()["messages"]
    assert conversation["title"] == "Say hello"
    assert [(m["id"], m["role"], m["content"], m["status"]) for m in messages] == [
        (start["user_message_id"], "user", "Say hello", "completed"),
        (start["message_id"], "assistant", "Hello there", "completed"),
    ]
    meta = messages[1]["metadata"]
    assert meta["finish_reason"] == "stop"
    assert meta["usage"] == {"input_tokens": 12, "output_tokens": 2}
    assert meta["provider"] == "openai" and meta["model"] == "gpt-4o-mini"
    assert meta["error"] is None
    assert messages[1]["completed_at"] is not None


async def test_upstream_500_ends_with_error_and_a_failed_row(
    client: httpx.AsyncClient, upstream: FakeUpstream
) -> None:
    body = b'{"error": {"message": "The server had an error", "type": "server_error"}}'
    upstream.add(*[Reply([body], status=500, headers={"content-type": "application/json"})] * 10)

    transcript = await chat_stream(client, {"message": "hi"})

    assert transcript.names == ["start", "error"]
    error = transcript.terminal.data
    assert error["error"]["status"] == 500
    assert error["error"]["type"] == "upstream_error"
    assert "server had an error" in error["error"]["message"]
    assert error["partial"] is False
    messages = (
        await client.get(f"/api/conversations/{transcript.events[0].data['conversation_id']}")
    ).json()["messages"]
    assert [(m["role"], m["status"], m["content"]) for m in messages] == [
        ("user", "completed", "hi"),
        ("assistant", "failed", ""),
    ]
    assert messages[1]["metadata"]["error"]["status"] == 500


async def test_error_mid_stream_keeps_the_partial_text(
    client: httpx.AsyncClient, upstream: FakeUpstream
) -> None:
    upstream.add(
        Reply(
            [
                openai_chunk("Half a"),
                openai_chunk(" thought"),
                sse({"error": {"message": "model overloaded", "type": "server_error", "code": "overloaded"}}),
            ]
        )
    )

    transcript = await chat_stream(client, {"message": "hi"})

    assert transcript.names == ["start", "token", "token", "error"]
    assert transcript.terminal.data["partial"] is True
    assert "model overloaded" in transcript.terminal.data["error"]["message"]
    message_id = transcript.events[0].data["message_id"]
    messages = (
        await client.get(f"/api/conversations/{transcript.events[0].data['conversation_id']}")
    ).json()["messages"]
    assert [(m["id"], m["status"], m["content"]) for m in messages[1:]] == [
        (message_id, "failed", "Half a thought")
    ]


async def test_stream_that_ends_without_its_end_marker_is_truncated(
    client: httpx.AsyncClient, upstream: FakeUpstream
) -> None:
    upstream.add(Reply([openai_chunk("cut"), openai_chunk(" off")]))

    transcript = await chat_stream(client, {"message": "hi"})

    assert transcript.names == ["start", "token", "token", "error"]
    assert transcript.terminal.data["error"]["type"] == "truncated"
    messages = (
        await client.get(f"/api/conversations/{transcript.events[0].data['conversation_id']}")
    ).json()["messages"]
    assert (messages[1]["status"], messages[1]["content"]) == ("failed", "cut off")


async def test_second_turn_sends_the_first_as_history(
    client: httpx.AsyncClient, upstream: FakeUpstream
) -> None:
    upstream.add(Reply(openai_reply("Paris.")), Reply(openai_reply("About 2 million.")))

    first = await chat_stream(client, {"message": "Capital of France?", "system": "Be brief."})
    conversation_id = first.events[0].data["conversation_id"]
    second = await chat_stream(client, {"message": "Population?", "conversation_id": conversation_id})

    assert second.events[0].data["conversation_id"] == conversation_id
    assert upstream.requests[1].json()["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Capital of France?"},
        {"role": "assistant", "content": "Paris."},
        {"role": "user", "content": "Population?"},
    ]


async def test_failed_turn_is_not_sent_back_as_history(
    client: httpx.AsyncClient, upstream: FakeUpstream
) -> None:
    upstream.add(Reply([openai_chunk("partial")]), Reply(openai_reply("ok")))

    first = await chat_stream(client, {"message": "one"})
    conversation_id = first.events[0].data["conversation_id"]
    await chat_stream(client, {"message": "two", "conversation_id": conversation_id})

    assert upstream.requests[1].json()["messages"] == [{"role": "user", "content": "two"}]


async def test_resume_after_last_event_id_replays_only_missing_events(
    client: httpx.AsyncClient, upstream: FakeUpstream
) -> None:
    upstream.add(Reply(openai_reply("a", "b", "c")))
    full = await chat_stream(client, {"message": "hi"})
    message_id = full.events[0].data["message_id"]
    assert full.names == ["start", "token", "token", "token", "done"]

    for seen in range(len(full.events)):
        async with client.stream(
            "GET", f"/api/messages/{message_id}/stream", headers={"last-event-id": str(seen)}
        ) as response:
            resumed = await read_stream(response)
        assert [(e.id, e.event, e.data) for e in resumed.events] == [
            (e.id, e.event, e.data) for e in full.events[seen:]
        ]

    finished = await client.get(f"/api/messages/{message_id}/stream?last_event_id={len(full.events)}")
    assert finished.status_code == 204


@pytest.mark.parametrize("client", [{"replay_seconds": 0.0}], indirect=True)
async def test_resume_from_the_database_resets_then_sends_the_whole_text(
    client: httpx.AsyncClient, upstream: FakeUpstream
) -> None:
    upstream.add(Reply(openai_reply("a", "b", "c")))
    full = await chat_stream(client, {"message": "hi"})
    message_id = full.events[0].data["message_id"]  # with no replay window, its topic is gone now

    async with client.stream(
        "GET", f"/api/messages/{message_id}/stream", headers={"last-event-id": "2"}
    ) as response:
        resumed = await read_stream(response)
    async with client.stream("GET", f"/api/messages/{message_id}/stream") as response:
        replayed = await read_stream(response)

    assert resumed.names == ["reset", "token", "done"]
    assert resumed.text == "abc"
    assert resumed.terminal.id == full.terminal.id
    assert replayed.names == ["start", "token", "done"]
    assert replayed.text == "abc"
    assert replayed.terminal.data["finish_reason"] == "stop"
    gone = await client.get(
        f"/api/messages/{message_id}/stream", headers={"last-event-id": full.terminal.id or ""}
    )
    assert gone.status_code == 204


async def test_token_holding_event_framing_cannot_forge_an_event(
    client: httpx.AsyncClient, upstream: FakeUpstream
) -> None:
    sneaky = "ok\n\nevent: done\ndata: {}\n\n"
    upstream.add(Reply(openai_reply(sneaky)))

    transcript = await chat_stream(client, {"message": "hi"})

    assert transcript.names == ["start", "token", "done"]
    assert transcript.text == sneaky


@pytest.mark.parametrize("client", [{"heartbeat_seconds": 0.2}], indirect=True)
async def test_no_pings_while_tokens_flow_and_pings_when_they_pause(
    client: httpx.AsyncClient, upstream: FakeUpstream
) -> None:
    flowing = [step for i in range(6) for step in (openai_chunk(f"t{i} "), 0.08)]
    upstream.add(Reply([*flowing, 0.75, *openai_reply("end")]))

    transcript = await chat_stream(client, {"message": "hi"})

    tokens = [e.at for e in transcript.events if e.event == "token"]
    assert not [t for t in transcript.pings if t < tokens[5]]  # never quiet for 0.2 s
    in_pause = [t for t in transcript.pings if tokens[5] < t < tokens[6]]
    assert 2 <= len(in_pause) <= 4
    gaps = [b - a for a, b in zip([tokens[5], *in_pause], in_pause, strict=False)]
    assert all(0.15 < gap < 0.35 for gap in gaps)


JSON = {"content-type": "application/json"}
MISBEHAVIOURS = {
    "401": (
        [
            Reply(
                [
                    b'{"error": {"message": "Incorrect API key provided: sk-abc123xyz", "type": "invalid_request_error", "code": "invalid_api_key"}}'
                ],
                status=401,
                headers=JSON,
            )
        ],
        "auth",
        "",
    ),
    "429 quota": (
        [
            Reply(
                [
                    b'{"error": {"message": "You exceeded your current quota", "type": "insufficient_quota", "code": "insufficient_quota"}}'
                ],
                status=429,
                headers={**JSON, "retry-after": "20"},
            )
        ],
        "rate_limited",
        "",
    ),
    "stall before the first token": ([Reply([5.0])], "timeout", ""),
    "stall after a token": ([Reply([openai_chunk("so far"), 5.0])], "timeout", "so far"),
    "garbage data": ([Reply([openai_chunk("ok "), b"data: {not json\n\n"])], "protocol", "ok "),
    "a chunk of the wrong shape": (
        [Reply([openai_chunk("ok "), b'data: {"choices": {"0": 1}}\n\n'])],
        "protocol",
        "ok ",
    ),
    "captive portal": (
        [Reply([b"<html><body>Log in to the Wi-Fi</body></html>"], headers={"content-type": "text/html"})],
        "protocol",
        "",
    ),
}


@pytest.mark.parametrize(
    "client", [{"first_token_timeout": 0.5, "idle_timeout": 0.3, "retry_attempts": 1}], indirect=True
)
@pytest.mark.parametrize("case", list(MISBEHAVIOURS))
async def test_a_misbehaving_provider_ends_in_one_error_and_a_consistent_row(
    client: httpx.AsyncClient, upstream: FakeUpstream, case: str
) -> None:
    replies, error_type, partial = MISBEHAVIOURS[case]
    upstream.add(*replies)

    transcript = await asyncio.wait_for(chat_stream(client, {"message": "hi"}), timeout=5)

    assert transcript.names[0] == "start" and transcript.names[-1] == "error"
    assert transcript.names.count("error") == 1 and "done" not in transcript.names
    error = transcript.terminal.data
    assert error["error"]["type"] == error_type
    assert error["partial"] is bool(partial)
    assert "sk-abc123xyz" not in transcript.raw.decode()  # keys are redacted
    if replies[0].status != 200:
        assert error["error"]["status"] == replies[0].status
    if "retry-after" in replies[0].headers:
        assert error["error"]["retry_after"] == 20
    assert len(upstream.requests) == 1  # none of these was retried
    messages = (
        await client.get(f"/api/conversations/{transcript.events[0].data['conversation_id']}")
    ).json()["messages"]
    assert [(m["role"], m["status"], m["content"]) for m in messages] == [
        ("user", "completed", "hi"),
        ("assistant", "failed", partial),
    ]
    assert messages[1]["metadata"]["error"] == error["error"]


async def test_an_emoji_sent_as_two_utf16_halves_is_stored_whole(
    client: httpx.AsyncClient, upstream: FakeUpstream
) -> None:
    # Some OpenAI-compatible servers cut a JSON string between a surrogate pair's halves.
    halves = [b'data: {"choices": [{"index": 0, "delta": {"content": "hi \\ud83d"}}]}\n\n']
    halves += [b'data: {"choices": [{"index": 0, "delta": {"content": "\\ude00!"}}]}\n\n']
    upstream.add(Reply([*halves, *openai_reply()]))

    transcript = await chat_stream(client, {"message": "hi"})

    assert transcript.names == ["start", "token", "token", "done"]
    assert transcript.text.encode("utf-16", "surrogatepass").decode("utf-16") == "hi 😀!"
    messages = (
        await client.get(f"/api/conversations/{transcript.events[0].data['conversation_id']}")
    ).json()["messages"]
    assert (messages[1]["status"], messages[1]["content"]) == ("completed", "hi 😀!")


async def test_resume_past_the_end_of_a_running_generation_starts_the_client_over(
    client: httpx.AsyncClient, upstream: FakeUpstream
) -> None:
    gate = asyncio.Event()
    upstream.add(Reply([openai_chunk("a"), gate, *openai_reply("b")]))
    accepted = (await client.post("/api/chat", json={"message": "hi"})).json()  # running: held at the gate

    async with client.stream("GET", accepted["stream_url"], headers={"last-event-id": "50"}) as response:
        reader = EventReader(response)
        head = await reader.read(until=3)
        gate.set()
        rest = await reader.read()

    assert head.names == ["reset", "start", "token"]
    assert head.events[1].id == "1"
    assert rest.names == ["token", "done"]


async def test_a_conversation_keeps_its_model(client: httpx.AsyncClient, upstream: FakeUpstream) -> None:
    upstream.add(Reply(openai_reply("ok")))
    created = await client.post("/api/conversations", json={"model": "gpt-custom"})
    conversation_id = created.json()["conversation"]["id"]

    transcript = await chat_stream(client, {"message": "hi", "conversation_id": conversation_id})

    assert transcript.events[0].data["model"] == "gpt-custom"
    assert upstream.requests[0].json()["model"] == "gpt-custom"


@pytest.mark.parametrize("client", [{"max_reply_chars": 12}], indirect=True)
async def test_a_reply_past_its_limit_ends_with_its_text_so_far_and_the_upstream_closed(
    client: httpx.AsyncClient, upstream: FakeUpstream
) -> None:
    upstream.add(Reply([openai_chunk("endless ") for _ in range(1000)], finish=False))
    transcript = await chat_stream(client, {"message": "hi"})
    assert transcript.names[-1] == "error"
    error = transcript.terminal.data["error"]
    assert (error["type"], error["message"]) == (
        "protocol",
        "the reply grew past 12 characters; the rest was not read",
    )
    await asyncio.wait_for(upstream.hung_up.wait(), timeout=5)
    row = (await client.get(f"/api/conversations/{transcript.events[0].data['conversation_id']}")).json()[
        "messages"
    ][-1]
    assert (row["status"], row["content"]) == ("failed", "endless ")


@pytest.mark.parametrize("client", [{"max_upstream_event_bytes": 1024}], indirect=True)
async def test_an_upstream_line_with_no_end_is_cut_off_at_its_limit(
    client: httpx.AsyncClient, upstream: FakeUpstream
) -> None:
    upstream.add(Reply([openai_chunk("before "), b"data: " + b"x" * 600, b"x" * 600], finish=False))
    transcript = await chat_stream(client, {"message": "hi"})
    assert transcript.names == ["start", "token", "error"]
    assert transcript.terminal.data["error"]["type"] == "protocol"
    assert "over 1024 bytes" in transcript.terminal.data["error"]["message"]
    await asyncio.wait_for(upstream.hung_up.wait(), timeout=5)
