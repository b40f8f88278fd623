"""The log: a line per request and per reply with the right fields, and never the text."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from chat.config import Settings
from chat.logs import FIELDS, JSONFormatter, TextFormatter
from tests.fakeupstream import FakeUpstream, Reply, openai_chunk, openai_reply
from tests.live import EventReader, chat_stream, serve, until
from tests.processes import free_port, running

pytestmark = pytest.mark.anyio

SECRET = "my bank password is hunter2"


def lines(caplog: pytest.LogCaptureFixture, logger: str) -> list[dict[str, Any]]:
    return [getattr(r, FIELDS) for r in caplog.records if r.name == logger and hasattr(r, FIELDS)]


@pytest.fixture
def logged(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO, logger="sidechat")
    return caplog


async def test_a_reply_is_one_line_with_its_figures_and_no_text(
    tmp_path: Path, logged: pytest.LogCaptureFixture
) -> None:
    settings = Settings(db=str(tmp_path / "chat.db"), demo_delay=0)
    async with serve(settings) as url, httpx.AsyncClient(base_url=url, timeout=10) as http:
        headers = {"x-request-id": "req-42"}
        transcript = await chat_stream(http, {"message": SECRET}, headers=headers)
        start, done = transcript.events[0].data, transcript.terminal.data
        await until(lambda: lines(logged, "sidechat.replies"), what="the reply's line")

    [reply] = lines(logged, "sidechat.replies")
    assert reply == {
        "event": "reply",
        "request_id": "req-42",
        "user": "local",
        "conversation_id": start["conversation_id"],
        "message_id": start["message_id"],
        "provider": "demo",
        "model": start["model"],
        "outcome": "completed",
        "finish_reason": "stop",
        "error": None,
        "ttft_ms": done["ttft_ms"],
        "duration_ms": done["duration_ms"],
        "deltas": sum(1 for e in transcript.events if e.event == "token"),
        "input_tokens": done["usage"]["input_tokens"],
        "output_tokens": done["usage"]["output_tokens"],
        "cost_usd": reply["cost_usd"],  # the price table's business (tests/test_prices.py)
    }
    assert start["request_id"] == "req-42"
    formatted = "\n".join(f.format(r) for r in logged.records for f in (JSONFormatter(), TextFormatter()))
    assert SECRET not in formatted and "hunter2" not in formatted


async def test_content_is_logged_only_when_asked(tmp_path: Path, logged: pytest.LogCaptureFixture) -> None:
    settings = Settings(db=str(tmp_path / "chat.db"), demo_delay=0, log_content=True)
    async with serve(settings) as url, httpx.AsyncClient(base_url=url, timeout=10) as http:
        transcript = await chat_stream(http, {"message": SECRET})
        await until(lambda: lines(logged, "sidechat.replies"), what="the reply's line")
    [reply] = lines(logged, "sidechat.replies")
    assert (reply["message"], reply["reply"]) == (SECRET, transcript.text)


async def test_a_failed_and_a_cancelled_reply_say_how_they_ended(
    tmp_path: Path, logged: pytest.LogCaptureFixture
) -> None:
    refused = Reply(
        [b'{"error": {"message": "bad key", "type": "invalid_request_error"}}'],
        status=401,
        headers={"content-type": "application/json"},
    )
    held = Reply([openai_chunk("Hel")], finish=False)
    async with FakeUpstream(refused, held) as upstream:
        settings = Settings(
            db=str(tmp_path / "chat.db"),
            provider="openai",
            openai_api_key="sk-test",
            openai_base_url=upstream.url,
        )
        async with serve(settings) as url, httpx.AsyncClient(base_url=url, timeout=10) as http:
            failed = await chat_stream(http, {"message": "one"})
            assert failed.terminal.event == "error"
            async with http.stream("POST", "/api/chat/stream", json={"message": "two"}) as response:
                reader = EventReader(response)
                start, token = (await reader.read(until=2)).events
                assert token.event == "token"
                cancel = await http.post(f"/api/messages/{start.data['message_id']}/cancel")
                assert cancel.status_code == 200
                assert (await reader.read()).names == ["done"]
            await until(lambda: len(lines(logged, "sidechat.replies")) == 2, what="both lines")
    first, second = lines(logged, "sidechat.replies")
    assert (first["outcome"], first["error"], first["provider"]) == ("failed", "auth", "openai")
    assert (second["outcome"], second["finish_reason"], second["deltas"]) == ("cancelled", "cancelled", 1)


async def test_the_request_id_goes_upstream_to_openai(tmp_path: Path) -> None:
    async with FakeUpstream(Reply(openai_reply("Hi"))) as upstream:
        settings = Settings(
            db=str(tmp_path / "chat.db"),
            provider="openai",
            openai_api_key="sk-test",
            openai_base_url=upstream.url,
        )
        async with serve(settings) as url, httpx.AsyncClient(base_url=url, timeout=10) as http:
            await chat_stream(http, {"message": "hi"}, headers={"x-request-id": "trace-7"})
            conversation = (await http.get("/api/conversations")).json()["conversations"][0]
            found = (await http.get(f"/api/conversations/{conversation['id']}")).json()
    [seen] = upstream.requests
    assert seen.headers["x-client-request-id"] == "trace-7"
    assert found["messages"][1]["metadata"]["request_id"] == "trace-7"


async def test_a_request_is_one_line_by_route_template_with_the_client(
    tmp_path: Path, logged: pytest.LogCaptureFixture
) -> None:
    settings = Settings(db=str(tmp_path / "chat.db"), demo_delay=0, trusted_user_header="x-user")
    async with serve(settings) as url, httpx.AsyncClient(base_url=url, timeout=10) as http:
        forwarded = {"x-user": "alice", "x-forwarded-for": "203.0.113.9", "x-request-id": "r-1"}
        transcript = await chat_stream(http, {"message": "hi"}, headers=forwarded)
        message_id = transcript.events[0].data["message_id"]
        attach = await http.get(f"/api/messages/{message_id}/stream", headers={"x-user": "alice"})
        assert attach.status_code == 200
        missing = await http.get("/no/such/page/123")
        assert missing.status_code == 404
        await until(lambda: len(lines(logged, "sidechat.requests")) == 3, what="three request lines")
    chat, attached, unmatched = lines(logged, "sidechat.requests")
    assert {k: chat[k] for k in ("request_id", "method", "route", "status", "client", "user")} == {
        "request_id": "r-1",
        "method": "POST",
        "route": "/api/chat/stream",
        "status": 200,
        "client": "203.0.113.9",  # from a trusted peer (loopback), the forwarded address
        "user": "alice",
    }
    assert (attached["route"], attached["client"]) == ("/api/messages/{message_id}/stream", "127.0.0.1")
    assert (unmatched["route"], unmatched["status"]) == (None, 404)
    assert chat["duration_ms"] >= 0 and all(str(message_id) not in str(line["route"]) for line in (attached,))


async def test_an_untrusted_peer_cannot_forward_an_address(
    tmp_path: Path, logged: pytest.LogCaptureFixture
) -> None:
    settings = Settings(db=str(tmp_path / "chat.db"), trusted_proxies=("10.0.0.0/8",))
    async with serve(settings) as url, httpx.AsyncClient(base_url=url, timeout=10) as http:
        await http.get("/healthz", headers={"x-forwarded-for": "203.0.113.9"})
        await until(lambda: lines(logged, "sidechat.requests"), what="the request line")
    [line] = lines(logged, "sidechat.requests")
    assert line["client"] == "127.0.0.1"


def record(message: str, fields: dict[str, Any] | None = None) -> logging.LogRecord:
    made = logging.LogRecord("sidechat.replies", logging.INFO, __file__, 1, message, (), None)
    if fields is not None:
        setattr(made, FIELDS, fields)
    return made


def test_json_lines_are_one_object_each_with_the_fields() -> None:
    line = JSONFormatter().format(record("reply 3 completed", {"message_id": 3, "reply": "two\nlines"}))
    assert "\n" not in line
    parsed = json.loads(line)
    assert (parsed["level"], parsed["logger"], parsed["message"]) == (
        "info",
        "sidechat.replies",
        "reply 3 completed",
    )
    assert (parsed["message_id"], parsed["reply"]) == (3, "two\nlines")


def test_text_lines_quote_what_would_break_them() -> None:
    line = TextFormatter().format(
        record("reply 3 completed", {"event": "reply", "model": "m", "reply": "a\nb=c", "cost_usd": None})
    )
    assert line == 'INFO sidechat.replies: reply 3 completed model=m reply="a\\nb=c"'


async def test_sidechat_serve_logs_json_throughout(tmp_path: Path) -> None:
    port = free_port()
    env = {
        "SIDECHAT_PORT": str(port),
        "SIDECHAT_DB": str(tmp_path / "chat.db"),
        "SIDECHAT_LOG_FORMAT": "json",
        "SIDECHAT_DEMO_DELAY": "0",
    }
    command = [sys.executable, "-m", "chat", "serve"]
    async with running(command, port=port, env=env, log=tmp_path / "server.log") as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
            await chat_stream(http, {"message": "hi"})
        await until(lambda: '"event": "reply"' in server.output(), what="the reply's line")
    output = server.output().splitlines()
    parsed = [json.loads(line) for line in output if line.strip()]  # every line is JSON
    assert {"uvicorn.error", "sidechat.requests", "sidechat.replies"} <= {p["logger"] for p in parsed}
    assert not any(p["logger"] == "uvicorn.access" for p in parsed)  # ours replace uvicorn's
