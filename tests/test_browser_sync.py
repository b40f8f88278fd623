"""Several tabs and several people in a real browser: what one does, the others see at once,
through the user feed and, in a shared conversation, the conversation's feed."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import pytest
from playwright.async_api import Browser, BrowserContext, Page, expect

from tests.browser import Console, new_context, sidechat
from tests.conftest import settings_for
from tests.fakeupstream import FakeUpstream, Reply, openai_chunk, openai_reply

pytestmark = pytest.mark.anyio

ALICE, BOB = "alice-token-0123456789", "bob-token-0123456789ab"
TOKENS = ((ALICE, "alice"), (BOB, "bob"))


def composer(page: Page):  # type: ignore[no-untyped-def]
    return page.get_by_role("textbox", name="Message", exact=True)


async def send(page: Page, text: str) -> None:
    await composer(page).fill(text)
    await composer(page).press("Enter")


async def signed_in(browser: Browser, console: Console, token: str) -> BrowserContext:
    context = await new_context(browser, console)
    await context.add_init_script(
        f"if (location.protocol.startsWith('http')) localStorage.setItem('sidechat.token', {json.dumps(token)})"
    )
    return context


def held(first: str, rest: str, hold: asyncio.Event) -> Reply:
    return Reply([openai_chunk(first), hold, *openai_reply(rest)])


async def test_a_second_tab_sees_the_new_conversation_and_its_reply_stream(
    browser: Browser, console: Console, upstream: FakeUpstream, tmp_path: Path
) -> None:
    first_hold, second_hold = asyncio.Event(), asyncio.Event()
    upstream.add(held("Counting:", " one, two.", first_hold), held("Again:", " three.", second_hold))
    async with sidechat(browser, settings_for(upstream, tmp_path)) as url:
        context = await new_context(browser, console)
        one, two = await context.new_page(), await context.new_page()
        await one.goto(url)
        await two.goto(url)
        await send(one, "count for me")
        entry = two.get_by_role("link", name="count for me")
        await expect(entry).to_be_visible()  # no reload
        await entry.click()
        await expect(two.locator(".message.assistant .content")).to_have_text("Counting:")
        first_hold.set()
        await expect(two.locator(".message.assistant .content")).to_have_text("Counting: one, two.")

        await send(one, "and again")  # the second tab has the conversation open: it streams there
        await expect(two.locator(".message.user .content").last).to_have_text("and again")
        await expect(two.locator(".message.assistant .content").last).to_have_text("Again:")
        await expect(two.get_by_role("button", name="Send")).to_be_disabled()
        second_hold.set()
        await expect(two.locator(".message.assistant .content").last).to_have_text("Again: three.")
        await expect(one.locator(".message.assistant .content").last).to_have_text("Again: three.")
        assert await two.locator(".message").count() == await one.locator(".message").count() == 4


async def test_renaming_and_deleting_reach_the_other_tab(
    browser: Browser, console: Console, upstream: FakeUpstream, tmp_path: Path
) -> None:
    upstream.add(Reply(openai_reply("Noted.")))
    async with sidechat(browser, settings_for(upstream, tmp_path)) as url:
        context = await new_context(browser, console)
        one, two = await context.new_page(), await context.new_page()
        await one.goto(url)
        await send(one, "remember this")
        await expect(one.locator(".message.assistant")).to_have_attribute("data-status", "completed")
        await two.goto(url)
        await two.get_by_role("link", name="remember this").click()
        await one.get_by_role("button", name="Rename “remember this”").click()
        await one.get_by_role("textbox", name="Title").fill("Things to remember")
        await one.get_by_role("button", name="Rename", exact=True).click()
        await expect(two.get_by_role("link", name="Things to remember")).to_be_visible()
        await expect(two.get_by_role("heading", name="Things to remember")).to_be_visible()
        await one.get_by_role("button", name="Delete “Things to remember”").click()
        await one.get_by_role("button", name="Delete", exact=True).click()
        await expect(two.get_by_role("link", name="Things to remember")).to_have_count(0)
        await expect(two.get_by_role("alert")).to_contain_text("deleted")
        await expect(two.locator(".message")).to_have_count(0)


async def test_the_page_asks_for_a_token_and_keeps_it(
    browser: Browser, console: Console, upstream: FakeUpstream, tmp_path: Path
) -> None:
    console.allow("status of 401")  # the answers that make the page ask
    upstream.add(Reply(openai_reply("Signed in.")))
    async with sidechat(browser, settings_for(upstream, tmp_path, api_tokens=TOKENS)) as url:
        context = await new_context(browser, console)
        page = await context.new_page()
        await page.goto(url)
        dialog = page.get_by_role("dialog", name="Sign in")
        await expect(dialog).to_be_visible()
        await dialog.get_by_label("API token").fill("not-a-token-at-all-0000")
        await dialog.get_by_role("button", name="Save token").click()
        await expect(dialog.get_by_text("That token was refused.")).to_be_visible()
        await dialog.get_by_label("API token").fill(ALICE)
        await dialog.get_by_role("button", name="Save token").click()
        await expect(dialog).to_be_hidden()
        await send(page, "hello")
        await expect(page.locator(".message.assistant .content")).to_have_text("Signed in.")
        await page.reload()
        await expect(page.get_by_role("link", name="hello")).to_be_visible()
        await expect(dialog).to_be_hidden()
        assert await page.evaluate("localStorage.getItem('sidechat.token')") == ALICE


async def test_a_member_sees_presence_typing_and_the_reply_as_it_streams(
    browser: Browser, console: Console, upstream: FakeUpstream, tmp_path: Path
) -> None:
    hold = asyncio.Event()
    upstream.add(Reply(openai_reply("Welcome.")), held("Hello", " bob.", hold))
    async with sidechat(browser, settings_for(upstream, tmp_path, api_tokens=TOKENS)) as url:
        alice = await (await signed_in(browser, console, ALICE)).new_page()
        bob = await (await signed_in(browser, console, BOB)).new_page()
        await alice.goto(url)
        await bob.goto(url)
        await send(alice, "our shared plan")
        await expect(alice.locator(".message.assistant")).to_have_attribute("data-status", "completed")
        conversation = int(alice.url.rsplit("/", 1)[1])
        async with httpx.AsyncClient(base_url=url, headers={"authorization": f"Bearer {ALICE}"}) as http:
            shared = await http.post(f"/api/conversations/{conversation}/members", json={"user": "bob"})
            assert shared.status_code == 201

        entry = bob.get_by_role("link", name="our shared plan")
        await expect(entry).to_be_visible()  # it reached bob's feed: no reload
        await entry.click()
        await expect(bob.locator(".message.assistant .content")).to_have_text("Welcome.")
        await alice.reload()  # alice's tab learns it is shared now
        await expect(bob.get_by_text("Here: alice")).to_be_visible()
        await expect(alice.get_by_text("Here: bob")).to_be_visible()

        await composer(alice).press_sequentially("hel")
        await expect(bob.get_by_text("alice is typing…")).to_be_visible()
        await composer(alice).press_sequentially("lo bob")
        await composer(alice).press("Enter")
        await expect(bob.get_by_text("alice is typing…")).to_be_hidden()
        await expect(bob.locator(".message.user .content").last).to_have_text("hello bob")
        await expect(bob.locator(".message.user .author").last).to_have_text("alice")
        await expect(bob.locator(".message.assistant .content").last).to_have_text("Hello")
        hold.set()
        await expect(bob.locator(".message.assistant .content").last).to_have_text("Hello bob.")
        await bob.close()
        await expect(alice.get_by_text("Here: bob")).to_be_hidden()
