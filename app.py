"""sidechat: build the app from configuration, or serve it with `python app.py`."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from types import FrameType

import httpx
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from chat.api import Services, routes
from chat.config import ConfigError, Settings
from chat.errors import ApiError, render_api_error, render_http_exception, render_internal_error
from chat.generations import Generations
from chat.providers import build_providers
from chat.store import Store
from chat.transport import AiohttpTransport

STATIC = Path(__file__).resolve().parent / "static"
log = logging.getLogger("sidechat")


def create_app(settings: Settings) -> Starlette:
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        store = await Store.open(settings.db)
        interrupted = await store.interrupt_streaming()
        if interrupted:
            log.warning("%d replies were cut off by the last stop; marked interrupted", interrupted)
        client = httpx.AsyncClient(
            transport=AiohttpTransport(),
            timeout=httpx.Timeout(settings.idle_timeout, connect=settings.connect_timeout),
        )
        generations = Generations(
            store, replay_seconds=settings.replay_seconds, checkpoint_seconds=settings.checkpoint_seconds
        )
        app.state.services = Services(settings, store, generations, build_providers(settings, client))
        # The server waits for open streams to end before it shuts the app down, so
        # running generations must hear of SIGTERM at once, not at lifespan shutdown.
        on_stop_signal(lambda: generations.begin_shutdown(settings.shutdown_grace_seconds))
        try:
            yield
        finally:
            await generations.begin_shutdown(settings.shutdown_grace_seconds)
            await client.aclose()
            await store.close()

    async def page(request: Request) -> FileResponse:
        return FileResponse(STATIC / "index.html")

    return Starlette(
        routes=[
            *routes,
            Route("/", page, methods=["GET"]),
            Mount("/static", StaticFiles(directory=STATIC), name="static"),
        ],
        exception_handlers={
            ApiError: render_api_error,
            HTTPException: render_http_exception,
            Exception: render_internal_error,
        },
        lifespan=lifespan,
    )


def on_stop_signal(callback: Callable[[], object]) -> None:
    """Call `callback` on the loop when SIGTERM or SIGINT arrives, then the server's own handler."""
    if threading.current_thread() is not threading.main_thread():
        return  # signals only reach the main thread
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        previous = signal.getsignal(sig)

        def handler(signum: int, frame: FrameType | None, previous: object = previous) -> None:
            loop.call_soon_threadsafe(callback)
            if callable(previous):
                previous(signum, frame)

        signal.signal(sig, handler)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python app.py", description="Serve sidechat.")
    parser.add_argument("--host", help="interface to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port to listen on (default 8000)")
    parser.add_argument("--db", help="SQLite database path (default $SIDECHAT_DB or ./sidechat.db)")
    return parser.parse_args(argv)


def load_settings() -> Settings:
    try:
        return Settings.from_env()
    except ConfigError as exc:
        sys.exit(f"sidechat: bad configuration: {exc}")


def main(argv: Sequence[str] | None = None) -> None:
    import uvicorn

    args = parse_args(sys.argv[1:] if argv is None else argv)
    settings = load_settings().override(host=args.host, port=args.port, db=args.db)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # it logs every upstream request at INFO
    log.info("provider %s; database %s", settings.provider, settings.db)
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level="info")


def __getattr__(name: str) -> Starlette:
    # `uvicorn app:app` asks for `app`: build it then, from the environment, so that
    # importing this module (as the tests do) has no side effects.
    if name != "app":
        raise AttributeError(name)
    global app
    app = create_app(load_settings())
    return app


if __name__ == "__main__":
    main()
