"""A hostile or broken provider, end to end: whatever it sends, the client gets one clear
`error`, the row is stored with the text so far, nothing grows without bound, no
secret is passed on, and the server goes on serving."""

from __future__ import annotations

import gzip
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from chat.config import Settings
from tests.fakeupstream import FakeUpstream, Reply, openai_chunk, openai_reply
from tests.live import Transcript, chat_stream, serve

pytestmark = pytest.mark.anyio

KEY = "self-hosted-secret-7f3a9c"  # no known shape: only knowing it finds it
TOKEN = "client-token-0123456789abcdef"


@dataclass
class Outcome:
    transcript: Transcript
    row: dict[str, Any]
    log: str
    healthy: bool


@pytest.fixture
async def talk(
    upstream: FakeUpstream, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> AsyncIterator[Any]:
    async def run(reply: Reply, **changes: Any) -> Outcome:
        upstream.add(reply, Reply(openai_reply("still fine")))
        values: dict[str, Any] = {
            "db": str(tmp_path / "chat.db"),
            "provider": "openai",
            "openai_api_key": KEY,
            "openai_base_url": upstream.url,
            "api_tokens": ((TOKEN, "alice"),),
            "retry_attempts": 1,
            **changes,
        }
        settings = Settings(**values)
        headers = {"authorization": f"Bearer {TOKEN}"}
        async with (
            serve(settings) as url,
            httpx.AsyncClient(base_url=url, timeout=10, headers=headers) as http,
        ):
            transcript = await chat_stream(http, {"message": "hi"})
            conversation = transcript.events[0].data["conversation_id"]
            row = (await http.get(f"/api/conversations/{conversation}")).json()["messages"][-1]
            after = await chat_stream(http, {"message": "and now?"})  # the next one is unharmed
        return Outcome(transcript, row, caplog.text, after.text == "still fine")

    yield run


def assert_ended_cleanly(outcome: Outcome, kind: str, *, partial: str = "") -> dict[str, Any]:
    names = outcome.transcript.names
    assert names[0] == "start" and names[-1] == "error" and names.count("error") == 1
    assert "done" not in names
    error: dict[str, Any] = outcome.transcript.terminal.data["error"]
    assert error["type"] == kind, error
    assert outcome.row["status"] == "failed" and outcome.row["content"] == partial
    raw = outcome.transcript.raw.decode("utf-8", "replace")
    for secret in (KEY, TOKEN):
        assert secret not in raw and secret not in json.dumps(outcome.row) and secret not in outcome.log
    assert outcome.healthy
    return error


async def test_a_line_that_never_ends(talk: Any, upstream: FakeUpstream) -> None:
    flood = [openai_chunk("before"), b"data: " + b"x" * 40_000, *([b"x" * 40_000] * 10)]
    outcome = await talk(Reply(flood, finish=False), max_upstream_event_bytes=100_000)
    assert "100000" in assert_ended_cleanly(outcome, "protocol", partial="before")["message"]
    assert upstream.hangups >= 1  # sidechat hung up rather than read on


async def test_a_stream_that_never_ends(talk: Any, upstream: FakeUpstream) -> None:
    endless = [openai_chunk("word ") for _ in range(2000)]
    outcome = await talk(Reply(endless, finish=False), max_reply_chars=500)
    error = assert_ended_cleanly(outcome, "protocol", partial=outcome.row["content"])
    assert 500 <= len(outcome.row["content"]) <= 505 and "500" in error["message"]
    assert upstream.hangups >= 1


async def test_a_gzip_bomb_is_never_inflated(talk: Any) -> None:
    bomb = gzip.compress(b"data: " + b"0" * 50_000_000, compresslevel=9)  # 50 MB in ~50 KB
    assert len(bomb) < 100_000
    headers = {"content-type": "text/event-stream", "content-encoding": "gzip"}
    outcome = await talk(Reply([bomb], headers=headers))
    assert "compress" in assert_ended_cleanly(outcome, "protocol")["message"]


async def test_a_redirect_is_not_followed_and_the_key_goes_nowhere_else(talk: Any) -> None:
    async with FakeUpstream(Reply(openai_reply("stolen"))) as elsewhere:
        location = {"location": f"{elsewhere.url}/chat/completions", "content-type": "text/plain"}
        outcome = await talk(Reply([b"moved"], status=307, headers=location))
        assert elsewhere.requests == []
    error = assert_ended_cleanly(outcome, "upstream_error")
    assert error["status"] == 307


async def test_html_instead_of_a_stream(talk: Any) -> None:
    page = b"<html><body><h1>Welcome to nginx!</h1>" + b"<p>filler</p>" * 1000 + b"</body></html>"
    outcome = await talk(Reply([page], headers={"content-type": "text/html"}))
    error = assert_ended_cleanly(outcome, "protocol")
    assert len(error["message"]) < 600  # an excerpt, not the page


async def test_invalid_utf8_becomes_replacement_characters_not_a_crash(talk: Any) -> None:
    chunk = openai_chunk("caf\u00e9").replace(b"caf\\u00e9", b"caf\xff\xfe")
    outcome = await talk(Reply([chunk, *openai_reply(" ok")]))
    assert outcome.transcript.names[-1] == "done"
    assert outcome.row["content"] == "caf\ufffd\ufffd ok" and outcome.healthy


async def test_an_error_that_echoes_the_key_and_the_base_url(talk: Any, upstream: FakeUpstream) -> None:
    base = f"{upstream.url}/gateway/acct-7731/v1"  # a gateway's path names an account
    body = {"error": {"message": f"key {KEY} refused at {base}/chat/completions?token=abc"}}
    reply = Reply([json.dumps(body).encode()], status=500, headers={"content-type": "application/json"})
    error = assert_ended_cleanly(await talk(reply, openai_base_url=base), "upstream_error")
    assert "acct-7731" not in error["message"] and "[redacted]" in error["message"]
    assert f"refused at {upstream.url}" in error["message"]
