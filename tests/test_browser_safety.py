"""Model output in a real browser: rendered as markdown, never able to run script, load
anything remote, or make a `javascript:` link — not even while it is half streamed."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from playwright.async_api import Browser, BrowserContext, Page, expect

from tests.browser import Console, new_context, screenshot, sidechat
from tests.conftest import settings_for
from tests.fakeupstream import FakeUpstream, Reply, openai_chunk, openai_reply

pytestmark = pytest.mark.anyio


def hostile(elsewhere: str) -> str:
    return f"""Here is what you asked for.

<img src=x onerror="window.pwned='img'">
<script>window.pwned='script'</script>
<a href="javascript:window.pwned='raw link'">raw link</a>
<iframe src="{elsewhere}/frame"></iframe>
<style>body {{ background: url({elsewhere}/background.png) }}</style>
<svg onload="window.pwned='svg'"></svg>

[markdown link](javascript:window.pwned='markdown%20link')
[data link](data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==)
![tracker]({elsewhere}/tracker.png)
![inline](data:image/png;base64,iVBORw0KGgo=)

| a | b |
|---|---|
| <b onmouseover="window.pwned='cell'">cell</b> | [fine](https://example.com/docs) |
"""


def in_pieces(text: str, size: int = 7) -> list[str]:
    """Split everywhere, through tags and attributes, as tokens do."""
    return [text[i : i + size] for i in range(0, len(text), size)]


@pytest.fixture
async def context(browser: Browser, console: Console) -> AsyncIterator[BrowserContext]:
    context = await new_context(browser, console)
    await context.grant_permissions(["clipboard-read", "clipboard-write"])
    yield context
    await context.close()


async def ask(page: Page, text: str) -> None:
    box = page.get_by_role("textbox", name="Message", exact=True)
    await box.fill(text)
    await box.press("Enter")


async def test_hostile_output_runs_nothing_and_loads_nothing(
    browser: Browser, context: BrowserContext, upstream: FakeUpstream, tmp_path: Path
) -> None:
    async with FakeUpstream() as elsewhere:  # a server that counts every request it gets
        pieces = in_pieces(hostile(elsewhere.url))
        middle = len(pieces) // 2
        hold = asyncio.Event()
        script = [openai_chunk(p) for p in pieces[:middle]] + [hold] + openai_reply(*pieces[middle:])
        upstream.add(Reply(script))
        async with sidechat(browser, settings_for(upstream, tmp_path)) as url:
            page = await context.new_page()
            await page.goto(url)
            await ask(page, "be evil")
            content = page.locator(".message.assistant .content")
            await expect(content).to_contain_text("Here is what you asked for.")
            hold.set()  # half a tag, half a link were on the page a moment ago; now the rest
            await expect(page.locator(".message.assistant")).to_have_attribute("data-status", "completed")

            await expect(content).to_contain_text("<script>window.pwned='script'</script>")  # as text
            assert await page.evaluate("window.pwned") is None
            for tag in ("img", "script", "iframe", "style", "svg", "b"):
                assert await content.locator(tag).count() == 0, tag
            links = content.locator("a")
            hrefs = [await links.nth(i).get_attribute("href") for i in range(await links.count())]
            assert hrefs == [f"{elsewhere.url}/tracker.png", "https://example.com/docs"]
            for i in range(await links.count()):
                assert await links.nth(i).get_attribute("target") == "_blank"
                assert await links.nth(i).get_attribute("rel") == "noopener noreferrer"
            await content.get_by_text("markdown link").click()  # plain text now: goes nowhere
            await content.locator("td").first.hover()
            assert await page.evaluate("window.pwned") is None
            assert await content.locator("table").count() == 1
            assert elsewhere.requests == []  # nothing remote was ever fetched


async def test_code_is_highlighted_and_copied(
    browser: Browser, context: BrowserContext, upstream: FakeUpstream, tmp_path: Path
) -> None:
    code = 'def greet(name):\n    return f"Hello, {name}!"\n'
    upstream.add(Reply(openai_reply(*in_pieces(f"Try this:\n\n```python\n{code}```\n\nAnd `inline` code."))))
    async with sidechat(browser, settings_for(upstream, tmp_path)) as url:
        page = await context.new_page()
        await page.goto(url)
        await ask(page, "show me code")
        block = page.locator(".message.assistant pre")
        await expect(block.locator(".hljs-keyword").first).to_have_text("def")
        await expect(block.locator(".code-bar")).to_contain_text("python")
        await block.get_by_role("button", name="Copy python code").click()
        await expect(block.get_by_role("button", name="Copy python code")).to_have_text("Copied")
        assert await page.evaluate("navigator.clipboard.readText()") == code
        await page.get_by_role("button", name="Copy reply").click()
        copied = await page.evaluate("navigator.clipboard.readText()")
        assert copied.startswith("Try this:") and "```python" in copied
        await screenshot(page, "code")
