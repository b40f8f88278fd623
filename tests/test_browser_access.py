"""The page for everyone, in a real browser: axe-core finds nothing serious in either theme or
on a phone, the keyboard alone can do everything, a phone gets a drawer and no sideways scroll,
the page works under a path prefix, and the sidebar pages, renames and deletes.

axe-core is the vendored copy, added to the page as a script from this origin, so the page's
Content-Security-Policy is the one a user's browser enforces.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from playwright.async_api import Browser, Locator, Page, expect

from chat.config import Settings
from tests.browser import DESKTOP, PHONE, Console, new_context, screenshot, sidechat
from tests.conftest import settings_for
from tests.fakeupstream import FakeUpstream, Reply, openai_chunk, openai_reply
from tests.live import until

pytestmark = pytest.mark.anyio

AXE = "static/vendor/axe-core/axe.min.js"  # relative: it works under a prefix too
SERIOUS = {"serious", "critical"}


def demo(tmp_path: Path) -> Settings:
    return Settings(db=str(tmp_path / "chat.db"), demo_delay=0.01)


async def open_page(browser: Browser, console: Console, url: str, **options: Any) -> Page:
    page = await (await new_context(browser, console, **options)).new_page()
    await page.goto(url)
    await expect(page.get_by_role("combobox", name="Provider")).to_have_value(re.compile(".+"))  # loaded
    return page


def composer(page: Page) -> Locator:
    return page.get_by_role("textbox", name="Message", exact=True)


async def send_and_finish(page: Page, text: str) -> Locator:
    await composer(page).fill(text)
    await composer(page).press("Enter")
    reply = page.locator(".message.assistant").last
    await expect(reply).to_have_attribute("data-status", "completed")
    return reply


async def create(url: str, *titles: str) -> dict[str, int]:
    """Conversations made through the API, oldest first; their ids by title."""
    async with httpx.AsyncClient(base_url=url) as http:
        made = [(await http.post("/api/conversations", json={"title": t})).json() for t in titles]
    return {c["conversation"]["title"]: c["conversation"]["id"] for c in made}


async def titles_on_server(url: str) -> list[str]:
    async with httpx.AsyncClient(base_url=url) as http:
        answer = (await http.get("/api/conversations", params={"limit": 100})).json()
    return [c["title"] for c in answer["conversations"]]


async def serious_violations(page: Page) -> str:
    """What axe-core finds of impact serious or critical, one line per element; empty if nothing."""
    if not await page.evaluate("() => 'axe' in window"):
        await page.add_script_tag(url=AXE)
    result = await page.evaluate("async () => await axe.run(document)")
    lines = []
    for violation in result["violations"]:
        if violation["impact"] in SERIOUS:
            for node in violation["nodes"]:
                summary = " ".join(node["failureSummary"].split())
                lines.append(f"{violation['id']} ({violation['impact']}) at {node['target']}: {summary}")
    return "\n".join(lines)


async def assert_accessible(page: Page, state: str) -> None:
    found = await serious_violations(page)
    assert not found, f"axe-core, {state}:\n{found}"


def luminance(css: str) -> float:
    """The relative luminance (WCAG 2) of a computed `rgb(…)` colour."""
    red, green, blue = (int(v) / 255 for v in re.findall(r"\d+(?:\.\d+)?", css)[:3])
    linear = [c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in (red, green, blue)]
    return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]


def contrast(one: str, other: str) -> float:
    light, dark = sorted((luminance(one), luminance(other)), reverse=True)
    return (light + 0.05) / (dark + 0.05)


async def style(locator: Locator, prop: str) -> str:
    return str(await locator.evaluate("(el, prop) => getComputedStyle(el)[prop]", prop))


async def no_sideways_scroll(page: Page) -> bool:
    return bool(await page.evaluate("() => document.documentElement.scrollWidth <= innerWidth"))


# -- axe-core -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("scheme", "viewport"),
    [("light", DESKTOP), ("dark", DESKTOP), ("light", PHONE), ("dark", PHONE)],
    ids=["light", "dark", "phone-light", "phone-dark"],
)
async def test_axe_finds_nothing_serious_empty_finished_and_in_the_dialogs(
    browser: Browser, console: Console, tmp_path: Path, scheme: str, viewport: dict[str, int]
) -> None:
    async with sidechat(browser, demo(tmp_path)) as url:
        page = await open_page(browser, console, url, color_scheme=scheme, viewport=viewport)
        await expect(page.get_by_role("heading", name="What can I help with?")).to_be_visible()
        await assert_accessible(page, "the empty page")

        reply = await send_and_finish(page, "Show me some code")
        await expect(reply.locator("pre code.hljs")).to_be_visible()
        await assert_accessible(page, "a finished reply with a code block")
        await page.get_by_role("button", name="Details").click()
        await page.get_by_role("button", name="System prompt").click()
        await assert_accessible(page, "the reply's details and the system prompt open")

        if viewport == PHONE:
            await page.get_by_role("button", name="Show conversations").click()
            await expect(page.get_by_role("link", name="Show me some code")).to_be_visible()
            await assert_accessible(page, "the sidebar open on a phone")
        await page.get_by_role("button", name="Rename “Show me some code”").click()
        await expect(page.get_by_role("dialog", name="Rename conversation")).to_be_visible()
        await assert_accessible(page, "the rename dialog")
        await page.get_by_role("button", name="Cancel").click()
        await page.get_by_role("button", name="Delete “Show me some code”").click()
        await expect(page.get_by_role("dialog", name="Delete conversation?")).to_be_visible()
        await assert_accessible(page, "the delete dialog")


# -- the keyboard ---------------------------------------------------------------------------

FOCUSED = """() => {
  const el = document.activeElement;
  const s = getComputedStyle(el);
  const name = el === document.body ? "" : el.getAttribute("aria-label") || el.labels?.[0]?.textContent || el.textContent;
  return {
    name: name.replace(/\\s+/g, " ").trim(), tag: el.tagName.toLowerCase(),
    outlined: s.outlineStyle !== "none" && parseFloat(s.outlineWidth) >= 2,
    shown: el === document.body || (el.checkVisibility({ opacityProperty: true, visibilityProperty: true })),
  };
}"""


async def focused(page: Page) -> dict[str, Any]:
    return dict(await page.evaluate(FOCUSED))


async def tab_to(page: Page, name: str, key: str = "Tab", most: int = 40) -> None:
    """Press `key` until the focused element's name starts with `name`."""
    for _ in range(most):
        if (await focused(page))["name"].startswith(name):
            return
        await page.keyboard.press(key)
    raise AssertionError(f"{key} never reached {name!r}")


async def test_the_keyboard_alone_reaches_every_control_opens_a_conversation_and_sends(
    browser: Browser, console: Console, tmp_path: Path
) -> None:
    async with sidechat(browser, demo(tmp_path)) as url:
        ids = await create(url, "Groceries", "Holiday plans")
        page = await open_page(browser, console, url)
        await expect(composer(page)).to_be_focused()
        for named in [
            page.get_by_role("button", name="New chat", exact=True),
            page.get_by_role("button", name="Send", exact=True),
            page.get_by_role("button", name="System prompt", exact=True),
            page.get_by_role("combobox", name="Provider", exact=True),
            page.get_by_role("combobox", name="Model", exact=True),
            page.get_by_role("navigation", name="Conversation list", exact=True),
            page.get_by_role("link", name="Groceries"),
            page.get_by_role("button", name="Rename “Groceries”", exact=True),
            page.get_by_role("button", name="Delete “Groceries”", exact=True),
        ]:
            await expect(named).to_have_count(1)

        # Once round the page with Tab, from the composer back to it: every stop is visible
        # (the sidebar's rename and delete appear when focused) and has a focus ring.
        stops = []
        await page.keyboard.press("Tab")
        while (now := await focused(page))["name"] != "Message" and len(stops) < 40:
            stops.append(now)
            await page.keyboard.press("Tab")
        reached = [s["name"] for s in stops]
        for name in ("Send", "New chat", "Groceries", "Holiday plans", "Delete “Groceries”", "Model"):
            assert any(r.startswith(name) for r in reached), f"Tab never reached {name!r}: {reached}"
        for stop in stops:
            if stop["tag"] != "body":  # leaving the page for the browser's own UI, in between
                assert stop["shown"] and stop["outlined"], f"focused but not seen: {stop}"

        await tab_to(page, "Holiday plans", key="Shift+Tab")
        await page.keyboard.press("Enter")
        await expect(page.get_by_role("heading", level=1)).to_have_text("Holiday plans")
        await expect(composer(page)).to_be_focused()
        await page.keyboard.type("Where should we go?")
        await page.keyboard.press("Enter")
        await expect(page.locator(".message.assistant")).to_have_attribute("data-status", "completed")
        async with httpx.AsyncClient(base_url=url) as http:
            stored = (await http.get(f"/api/conversations/{ids['Holiday plans']}")).json()["messages"]
        assert [(m["role"], m["content"]) for m in stored][0] == ("user", "Where should we go?")
        assert [m["status"] for m in stored] == ["completed", "completed"]


async def test_the_skip_link_moves_to_the_composer_and_leaves_the_conversation_open(
    browser: Browser, console: Console, tmp_path: Path
) -> None:
    async with sidechat(browser, demo(tmp_path)) as url:
        ids = await create(url, "Groceries")
        page = await open_page(browser, console, f"{url}#/c/{ids['Groceries']}")
        await expect(page.get_by_role("heading", level=1)).to_have_text("Groceries")
        await page.get_by_role("button", name="System prompt").focus()
        await tab_to(page, "Skip to the message box", key="Shift+Tab")
        await page.keyboard.press("Enter")
        await expect(composer(page)).to_be_focused()
        await expect(page.get_by_role("heading", level=1)).to_have_text("Groceries")
        await expect(page.get_by_role("link", name="Groceries")).to_have_attribute("aria-current", "page")
        assert page.url.endswith(f"#/c/{ids['Groceries']}"), page.url  # a reload opens it again


def held_reply(first: str, rest: str, hold: asyncio.Event) -> Reply:
    return Reply([openai_chunk(first), hold, *openai_reply(rest)])


async def test_a_streaming_reply_is_a_polite_live_region_that_is_busy_until_done(
    browser: Browser, console: Console, upstream: FakeUpstream, tmp_path: Path
) -> None:
    hold = asyncio.Event()
    upstream.add(held_reply("Hello", " there.", hold))
    async with sidechat(browser, settings_for(upstream, tmp_path)) as url:
        page = await open_page(browser, console, url)
        await composer(page).fill("hi")
        await composer(page).press("Enter")
        live = page.locator(".message.assistant [aria-live]")
        await expect(live).to_have_text("Hello")
        await expect(live).to_have_attribute("aria-live", "polite")
        await expect(live).to_have_attribute("aria-busy", "true")
        hold.set()
        await expect(live).to_have_text("Hello there.")
        await expect(live).to_have_attribute("aria-busy", "false")


async def test_the_live_region_stays_in_the_page_while_the_reply_grows(
    browser: Browser, console: Console, upstream: FakeUpstream, tmp_path: Path
) -> None:
    """A screen reader announces changes to a live region it already knows; a region
    that is replaced by a new one at each token is never announced at all."""
    hold = asyncio.Event()
    upstream.add(held_reply("Hello", " there.", hold))
    async with sidechat(browser, settings_for(upstream, tmp_path)) as url:
        page = await open_page(browser, console, url)
        await composer(page).fill("hi")
        await composer(page).press("Enter")
        live = page.locator(".message.assistant [aria-live]")
        await expect(live).to_have_text("Hello")
        region = await live.element_handle()
        hold.set()
        await expect(live).to_have_text("Hello there.")
        assert await region.evaluate("el => el.isConnected"), "the live region was replaced, not updated"
        assert await region.inner_text() == "Hello there."


# -- a phone --------------------------------------------------------------------------------


async def test_a_phone_has_no_sideways_scroll_and_a_composer_that_works(
    browser: Browser, console: Console, tmp_path: Path
) -> None:
    async with sidechat(browser, demo(tmp_path)) as url:
        page = await open_page(browser, console, url, viewport=PHONE)
        assert await no_sideways_scroll(page)
        reply = await send_and_finish(page, "a-very-long-word-" * 12)
        await expect(reply.locator("pre")).to_be_visible()
        assert await no_sideways_scroll(page), "the page scrolls sideways with a reply in it"
        for control in (composer(page), page.get_by_role("button", name="Send")):
            box = await control.bounding_box()
            assert box and box["x"] >= 0 and box["x"] + box["width"] <= PHONE["width"], box
            assert box["y"] + box["height"] <= PHONE["height"], box
        await expect(page.get_by_role("combobox", name="Model")).to_be_in_viewport()
        await screenshot(page, "phone")


async def test_on_a_phone_the_sidebar_opens_on_demand_and_closes_on_a_choice(
    browser: Browser, console: Console, tmp_path: Path
) -> None:
    async with sidechat(browser, demo(tmp_path)) as url:
        await create(url, "Groceries", "Holiday plans")
        page = await open_page(browser, console, url, viewport=PHONE)
        toggle = page.get_by_role("button", name="Show conversations")
        listing = page.get_by_role("navigation", name="Conversation list")
        await expect(listing).to_be_hidden()
        await expect(toggle).to_have_attribute("aria-expanded", "false")

        await toggle.click()
        await expect(toggle).to_have_attribute("aria-expanded", "true")
        await expect(listing.get_by_role("link", name="Groceries")).to_be_in_viewport()
        await screenshot(page, "phone-sidebar")
        await toggle.click()  # still reachable with the sidebar over the header
        await expect(listing).to_be_hidden()
        await expect(toggle).to_have_attribute("aria-expanded", "false")

        await toggle.click()
        await listing.get_by_role("link", name="Holiday plans").click()
        await expect(page.get_by_role("heading", level=1)).to_have_text("Holiday plans")
        await expect(listing).to_be_hidden()
        await expect(toggle).to_have_attribute("aria-expanded", "false")


# -- themes ---------------------------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["light", "dark"])
async def test_the_theme_follows_the_system_code_included(
    browser: Browser, console: Console, tmp_path: Path, scheme: str
) -> None:
    async with sidechat(browser, demo(tmp_path)) as url:
        page = await open_page(browser, console, url, color_scheme=scheme)
        dark = scheme == "dark"
        background = await style(page.locator("body"), "backgroundColor")
        assert (luminance(background) < 0.05) if dark else (luminance(background) > 0.9), background
        text = await style(page.locator("body"), "color")
        assert contrast(text, background) >= 7, (text, background)

        themes = await page.evaluate(
            """() => Object.fromEntries([...document.styleSheets].filter((s) => s.href?.includes("highlightjs"))
                 .map((s) => [s.href.split("/").pop(), matchMedia(s.media.mediaText).matches]))"""
        )
        assert themes == {"github.min.css": not dark, "github-dark.min.css": dark}, themes

        reply = await send_and_finish(page, "Show me some code")
        code, block = reply.locator("pre code.hljs"), reply.locator("pre")
        on = await style(block, "backgroundColor")
        assert (luminance(on) < 0.05) if dark else (luminance(on) > 0.9), on
        # highlight.js's theme for this scheme: GitHub Dark's keywords are a light red,
        # the light theme's a dark one.
        keyword = await style(code.locator(".hljs-keyword").first, "color")
        assert (luminance(keyword) > 0.3) if dark else (luminance(keyword) < 0.2), keyword
        for token in await code.locator("span").all():
            colour = await style(token, "color")
            assert contrast(colour, on) >= 4.5, (await token.inner_text(), colour, on)
        await screenshot(page, f"{scheme}-theme")


# -- under a path prefix --------------------------------------------------------------------


async def test_under_a_path_prefix_every_request_stays_under_it(
    browser: Browser, console: Console, tmp_path: Path
) -> None:
    async with sidechat(browser, demo(tmp_path), prefix="/chat") as url:
        assert urlsplit(url).path == "/chat/"
        context = await new_context(browser, console)
        page = await context.new_page()
        requested: list[str] = []
        page.on("request", lambda r: requested.append(r.url))
        await page.goto(url)
        await send_and_finish(page, "Hello from under a prefix")
        await page.reload()
        entry = page.get_by_role("link", name="Hello from under a prefix")
        await entry.click()
        await expect(page.locator(".message.assistant")).to_have_attribute("data-status", "completed")
        await assert_accessible(page, "under a prefix")
        await until(lambda: any("/api/events" in u for u in requested), what="the user feed")
        served = [u for u in requested if not u.startswith("data:")]
        assert served and all(u.startswith(url) for u in served), [u for u in served if not u.startswith(url)]


# -- the sidebar ----------------------------------------------------------------------------


async def test_the_sidebar_shows_one_page_then_loads_more_on_scroll(
    browser: Browser, console: Console, tmp_path: Path
) -> None:
    async with sidechat(browser, demo(tmp_path)) as url:
        await create(url, *(f"chat {n:02}" for n in range(1, 46)))
        context = await new_context(browser, console)
        page = await context.new_page()
        requested: list[str] = []
        page.on("request", lambda r: requested.append(r.url))
        await page.goto(url)
        items = page.locator("#conversations .conversation .title")
        await expect(items).to_have_count(30)
        # The page follows the user feed once its first page of conversations is in: by
        # then a second page, had it asked for one unprompted, would have been asked for.
        await until(lambda: any("/api/events" in u for u in requested), what="the user feed")
        assert len([u for u in requested if "/api/conversations?" in u]) == 1, requested
        await expect(items).to_have_count(30)
        await expect(items.first).to_have_text("chat 45")
        await expect(items.last).to_have_text("chat 16")

        listing = page.get_by_role("navigation", name="Conversation list")
        await listing.hover()
        await page.mouse.wheel(0, 10_000)
        await expect(items).to_have_count(45)
        await expect(items.last).to_have_text("chat 01")
        assert len({await t.inner_text() for t in await items.all()}) == 45


async def test_a_tall_window_loads_pages_until_the_list_fills_it(
    browser: Browser, console: Console, tmp_path: Path
) -> None:
    async with sidechat(browser, demo(tmp_path)) as url:
        await create(url, *(f"chat {n:02}" for n in range(1, 46)))
        page = await open_page(browser, console, url, viewport={"width": 1200, "height": 3000})
        items = page.locator("#conversations .conversation .title")
        await expect(items).to_have_count(45)  # nothing to scroll: the page has to ask by itself
        await expect(items.last).to_have_text("chat 01")


async def test_delete_asks_first_and_rename_changes_the_title_on_the_server(
    browser: Browser, console: Console, tmp_path: Path
) -> None:
    async with sidechat(browser, demo(tmp_path)) as url:
        await create(url, "Groceries", "Holiday plans")
        page = await open_page(browser, console, url)
        listing = page.get_by_role("navigation", name="Conversation list")
        await expect(listing.get_by_role("link")).to_have_count(2)

        await page.get_by_role("button", name="Delete “Groceries”").click()
        asking = page.get_by_role("dialog", name="Delete conversation?")
        await expect(asking).to_be_visible()
        await expect(asking).to_contain_text("“Groceries” and its messages will be deleted.")
        await asking.get_by_role("button", name="Cancel").click()
        await expect(asking).to_be_hidden()
        await expect(listing.get_by_role("link", name="Groceries")).to_be_visible()
        assert sorted(await titles_on_server(url)) == ["Groceries", "Holiday plans"]

        await page.get_by_role("button", name="Delete “Groceries”").click()
        await asking.get_by_role("button", name="Delete", exact=True).click()
        await expect(listing.get_by_role("link", name="Groceries")).to_have_count(0)
        assert await titles_on_server(url) == ["Holiday plans"]

        await page.get_by_role("button", name="Rename “Holiday plans”").click()
        renaming = page.get_by_role("dialog", name="Rename conversation")
        title = renaming.get_by_role("textbox", name="Title")
        await expect(title).to_be_focused()
        await expect(title).to_have_value("Holiday plans")
        await title.fill("Never mind")
        await renaming.get_by_role("button", name="Cancel").click()
        await expect(renaming).to_be_hidden()
        await expect(listing.get_by_role("link", name="Holiday plans")).to_be_visible()
        assert await titles_on_server(url) == ["Holiday plans"]

        await page.get_by_role("button", name="Rename “Holiday plans”").click()
        await title.fill("Trip to Lisbon")
        await title.press("Enter")
        await expect(listing.get_by_role("link", name="Trip to Lisbon")).to_be_visible()
        await expect(listing.get_by_role("link", name="Holiday plans")).to_have_count(0)
        assert await titles_on_server(url) == ["Trip to Lisbon"]
