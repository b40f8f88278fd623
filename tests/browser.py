"""The page in a real browser: Debian's Chromium, headless, driven by Playwright.

Playwright's own browser download cannot work offline, so the browser is the system's
(`apt-get install chromium`, or `SIDECHAT_CHROMIUM=/path`), launched by its path. A
missing browser fails the tests; it does not skip them. Screenshots of the main states
go to `artifacts/screenshots/` (or `$SIDECHAT_ARTIFACTS`).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import Any

from playwright.async_api import Browser, BrowserContext, ConsoleMessage, Error, Page, async_playwright

from chat.config import Settings
from tests.live import serve

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = Path(os.environ.get("SIDECHAT_CHROMIUM", "/usr/bin/chromium"))
ARTIFACTS = Path(os.environ.get("SIDECHAT_ARTIFACTS", ROOT / "artifacts"))
# Chromium's own calls home are refused on a closed network; these keep it from trying.
FLAGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
PHONE = {"width": 375, "height": 740}
DESKTOP = {"width": 1200, "height": 800}


@asynccontextmanager
async def chromium() -> AsyncIterator[Browser]:
    if not CHROMIUM.exists():
        raise AssertionError(f"no browser at {CHROMIUM}: apt-get install chromium, or set SIDECHAT_CHROMIUM")
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=str(CHROMIUM), args=FLAGS)
        try:
            yield browser
        finally:
            await browser.close()


@asynccontextmanager
async def sidechat(browser: Browser, settings: Settings, prefix: str = "") -> AsyncIterator[str]:
    """sidechat on a loopback port for `browser`, whose pages are closed before it stops
    (a page holding a stream open would keep the server waiting for it). With a `prefix`
    (`/chat`) it lives under that path only, and the URL answered is the page's, `…/chat/`."""
    async with serve(settings, prefix=prefix) as url:
        try:
            yield f"{url}/" if prefix else url
        finally:
            for context in browser.contexts:
                await context.close()


class Console:
    """Everything a page logged as an error or warning, and every exception it threw."""

    def __init__(self) -> None:
        self.problems: list[str] = []
        self.allowed: list[str] = []

    def allow(self, *fragments: str) -> None:
        """Problems a test causes on purpose (a connection it cuts, a 401 it asks for)."""
        self.allowed.extend(fragments)

    def unexpected(self) -> list[str]:
        return [p for p in self.problems if not any(fragment in p for fragment in self.allowed)]

    def watch(self, page: Page) -> Page:
        page.on("console", self._logged)
        page.on("pageerror", lambda error: self.problems.append(f"uncaught: {error}"))
        return page

    def _logged(self, message: ConsoleMessage) -> None:
        if message.type in ("error", "warning"):
            self.problems.append(f"{message.type}: {message.text} ({message.location.get('url')})")


async def new_context(browser: Browser, console: Console, **options: Any) -> BrowserContext:
    options.setdefault("viewport", DESKTOP)
    context = await browser.new_context(**options)
    context.set_default_timeout(15_000)
    context.on("page", console.watch)
    return context


async def screenshot(page: Page, name: str) -> Path:
    path = ARTIFACTS / "screenshots" / f"{name}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(path))
    return path


async def reply_text(page: Page, index: int = -1) -> str:
    """The shown text of a reply (the last by default)."""
    replies = page.locator(".message.assistant .content")
    count = await replies.count()
    return await replies.nth(index % count).inner_text()


class Cutter:
    """A loopback TCP proxy in front of sidechat that can drop every open connection at once,
    as a flaky network does; new connections are let through as before."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.url = ""
        self.cuts = 0
        self._open: set[asyncio.StreamWriter] = set()
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> Cutter:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        self.cut()
        await self._server.wait_closed()

    def cut(self) -> None:
        """Reset every connection open now, both sides."""
        self.cuts += 1
        for writer in list(self._open):
            writer.transport.abort()
        self._open.clear()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.port)
        except OSError:
            writer.close()
            return
        self._open |= {writer, up_writer}
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))

    async def _pipe(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        with suppress(ConnectionError, OSError, Error):
            while chunk := await source.read(65536):
                sink.write(chunk)
                await sink.drain()
        self._open.discard(sink)
        sink.close()
