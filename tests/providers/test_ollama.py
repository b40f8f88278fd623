from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest
import respx

from chat.providers.base import Finish, ProviderError, Turn, Usage
from chat.providers.deadlines import Timeouts
from chat.providers.ollama import OllamaProvider, OllamaReading, build_body

from .conftest import Framing
from .fakes import FakeBody, chat_request, collect, collect_all

pytestmark = pytest.mark.anyio

URL = "http://127.0.0.1:11434/api/chat"


def line(content: str = "", *, thinking: str | None = None, **extra: Any) -> bytes:
    """One NDJSON line as `ollama serve` sends it."""
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if thinking is not None:
        message["thinking"] = thinking
    payload = {
        "model": "llama3.2",
        "created_at": "2024-07-22T20:33:28.123648Z",
        "message": message,
        "done": False,
    }
    payload.update(extra)
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"


def done(reason: str = "stop") -> bytes:
    return line(
        done=True,
        done_reason=reason,
        total_duration=4883583458,
        load_duration=1334875,
        prompt_eval_count=26,
        prompt_eval_duration=342546000,
        eval_count=282,
        eval_duration=4535599000,
    )


HELLO = line("Hel") + line("lo") + line(" 👋🏽") + done()


def serve(
    router: respx.MockRouter, body: FakeBody, content_type: str = "application/x-ndjson"
) -> respx.Route:
    return router.post(URL).mock(
        return_value=httpx.Response(200, headers={"content-type": content_type}, stream=body)
    )


async def test_streams_text_then_finish(
    client: httpx.AsyncClient, router: respx.MockRouter, framing: Framing
) -> None:
    body = FakeBody(framing(HELLO))
    serve(router, body)
    texts, finish = await collect(OllamaProvider(client).stream(chat_request()))
    assert texts == ["Hel", "lo", " 👋🏽"]
    assert finish == Finish("stop", Usage(26, 282))
    assert body.closed


async def test_length_and_thinking(
    client: httpx.AsyncClient, router: respx.MockRouter, framing: Framing
) -> None:
    data = line(thinking="Hmm, the user") + line(thinking=" wants") + line("Yes") + done("length")
    serve(router, FakeBody(framing(data)))
    texts, finish = await collect(OllamaProvider(client).stream(chat_request()))
    assert texts == ["Yes"]
    assert finish.reason == "length"


async def test_last_line_without_newline_is_complete(
    client: httpx.AsyncClient, router: respx.MockRouter, framing: Framing
) -> None:
    serve(router, FakeBody(framing(HELLO[:-1])))
    texts, finish = await collect(OllamaProvider(client).stream(chat_request()))
    assert "".join(texts) == "Hello 👋🏽"
    assert finish.reason == "stop"


@pytest.mark.parametrize("cut", [0, 5, 40])
async def test_body_ending_before_done_is_truncated(
    client: httpx.AsyncClient, router: respx.MockRouter, framing: Framing, cut: int
) -> None:
    data = line("Hel") + line("lo") + done()[:cut]
    serve(router, FakeBody(framing(data)))
    with pytest.raises(ProviderError) as info:
        await collect(OllamaProvider(client).stream(chat_request()))
    assert info.value.type == "truncated"


async def test_error_line_mid_stream(
    client: httpx.AsyncClient, router: respx.MockRouter, framing: Framing
) -> None:
    data = line("Hel") + b'{"error":"an error was encountered while running the model: unexpected EOF"}\n'
    serve(router, FakeBody(framing(data)))
    got: list[object] = []
    with pytest.raises(ProviderError) as info:
        async for item in OllamaProvider(client).stream(chat_request()):
            got.append(item)
    assert got == ["Hel"]
    assert info.value.type == "upstream_error"
    assert "unexpected EOF" in info.value.message


async def test_invalid_line_is_a_protocol_error(client: httpx.AsyncClient, router: respx.MockRouter) -> None:
    serve(router, FakeBody([line("Hel") + b"<html>oops\n" + done()]))
    with pytest.raises(ProviderError) as info:
        await collect(OllamaProvider(client).stream(chat_request()))
    assert info.value.type == "protocol"
    assert "<html>oops" in info.value.message


async def test_model_not_found(client: httpx.AsyncClient, router: respx.MockRouter) -> None:
    router.post(URL).mock(
        return_value=httpx.Response(404, json={"error": 'model "llama9" not found, try pulling it first'})
    )
    with pytest.raises(ProviderError) as info:
        await collect(OllamaProvider(client).stream(chat_request(model="llama9")))
    e = info.value
    assert (e.type, e.status, e.retryable) == ("upstream_error", 404, False)
    assert "try pulling it first" in e.message


async def test_request_body(client: httpx.AsyncClient, router: respx.MockRouter) -> None:
    route = serve(router, FakeBody([HELLO]))
    request = chat_request(
        "And now?",
        model="",
        system="Be brief.",
        temperature=0.1,
        max_tokens=64,
        history=[Turn("user", "Hi"), Turn("assistant", "Yo")],
    )
    await collect(OllamaProvider(client).stream(request))
    sent = route.calls.last.request
    assert "authorization" not in sent.headers
    assert json.loads(sent.content) == {
        "model": "llama3.2",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Yo"},
            {"role": "user", "content": "And now?"},
        ],
        "stream": True,
        "options": {"temperature": 0.1, "num_predict": 64},
    }


def test_build_body_without_options() -> None:
    assert build_body(chat_request("Hi", model="qwen3")) == {
        "model": "qwen3",
        "messages": [{"role": "user", "content": "Hi"}],
        "stream": True,
    }


def test_reading_a_line_and_the_done_line() -> None:
    assert OllamaReading().feed(json.loads(line("Hi"))) == ("Hi", None)
    assert OllamaReading().feed(json.loads(done("length"))) == ("", Finish("length", Usage(26, 282)))


async def test_stops_at_done_without_waiting_for_close(
    client: httpx.AsyncClient, router: respx.MockRouter, framing: Framing
) -> None:
    body = FakeBody(framing(HELLO), hang=True)
    serve(router, body)
    async with asyncio.timeout(2):
        texts, _ = await collect(OllamaProvider(client).stream(chat_request()))
    assert "".join(texts) == "Hello 👋🏽"
    assert body.closed


async def test_stall_times_out(client: httpx.AsyncClient, router: respx.MockRouter) -> None:
    body = FakeBody([line("Hel"), done()], stall_before=1)
    serve(router, body)
    p = OllamaProvider(client, timeouts=Timeouts(connect=1, first_token=5, idle=0.05))
    async with asyncio.timeout(2):
        with pytest.raises(ProviderError) as info:
            await collect(p.stream(chat_request()))
    assert info.value.type == "timeout"


async def test_ollama_takes_no_api_key(client: httpx.AsyncClient) -> None:
    with pytest.raises(TypeError):
        OllamaProvider(client, api_key="sk-not-for-ollama")


async def test_no_count_is_told_before_the_done_line(
    client: httpx.AsyncClient, router: respx.MockRouter, framing: Framing
) -> None:
    serve(router, FakeBody(framing(HELLO)))
    _, finish, usages = await collect_all(OllamaProvider(client).stream(chat_request()))
    assert usages == [] and finish.usage == Usage(26, 282)
