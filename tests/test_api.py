"""The JSON routes and every way a request can be refused before a stream starts."""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import AsyncIterator

import httpx
import pytest

from chat.config import Settings
from chat.providers.demo import demo_reply
from tests.backends import Backend, every_backend
from tests.live import chat_stream, half_a_body, serve, until

pytestmark = [pytest.mark.anyio, every_backend]


@pytest.fixture
async def client(database: Backend) -> AsyncIterator[httpx.AsyncClient]:
    settings = Settings(
        db=database.db,
        provider="demo",
        demo_delay=0.0,
        max_body_bytes=4096,
        shutdown_grace_seconds=0.5,
    )
    async with serve(settings) as url:
        async with httpx.AsyncClient(base_url=url, timeout=10) as http:
            yield http


def error_of(response: httpx.Response) -> dict[str, object]:
    body = response.json()
    assert set(body) == {"error"}
    assert isinstance(body["error"]["type"], str) and isinstance(body["error"]["message"], str)
    return body["error"]  # type: ignore[no-any-return]


@pytest.mark.parametrize("path", ["/api/chat", "/api/chat/stream"])
async def test_malformed_json_is_400(client: httpx.AsyncClient, path: str) -> None:
    response = await client.post(
        path, content=b'{"message": "hi"', headers={"content-type": "application/json"}
    )
    assert response.status_code == 400
    assert error_of(response)["type"] == "invalid_json"


@pytest.mark.parametrize("path", ["/api/chat", "/api/chat/stream", "/api/conversations"])
async def test_body_that_is_not_json_is_415(client: httpx.AsyncClient, path: str) -> None:
    response = await client.post(
        path, content=b"message=hi", headers={"content-type": "application/x-www-form-urlencoded"}
    )
    assert response.status_code == 415
    assert error_of(response)["type"] == "unsupported_media_type"


async def test_huge_body_is_413(client: httpx.AsyncClient) -> None:
    response = await client.post("/api/chat/stream", json={"message": "x" * 5000})
    assert response.status_code == 413
    assert error_of(response)["type"] == "payload_too_large"


async def test_huge_body_without_content_length_is_413(client: httpx.AsyncClient) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"message": "'
        for _ in range(10):
            yield b"x" * 1000
        yield b'"}'

    response = await client.post("/api/chat", content=chunks(), headers={"content-type": "application/json"})
    assert response.status_code == 413


@pytest.mark.parametrize(
    ("body", "fields"),
    [
        ({}, {"message": "required"}),
        ({"message": ""}, {"message": "must not be empty"}),
        ({"message": 5}, {"message": "must be a string"}),
        ({"message": "hi", "conversation_id": "7"}, {"conversation_id": "must be an integer"}),
        ({"message": "hi", "conversation_id": True}, {"conversation_id": "must be an integer"}),
        ({"message": "hi", "temperature": "hot"}, {"temperature": "must be a number"}),
        ({"message": "hi", "temperature": 3}, {"temperature": "must be between 0 and 2"}),
        ({"message": "hi", "max_tokens": 0}, {"max_tokens": "must be between 1 and 1000000"}),
        ({"message": "hi", "wait": "yes"}, {"wait": "must be true or false"}),
        ({"message": None, "model": 3}, {"message": "required", "model": "must be a string"}),
    ],
)
async def test_invalid_fields_are_422_naming_each_field(
    client: httpx.AsyncClient, body: dict[str, object], fields: dict[str, str]
) -> None:
    response = await client.post("/api/chat/stream", json=body)
    assert response.status_code == 422
    assert error_of(response)["fields"] == fields


async def test_body_that_is_not_an_object_is_422(client: httpx.AsyncClient) -> None:
    response = await client.post("/api/chat", json=["hi"])
    assert response.status_code == 422


@pytest.mark.parametrize(
    ("provider", "variable"),
    [("anthropic", "ANTHROPIC_API_KEY"), ("gemini", "GEMINI_API_KEY"), ("openai", "OPENAI_API_KEY")],
)
async def test_provider_without_a_key_is_422_naming_the_variable(
    client: httpx.AsyncClient, provider: str, variable: str
) -> None:
    response = await client.post("/api/chat/stream", json={"message": "hi", "provider": provider})
    assert response.status_code == 422
    assert variable in error_of(response)["fields"]["provider"]  # type: ignore[index]


async def test_unknown_provider_is_422(client: httpx.AsyncClient) -> None:
    response = await client.post("/api/chat", json={"message": "hi", "provider": "skynet"})
    assert response.status_code == 422
    assert "unknown provider" in error_of(response)["message"]  # type: ignore[operator]


@pytest.mark.parametrize("path", ["/api/chat", "/api/chat/stream"])
async def test_unknown_conversation_is_404_and_stores_nothing(client: httpx.AsyncClient, path: str) -> None:
    response = await client.post(path, json={"message": "hi", "conversation_id": 999})
    assert response.status_code == 404
    assert error_of(response)["type"] == "not_found"
    assert (await client.get("/api/conversations")).json()["conversations"] == []


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/api/conversations/999"),
        ("GET", "/api/conversations/999/messages"),
        ("PATCH", "/api/conversations/999"),
        ("DELETE", "/api/conversations/999"),
        ("GET", "/api/messages/999/stream"),
        ("POST", "/api/messages/999/cancel"),
        ("GET", "/api/messages/99999999999999999999999/stream"),
        ("GET", "/api/nowhere"),
    ],
)
async def test_unknown_ids_are_404(client: httpx.AsyncClient, method: str, path: str) -> None:
    response = await client.request(method, path, json={"title": "x"})
    assert response.status_code == 404
    assert error_of(response)["type"] == "not_found"


async def test_chat_answers_202_then_the_stream_url_replays_it(client: httpx.AsyncClient) -> None:
    response = await client.post("/api/chat", json={"message": "hello there"})
    assert response.status_code == 202
    body = response.json()
    assert set(body) == {"conversation_id", "user_message_id", "message_id", "stream_url"}
    assert body["stream_url"] == f"/api/messages/{body['message_id']}/stream"

    async with client.stream("GET", body["stream_url"]) as stream:
        from tests.live import read_stream

        transcript = await read_stream(stream)
    assert transcript.names[0] == "start" and transcript.names[-1] == "done"
    assert transcript.text == demo_reply("hello there")


async def test_chat_with_wait_answers_the_finished_message(client: httpx.AsyncClient) -> None:
    response = await client.post("/api/chat", json={"message": "hello", "wait": True})
    assert response.status_code == 200
    message = response.json()["message"]
    assert message["role"] == "assistant"
    assert message["status"] == "completed"
    assert message["content"] == demo_reply("hello")
    assert message["metadata"]["provider"] == "demo"
    assert message["metadata"]["finish_reason"] == "stop"


async def test_demo_stream_is_the_default_with_no_keys(client: httpx.AsyncClient) -> None:
    transcript = await chat_stream(client, {"message": "hi"})
    assert transcript.events[0].data["provider"] == "demo"
    assert transcript.text == demo_reply("hi")
    assert len([e for e in transcript.events if e.event == "token"]) > 10
    assert re.search(r"^#{1,6} \S", transcript.text, re.M)  # a heading
    assert re.search(r"^[-*] \S", transcript.text, re.M)  # a list
    assert re.search(r"^```\w*\n.+\n```$", transcript.text, re.M | re.S)  # a fenced code block


async def test_conversation_lifecycle(client: httpx.AsyncClient) -> None:
    created = await client.post("/api/conversations", json={"title": "Plans", "system": "Be terse."})
    assert created.status_code == 201
    conversation = created.json()["conversation"]
    assert (conversation["title"], conversation["system"], conversation["message_count"]) == (
        "Plans",
        "Be terse.",
        0,
    )

    transcript = await chat_stream(
        client, {"message": "first question", "conversation_id": conversation["id"]}
    )
    assert transcript.terminal.event == "done"

    got = (await client.get(f"/api/conversations/{conversation['id']}")).json()
    assert got["conversation"]["title"] == "Plans"  # an explicit title is kept
    assert got["conversation"]["message_count"] == 2
    assert [m["role"] for m in got["messages"]] == ["user", "assistant"]

    renamed = await client.patch(f"/api/conversations/{conversation['id']}", json={"title": "Renamed"})
    assert renamed.status_code == 200
    assert renamed.json()["conversation"]["title"] == "Renamed"
    assert renamed.json()["conversation"]["system"] == "Be terse."

    first_id = got["messages"][0]["id"]
    newer = (await client.get(f"/api/conversations/{conversation['id']}/messages?after_id={first_id}")).json()
    assert [m["id"] for m in newer["messages"]] == [got["messages"][1]["id"]]

    deleted = await client.delete(f"/api/conversations/{conversation['id']}")
    assert deleted.status_code == 204
    assert (await client.get(f"/api/conversations/{conversation['id']}")).status_code == 404
    gone = await client.get(f"/api/messages/{got['messages'][1]['id']}/stream")
    assert gone.status_code == 404  # its messages went with it


async def test_untitled_conversation_takes_its_title_from_the_first_message(
    client: httpx.AsyncClient,
) -> None:
    long = "Tell me everything about the migratory patterns of the arctic tern please"
    transcript = await chat_stream(client, {"message": long})
    conversation_id = transcript.events[0].data["conversation_id"]
    await chat_stream(client, {"message": "and more", "conversation_id": conversation_id})
    title = (await client.get(f"/api/conversations/{conversation_id}")).json()["conversation"]["title"]
    assert title.startswith("Tell me everything about")
    assert len(title) <= 50


async def test_conversation_list_paginates_newest_activity_first(client: httpx.AsyncClient) -> None:
    ids = [
        (await client.post("/api/conversations", json={"title": f"c{i}"})).json()["conversation"]["id"]
        for i in range(5)
    ]
    await chat_stream(client, {"message": "bump", "conversation_id": ids[1]})

    seen: list[int] = []
    cursor = None
    pages = 0
    while True:
        params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = (await client.get("/api/conversations", params=params)).json()
        seen += [c["id"] for c in page["conversations"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert pages == 3
    assert seen == [ids[1], ids[4], ids[3], ids[2], ids[0]]
    listed = (await client.get("/api/conversations")).json()["conversations"][0]
    assert listed["message_count"] == 2 and listed["last_message_at"] is not None


@pytest.mark.parametrize("query", ["limit=0", "limit=abc", "limit=1000", "cursor=%%%", "cursor=bm9wZQ"])
async def test_bad_list_parameters_are_422(client: httpx.AsyncClient, query: str) -> None:
    response = await client.get(f"/api/conversations?{query}")
    assert response.status_code == 422


@pytest.mark.parametrize("body", [{"title": 5}, {"system": ["x"]}, {"provider": "anthropic"}])
async def test_bad_conversation_fields_are_422(client: httpx.AsyncClient, body: dict[str, object]) -> None:
    response = await client.post("/api/conversations", json=body)
    assert response.status_code == 422


async def test_cancel_of_a_finished_message_is_409(client: httpx.AsyncClient) -> None:
    transcript = await chat_stream(client, {"message": "hi"})
    response = await client.post(f"/api/messages/{transcript.events[0].data['message_id']}/cancel")
    assert response.status_code == 409
    assert error_of(response)["type"] == "conflict"


async def test_attach_to_a_user_message_is_404(client: httpx.AsyncClient) -> None:
    transcript = await chat_stream(client, {"message": "hi"})
    response = await client.get(f"/api/messages/{transcript.events[0].data['user_message_id']}/stream")
    assert response.status_code == 404


async def test_bad_last_event_id_is_422(client: httpx.AsyncClient) -> None:
    transcript = await chat_stream(client, {"message": "hi"})
    response = await client.get(
        f"/api/messages/{transcript.events[0].data['message_id']}/stream", headers={"last-event-id": "soon"}
    )
    assert response.status_code == 422


async def test_providers_lists_each_without_its_key(client: httpx.AsyncClient) -> None:
    body = (await client.get("/api/providers")).json()
    assert body["default"] == "demo"
    by_name = {p["name"]: p for p in body["providers"]}
    assert set(by_name) == {"openai", "openai-responses", "anthropic", "gemini", "ollama", "demo"}
    assert by_name["demo"]["available"] is True
    assert by_name["anthropic"] == {
        "name": "anthropic",
        "default_model": by_name["anthropic"]["default_model"],
        "key_set": False,
        "available": False,
        "default": False,
    }


async def test_healthz(client: httpx.AsyncClient) -> None:
    response = await client.get("/healthz")
    assert (response.status_code, response.json()) == (200, {"status": "ok"})


async def test_the_page_is_served(client: httpx.AsyncClient) -> None:
    response = await client.get("/")
    assert response.status_code == 200
    assert "sidechat" in response.text


@pytest.mark.parametrize(
    ("content", "status"),
    [
        (b'{"message": "\\ud800 half an emoji"}', 422),  # a lone surrogate SQLite cannot store
        (b"[" * 100_000 + b"]" * 100_000, 413),
        (b"[" * 3000, 400),  # nested past the parser's depth
        (b'{"message": "hi", "conversation_id": 99999999999999999999999}', 422),
    ],
)
async def test_odd_bodies_get_a_clear_error_not_a_crash(
    client: httpx.AsyncClient, content: bytes, status: int
) -> None:
    response = await client.post(
        "/api/chat/stream", content=content, headers={"content-type": "application/json"}
    )
    assert response.status_code == status
    error_of(response)


@pytest.mark.parametrize(
    ("method", "path", "headers", "status"),
    [
        ("GET", "/api/messages/2/stream?last_event_id=²", {}, 422),
        ("GET", "/api/messages/2/stream", {"last-event-id": "9" * 5000}, 422),
        ("GET", "/api/conversations?limit=²", {}, 422),
        ("GET", "/api/conversations/1/messages?after_id=" + "9" * 5000, {}, 422),
        ("GET", "/api/conversations/" + "9" * 5000, {}, 404),
        ("GET", "/api/conversations/abc", {}, 404),
        ("GET", "/api/messages/-1/stream", {}, 404),
        ("GET", "/api/conversations?cursor=" + "MjAyNnw5OTk5OTk5OTk5OTk5OTk5OTk5OTk5", {}, 422),
        ("GET", "/api/chat", {}, 405),
    ],
)
async def test_odd_ids_and_parameters_get_a_clear_error_not_a_crash(
    client: httpx.AsyncClient, method: str, path: str, headers: dict[str, str], status: int
) -> None:
    await chat_stream(client, {"message": "hi"})  # message 2 and conversation 1 exist
    response = await client.request(method, path, headers=headers)
    assert response.status_code == status
    error_of(response)


async def test_create_conversation_without_a_body(client: httpx.AsyncClient) -> None:
    response = await client.post("/api/conversations")
    assert response.status_code == 201
    assert response.json()["conversation"]["title"] is None


async def test_an_idempotency_key_reused_with_another_body_is_422(client: httpx.AsyncClient) -> None:
    headers = {"idempotency-key": "order-1"}
    first = await client.post("/api/chat", json={"message": "hi"}, headers=headers)
    again = await client.post("/api/chat", json={"message": "hi"}, headers=headers)
    other = await client.post("/api/chat/stream", json={"message": "something else"}, headers=headers)
    assert first.status_code == again.status_code == 202
    assert again.json()["message_id"] == first.json()["message_id"]
    assert other.status_code == 422
    assert error_of(other)["type"] == "idempotency_key_reused"
    conversations = (await client.get("/api/conversations")).json()["conversations"]
    assert [c["message_count"] for c in conversations] == [2]


@pytest.mark.parametrize("key", ["", "k" * 201])
async def test_an_idempotency_key_that_is_empty_or_too_long_is_422(
    client: httpx.AsyncClient, key: str
) -> None:
    response = await client.post("/api/chat", json={"message": "hi"}, headers={"idempotency-key": key})
    assert response.status_code == 422
    assert "idempotency_key" in error_of(response)["fields"]  # type: ignore[operator]


async def test_a_body_that_never_finishes_arriving_is_408_and_the_connection_closed(
    database: Backend,
) -> None:
    settings = Settings(db=database.db, provider="demo", body_timeout=0.2)
    async with serve(settings) as url:
        reader, writer = await half_a_body(url)
        answer = await asyncio.wait_for(reader.read(), timeout=5)  # to the end: the server closes
        writer.close()
        async with httpx.AsyncClient(base_url=url) as client:
            stored = (await client.get("/api/conversations")).json()["conversations"]
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408")
    assert json.loads(body)["error"]["type"] == "request_timeout"
    assert stored == []


async def test_a_conversation_comes_a_page_at_a_time_newest_first(client: httpx.AsyncClient) -> None:
    conversation = None
    for n in range(5):
        body = {
            "message": f"q{n}",
            "wait": True,
            **({"conversation_id": conversation} if conversation else {}),
        }
        conversation = (await client.post("/api/chat", json=body)).json()["message"]["conversation_id"]
    everything = (await client.get(f"/api/conversations/{conversation}", params={"limit": 100})).json()
    ids = [m["id"] for m in everything["messages"]]
    assert len(ids) == 10 and ids == sorted(ids) and everything["next_before_id"] is None
    default = (await client.get(f"/api/conversations/{conversation}")).json()
    assert [m["id"] for m in default["messages"]] == ids  # 20 by default: all of these
    pages, before = [], None
    while True:
        params = {"limit": 4, **({"before_id": before} if before else {})}
        page = (await client.get(f"/api/conversations/{conversation}", params=params)).json()
        pages.append([m["id"] for m in page["messages"]])
        before = page["next_before_id"]
        if before is None:
            break
    assert pages == [ids[6:], ids[2:6], ids[:2]]


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"limit": 0}, "limit"),
        ({"limit": 101}, "limit"),
        ({"limit": "x"}, "limit"),
        ({"before_id": 0}, "before_id"),
    ],
)
async def test_a_bad_page_is_422(client: httpx.AsyncClient, params: dict[str, object], field: str) -> None:
    made = (await client.post("/api/conversations", json={})).json()["conversation"]["id"]
    response = await client.get(f"/api/conversations/{made}", params=params)
    assert response.status_code == 422
    assert field in error_of(response)["fields"]  # type: ignore[operator]


async def test_an_aborted_upload_is_one_line_in_the_log(
    client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO):
        _, writer = await half_a_body(str(client.base_url).rstrip("/"))
        writer.close()
        await writer.wait_closed()
        await until(lambda: "went away before its body had arrived" in caplog.text, what="the log line")
    lines = [r for r in caplog.records if "went away" in r.getMessage()]
    assert len(lines) == 1 and lines[0].exc_info is None
    assert not any(r.exc_info for r in caplog.records), [r.getMessage() for r in caplog.records]
    assert "Traceback" not in caplog.text


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        (b'{"message": "hi", "temperature": 1e309}', "temperature"),
        (b'{"message": "hi", "max_tokens": 1e309}', "max_tokens"),
        (b'{"message": "hi", "conversation_id": 1e309}', "conversation_id"),
        (b'{"message": "hi", "conversation_id": 99999999999999999999999}', "conversation_id"),
        (b'{"message": "nul \\u0000 inside"}', "message"),
        (b'{"message": "half \\ud83d of an emoji"}', "message"),
        (b'{"message": "hi", "model": "bad\\nmodel"}', "model"),
    ],
)
async def test_hostile_values_are_422_never_500(client: httpx.AsyncClient, raw: bytes, field: str) -> None:
    response = await client.post("/api/chat", content=raw, headers={"content-type": "application/json"})
    assert response.status_code == 422, response.text
    assert field in error_of(response)["fields"]  # type: ignore[operator]


async def test_with_auth_off_the_caller_is_the_local_user(client: httpx.AsyncClient) -> None:
    assert (await client.get("/api/me")).json() == {"user": "local"}
