"""What every HTTP handler needs: the services, who is asking, the body, ids and
numbers from the path and the query, and a route that several methods share."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from .auth import USER
from .bodies import digits, read_json
from .errors import InvalidFields, NotFound
from .services import Services
from .store import MAX_ID

MAX_PAGE = 100
Handler = Callable[[Request], Awaitable[Response]]


def services(request: Request) -> Services:
    return request.app.state.services  # type: ignore[no-any-return]


def current_user(request: Request) -> str:
    """Who is asking, as the app's gate (`chat.auth`) found before routing."""
    return request.scope[USER]  # type: ignore[no-any-return]


async def body_of(request: Request, *, optional: bool = False) -> dict[str, Any]:
    settings = services(request).settings
    return await read_json(request, settings.max_body_bytes, timeout=settings.body_timeout, optional=optional)


def path_id(request: Request, name: str) -> int:
    raw: str = request.path_params[name]
    if not digits(raw) or int(raw) > MAX_ID:  # not an id SQLite could hold: cannot exist
        raise NotFound(f"{name.split('_')[0]} {raw[:40]} not found")
    return int(raw)


def last_event_id(request: Request) -> int:
    raw = request.headers.get("last-event-id") or request.query_params.get("last_event_id") or "0"
    if not digits(raw.strip()):
        raise InvalidFields({"last_event_id": "must be a non-negative integer"})
    return int(raw)


def query_int(request: Request, name: str, default: int, *, low: int, high: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    if not digits(raw) or not low <= int(raw) <= high:
        raise InvalidFields({name: f"must be an integer between {low} and {high}"})
    return int(raw)


def by_method(**handlers: Handler) -> Handler:
    """One endpoint for a path that several methods share, so a 405 lists them all in `Allow`."""

    async def endpoint(request: Request) -> Response:
        return await handlers["GET" if request.method == "HEAD" else request.method](request)

    return endpoint


def route(path: str, **handlers: Handler) -> Route:
    return Route(path, by_method(**handlers), methods=list(handlers))
