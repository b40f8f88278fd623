"""The ASGI app: `create_app(settings)`, and `app` for `uvicorn chat.app:app`.

Starlette routes the requests; start-up and shutdown are ours (the ASGI lifespan
protocol, below) so that a start-up that fails says why in one line, where
Starlette would report a traceback, and so that running generations hear of
SIGTERM or Ctrl-C at once: the server waits for open streams to end before it
shuts the app down, and a reply may stream for minutes.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
import traceback
from collections.abc import Callable
from types import FrameType

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route
from starlette.types import Receive, Scope, Send

from .api import routes
from .config import ConfigError, Settings
from .errors import (
    ApiError,
    StartupError,
    render_api_error,
    render_http_exception,
    render_internal_error,
    render_storage_failed,
)
from .hosts import AllowedHosts
from .openapi import routes as openapi_routes
from .page import Files, index
from .resources import resource
from .services import Services, open_services
from .store import StorageFailed

log = logging.getLogger("sidechat")

PROBES = ("/healthz", "/readyz")  # an orchestrator probes by address; they reveal nothing
FOREIGN_HOST = JSONResponse(
    {
        "error": {
            "type": "invalid_host",
            "message": "this Host is not served; SIDECHAT_ALLOWED_HOSTS lists the names that are",
        }
    },
    status_code=400,
)


class Sidechat:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.hosts = AllowedHosts(settings)
        static = resource("static")
        self.router = Starlette(
            routes=[
                *routes,
                *openapi_routes,
                Route("/", index(static / "index.html"), methods=["GET"]),
                Mount("/static", Files(directory=static), name="static"),
            ],
            exception_handlers={
                ApiError: render_api_error,
                StorageFailed: render_storage_failed,
                HTTPException: render_http_exception,
                Exception: render_internal_error,
            },
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        elif scope["type"] == "http" and scope["path"] not in PROBES and not self.hosts.allow(scope):
            await FOREIGN_HOST(scope, receive, send)
        else:
            await self.router(scope, receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        await receive()  # lifespan.startup
        opening = open_services(self.settings)
        try:
            services = await opening.__aenter__()
        except StartupError as exc:
            await send({"type": "lifespan.startup.failed", "message": f"sidechat cannot start: {exc}"})
            return
        except BaseException:
            await send({"type": "lifespan.startup.failed", "message": traceback.format_exc()})
            raise
        self.router.state.services = services
        on_stop_signal(lambda count: _stop(services, count))
        await send({"type": "lifespan.startup.complete"})
        try:
            await receive()  # lifespan.shutdown
        except BaseException:  # cancelled: the server was made to quit without shutting us down
            services.generations.hurry()
            await opening.__aexit__(None, None, None)
            raise
        try:
            await opening.__aexit__(None, None, None)
        except BaseException:
            await send({"type": "lifespan.shutdown.failed", "message": traceback.format_exc()})
            raise
        await send({"type": "lifespan.shutdown.complete"})


def create_app(settings: Settings) -> Sidechat:
    return Sidechat(settings)


def _stop(services: Services, count: int) -> None:
    """The first stop signal gives running replies the grace period; the second ends them now."""
    generations, grace = services.generations, services.settings.shutdown_grace_seconds
    if count == 1:
        if generations.running and grace > 0:
            log.warning(
                "shutting down: %d running replies get up to %gs to finish (Ctrl-C again ends them now)",
                generations.running,
                grace,
            )
        generations.begin_shutdown(grace)
    elif count == 2:
        log.warning("ending %d running replies now, with the text they have", generations.running)
        generations.hurry()
    else:
        log.warning("quitting without waiting for open connections")


def on_stop_signal(callback: Callable[[int], object]) -> None:
    """Call `callback(count)` on the loop for each SIGTERM or SIGINT, `count` the signals so far.

    The server's own handler hears the first (it stops listening and waits for open
    connections) and any after the second, which makes it quit at once; the second is
    ours alone, so ending the replies lets the server go on shutting down in order.
    """
    if threading.current_thread() is not threading.main_thread():
        return  # signals only reach the main thread
    loop = asyncio.get_running_loop()
    count = 0
    for sig in (signal.SIGTERM, signal.SIGINT):
        previous = signal.getsignal(sig)

        def handler(signum: int, frame: FrameType | None, previous: object = previous) -> None:
            nonlocal count
            count += 1
            loop.call_soon_threadsafe(callback, count)
            if count != 2 and callable(previous):
                previous(signum, frame)

        signal.signal(sig, handler)


def from_environment() -> Sidechat:
    """The app as `uvicorn chat.app:app` serves it: configured by the environment alone."""
    try:
        return create_app(Settings.from_env())
    except (ConfigError, StartupError) as exc:
        raise SystemExit(f"sidechat cannot start: {exc}") from None


def __getattr__(name: str) -> Sidechat:
    # `uvicorn chat.app:app` asks for `app`: build it then, so that importing this
    # module has no side effects.
    if name != "app":
        raise AttributeError(name)
    app = from_environment()
    globals()["app"] = app
    return app
