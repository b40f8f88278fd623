"""The page's chat in a real browser: sending, streaming, stopping, resuming, reloading."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from playwright.async_api import Browser, Page, expect

from chat.config import Settings
from tests.browser import Console, Cutter, new_context, reply_text, screenshot, sidechat
from tests.conftest import settings_for
from tests.fakeupstream import FakeUpstream, Reply, openai_chunk, openai_reply
from tests.live import until

pytestmark = pytest.mark.anyio


@pytest.fixture
async def page(browser: Browser, console: Console) -> AsyncIterator[Page]:
    context = await new_context(browser, console)
    yield await context.new_page()
    await context.close()


def composer(page: Page):  # type: ignore[no-untyped-def]
    return page.get_by_role("textbox", name="Message", exact=True)


async def send(page: Page, text: str) -> None:
    await composer(page).fill(text)
    await composer(page).press("Enter")


def held_reply(*parts: str, hold: asyncio.Event) -> Reply:
    """A reply that sends its first part, waits for `hold`, then sends the rest and ends."""
    first, *rest = parts
    return Reply([openai_chunk(first), hold, *openai_reply(*rest)])


async def stored(url: str, conversation: int = 0) -> list[dict[str, object]]:
    """The messages of the newest (or a given) conversation, as the server has them."""
    async with httpx.AsyncClient(base_url=url) as http:
        if not conversation:
            conversation = (await http.get("/api/conversations")).json()["conversations"][0]["id"]
        return list((await http.get(f"/api/conversations/{conversation}")).json()["messages"])


async def grown(page: Page, length: int) -> bool:
    return len(await reply_text(page)) > length


async def test_a_reply_grows_as_it_streams_then_finishes_and_survives_a_reload(
    browser: Browser, console: Console, tmp_path: Path
) -> None:
    async with sidechat(browser, Settings(db=str(tmp_path / "chat.db"), demo_delay=0.02)) as url:
        context = await new_context(browser, console)
        page = await context.new_page()
        await page.goto(url)
        await expect(page.get_by_role("heading", name="What can I help with?")).to_be_visible()
        await expect(composer(page)).to_be_focused()
        await screenshot(page, "empty")

        await send(page, "Tell me about streams")
        reply = page.locator(".message.assistant").last
        await expect(reply).to_have_attribute("data-status", "streaming")
        await expect(reply.locator(".content")).to_contain_text("Demo reply")
        early = len(await reply_text(page))
        await until(lambda: grown(page, early + 20), what="the reply to grow")
        await expect(reply).to_have_attribute("data-status", "streaming")  # still going: it grew
        await screenshot(page, "streaming")
        await expect(reply).to_have_attribute("data-status", "completed", timeout=30_000)
        await expect(page.get_by_role("button", name="Send")).to_be_enabled()
        await screenshot(page, "finished-with-code")

        shown = await reply_text(page)
        final = await stored(url)
        assert [m["status"] for m in final] == ["completed", "completed"]
        assert "def greet(name: str)" in shown and str(final[1]["content"]).startswith("## Demo reply")
        await page.reload()
        entry = page.get_by_role("link", name="Tell me about streams")
        await expect(entry).to_be_visible()
        await entry.click()
        await expect(page.locator(".message.user .content")).to_have_text("Tell me about streams")
        assert await reply_text(page) == shown  # the stored reply, drawn as it was streamed
        await context.close()


async def test_the_text_shown_is_exactly_what_the_provider_sent(
    browser: Browser, page: Page, upstream: FakeUpstream, tmp_path: Path
) -> None:
    hold = asyncio.Event()
    upstream.add(held_reply("Hello", " there,", " friend.", hold=hold))
    async with sidechat(browser, settings_for(upstream, tmp_path)) as url:
        await page.goto(url)
        await send(page, "hi")
        await expect(page.locator(".message.assistant .content")).to_have_text("Hello")
        await expect(page.get_by_role("button", name="Send")).to_be_disabled()
        await expect(page.get_by_role("button", name="Stop")).to_be_visible()
        hold.set()
        await expect(page.locator(".message.assistant .content")).to_have_text("Hello there, friend.")
        await expect(page.get_by_role("button", name="Stop")).to_be_hidden()
        assert [m["content"] for m in await stored(url)] == ["hi", "Hello there, friend."]


async def test_stop_cancels_the_reply_on_the_server(
    browser: Browser, page: Page, upstream: FakeUpstream, tmp_path: Path
) -> None:
    upstream.add(held_reply("Once upon", " a time", hold=asyncio.Event()))
    async with sidechat(browser, settings_for(upstream, tmp_path)) as url:
        await page.goto(url)
        await send(page, "a long story")
        await expect(page.locator(".message.assistant .content")).to_have_text("Once upon")
        await page.get_by_role("button", name="Stop").click()
        reply = page.locator(".message.assistant")
        await expect(reply).to_have_attribute("data-status", "cancelled")
        await expect(reply.locator(".status-label")).to_have_text("Cancelled")
        await until(upstream.hung_up.is_set, what="the provider's connection to close")
        assert [(m["status"], m["content"]) for m in await stored(url)][1] == ("cancelled", "Once upon")


async def test_escape_stops_and_shift_enter_breaks_the_line(
    browser: Browser, page: Page, upstream: FakeUpstream, tmp_path: Path
) -> None:
    upstream.add(held_reply("Thinking", " more", hold=asyncio.Event()))
    async with sidechat(browser, settings_for(upstream, tmp_path)) as url:
        await page.goto(url)
        box = composer(page)
        await box.type("line one")
        await box.press("Shift+Enter")
        await box.type("line two")
        assert await box.input_value() == "line one\nline two"
        await box.press("Enter")
        await expect(page.locator(".message.user .content")).to_have_text("line one\nline two")
        await expect(page.locator(".message.assistant .content")).to_have_text("Thinking")
        await page.keyboard.press("Escape")
        await expect(page.locator(".message.assistant")).to_have_attribute("data-status", "cancelled")
        assert (await stored(url))[1]["status"] == "cancelled"


async def test_a_dropped_connection_resumes_without_repeating_text(
    browser: Browser, page: Page, upstream: FakeUpstream, tmp_path: Path, console: Console
) -> None:
    console.allow("net::ERR_")  # the cut connections themselves
    hold = asyncio.Event()
    upstream.add(held_reply("First half.", " Second half.", hold=hold))
    async with sidechat(browser, settings_for(upstream, tmp_path)) as url:
        async with Cutter(int(url.rsplit(":", 1)[1])) as cutter:
            attaches: list[str] = []
            page.on("request", lambda r: attaches.append(r.url) if r.url.endswith("/stream") else None)
            await page.goto(cutter.url)
            await send(page, "go")
            await expect(page.locator(".message.assistant .content")).to_have_text("First half.")
            cutter.cut()
            await until(lambda: any("/api/messages/" in u for u in attaches), what="the page to attach again")
            hold.set()
            await expect(page.locator(".message.assistant")).to_have_attribute("data-status", "completed")
            assert await reply_text(page) == "First half. Second half."
            assert (await stored(url))[1]["content"] == "First half. Second half."


async def test_a_reload_mid_reply_attaches_and_finishes_it_once(
    browser: Browser, page: Page, upstream: FakeUpstream, tmp_path: Path
) -> None:
    hold = asyncio.Event()
    upstream.add(held_reply("Before the reload.", " After it.", hold=hold))
    async with sidechat(browser, settings_for(upstream, tmp_path)) as url:
        await page.goto(url)
        await send(page, "reload me")
        await expect(page.locator(".message.assistant .content")).to_have_text("Before the reload.")
        await page.reload()
        await expect(page.locator(".message.assistant .content")).to_have_text("Before the reload.")
        hold.set()
        await expect(page.locator(".message.assistant")).to_have_attribute("data-status", "completed")
        assert await reply_text(page) == "Before the reload. After it."
        assert await page.locator(".message").count() == 2


async def test_a_failed_reply_is_labelled_with_its_error_and_can_be_retried(
    browser: Browser, page: Page, upstream: FakeUpstream, tmp_path: Path
) -> None:
    upstream.add(
        Reply(
            status=400,
            script=[b'{"error": {"message": "this model is asleep", "type": "invalid_request"}}'],
            headers={"content-type": "application/json"},
        ),
        Reply(openai_reply("Awake now.")),
    )
    async with sidechat(browser, settings_for(upstream, tmp_path)) as url:
        await page.goto(url)
        await send(page, "wake up")
        reply = page.locator(".message.assistant")
        await expect(reply).to_have_attribute("data-status", "failed")
        await expect(reply.locator(".status-label")).to_contain_text("this model is asleep")
        await screenshot(page, "error")
        await page.get_by_role("button", name="Retry").click()
        await expect(reply).to_have_count(1)  # the failed one is replaced, not added to
        await expect(reply.locator(".content")).to_have_text("Awake now.")
        await expect(reply).to_have_attribute("data-status", "completed")
        messages = await stored(url)
        assert [m["status"] for m in messages] == ["completed", "failed", "completed"]
        assert messages[1]["metadata"]["superseded_by"] == messages[2]["id"]  # type: ignore[index]


async def test_regenerate_replaces_the_reply_and_details_show_what_answered(
    browser: Browser, page: Page, upstream: FakeUpstream, tmp_path: Path
) -> None:
    upstream.add(Reply(openai_reply("One answer.")), Reply(openai_reply("Another answer.")))
    async with sidechat(browser, settings_for(upstream, tmp_path)) as url:
        await page.goto(url)
        await send(page, "answer me")
        await expect(page.locator(".message.assistant .content")).to_have_text("One answer.")
        await page.get_by_role("button", name="Regenerate").click()
        await expect(page.locator(".message.assistant .content")).to_have_text("Another answer.")
        await expect(page.locator(".message.assistant")).to_have_count(1)
        await page.get_by_role("button", name="Details").click()
        details = page.locator(".details")
        await expect(details).to_contain_text("openai")
        await expect(details).to_contain_text("12 in, 2 out")
        sent = [r.json()["messages"] for r in upstream.requests]
        assert sent[0] == sent[1]  # the same history, twice


async def test_editing_the_last_message_resends_it(
    browser: Browser, page: Page, upstream: FakeUpstream, tmp_path: Path
) -> None:
    upstream.add(Reply(openai_reply("Paris.")), Reply(openai_reply("Rome.")))
    async with sidechat(browser, settings_for(upstream, tmp_path)) as url:
        await page.goto(url)
        await send(page, "capital of France?")
        await expect(page.locator(".message.assistant .content")).to_have_text("Paris.")
        await page.get_by_role("button", name="Edit your last message").click()
        editor = page.get_by_role("textbox", name="Edit message")
        await editor.fill("capital of Italy?")
        await page.get_by_role("button", name="Save and send").click()
        await expect(page.locator(".message.assistant .content")).to_have_text("Rome.")
        await expect(page.locator(".message.user .content")).to_have_text("capital of Italy?")
        assert upstream.requests[1].json()["messages"][-1]["content"] == "capital of Italy?"
        assert len(await stored(url)) == 4  # the old turn is kept, superseded
