"""The site in deploy/nginx.conf, through real nginx (tests/nginx.py): sidechat under `/chat/`
with and without `uvicorn --root-path`, the page in a browser there, the headers nginx forwards
and the ones sidechat answers with, and the body limit the two share.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
from playwright.async_api import Browser, expect

from chat.logs import FIELDS
from tests.browser import Console, new_context
from tests.conftest import settings_for
from tests.fakeupstream import FakeUpstream, Reply, openai_reply
from tests.live import EventReader, serve
from tests.nginx import chat, fronted, held, nginx, through
from tests.processes import PYTHON, free_port, running

pytestmark = pytest.mark.anyio

HEX_ID = re.compile(r"[0-9a-f]{32}")


# -- under /chat/ ---------------------------------------------------------------------------------------


@asynccontextmanager
async def sidechat_as(how: str, upstream: FakeUpstream, tmp_path: Path) -> AsyncIterator[str]:
    """sidechat in-process with no setting for the prefix, or as `uvicorn --root-path /chat`."""
    if how == "plain":
        async with serve(settings_for(upstream, tmp_path)) as url:
            yield url
        return
    port = free_port()
    command = [PYTHON, "-m", "uvicorn", "app:app", "--port", str(port), "--root-path", "/chat"]
    env = {"SIDECHAT_DB": str(tmp_path / "chat.db"), "SIDECHAT_PROVIDER": "openai"}
    env |= {"OPENAI_API_KEY": "sk-test", "OPENAI_BASE_URL": upstream.url}
    async with running(command, port=port, env=env, log=tmp_path / "uvicorn.log") as server:
        yield server.url


@pytest.mark.parametrize("how", ["plain", "root-path"])
async def test_under_chat_the_page_its_files_a_stream_and_an_attach_work(
    how: str, upstream: FakeUpstream, tmp_path: Path
) -> None:
    hold = asyncio.Event()
    upstream.add(held(hold))
    async with sidechat_as(how, upstream, tmp_path) as url, nginx(url, tmp_path / "nginx") as proxy:
        async with through(proxy) as http:
            moved = await http.get("/chat")
            assert (moved.status_code, moved.headers["location"]) == (301, f"{proxy.url}/chat/")
            page = await http.get("/chat/")
            assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
            assert 'src="static/js/main.js"' in page.text and not re.search(r'(src|href)="/', page.text)
            script = await http.get("/chat/static/js/main.js")
            assert script.status_code == 200 and "javascript" in script.headers["content-type"]
            assert script.headers["content-encoding"] == "gzip"  # files are compressed ...

            async with chat(http, "/chat/api/chat/stream") as response:
                assert "content-encoding" not in response.headers  # ... event streams never
                reader = EventReader(response)
                first = await reader.read(until=2)
                path = f"/chat/api/messages/{response.headers['x-message-id']}/stream"
                async with http.stream("GET", path) as attached:
                    follower = EventReader(attached)
                    assert (await follower.read(until=2)).text == "Hel"
                    hold.set()
                    followed = await follower.read()
                rest = await reader.read()
    assert first.names + rest.names == ["start", "token", "token", "done"]
    assert (followed.names, followed.text) == (["token", "done"], "lo")


async def test_the_page_sends_and_streams_a_reply_in_a_browser_through_nginx_under_chat(
    browser: Browser, console: Console, upstream: FakeUpstream, tmp_path: Path
) -> None:
    upstream.add(Reply(openai_reply("Hello ", "through nginx")))
    async with fronted(upstream, tmp_path) as (_, proxy):
        context = await new_context(browser, console)
        try:
            page = await context.new_page()
            requested: list[str] = []
            page.on("request", lambda r: requested.append(r.url))
            await page.goto(f"{proxy.url}/chat/")
            composer = page.get_by_role("textbox", name="Message", exact=True)
            await composer.fill("Hi")
            await composer.press("Enter")
            reply = page.locator(".message.assistant[data-status=completed]")
            await expect(reply).to_have_count(1)
            await expect(reply.locator(".content")).to_have_text("Hello through nginx")
        finally:
            await context.close()
    assert requested and all(r.startswith(f"{proxy.url}/chat/") for r in requested), requested


# -- what nginx sends on, and what it stops ----------------------------------------------------------


async def test_nginx_forwards_host_client_scheme_prefix_and_request_id(tmp_path: Path) -> None:
    answer = Reply([b"{}"], headers={"content-type": "application/json"})
    async with FakeUpstream(answer, answer) as echo, nginx(echo.url, tmp_path / "nginx") as proxy:
        async with through(proxy) as http:
            await http.get("/api/providers", headers={"host": "chat.example.com", "x-request-id": "mine-1"})
            await http.get("/chat/api/providers", headers={"connection": "close"})
    root, prefixed = echo.requests
    assert (root.path, prefixed.path) == ("/api/providers", "/api/providers")
    assert (root.headers["host"], prefixed.headers["host"]) == ("chat.example.com", "127.0.0.1")
    for seen in (root, prefixed):
        assert (seen.headers["x-forwarded-for"], seen.headers["x-forwarded-proto"]) == ("127.0.0.1", "http")
        assert "connection" not in seen.headers  # kept alive, whatever the client asked
    assert "x-forwarded-prefix" not in root.headers and prefixed.headers["x-forwarded-prefix"] == "/chat"
    assert root.headers["x-request-id"] == "mine-1"
    generated = prefixed.headers["x-request-id"]
    assert HEX_ID.fullmatch(generated) and f"request_id={generated} " in proxy.access_log


async def test_sidechats_log_names_the_client_nginx_saw_not_one_it_claims(
    upstream: FakeUpstream, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="sidechat.requests")
    async with fronted(upstream, tmp_path) as (_, proxy):
        # From 127.0.0.2, which is not a trusted proxy (127.0.0.1 is), claiming to be another.
        transport = httpx.AsyncHTTPTransport(local_address="127.0.0.2")
        async with httpx.AsyncClient(base_url=proxy.url, transport=transport, timeout=10) as http:
            answer = await http.get("/api/providers", headers={"x-forwarded-for": "6.6.6.6"})
    assert answer.status_code == 200
    [line] = [getattr(r, FIELDS) for r in caplog.records if r.name == "sidechat.requests"]
    assert (line["client"], line["route"], line["request_id"]) == (
        "127.0.0.2",
        "/api/providers",
        answer.headers["x-request-id"],
    )


async def test_sidechat_serves_the_forwarded_host_it_allows_and_returns_the_request_id(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    async with fronted(upstream, tmp_path, allowed_hosts=("chat.example.com",)) as (_, proxy):
        async with through(proxy) as http:
            ours = await http.get("/api/providers", headers={"host": "chat.example.com"})
            foreign = await http.get(
                "/api/providers", headers={"host": "elsewhere.example", "x-request-id": "r-2"}
            )
    assert ours.status_code == 200
    assert HEX_ID.fullmatch(ours.headers["x-request-id"])  # nginx's id, as sidechat returned it
    assert f"request_id={ours.headers['x-request-id']} " in proxy.access_log
    assert (foreign.status_code, foreign.json()["error"]["type"]) == (400, "invalid_host")
    assert foreign.headers["x-request-id"] == "r-2"


async def test_nginx_body_limit_is_sidechats(upstream: FakeUpstream, tmp_path: Path) -> None:
    async with fronted(upstream, tmp_path) as (url, proxy), through(proxy) as http:
        limit = settings_for(upstream, tmp_path).max_body_bytes

        def body(size: int) -> bytes:
            padding = size - len(b'{"message": ""}')
            return b'{"message": "' + b"x" * padding + b'"}'

        headers = {"content-type": "application/json"}
        at_limit = await http.post("/api/chat/stream", content=body(limit), headers=headers)
        over = await http.post("/api/chat/stream", content=body(limit + 1), headers=headers)
    # the largest body sidechat takes reaches it (it answers for itself: the message is too long) ...
    assert at_limit.status_code == 422 and at_limit.json()["error"]["fields"]["message"]
    # ... and one byte more is nginx's 413, before it costs sidechat anything
    assert over.status_code == 413 and "nginx" in over.text
    assert not upstream.requests
