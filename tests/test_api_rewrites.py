"""POST /api/messages/{id}/regenerate and …/edit on a real server, the fake upstream as OpenAI:
what the provider is sent, what is stored, what the feeds say and every refusal."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from tests.backends import every_backend
from tests.fakeupstream import FakeUpstream, Reply, openai_chunk, openai_reply
from tests.live import EventReader, read_stream, until

pytestmark = [pytest.mark.anyio, every_backend]

FAILED = Reply(
    status=400,
    headers={"content-type": "application/json"},
    script=[b'{"error": {"message": "no such thing", "type": "invalid_request_error"}}'],
)


async def said(client: httpx.AsyncClient, upstream: FakeUpstream, text: str, **more: Any) -> dict[str, Any]:
    """A finished reply of the fake upstream's to `text`."""
    upstream.add(Reply(openai_reply(f"re: {text}")))
    answered = await client.post("/api/chat", json={"message": text, "wait": True, **more})
    assert answered.status_code == 200, answered.text
    return answered.json()["message"]  # type: ignore[no-any-return]


async def messages(client: httpx.AsyncClient, conversation_id: int) -> list[dict[str, Any]]:
    return (await client.get(f"/api/conversations/{conversation_id}")).json()["messages"]  # type: ignore[no-any-return]


async def test_regenerate_sends_the_provider_what_the_first_reply_was_sent(
    client: httpx.AsyncClient, upstream: FakeUpstream
) -> None:
    first = await said(client, upstream, "A city?")
    old = await said(client, upstream, "Another?", conversation_id=first["conversation_id"])
    upstream.add(Reply(openai_reply("Lyon")))

    answered = await client.post(f"/api/messages/{old['id']}/regenerate", json={"wait": True})

    assert answered.status_code == 200, answered.text
    new = answered.json()["message"]
    assert upstream.requests[2].json() == upstream.requests[1].json()
    assert [m["content"] for m in upstream.requests[2].json()["messages"]] == [
        "A city?",
        "re: A city?",
        "Another?",
    ]
    assert (new["status"], new["content"], new["metadata"]["supersedes"]) == ("completed", "Lyon", old["id"])
    shown = await messages(client, old["conversation_id"])
    assert [m["id"] for m in shown][-2:] == [old["id"], new["id"]] and len(shown) == 5
    assert shown[-2]["metadata"]["superseded_by"] == new["id"] and shown[-2]["content"] == "re: Another?"


@pytest.mark.parametrize(
    "body",
    [{}, None, {"temperature": 0.5, "max_tokens": 7, "message": "ignored"}],
    ids=["empty", "none", "options"],
)
async def test_regenerate_answers_202_like_chat_and_the_stream_url_replays_it(
    client: httpx.AsyncClient, upstream: FakeUpstream, body: dict[str, Any] | None
) -> None:
    old = await said(client, upstream, "hi")
    upstream.add(Reply(openai_reply("again")))
    answered = await client.post(f"/api/messages/{old['id']}/regenerate", json=body)

    assert answered.status_code == 202, answered.text
    accepted = answered.json()
    assert accepted == {
        "conversation_id": old["conversation_id"],
        "user_message_id": old["metadata"]["user_message_id"],
        "message_id": accepted["message_id"],
        "stream_url": f"/api/messages/{accepted['message_id']}/stream",
    }
    async with client.stream("GET", accepted["stream_url"]) as stream:
        transcript = await read_stream(stream)
    assert (transcript.text, transcript.terminal.event) == ("again", "done")
    assert transcript.events[0].data["user_message_id"] == accepted["user_message_id"]
    sent = upstream.requests[-1].json()
    asked = (0.5, 7) if body else (None, None)
    assert (sent.get("temperature"), sent.get("max_tokens")) == asked


async def test_a_failed_reply_is_tried_again(client: httpx.AsyncClient, upstream: FakeUpstream) -> None:
    upstream.add(FAILED)
    failed = (await client.post("/api/chat", json={"message": "hi", "wait": True})).json()["message"]
    assert failed["status"] == "failed"
    upstream.add(Reply(openai_reply("there")))

    retried = await client.post(f"/api/messages/{failed['id']}/regenerate", json={"wait": True})

    assert retried.json()["message"]["content"] == "there"
    assert len(upstream.requests) == 2 and upstream.requests[1].json() == upstream.requests[0].json()


async def test_edit_sends_the_new_text_after_the_history_before_the_old_one(
    client: httpx.AsyncClient, upstream: FakeUpstream
) -> None:
    first = await said(client, upstream, "A city?")
    old = await said(client, upstream, "Another?", conversation_id=first["conversation_id"])
    question = old["metadata"]["user_message_id"]
    upstream.add(Reply(openai_reply("Marseille")))

    answered = await client.post(f"/api/messages/{question}/edit", json={"message": "A big one?"})

    assert answered.status_code == 202, answered.text
    accepted = answered.json()
    await until(lambda: len(upstream.requests) == 3, what="the edited turn's request")
    assert [m["content"] for m in upstream.requests[2].json()["messages"]] == [
        "A city?",
        "re: A city?",
        "A big one?",
    ]
    async with client.stream("GET", accepted["stream_url"]) as stream:
        assert (await read_stream(stream)).text == "Marseille"
    shown = await messages(client, old["conversation_id"])
    assert [(m["role"], m["content"]) for m in shown[-2:]] == [
        ("user", "A big one?"),
        ("assistant", "Marseille"),
    ]
    assert [m["metadata"].get("superseded_by") for m in shown] == [
        None,
        None,
        accepted["user_message_id"],
        accepted["message_id"],
        None,
        None,
    ]
    assert shown[-2]["metadata"] == {"supersedes": question}
    assert shown[-1]["metadata"]["supersedes"] == old["id"]


async def test_the_feeds_tell_a_replacement_as_a_new_turn(
    client: httpx.AsyncClient, upstream: FakeUpstream
) -> None:
    old = await said(client, upstream, "hi")
    question = old["metadata"]["user_message_id"]
    async with client.stream("GET", "/api/events") as feed:
        reader = EventReader(feed)
        upstream.add(Reply(openai_reply("again")))
        regenerated = (await client.post(f"/api/messages/{old['id']}/regenerate")).json()
        told = (await reader.read(until=2)).events
        assert [e.event for e in told] == ["generation.started", "generation.finished"]
        assert told[0].data["supersedes"] == old["id"]
        assert told[0].data["message_id"] == regenerated["message_id"]
        assert told[0].data["user_message_id"] == question

        upstream.add(Reply(openai_reply("edited")))
        edited = (await client.post(f"/api/messages/{question}/edit", json={"message": "hey"})).json()
        told = (await reader.read(until=3)).events
    assert [e.event for e in told] == ["message.created", "generation.started", "generation.finished"]
    assert told[0].data["message"]["metadata"] == {"supersedes": question}
    assert told[1].data["supersedes"] == regenerated["message_id"]
    assert told[1].data["user_message_id"] == edited["user_message_id"] == told[0].data["message"]["id"]


async def test_a_replacement_that_was_made_already_is_409_naming_it(
    client: httpx.AsyncClient, upstream: FakeUpstream
) -> None:
    old = await said(client, upstream, "hi")
    upstream.add(Reply(openai_reply("again")))
    first = await client.post(f"/api/messages/{old['id']}/regenerate", json={"wait": True})
    retried = await client.post(f"/api/messages/{old['id']}/regenerate", json={"wait": True})
    assert retried.status_code == 409
    assert retried.json()["error"] == {
        "type": "conflict",
        "message": f"message {old['id']} was replaced already, by message {first.json()['message']['id']}",
        "status": "completed",
        "superseded_by": first.json()["message"]["id"],
    }
    assert len(upstream.requests) == 2  # the retry cost nothing


async def test_a_reply_still_streaming_is_409_until_it_is_stopped(
    client: httpx.AsyncClient, upstream: FakeUpstream
) -> None:
    first = await said(client, upstream, "one")
    upstream.add(Reply([openai_chunk("and"), asyncio.Event()]))  # held until it is cancelled
    running = (
        await client.post("/api/chat", json={"message": "two", "conversation_id": first["conversation_id"]})
    ).json()
    regenerate, edit = (
        f"/api/messages/{running['message_id']}/regenerate",
        f"/api/messages/{running['user_message_id']}/edit",
    )
    for path, body in ((regenerate, None), (edit, {"message": "two!"})):
        refused = await client.post(path, json=body)
        assert refused.status_code == 409, refused.text
        assert "stop it first" in refused.json()["error"]["message"]
    assert (await client.post(f"/api/messages/{running['message_id']}/cancel")).status_code == 200
    upstream.add(Reply(openai_reply("two, again")))
    again = await client.post(regenerate, json={"wait": True})
    assert again.json()["message"]["content"] == "two, again"


async def test_only_the_latest_can_be_replaced(client: httpx.AsyncClient, upstream: FakeUpstream) -> None:
    older = await said(client, upstream, "one")
    await said(client, upstream, "two", conversation_id=older["conversation_id"])
    before = await messages(client, older["conversation_id"])
    for path, body in (
        (f"/api/messages/{older['id']}/regenerate", None),
        (f"/api/messages/{older['metadata']['user_message_id']}/edit", {"message": "one!"}),
    ):
        refused = await client.post(path, json=body)
        assert refused.status_code == 409
        assert "is not the latest" in refused.json()["error"]["message"]
        assert "superseded_by" not in refused.json()["error"]
    assert await messages(client, older["conversation_id"]) == before
    assert len(upstream.requests) == 2


async def test_wrong_kind_and_unknown_ids_are_404_and_change_nothing(
    client: httpx.AsyncClient, upstream: FakeUpstream
) -> None:
    reply = await said(client, upstream, "hi")
    question = reply["metadata"]["user_message_id"]
    before = await messages(client, reply["conversation_id"])
    for path in (
        f"/api/messages/{question}/regenerate",
        f"/api/messages/{reply['id']}/edit",
        "/api/messages/999/regenerate",
        "/api/messages/999/edit",
        "/api/messages/abc/regenerate",
        "/api/messages/99999999999999999999999/edit",
    ):
        refused = await client.post(path, json={"message": "x"})
        assert refused.status_code == 404, path
        assert refused.json()["error"]["type"] == "not_found"
    assert await messages(client, reply["conversation_id"]) == before
    assert len(upstream.requests) == 1


@pytest.mark.parametrize(
    ("path", "body", "fields"),
    [
        ("regenerate", {"temperature": 5}, {"temperature": "must be between 0 and 2"}),
        ("regenerate", {"wait": "yes"}, {"wait": "must be true or false"}),
        ("edit", {}, {"message": "required"}),
        ("edit", {"message": " ", "model": 3}, {"message": "must not be empty", "model": "must be a string"}),
    ],
)
async def test_invalid_fields_are_422(
    client: httpx.AsyncClient, upstream: FakeUpstream, path: str, body: dict[str, Any], fields: dict[str, str]
) -> None:
    reply = await said(client, upstream, "hi")
    target = reply["id"] if path == "regenerate" else reply["metadata"]["user_message_id"]
    refused = await client.post(f"/api/messages/{target}/{path}", json=body)
    assert refused.status_code == 422
    assert refused.json()["error"]["fields"] == fields
    assert len(upstream.requests) == 1


@pytest.mark.parametrize("client", [{"rate_limit": (2, 3600.0)}], indirect=True)
async def test_the_rate_limit_applies_as_for_chat(client: httpx.AsyncClient, upstream: FakeUpstream) -> None:
    old = await said(client, upstream, "hi")
    upstream.add(Reply(openai_reply("again")))
    new = (await client.post(f"/api/messages/{old['id']}/regenerate", json={"wait": True})).json()["message"]
    before = await messages(client, old["conversation_id"])
    for path, body in (
        (f"/api/messages/{new['id']}/regenerate", None),
        (f"/api/messages/{old['metadata']['user_message_id']}/edit", {"message": "hey"}),
    ):
        refused = await client.post(path, json=body)
        assert refused.status_code == 429, refused.text
        assert int(refused.headers["retry-after"]) > 1000
        assert refused.json()["error"]["type"] == "rate_limited"
    assert await messages(client, old["conversation_id"]) == before
    assert len(upstream.requests) == 2
