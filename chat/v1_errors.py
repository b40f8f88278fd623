"""Errors on the OpenAI-compatible door (`/v1`), as OpenAI's clients expect them.

Every error is `{"error": {"message", "type", "code", "param"}}`. An SDK picks its
exception by the status alone (400 BadRequestError, 401 AuthenticationError, 404
NotFoundError, 429 RateLimitError, 5xx InternalServerError...) and retries 408, 409, 429
and 5xx unless the answer says `x-should-retry: false`, so the statuses follow OpenAI's
conventions rather than the native API's:

    what                                         status  type
    a body that is not JSON, or fields wrong     400     invalid_request_error (`param` names the field)
    no token, or a wrong one (auth on)           401     unauthorized (`code` invalid_api_key)
    an unknown conversation (X-Conversation-ID)  404     not_found
    our rate limit, or too many replies running  429     rate_limited, with Retry-After
    a budget spent (SIDECHAT_USER_BUDGET)        429     quota_exceeded, Retry-After, not to retry
    the provider's 429                           429     rate_limited (a quota: not to retry)
    the provider refused the request (400/422)   400     upstream_error (`code`: the provider's)
    the provider knows no such model (404)       404     upstream_error
    the provider refused OUR key (401/403)       502     upstream_auth, not to retry
    the provider's 5xx, a broken or cut stream   502     upstream_error, truncated, protocol
    the provider is overloaded (503/529)         503     overloaded
    the provider timed out                       504     timeout
    the provider blocked the prompt              400     prompt_blocked
    shutting down, the database refusing writes  503     shutting_down, storage_unavailable, storage

Other errors of ours keep their status and their native type. `code` is the provider's
own code or type when it sent one (`context_length_exceeded`, `model_not_found`), so a
client can tell the cases apart as it would with OpenAI.

Once a stream has started (`chat.v1_stream` says when), a failure is instead one chunk,
`data: {"error": {...}}` with the same body, and the stream ends without `[DONE]`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from starlette.responses import JSONResponse
from starlette.types import Scope

from .providers.errors import _QUOTA_CODES as QUOTA_CODES
from .v1_chunks import data_line

if TYPE_CHECKING:
    from .errors import ApiError

PREFIX = "/v1/"
BODY_TYPE = "invalid_request_error"  # OpenAI's type for a request it will not take
# Native errors that say the body is bad: OpenAI answers those with a 400.
_BAD_BODY = {"invalid_json", "invalid_request", "unsupported_media_type", "client_disconnected"}
_CODES = {"unauthorized": "invalid_api_key", "rate_limited": "rate_limit_exceeded"}
_NOT_TO_RETRY = {"quota_exceeded", "idempotency_key_reused"}
_BY_KIND = {"overloaded": 503, "timeout": 504, "prompt_blocked": 400}  # the rest: 502


def is_v1(scope: Scope) -> bool:
    """Whether the request came in at the OpenAI-compatible door (below any `root_path`)."""
    path: str = scope.get("path", "")
    prefix: str = scope.get("root_path", "")
    if prefix and path.startswith(prefix + "/"):
        path = path[len(prefix) :]
    return path.startswith(PREFIX)


@dataclass(frozen=True, slots=True)
class V1Error:
    status: int
    type: str
    message: str
    code: str | None = None
    param: str | None = None
    retry_after: float | None = None
    retry: bool | None = None  # tells the SDK whether to retry (`x-should-retry`); None: its own rule

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "code": self.code, "param": self.param}}

    def headers(self) -> dict[str, str]:
        headers = {}
        if self.retry_after is not None:
            headers["Retry-After"] = str(math.ceil(self.retry_after))
        if self.retry is not None:
            headers["x-should-retry"] = "true" if self.retry else "false"
        return headers

    def response(self, headers: dict[str, str] | None = None) -> JSONResponse:
        return JSONResponse(
            self.body(), status_code=self.status, headers={**self.headers(), **(headers or {})}
        )

    def chunk(self) -> bytes:
        """The error as the last chunk of a stream that had started."""
        return data_line(self.body())


def field_code(problem: str) -> str:
    """OpenAI's code for what is wrong with a field, from how `chat.bodies` says it."""
    if problem.startswith("required"):
        return "missing_required_parameter"
    if problem.startswith(("must be a ", "must be an ", "must be true or false")):
        return "invalid_type"
    return "invalid_value"


def from_api_error(exc: ApiError) -> V1Error:
    """One of our errors (`chat.errors`), on the `/v1` door."""
    kind = exc.type
    if kind in _BAD_BODY:
        fields: dict[str, str] = exc.extra.get("fields") or {}
        param, problem = next(iter(fields.items()), (None, ""))
        return V1Error(400, BODY_TYPE, exc.message, field_code(problem) if param else kind, param)
    status = 400 if exc.status == 422 else exc.status  # a key reused for another request
    retry = False if kind in _NOT_TO_RETRY else None
    return V1Error(status, kind, exc.message, _CODES.get(kind), retry_after=exc.retry_after, retry=retry)


def from_stream_error(error: dict[str, Any]) -> V1Error:
    """How a reply failed (the `error` of its row or its last event), as an HTTP error."""
    kind = str(error.get("type") or "upstream_error")
    status = error.get("status")
    code = error.get("provider_code") or error.get("provider_type")
    message = str(error.get("message") or "the reply failed")
    retry_after = error.get("retry_after")
    if kind == "auth":
        return V1Error(502, "upstream_auth", message, code, retry=False)  # our key: waiting will not mend it
    if kind == "rate_limited":  # a 429 always says when: a second, when the provider did not
        quota = code in QUOTA_CODES or error.get("provider_type") in QUOTA_CODES
        wait = 1.0 if retry_after is None else retry_after
        return V1Error(429, kind, message, code, retry_after=wait, retry=False if quota else None)
    if (
        kind == "upstream_error"
        and isinstance(status, int)
        and 400 <= status < 500
        and status not in (408, 409)
    ):
        return V1Error(404 if status == 404 else 400, kind, message, code)
    if kind in ("shutdown", "interrupted", "storage"):  # ours, and soon over
        return V1Error(503, kind, message, code, retry_after=5 if retry_after is None else retry_after)
    return V1Error(_BY_KIND.get(kind, 502), kind, message, code, retry_after=retry_after)


def unauthorized(presented: bool) -> V1Error:
    """The 401 of the gate (`chat.auth`), as OpenAI answers a missing or wrong key."""
    if presented:
        return V1Error(401, "unauthorized", "this token is not valid", "invalid_api_key")
    return V1Error(401, "unauthorized", "an Authorization: Bearer token (a sidechat token) is required")


def not_routed(status: int, detail: str, method: str, path: str) -> V1Error:
    """Starlette's own 404 or 405 under /v1: a route sidechat does not have."""
    if status == 404:
        return V1Error(404, BODY_TYPE, f"sidechat has no {method} {path}: only chat completions and models")
    return V1Error(status, BODY_TYPE, detail)
