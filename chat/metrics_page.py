"""`GET /metrics`: the metrics in Prometheus's text format, to those allowed to read them.

    SIDECHAT_METRICS_TOKEN set     `Authorization: Bearer <it>`, from anywhere; else 401
    unset                          callers on this machine only (a loopback peer, not
                                   through a proxy); anyone else gets a 403 naming it

Deliberate choices:
- Without a token the test is who is calling, not where sidechat listens. On a
  loopback bind the two agree (only this machine can connect), but a proxy in
  front (nginx on the same host) connects from loopback for the whole world: a
  request carrying `X-Forwarded-For`, `Forwarded` or `X-Real-IP` came through one,
  so it needs the token. A scraper on another machine, listening on 0.0.0.0 or
  not, needs it too: `/metrics` never answers the network unasked.
- The API's tokens do not open it, nor does `/metrics`'s token open the API: an
  operator's scraper is not a user, and a leaked scrape token reads no chat.
- The token is compared in constant time (their SHA-256 digests, as `chat.auth`).
- Not in `/openapi.json`: it is for Prometheus, in Prometheus's own format.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from .config import Settings
from .metrics import MetricsSink
from .telemetry import Telemetry

PATH = "/metrics"
PROXIED = (b"x-forwarded-for", b"forwarded", b"x-real-ip")


def _error(status: int, type: str, message: str, headers: dict[str, str] | None = None) -> Response:
    return JSONResponse({"error": {"type": type, "message": message}}, status_code=status, headers=headers)


def local_caller(scope: Scope) -> bool:
    """The peer is this machine (a loopback address, or a Unix socket) and no proxy says it
    speaks for someone else."""
    if any(name in PROXIED for name, _ in scope["headers"]):
        return False
    peer = scope.get("client")
    if not peer:
        return True  # a Unix socket: only this machine reaches it, as its file mode allows
    try:
        ip = ipaddress.ip_address(peer[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


class MetricsPage:
    """The ASGI app of `/metrics`. `route` names it for the telemetry (its requests are counted
    under `/metrics`); the app calls it itself, outside the router, so that it is not one of
    the API's routes. It serves the registry of the metrics sink of the telemetry it is given."""

    def __init__(self, settings: Settings) -> None:
        self.route = Route(PATH, self, methods=["GET"])
        self.registry: CollectorRegistry | None = None  # until it is given the telemetry
        token = settings.metrics_token
        self._digest = hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest() if token else None

    def serve(self, telemetry: Telemetry) -> None:
        sinks = [sink for sink in telemetry.sinks if isinstance(sink, MetricsSink)]
        self.registry = sinks[0].registry if sinks else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        response = self.refusal(request) or self.page(request)
        await response(scope, receive, send)

    def refusal(self, request: Request) -> Response | None:
        if request.method not in ("GET", "HEAD"):
            return _error(405, "method_not_allowed", "only GET", {"Allow": "GET, HEAD"})
        if self.registry is None:
            return _error(404, "not_found", "metrics are off")
        if self._digest is None:
            if local_caller(request.scope):
                return None
            return _error(
                403,
                "forbidden",
                "/metrics answers only callers on this machine; set SIDECHAT_METRICS_TOKEN to let a"
                " scraper elsewhere (or through a proxy) read it with Authorization: Bearer",
            )
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        presented = hashlib.sha256(token.strip().encode("utf-8", "surrogateescape")).digest()
        if scheme.lower() == "bearer" and hmac.compare_digest(presented, self._digest):
            return None
        challenge = 'Bearer realm="sidechat metrics"' + (', error="invalid_token"' if token else "")
        return _error(
            401,
            "unauthorized",
            "/metrics needs Authorization: Bearer with SIDECHAT_METRICS_TOKEN",
            {"WWW-Authenticate": challenge},
        )

    def page(self, request: Request) -> Response:
        assert self.registry is not None
        encode, content_type = choose_encoder(request.headers.get("accept", ""))
        return Response(encode(self.registry), headers={"Content-Type": content_type})
