"""The ASGI app: `create_app(settings)`, and `app` for `uvicorn chat.app:app`.

Starlette routes the requests; start-up and shutdown are ours (the ASGI lifespan
protocol, below) so that a start-up that fails says why in one line, where
Starlette would report a traceback, and so that running generations hear of
SIGTERM or Ctrl-C at once: the server waits for open streams to end before it
shuts the app down, and a reply may stream for minutes.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import signal
import threading
import traceback
from collections.abc import Callable
from types import FrameType

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from .api import routes
from .auth import LOCAL_USER, USER, Gate, unauthorized_body
from .config import ConfigError, Settings
from .errors import (
    ApiError,
    StartupError,
    render_api_error,
    render_broker_unavailable,
    render_http_exception,
    render_internal_error,
    render_storage_failed,
)
from .hosts import AllowedHosts
from .live_errors import BrokerUnavailable
from .metrics_page import PATH as METRICS
from .metrics_page import MetricsPage
from .openapi import routes as openapi_routes
from .page import Files, index
from .requestid import KEY as REQUEST_ID
from .requestid import request_id, stamped
from .resources import resource
from .services import Services, open_services
from .store import StorageFailed
from .telemetry import RequestRecord, telemetry_for

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


def route_path(scope: Scope) -> str:
    """The path as the routes see it: below the prefix the app is served under (`root_path`,
    as `uvicorn --root-path /chat` or a proxy sets it), which is in `path` too."""
    path: str = scope["path"]
    prefix: str = scope.get("root_path", "")
    return path[len(prefix) :] if prefix and path.startswith(prefix + "/") else path


class Sidechat:
    """Every HTTP request passes, in order: its request id, and the telemetry's watch for as
    long as it lasts; the Host check (not for the probes, nor for /metrics behind its token);
    CORS, when configured; /metrics, which guards itself; the gate, which finds the user or
    answers 401; the routes."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.hosts = AllowedHosts(settings)
        self.gate = Gate(settings)
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
                BrokerUnavailable: render_broker_unavailable,
                HTTPException: render_http_exception,
                Exception: render_internal_error,
            },
        )
        self.metrics = MetricsPage(settings)  # served before the router: not an API route
        self.telemetry = telemetry_for(settings, [*self.router.routes, self.metrics.route])
        self.metrics.serve(self.telemetry)
        # With a token, /metrics needs no Host check: a rebinding page has no token to send.
        self.unchecked = (*PROBES, METRICS) if settings.metrics_token else PROBES
        self.checked: ASGIApp = self._gated
        if settings.cors_origins:
            self.checked = cors(self._gated, settings.cors_origins)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        elif scope["type"] != "http":
            await self.router(scope, receive, send)
        else:
            scope[REQUEST_ID] = value = request_id(scope)
            record = RequestRecord(scope, value.decode(), self.gate.proxies.client(scope))
            send = stamped(send, value, record)
            with self.telemetry.request(record):
                try:
                    if route_path(scope) not in self.unchecked and not self.hosts.allow(scope):
                        await FOREIGN_HOST(scope, receive, send)
                    else:
                        await self.checked(scope, receive, send)
                finally:
                    record.user = scope.get(USER)

    async def _gated(self, scope: Scope, receive: Receive, send: Send) -> None:
        if route_path(scope) == METRICS:  # its own token, or this machine (chat.metrics_page)
            await self.metrics(scope, receive, send)
            return
        if not self.gate.on:
            scope[USER] = LOCAL_USER
        elif self.gate.guards(route_path(scope)):
            user = self.gate.user(scope)
            if user is None:
                body, challenge = unauthorized_body(scope)
                await JSONResponse(body, status_code=401, headers={"WWW-Authenticate": challenge})(
                    scope, receive, send
                )
                return
            scope[USER] = user
        await self.router(scope, receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        await receive()  # lifespan.startup
        opening = open_services(self.settings, self.telemetry)
        try:
            services = await opening.__aenter__()
        except StartupError as exc:
            await send({"type": "lifespan.startup.failed", "message": f"sidechat cannot start: {exc}"})
            return
        except BaseException:
            await send({"type": "lifespan.startup.failed", "message": traceback.format_exc()})
            raise
        self.router.state.services = services
        self.telemetry.opened(services)
        on_stop_signal(lambda count: _stop(services, count))
        if self.gate.file is not None:
            on_signal(signal.SIGHUP, self.gate.file.reload)
        warn_if_exposed(self.settings, self.gate)
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


def cors(app: ASGIApp, origins: tuple[str, ...]) -> ASGIApp:
    """Browsers on `origins` may call the API, the event streams included (so `Last-Event-ID`).
    Tokens travel in a header, never a cookie, so credentials mode stays off."""
    return CORSMiddleware(
        app,
        allow_origins=origins,
        allow_methods=["GET", "POST", "PATCH", "DELETE"],
        allow_headers=[
            "Authorization",
            "Content-Type",
            "Idempotency-Key",
            "Last-Event-ID",
            "X-Conversation-ID",  # /v1: continue a conversation
            "X-Request-ID",
        ],
        expose_headers=["Retry-After", "X-Conversation-ID", "X-Message-ID", "X-Request-ID"],
        max_age=600,
    )


def warn_if_exposed(settings: Settings, gate: Gate) -> None:
    if gate.tokens or is_loopback(settings.host):
        return
    log.warning(
        "LISTENING ON %s WITHOUT SIDECHAT_API_TOKENS: anyone who can reach this port can read every"
        " conversation and spend your provider keys. Set SIDECHAT_API_TOKENS (or"
        " SIDECHAT_API_TOKENS_FILE) before exposing sidechat beyond this machine.",
        settings.host,
    )


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a name: it may well resolve to every interface


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
        services.feeds.shut_down()  # their followers reconnect to a server that is still up
    elif count == 2:
        log.warning("ending %d running replies now, with the text they have", generations.running)
        generations.hurry()
    else:
        log.warning("quitting without waiting for open connections")


def on_signal(sig: signal.Signals, callback: Callable[[], object]) -> None:
    if threading.current_thread() is threading.main_thread():  # signals only reach the main thread
        asyncio.get_running_loop().add_signal_handler(sig, callback)


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
