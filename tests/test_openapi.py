"""GET /openapi.json: a valid OpenAPI 3.1 document that names every route the app serves,
and that real answers, every status a test can bring about, conform to.

A live feed never ends by itself, so it is held open while things happen, and what it sent
by then (its headers and each event) is checked as it is closed."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Iterable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from jsonschema import Draft202012Validator, ValidationError, validators
from openapi_spec_validator import validate as validate_openapi
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012
from starlette.responses import Response
from starlette.routing import BaseRoute, Mount, Route

from chat.app import Sidechat
from chat.config import Settings
from chat.limits import TYPING_RATE
from chat.openapi import document
from chat.settings_parsers import budget
from chat.sse import SSEDecoder
from tests.live import Event, EventReader, half_a_body, serve, until

pytestmark = pytest.mark.anyio

METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}
TOKEN = "openapi-token-0123456789abcdef"
MEMBER_TOKEN = "openapi-member-token-0123456789"
BASE = "urn:sidechat:openapi"  # the document's URI, for the schemas' $refs
JSON = {"content-type": "application/json"}


def settings_in(tmp_path: Path, **changes: Any) -> Settings:
    values: dict[str, Any] = {
        "db": str(tmp_path / "chat.db"),
        "provider": "demo",
        "demo_delay": 0.0,
        "max_body_bytes": 4096,
        "shutdown_grace_seconds": 0.2,
        "rate_limit": (100_000, 60.0),
        "max_streams_per_user": 1000,
        **changes,
    }
    return Settings(**values)


def served_operations(routes: Iterable[BaseRoute]) -> set[tuple[str, str]]:
    """(path, METHOD) of each route, as OpenAPI spells the path; HEAD is HTTP's, not ours."""
    out = set()
    for route in routes:
        if isinstance(route, Mount):  # /static: files, not an API
            continue
        assert isinstance(route, Route), route
        path = re.sub(r"{(\w+):\w+}", r"{\1}", route.path)
        out |= {(path, method) for method in route.methods or () if method != "HEAD"}
    return out


def documented_operations(doc: dict[str, Any]) -> set[tuple[str, str]]:
    return {
        (path, method.upper()) for path, item in doc["paths"].items() for method in item if method in METHODS
    }


def content_schema(
    validator: Any, schema: dict[str, Any], instance: object, parent: dict[str, Any]
) -> Iterator[ValidationError]:
    """`contentSchema`, which JSON Schema only annotates, checked as schemathesis checks it:
    a feed event's `data` is the JSON its kind of event says."""
    if parent.get("contentMediaType") != "application/json" or not isinstance(instance, str):
        return
    try:
        parsed = json.loads(instance)
    except ValueError as exc:
        yield ValidationError(f"not JSON: {exc}")
        return
    yield from validator.descend(parsed, schema)


Validator = validators.extend(Draft202012Validator, {"contentSchema": content_schema})


def pointer(*parts: str) -> str:
    return "".join("/" + part.replace("~", "~0").replace("/", "~1") for part in parts)


class Conformance:
    """Checks real answers against the document: the status is listed, the documented headers
    are there and match, the body (each event, for a stream) matches its schema."""

    def __init__(self, doc: dict[str, Any]) -> None:
        self.doc = doc
        resource = Resource.from_contents(doc, default_specification=DRAFT202012)
        self.registry: Registry[Any] = Registry().with_resource(BASE, resource)
        self.seen: set[tuple[str, str, int]] = set()

    def deref(self, node: dict[str, Any]) -> dict[str, Any]:
        while "$ref" in node:
            found: Any = self.doc
            for part in node["$ref"].removeprefix("#/").split("/"):
                found = found[part]
            node = found
        return node

    def errors(self, instance: object, *at: str) -> list[str]:
        validator = Validator(
            {"$ref": BASE + "#" + pointer(*at)},
            registry=self.registry,
            format_checker=Draft202012Validator.FORMAT_CHECKER,
        )
        return [
            f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(instance)
        ]

    def check(self, method: str, path: str, response: httpx.Response) -> None:
        what = f"{method} {path} answered {response.status_code}"
        responses = self.doc["paths"][path][method.lower()]["responses"]
        status = str(response.status_code)
        assert status in responses, f"{what}, a status the document does not list ({', '.join(responses)})"
        documented = responses[status]
        answer_at = ("paths", path, method.lower(), "responses", status)
        for name, header in documented.get("headers", {}).items():
            ref = header.get("$ref")
            at = (
                (*ref.removeprefix("#/").split("/"), "schema")
                if ref
                else (*answer_at, "headers", name, "schema")
            )
            value = response.headers.get(name)
            if value is None:
                assert not self.deref(header).get("required"), f"{what} without its {name} header"
            else:
                problems = self.errors(value, *at)
                assert not problems, f"{what} with a {name} header the document does not allow: {problems}"
        content = documented.get("content", {})
        media = response.headers.get("content-type", "").split(";")[0].strip()
        if not content:
            assert not response.content, f"{what} with a body the document does not describe"
            self.seen.add((method, path, response.status_code))
            return
        assert media in content, f"{what} as {media!r}; the document says {', '.join(content)}"
        at = (*answer_at, "content", media, "schema")
        if media == "application/json":
            instances: list[object] = [response.json()]
        elif media == "text/event-stream":
            instances = [event_object(e) for e in SSEDecoder().feed(response.content)]
            assert instances, f"{what} with no events"
        else:
            instances = [response.text]
        for instance in instances:
            problems = self.errors(instance, *at)
            assert not problems, f"{what} with a body the document does not allow: {problems}\n{instance}"
        self.seen.add((method, path, response.status_code))


def event_object(event: Any) -> dict[str, Any]:
    out = {"event": event.event, "data": event.data}
    if event.id is not None:
        out["id"] = event.id
    if event.retry is not None:
        out["retry"] = event.retry
    return out


@pytest.fixture
def doc() -> dict[str, Any]:
    return document(Settings())


def test_the_document_is_valid_openapi_3_1(doc: dict[str, Any]) -> None:
    validate_openapi(doc)
    assert doc["openapi"].startswith("3.1")


def test_every_route_the_app_serves_is_documented_and_every_documented_one_served(
    doc: dict[str, Any], tmp_path: Path
) -> None:
    served = served_operations(Sidechat(settings_in(tmp_path)).router.routes)
    documented = documented_operations(doc)
    assert not served - documented, f"served but not in the OpenAPI document: {sorted(served - documented)}"
    assert not documented - served, f"in the OpenAPI document but not served: {sorted(documented - served)}"


def test_a_route_left_out_of_the_document_is_caught(doc: dict[str, Any], tmp_path: Path) -> None:
    async def extra(request: Any) -> Response:
        return Response()

    routes = [*Sidechat(settings_in(tmp_path)).router.routes, Route("/api/extra/{id:int}", extra)]
    assert served_operations(routes) - documented_operations(doc) == {("/api/extra/{id}", "GET")}


def test_an_answer_the_document_does_not_describe_fails_the_check(doc: dict[str, Any]) -> None:
    check = Conformance(doc).check
    ok = {"x-request-id": "abc"}
    check("GET", "/healthz", httpx.Response(200, json={"status": "ok"}, headers=ok))
    with pytest.raises(AssertionError, match="does not list"):
        check("GET", "/healthz", httpx.Response(418, json={"status": "ok"}, headers=ok))
    with pytest.raises(AssertionError, match="does not allow"):
        check("GET", "/healthz", httpx.Response(200, json={"status": "ok", "extra": 1}, headers=ok))
    with pytest.raises(AssertionError, match="without its X-Request-ID"):
        check("GET", "/healthz", httpx.Response(200, json={"status": "ok"}))
    with pytest.raises(AssertionError, match="does not allow"):  # not a type a 404 can carry
        gone = {"error": {"type": "conflict", "message": "…", "status": "completed"}}
        check("DELETE", "/api/conversations/{conversation_id}", httpx.Response(404, headers=ok, json=gone))

    def feed(*events: bytes) -> httpx.Response:
        return httpx.Response(
            200, headers={**ok, "content-type": "text/event-stream"}, content=b"".join(events)
        )

    deleted = b'event: conversation.deleted\ndata: {"conversation_id": 1}\nid: 7\n\n'
    check("GET", "/api/events", feed(b"retry: 3000\n\n", deleted, b": ping\n\n"))
    with pytest.raises(AssertionError, match="does not allow"):  # data that is not what its kind holds
        check("GET", "/api/events", feed(b'event: conversation.deleted\ndata: {"id": 1}\nid: 7\n\n'))
    with pytest.raises(AssertionError, match="does not allow"):  # not JSON at all
        check("GET", "/api/events", feed(b"event: conversation.deleted\ndata: {1}\nid: 7\n\n"))
    with pytest.raises(AssertionError, match="does not allow"):  # an event to resume after, without an id
        check("GET", "/api/events", feed(b'event: conversation.deleted\ndata: {"conversation_id": 1}\n\n'))
    with pytest.raises(AssertionError, match="does not allow"):  # a conversation feed's kind of event
        check("GET", "/api/events", feed(b'event: presence\ndata: {"users": []}\nid: 7\n\n'))


async def test_the_served_document_is_the_one_built_for_its_settings(tmp_path: Path) -> None:
    settings = settings_in(tmp_path, max_message_chars=500)
    async with serve(settings) as url, httpx.AsyncClient(base_url=url) as client:
        served = (await client.get("/openapi.json")).json()
    assert served == json.loads(json.dumps(document(settings)))
    assert served["components"]["schemas"]["ChatBody"]["properties"]["message"]["maxLength"] == 500
    validate_openapi(served)


@pytest.fixture
def conformance(doc: dict[str, Any]) -> Conformance:
    return Conformance(doc)


class Caller:
    """Sends requests and checks each answer against the document on the way back."""

    def __init__(self, client: httpx.AsyncClient, conformance: Conformance) -> None:
        self.client = client
        self.conformance = conformance

    async def __call__(
        self, method: str, path: str, *, expect: int, url: str | None = None, **kwargs: Any
    ) -> httpx.Response:
        async with self.client.stream(method, url or path, **kwargs) as response:
            await response.aread()
        assert response.status_code == expect, (method, url or path, response.status_code, response.text)
        self.conformance.check(method, path, response)
        return response

    @asynccontextmanager
    async def follow(self, path: str, *, url: str | None = None, **kwargs: Any) -> AsyncIterator[Following]:
        """A live feed, held open while the block runs; what it sent is checked as it closes."""
        async with self.client.stream("GET", url or path, **kwargs) as response:
            assert response.status_code == 200, (
                path,
                response.status_code,
                (await response.aread()).decode(),
            )
            following = Following(response)
            yield following
        self.conformance.check("GET", path, following.read_so_far())


class Following:
    """A live feed being read: its events one at a time, as they come."""

    def __init__(self, response: httpx.Response) -> None:
        self.reader = EventReader(response)
        self.pending: list[Event] = []  # read along with an earlier one, not yet taken

    async def next(self) -> Event:
        if not self.pending:
            self.pending = (await self.reader.read(until=1)).events
            assert self.pending, f"the feed ended after {self.reader.transcript.names}"
        return self.pending.pop(0)

    async def expect(self, *names: str) -> list[Event]:
        """The next events, which must be these."""
        events = [await self.next() for _ in names]
        assert [e.event for e in events] == list(names), self.reader.transcript.names
        return events

    async def through(self, name: str) -> list[Event]:
        """The next events, up to and with the first called `name`."""
        events = [await self.next()]
        while events[-1].event != name:
            events.append(await self.next())
        return events

    async def ends(self) -> None:
        rest = self.pending + (await self.reader.read()).events
        assert not rest, f"the feed went on: {[e.event for e in rest]}"

    def read_so_far(self) -> httpx.Response:
        transcript = self.reader.transcript
        return httpx.Response(transcript.status, headers=transcript.headers, content=transcript.raw)


async def reply_finished(client: httpx.AsyncClient, conversation: str) -> bool:
    messages = (await client.get(conversation)).json()["messages"]
    return all(m["status"] != "streaming" for m in messages)


async def test_real_answers_conform_to_the_document(tmp_path: Path, conformance: Conformance) -> None:
    async with serve(settings_in(tmp_path)) as url, httpx.AsyncClient(base_url=url, timeout=10) as client:
        call = Caller(client, conformance)
        conversation_path = "/api/conversations/{conversation_id}"
        for path in ("/healthz", "/readyz", "/openapi.json", "/", "/api/providers", "/api/me"):
            answered = await call("GET", path, expect=200, headers={"x-request-id": "req-1.2:3"})
            assert answered.headers["x-request-id"] == "req-1.2:3"
        await call("GET", "/readyz", url="/readyz?deep=1", expect=200)

        created = await call("POST", "/api/conversations", expect=201, json={"title": "Plans", "system": ""})
        cid = created.json()["conversation"]["id"]
        await call("POST", "/api/conversations", expect=201)  # no body at all
        await call("POST", "/api/conversations", expect=400, content=b"{", headers=JSON)
        await call("POST", "/api/conversations", expect=413, content=b" " * 5000, headers=JSON)
        await call(
            "POST", "/api/conversations", expect=415, content=b"{}", headers={"content-type": "text/plain"}
        )
        await call("POST", "/api/conversations", expect=422, json={"title": 5, "provider": "nope"})
        await call("POST", "/api/conversations", expect=422, json=[])

        one = conversation_path.replace("{conversation_id}", str(cid))
        await call("PATCH", conversation_path, url=one, expect=200, json={"title": None, "model": "m"})
        await call("PATCH", conversation_path, url="/api/conversations/999", expect=404, json={})
        await call("PATCH", conversation_path, url=one, expect=422, json={"system": 1})

        chat = {"message": "hello", "conversation_id": cid}
        accepted = await call("POST", "/api/chat", expect=202, json=chat, headers={"idempotency-key": "k1"})
        await call(
            "POST", "/api/chat", expect=202, json=chat, headers={"idempotency-key": "k1"}
        )  # the same turn
        await call(
            "POST", "/api/chat", expect=422, json={"message": "other"}, headers={"idempotency-key": "k1"}
        )
        await call("POST", "/api/chat", expect=422, json={"message": " ", "temperature": 9, "wait": 1})
        await call("POST", "/api/chat", expect=404, json={"message": "hi", "conversation_id": 999})
        await call("POST", "/api/chat", expect=200, json={"message": "wait for it", "wait": True})
        streamed = await call("POST", "/api/chat/stream", expect=200, json={"message": "stream it"})
        await call("POST", "/api/chat/stream", expect=422, json={"message": "hi", "provider": "openai"})

        attach = "/api/messages/{message_id}/stream"
        mid = accepted.json()["message_id"]
        mine = attach.replace("{message_id}", str(mid))
        await until(lambda: reply_finished(client, one), what="the reply to finish")
        whole = await call("GET", attach, url=mine, expect=200)
        last = SSEDecoder().feed(whole.content)[-1].id
        await call("GET", attach, url=mine, expect=200, headers={"last-event-id": "1"})
        await call("GET", attach, url=f"{mine}?last_event_id={last}", expect=204)
        await call("GET", attach, url=mine, expect=422, headers={"last-event-id": "soon"})
        await call("GET", attach, url="/api/messages/abc/stream", expect=404)
        other = streamed.headers["x-message-id"]
        await call("GET", attach, url=attach.replace("{message_id}", other), expect=200)

        cancel = "/api/messages/{message_id}/cancel"
        await call("POST", cancel, url=cancel.replace("{message_id}", str(mid)), expect=409)
        await call("POST", cancel, url="/api/messages/999/cancel", expect=404)
        await replace_turns(call)

        await call("GET", "/api/usage", expect=200)
        await call(
            "GET", "/api/usage", url="/api/usage?since=2026-12-01&until=2999-12-31T00:00:00Z", expect=200
        )
        await call("GET", "/api/usage", url="/api/usage?since=soon", expect=422)
        await call("GET", "/api/usage", url="/api/usage?since=2026-12-02&until=2026-12-01", expect=422)

        await call("GET", "/api/conversations", url="/api/conversations?limit=1", expect=200)
        await call("GET", "/api/conversations", url="/api/conversations?cursor=!!", expect=422)
        await call("GET", conversation_path, url=f"{one}?limit=1", expect=200)
        page = (await client.get(f"{one}?limit=1")).json()
        assert page["next_before_id"] is not None
        await call("GET", conversation_path, url=f"{one}?before_id={page['next_before_id']}", expect=200)
        await call("GET", conversation_path, url=f"{one}?limit=0", expect=422)
        await call("GET", conversation_path, url="/api/conversations/0", expect=404)
        messages = "/api/conversations/{conversation_id}/messages"
        await call("GET", messages, url=f"{one}/messages?after_id=1", expect=200)
        await call("GET", messages, url=f"{one}/messages?after_id=x", expect=422)
        await call("GET", messages, url="/api/conversations/999/messages", expect=404)

        members, member = f"{conversation_path}/members", f"{conversation_path}/members/{{user}}"
        await call("POST", members, url=f"{one}/members", expect=201, json={"user": "bob"})
        await call("POST", members, url=f"{one}/members", expect=200, json={"user": "bob"})
        await call("POST", members, url=f"{one}/members", expect=422, json={"user": "local"})
        await call("POST", members, url=f"{one}/members", expect=415, content=b"{}")
        await call("POST", members, url="/api/conversations/999/members", expect=404, json={"user": "bob"})
        await call("GET", members, url=f"{one}/members", expect=200)
        await call("GET", members, url="/api/conversations/999/members", expect=404)
        await call("DELETE", member, url=f"{one}/members/bob", expect=204)
        await call("DELETE", member, url=f"{one}/members/bob", expect=404)

        await call("DELETE", conversation_path, url=one, expect=204)
        await call("DELETE", conversation_path, url=one, expect=404)

        await follow_a_conversation(call)
        feed, typing = f"{conversation_path}/events", f"{conversation_path}/typing"
        await call("GET", "/api/events", expect=422, headers={"last-event-id": "soon"})
        await call("GET", feed, url="/api/conversations/999/events", expect=404)
        await call("GET", feed, url=f"{one}/events?last_event_id=x", expect=422)
        await call("POST", typing, url="/api/conversations/999/typing", expect=404, json={"typing": True})
        made = await client.post("/api/conversations", json={})
        other = f"/api/conversations/{made.json()['conversation']['id']}"
        for refused in ({}, {"typing": "yes"}, {"typing": None}, []):
            await call("POST", typing, url=f"{other}/typing", expect=422, json=refused)
        await call("POST", typing, url=f"{other}/typing", expect=400, content=b"{", headers=JSON)
        await call("POST", typing, url=f"{other}/typing", expect=413, content=b" " * 5000, headers=JSON)
        await call("POST", typing, url=f"{other}/typing", expect=415, content=b'{"typing": true}')

        foreign = {"host": "rebinding.example"}
        for path in ("/openapi.json", "/", "/api/providers", "/api/events", "/v1/models"):
            await call("GET", path, expect=400, headers=foreign)
        await call("POST", "/api/chat", expect=400, headers=foreign, json={"message": "hi"})
        await openai_door_conforms(call)

    operations = {(method, path) for method, path, _ in conformance.seen}
    assert operations == {(m, p) for p, m in documented_operations(conformance.doc)}


async def openai_door_conforms(call: Caller) -> None:
    """/v1's answers: whole and streamed (with the usage chunk), and its refusals."""
    path, asked = "/v1/chat/completions", [{"role": "user", "content": "hi"}]
    await call("GET", "/v1/models", expect=200)
    whole = await call("POST", path, expect=200, json={"model": "demo/demo-1", "messages": asked})
    continued = {"x-conversation-id": whole.headers["x-conversation-id"]}
    streamed = {
        "model": "demo-1",
        "messages": asked,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    await call("POST", path, expect=200, json=streamed, headers=continued)
    await call("POST", path, expect=404, json=streamed, headers={"x-conversation-id": "999"})
    for refused in ({}, {"model": "demo-1", "messages": []}, {"model": 7, "messages": asked}, []):
        await call("POST", path, expect=400, json=refused)
    await call("POST", path, expect=400, content=b"{", headers=JSON)
    await call("POST", path, expect=400, content=b"{}")  # not sent as JSON
    await call("POST", path, expect=413, content=b" " * 5000, headers=JSON)
    await call(
        "POST", path, expect=400, json={"model": "demo-1", "messages": asked}, headers={"host": "x.example"}
    )


async def replace_turns(call: Caller) -> None:
    """A reply generated again, twice, then its question edited; and their refusals."""
    regenerate, edit = "/api/messages/{message_id}/regenerate", "/api/messages/{message_id}/edit"
    waited = await call("POST", "/api/chat", expect=200, json={"message": "again", "wait": True})
    old = regenerate.replace("{message_id}", str(waited.json()["message"]["id"]))
    new = (await call("POST", regenerate, url=old, expect=200, json={"wait": True})).json()["message"]
    await call("POST", regenerate, url=old, expect=409)  # replaced already: `superseded_by`
    newer = regenerate.replace("{message_id}", str(new["id"]))
    accepted = (await call("POST", regenerate, url=newer, expect=202)).json()
    one = f"/api/conversations/{accepted['conversation_id']}"
    await until(lambda: reply_finished(call.client, one), what="the regenerated reply to finish")
    question = edit.replace("{message_id}", str(accepted["user_message_id"]))
    await call("POST", edit, url=question, expect=202, json={"message": "again?", "temperature": 1})
    await call("POST", edit, url=question, expect=409, json={"message": "again?"})
    await call("POST", edit, url=question, expect=422, json={"message": ""})
    await call("POST", edit, url=question, expect=415, content=b'{"message": "x"}')
    await call("POST", edit, url=question, expect=400, content=b"{", headers=JSON)
    await call("POST", regenerate, url=newer, expect=422, json={"max_tokens": 0})
    await call("POST", regenerate, url="/api/messages/999/regenerate", expect=404)
    await call("POST", edit, url="/api/messages/999/edit", expect=404, json={"message": "x"})


async def follow_a_conversation(call: Caller) -> None:
    """Both feeds open while a conversation is made, typed in, talked in, renamed and deleted;
    then the user feed resumed after its first event, and from before its window."""
    one_path = "/api/conversations/{conversation_id}"
    feed_path, typing_path = f"{one_path}/events", f"{one_path}/typing"
    async with call.follow("/api/events") as mine:
        made = (await call("POST", "/api/conversations", expect=201, json={"title": "live"})).json()
        cid = made["conversation"]["id"]
        one = one_path.replace("{conversation_id}", str(cid))
        (created,) = await mine.expect("conversation.created")
        assert created.data == made
        async with call.follow(feed_path, url=f"{one}/events") as room:
            (presence,) = await room.expect("presence")
            assert presence.data == {"users": ["local"]}
            for typing in (True, False):
                await call("POST", typing_path, url=f"{one}/typing", expect=204, json={"typing": typing})
            typed = await room.expect("typing", "typing")
            assert [e.data for e in typed] == [{"user": "local", "typing": t} for t in (True, False)]

            chat = {"message": "hello", "conversation_id": cid}
            accepted = (await call("POST", "/api/chat", expect=202, json=chat)).json()
            turn = ["message.created", "generation.started", "generation.finished"]
            told = await mine.through("generation.finished")
            assert [e.event for e in told] == turn
            shown = await room.through("generation.finished")
            assert [e.event for e in shown if e.event != "token"] == turn
            assert told[1].data == shown[1].data and told[1].data["stream_url"] == accepted["stream_url"]
            reply = (await call.client.get(one)).json()["messages"][-1]
            assert "".join(e.data["text"] for e in shown if e.event == "token") == reply["content"]

            await call("PATCH", one_path, url=one, expect=200, json={"title": "renamed"})
            for feed in (mine, room):
                (updated,) = await feed.expect("conversation.updated")
                assert updated.data["conversation"]["title"] == "renamed"
            await call("DELETE", one_path, url=one, expect=204)
            for feed in (mine, room):
                (deleted,) = await feed.expect("conversation.deleted")
                assert deleted.data == {"conversation_id": cid}
            await room.ends()

    assert created.id is not None
    async with call.follow("/api/events", headers={"last-event-id": created.id}) as resumed:
        again = await resumed.through("conversation.deleted")
        assert [e.event for e in again] == [*turn, "conversation.updated", "conversation.deleted"]
    async with call.follow("/api/events", url="/api/events?last_event_id=1") as late:
        (reset,) = await late.expect("reset")
        assert reset.id is None


async def test_refusals_under_load_conform_to_the_document(tmp_path: Path, conformance: Conformance) -> None:
    """A slow reply to cancel and to hold a stream open on, and limits small enough to reach."""
    settings = settings_in(
        tmp_path, demo_delay=0.2, rate_limit=(3, 3600.0), max_connections_per_user=1, body_timeout=0.2
    )
    async with serve(settings) as url, httpx.AsyncClient(base_url=url, timeout=10) as client:
        call = Caller(client, conformance)
        accepted = (await call("POST", "/api/chat", expect=202, json={"message": "a long one"})).json()
        attach = "/api/messages/{message_id}/stream"
        mine = attach.replace("{message_id}", str(accepted["message_id"]))
        one = f"/api/conversations/{accepted['conversation_id']}"
        async with client.stream("GET", mine) as held:  # the user's one open stream
            assert held.status_code == 200
            await call("GET", attach, url=mine, expect=503)
            await call("POST", "/api/chat/stream", expect=503, json={"message": "another"})
            await call("GET", "/api/events", expect=503)
            await call("GET", "/api/conversations/{conversation_id}/events", url=f"{one}/events", expect=503)
        cancel = "/api/messages/{message_id}/cancel"
        await call(
            "POST", cancel, url=cancel.replace("{message_id}", str(accepted["message_id"])), expect=200
        )
        await call("POST", "/api/chat", expect=202, json={"message": "two"})
        await call("POST", "/api/chat", expect=202, json={"message": "three"})
        await call("POST", "/api/chat", expect=429, json={"message": "four"})
        await call("POST", "/api/chat/stream", expect=429, json={"message": "five"})
        regenerate = "/api/messages/{message_id}/regenerate"
        again = regenerate.replace("{message_id}", str(accepted["message_id"]))
        await call("POST", regenerate, url=again, expect=429)
        conformance.check("POST", "/api/chat", await timed_out_body(url))

        # Typing updates have a rate of their own; it is reached in a burst of a few.
        typing = "/api/conversations/{conversation_id}/typing"
        answers = []
        for _ in range(3 * TYPING_RATE[0]):
            answers.append(await client.post(f"{one}/typing", json={"typing": True}))
            conformance.check("POST", typing, answers[-1])
            if answers[-1].status_code != 204:
                break
        assert [a.status_code for a in answers] == [204] * (len(answers) - 1) + [429]


async def test_a_spent_budget_conforms_to_the_document(tmp_path: Path, conformance: Conformance) -> None:
    settings = settings_in(tmp_path, user_budget=budget("1tokens/day"))
    async with serve(settings) as url, httpx.AsyncClient(base_url=url, timeout=10) as client:
        call = Caller(client, conformance)
        reply = (await call("POST", "/api/chat", expect=200, json={"message": "hi", "wait": True})).json()
        refused = await call("POST", "/api/chat", expect=429, json={"message": "more"})
        await call("POST", "/api/chat/stream", expect=429, json={"message": "more"})
        regenerate, edit = "/api/messages/{message_id}/regenerate", "/api/messages/{message_id}/edit"
        await call("POST", regenerate, url=f"/api/messages/{reply['message']['id']}/regenerate", expect=429)
        question = reply["message"]["metadata"]["user_message_id"]
        await call("POST", edit, url=f"/api/messages/{question}/edit", expect=429, json={"message": "x"})
        await call("GET", "/api/usage", expect=200)
    error = refused.json()["error"]
    assert (error["type"], error["budget"]) == ("quota_exceeded", "1tokens/day")


async def timed_out_body(url: str) -> httpx.Response:
    """A body that never finishes arriving (the server answers 408 and closes)."""
    reader, writer = await half_a_body(url)
    raw = await asyncio.wait_for(reader.read(), timeout=5)
    writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = [tuple(line.split(": ", 1)) for line in lines]
    return httpx.Response(int(status_line.split()[1]), headers=headers, content=body)


async def test_refusals_with_tokens_conform_to_the_document(tmp_path: Path, conformance: Conformance) -> None:
    settings = settings_in(tmp_path, api_tokens=((TOKEN, "alice"), (MEMBER_TOKEN, "bob")))
    async with serve(settings) as url, httpx.AsyncClient(base_url=url, timeout=10) as client:
        call = Caller(client, conformance)
        await call("GET", "/api/conversations", expect=401)
        await call("GET", "/api/providers", expect=401, headers={"authorization": "Bearer wrong"})
        await call("POST", "/api/chat", expect=401, json={"message": "hi"})
        await call("GET", "/api/events", expect=401)
        await call(
            "POST", "/api/messages/{message_id}/regenerate", url="/api/messages/1/regenerate", expect=401
        )
        await call(
            "POST",
            "/api/conversations/{conversation_id}/typing",
            url="/api/conversations/1/typing",
            expect=401,
            json={"typing": True},
        )
        await call("GET", "/v1/models", expect=401)
        await call("GET", "/v1/models", expect=401, headers={"authorization": "Bearer wrong"})
        await call("GET", "/api/conversations", expect=200, headers={"authorization": f"Bearer {TOKEN}"})
        await call("GET", "/healthz", expect=200)  # the probes and the page stay open
        await call("GET", "/", expect=200)

        # A member is refused what only the owner may do.
        owner, member = ({"authorization": f"Bearer {token}"} for token in (TOKEN, MEMBER_TOKEN))
        made = await client.post("/api/conversations", json={"title": "shared"}, headers=owner)
        one = f"/api/conversations/{made.json()['conversation']['id']}"
        await client.post(f"{one}/members", json={"user": "bob"}, headers=owner)
        conversation_path = "/api/conversations/{conversation_id}"
        members, user = f"{conversation_path}/members", f"{conversation_path}/members/{{user}}"
        await call("GET", members, url=f"{one}/members", expect=200, headers=member)
        await call("PATCH", conversation_path, url=one, expect=403, json={"title": "x"}, headers=member)
        await call("DELETE", conversation_path, url=one, expect=403, headers=member)
        await call("POST", members, url=f"{one}/members", expect=403, json={"user": "carol"}, headers=member)
        await call("DELETE", user, url=f"{one}/members/bob", expect=403, headers=member)

        # A member follows it and types in it; a conversation not shared is a 404 to them.
        feed, typing = f"{conversation_path}/events", f"{conversation_path}/typing"
        async with call.follow(feed, url=f"{one}/events", headers=member) as room:
            (presence,) = await room.expect("presence")
            assert presence.data == {"users": ["bob"]}
            await call("POST", typing, url=f"{one}/typing", expect=204, json={"typing": True}, headers=member)
            (typed,) = await room.expect("typing")
            assert typed.data == {"user": "bob", "typing": True}
        mine = await client.post("/api/conversations", json={"title": "alice only"}, headers=owner)
        private = f"/api/conversations/{mine.json()['conversation']['id']}"
        await call("GET", feed, url=f"{private}/events", expect=404, headers=member)
        await call("POST", typing, url=f"{private}/typing", expect=404, json={"typing": True}, headers=member)
