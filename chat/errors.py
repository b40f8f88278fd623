"""Errors sidechat answers with, rendered as `{"error": {"type", "message", ...}}`.

    ApiError                    status, type, message, extra fields; a `retry_after`
    │                           adds the field and a Retry-After header
    ├── BadRequest              400 invalid_json
    ├── ClientGone              400 client_disconnected (nobody is left to read it)
    ├── Unauthorized            401 unauthorized
    ├── Forbidden               403 forbidden (a member asking for what only the owner may do)
    ├── NotFound                404 not_found
    ├── RequestTimeout          408 request_timeout (and the connection closed)
    ├── Conflict                409 conflict
    ├── StorageOff              409 storage_off (SIDECHAT_STORE=none: no conversation is kept)
    ├── PayloadTooLarge         413 payload_too_large
    ├── UnsupportedMediaType    415 unsupported_media_type
    ├── InvalidFields           422 invalid_request (`fields`: name -> problem)
    ├── KeyReused               422 idempotency_key_reused
    ├── RateLimited             429 rate_limited
    ├── QuotaExceeded           429 quota_exceeded (`budget`, `resets_at`: SIDECHAT_USER_BUDGET)
    ├── ServiceUnavailable      503 shutting_down
    ├── TooManyConnections      503 too_many_connections
    ├── LiveUnavailable         503 live_unavailable (Redis, which the processes share, is away)
    └── StorageUnavailable      503 storage_unavailable (`cause`: locked, disk full, read-only, ...)

    StartupError                the service cannot start; its message is the one line that says why

Upstream trouble is not an ApiError: once a stream has started it is reported as
an `error` event (see `chat.providers.base.ProviderError`).

Under `/v1/`, the OpenAI-compatible door, every error here is rendered in OpenAI's shape
and by its status conventions instead (`chat.v1_errors`).
"""

from __future__ import annotations

import math
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from .v1_errors import V1Error, from_api_error, is_v1, not_routed


class ApiError(Exception):
    status = 500
    type = "internal"

    def __init__(self, message: str, *, retry_after: float | None = None, **extra: Any) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after
        if retry_after is not None:
            extra = {**extra, "retry_after": round(retry_after, 3)}
        self.extra = extra

    def headers(self) -> dict[str, str]:
        if self.retry_after is None:
            return {}
        return {"Retry-After": str(math.ceil(self.retry_after))}

    def as_dict(self) -> dict[str, Any]:
        return {"error": {"type": self.type, "message": self.message, **self.extra}}


class BadRequest(ApiError):
    status, type = 400, "invalid_json"


class ClientGone(ApiError):
    status, type = 400, "client_disconnected"


class Unauthorized(ApiError):
    status, type = 401, "unauthorized"


class Forbidden(ApiError):
    status, type = 403, "forbidden"


class NotFound(ApiError):
    status, type = 404, "not_found"


class RequestTimeout(ApiError):
    status, type = 408, "request_timeout"

    def headers(self) -> dict[str, str]:
        return {"Connection": "close"}  # what is left of the body is not waited for


class Conflict(ApiError):
    status, type = 409, "conflict"


class StorageOff(ApiError):
    status, type = 409, "storage_off"


class PayloadTooLarge(ApiError):
    status, type = 413, "payload_too_large"


class UnsupportedMediaType(ApiError):
    status, type = 415, "unsupported_media_type"


class InvalidFields(ApiError):
    status, type = 422, "invalid_request"

    def __init__(self, fields: dict[str, str], message: str | None = None) -> None:
        super().__init__(message or "; ".join(f"{k}: {v}" for k, v in fields.items()), fields=fields)


class KeyReused(ApiError):
    status, type = 422, "idempotency_key_reused"


class RateLimited(ApiError):
    status, type = 429, "rate_limited"


class QuotaExceeded(ApiError):
    """A user's budget is spent: `retry_after` until it resets, `resets_at` when (ISO 8601)."""

    status, type = 429, "quota_exceeded"


class ServiceUnavailable(ApiError):
    status, type = 503, "shutting_down"


class TooManyConnections(ApiError):
    status, type = 503, "too_many_connections"


class StorageUnavailable(ApiError):
    status, type = 503, "storage_unavailable"


class LiveUnavailable(ApiError):
    status, type = 503, "live_unavailable"


class StartupError(Exception):
    """Start-up cannot go on: a database that is not one, a directory we cannot write, a
    missing file of the installation. The message is meant to be the whole story."""


async def render_api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    if is_v1(request.scope):
        return from_api_error(exc).response({"Connection": "close"} if exc.status == 408 else None)
    return JSONResponse(exc.as_dict(), status_code=exc.status, headers=exc.headers())


async def render_storage_failed(request: Request, exc: Exception) -> Response:
    """A write the database refused for now (`chat.store.StorageFailed`): 503, nothing stored."""
    reason = str(exc)
    message = f"nothing was stored: {reason}; try again shortly"
    error = StorageUnavailable(message, retry_after=5, cause=reason)
    return await render_api_error(request, error)


async def render_broker_unavailable(request: Request, exc: Exception) -> Response:
    """Redis, which holds what is live for every process, did not answer (`chat.live_errors`)."""
    message = f"the live state shared by sidechat's processes is unreachable ({exc}); try again shortly"
    return await render_api_error(request, LiveUnavailable(message, retry_after=2))


async def render_http_exception(request: Request, exc: Exception) -> Response:
    """Starlette's own 404/405 in our JSON shape."""
    assert isinstance(exc, HTTPException)
    if is_v1(request.scope):
        error = not_routed(exc.status_code, exc.detail, request.method, request.url.path)
        return error.response(dict(exc.headers or {}))
    kind = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    return JSONResponse(
        {"error": {"type": kind, "message": exc.detail}},
        status_code=exc.status_code,
        headers=exc.headers,
    )


async def render_internal_error(request: Request, exc: Exception) -> Response:
    """Anything unforeseen is still a JSON error in our shape (and logged by the server)."""
    if is_v1(request.scope):
        return V1Error(500, "internal", "internal error; the server log has the details").response()
    return JSONResponse(
        {"error": {"type": "internal", "message": "internal error; the server log has the details"}},
        status_code=500,
    )
