"""OpenAI's Responses API over real sockets: client -> uvicorn -> sidechat -> a fake provider
that sends the API's event stream (`tests/providers/responses_stream.py`) event by event.

Both directions are checked: what the client sees and what is stored (the text, the usage,
its cost at OpenAI's prices), and what the provider was sent (its path, key, request id and
body, `store: false` among it). Then a `response.failed` after some text: the reply fails
with the error's type and is billed what the provider had counted.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from chat.config import Settings
from tests.fakeupstream import FakeUpstream, Reply
from tests.live import chat_stream, serve
from tests.providers.responses_stream import USAGE, event_list, opening, reply, response, text_delta

pytestmark = pytest.mark.anyio

BODY = {
    "message": "Say hello",
    "provider": "openai-responses",
    "system": "Be brief.",
    "temperature": 0.5,
    "max_tokens": 64,
}
CACHED_USAGE = {
    **USAGE,
    "input_tokens": 2100,
    "input_tokens_details": {"cached_tokens": 2048},
    "total_tokens": 2167,
}


def gpt_5_mini(prompt: int, cached: int, completion: int) -> float:
    """What the price table says gpt-5-mini costs (OpenAI's, the same on both APIs)."""
    return ((prompt - cached) * 0.25 + cached * 0.025 + completion * 2.00) / 1e6


def settings_for(upstream: FakeUpstream, tmp_path: Path) -> Settings:
    # The default provider stays the Chat Completions one: the request picks this one.
    return Settings(
        db=str(tmp_path / "chat.db"),
        provider="openai",
        openai_api_key="sk-test",
        openai_base_url=upstream.url,
    )


async def talk(client: httpx.AsyncClient, body: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    transcript = await chat_stream(client, body)
    conversation_id = transcript.events[0].data["conversation_id"]
    messages = (await client.get(f"/api/conversations/{conversation_id}")).json()["messages"]
    return transcript, messages[-1]


async def test_a_chat_streams_and_stores_its_usage_and_cost(upstream: FakeUpstream, tmp_path: Path) -> None:
    upstream.add(Reply(event_list(*reply(["Hel", "lo", " 👋🏽"], CACHED_USAGE))))
    async with (
        serve(settings_for(upstream, tmp_path)) as url,
        httpx.AsyncClient(base_url=url, timeout=10) as client,
    ):
        listed = {p["name"]: p for p in (await client.get("/api/providers")).json()["providers"]}
        transcript, row = await talk(client, BODY)
        usage = (await client.get("/api/usage")).json()

    assert listed["openai-responses"] == {
        "name": "openai-responses",
        "default_model": "gpt-5-mini",
        "key_set": True,
        "available": True,
        "default": False,
    }
    assert transcript.names == ["start", "token", "token", "token", "done"]
    start, done = transcript.events[0].data, transcript.terminal.data
    assert (start["provider"], start["model"]) == ("openai-responses", "gpt-5-mini")
    assert transcript.text == "Hello 👋🏽"
    counted = {"input_tokens": 2100, "output_tokens": 67, "cached_input_tokens": 2048}
    assert (done["finish_reason"], done["usage"]) == ("stop", counted)
    assert done["cost_usd"] == pytest.approx(gpt_5_mini(2100, 2048, 67), rel=1e-12)

    assert (row["status"], row["content"]) == ("completed", "Hello 👋🏽")
    metadata = row["metadata"]
    assert (metadata["provider"], metadata["model"], metadata["finish_reason"]) == (
        "openai-responses",
        "gpt-5-mini",
        "stop",
    )
    assert (metadata["usage"], metadata["cost_usd"]) == (counted, done["cost_usd"])
    [line] = usage["usage"]
    assert (line["provider"], line["model"], line["replies"]) == ("openai-responses", "gpt-5-mini", 1)
    assert (line["input_tokens"], line["output_tokens"]) == (2100, 67)
    assert line["cost_usd"] == pytest.approx(done["cost_usd"], rel=1e-12)

    [seen] = upstream.requests
    assert (seen.method, seen.path) == ("POST", "/responses")
    assert seen.headers["authorization"] == "Bearer sk-test"
    assert seen.headers["accept"] == "text/event-stream"
    assert seen.headers["x-client-request-id"] == start["request_id"]
    assert seen.json() == {
        "model": "gpt-5-mini",
        "instructions": "Be brief.",
        "input": [{"role": "user", "content": "Say hello"}],
        "stream": True,
        "store": False,
        "temperature": 0.5,
        "max_output_tokens": 64,
    }


async def test_a_failed_response_fails_the_reply_and_bills_its_count(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    error = {"code": "server_error", "message": "The model produced invalid content."}
    failed = response("failed", error=error, usage={**USAGE, "output_tokens": 1, "total_tokens": 13})
    script = event_list(*opening(), text_delta("Hel"), {"type": "response.failed", "response": failed})
    upstream.add(Reply(script))
    async with (
        serve(settings_for(upstream, tmp_path)) as url,
        httpx.AsyncClient(base_url=url, timeout=10) as client,
    ):
        transcript, row = await talk(client, BODY)

    assert transcript.names == ["start", "token", "error"]
    terminal = transcript.terminal.data
    assert terminal["partial"] is True
    assert (terminal["error"]["type"], terminal["error"]["provider_code"]) == (
        "upstream_error",
        "server_error",
    )
    assert "The model produced invalid content." in terminal["error"]["message"]
    assert (row["status"], row["content"]) == ("failed", "Hel")
    assert row["metadata"]["usage"] == {"input_tokens": 12, "output_tokens": 1, "cached_input_tokens": 0}
    assert row["metadata"]["cost_usd"] == pytest.approx(gpt_5_mini(12, 0, 1), rel=1e-12)
    assert len(upstream.requests) == 1  # a token was sent: nothing is retried
