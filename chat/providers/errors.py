"""What upstream sent, translated into `ProviderError`s.

Statuses, error bodies (OpenAI, Anthropic, Gemini and Ollama each shape theirs
differently), error events that arrive mid-stream and httpx's exceptions all
end up as one `ProviderError` with our `type`, the provider's own type and code,
the `retry_after` it asked for and whether waiting could help (`retryable`).

Deliberate departures from the obvious:

- A body's error code wins over the HTTP status where they disagree: Anthropic
  answers an overload as a 500 with `overloaded_error`, and a quota 429
  (`insufficient_quota` and friends) is never retryable, as waiting cannot help.
- Error messages are redacted of anything that looks like a key: providers
  echo keys back (OpenAI's 401 shows part of it) and proxies echo URLs.
"""

from __future__ import annotations

import email.utils
import json
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from .base import ProviderError


def loads_or_none(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:  # JSONDecodeError and UnicodeDecodeError
        return None


_SECRET = re.compile(
    r"(?P<key>\b(?:sk-[\w\-*]{6,}|AIza[\w\-]{20,}))"
    r"|(?P<bearer>\b(?i:bearer)\s+)[\w\-.~+/]{8,}=*"
    r"|(?P<param>[?&](?i:key|api_key|apikey|api-key|access_token|token)=)[^&\s\"'#]+"
)


def _mask(match: re.Match[str]) -> str:
    prefix = match.group("bearer") or match.group("param") or ""
    return prefix + "[redacted]"


def redact(text: str) -> str:
    return _SECRET.sub(_mask, text)


_TAG = re.compile(r"<[^>]*>")
_TITLE = re.compile(r"<title[^>]*>(.*?)</title>", re.I | re.S)


def excerpt(raw: bytes | str, limit: int = 200, *, page: bool = False) -> str:
    """A short, single-line, redacted quote of something that arrived; of an
    HTML `page`, its title or its text."""
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
    if page and re.search(r"<(?:!doctype|html|head|body)\b", text, re.I):
        title = _TITLE.search(text)
        text = title.group(1) if title else _TAG.sub(" ", text)
    text = " ".join(text.split())
    if len(text) > limit:
        text = text[:limit] + "…"
    return redact(text)


def parse_retry_after(headers: Mapping[str, str], *, now: float | None = None) -> float | None:
    """Seconds to wait, from `retry-after-ms` or `Retry-After` (seconds or an HTTP date)."""
    value = headers.get("retry-after-ms")
    if value:
        seconds = _non_negative(value)
        if seconds is not None:
            return seconds / 1000
    value = headers.get("retry-after")
    if not value:
        return None
    seconds = _non_negative(value)
    if seconds is not None:
        return seconds
    try:
        when = email.utils.parsedate_to_datetime(value.strip())
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def _non_negative(value: str) -> float | None:
    try:
        number = float(value)
    except ValueError:
        return None
    return number if 0 <= number < float("inf") else None


_AUTH_CODES = frozenset(
    {
        "authentication_error",
        "permission_error",
        "invalid_api_key",
        "API_KEY_INVALID",
        "UNAUTHENTICATED",
        "PERMISSION_DENIED",
    }
)
# Quota and spend limits: waiting will not help, so never retryable.
_QUOTA_CODES = frozenset(
    {
        "insufficient_quota",
        "billing_hard_limit_reached",
        "billing_not_active",
        "quota_exceeded",
        "spend_limit_exceeded",
    }
)
_BLOCKED_CODES = frozenset({"content_filter", "content_policy_violation"})
# For errors without an HTTP status (mid-stream events).
_BY_CODE: dict[str, tuple[str, bool]] = {
    "overloaded_error": ("overloaded", True),
    "UNAVAILABLE": ("overloaded", True),
    "rate_limit_error": ("rate_limited", True),
    "rate_limit_exceeded": ("rate_limited", True),
    "RESOURCE_EXHAUSTED": ("rate_limited", True),
    "timeout_error": ("timeout", True),
    "DEADLINE_EXCEEDED": ("timeout", True),
    "invalid_request_error": ("upstream_error", False),
    "not_found_error": ("upstream_error", False),
    "request_too_large": ("upstream_error", False),
    "INVALID_ARGUMENT": ("upstream_error", False),
    "NOT_FOUND": ("upstream_error", False),
    "FAILED_PRECONDITION": ("upstream_error", False),
}


def _classify(status: int | None, codes: set[str]) -> tuple[str, bool]:
    if status in (401, 403) or codes & _AUTH_CODES:
        return "auth", False
    if codes & _QUOTA_CODES:
        return "rate_limited", False
    if status == 429:
        return "rate_limited", True
    if status in (503, 529) or "overloaded_error" in codes:
        return "overloaded", True
    if status in (408, 504):
        return "timeout", True
    if status is not None and (status == 409 or status >= 500):
        return "upstream_error", True
    if codes & _BLOCKED_CODES:
        return "prompt_blocked", False
    if status is not None and status < 500:  # other 4xx, and redirects we do not follow
        return "upstream_error", False
    for code in codes:
        if code in _BY_CODE:
            return _BY_CODE[code]
    return "upstream_error", True


@dataclass(slots=True)
class _ErrorFields:
    message: str | None = None
    provider_type: str | None = None
    provider_code: str | None = None
    numeric_code: int | None = None
    retry_after: float | None = None


def _error_fields(payload: Any) -> _ErrorFields:
    out = _ErrorFields()
    if isinstance(payload, list) and payload:  # Gemini's JSON-array framing
        payload = payload[0]
    if not isinstance(payload, dict):
        return out
    error = payload.get("error", payload)
    if isinstance(error, str):  # Ollama, llama.cpp and friends
        out.message = error
        return out
    if not isinstance(error, dict):
        return out
    for key in ("message", "detail", "error_description"):
        if isinstance(error.get(key), str):
            out.message = error[key]
            break
    # OpenAI and Anthropic say `type`; Gemini says `status` (and `code` is the HTTP status).
    kind = error.get("type") if error is not payload else None
    kind = kind if isinstance(kind, str) else error.get("status")
    out.provider_type = kind if isinstance(kind, str) else None
    code = error.get("code")
    if isinstance(code, str) and code:
        out.provider_code = code
    elif isinstance(code, int) and not isinstance(code, bool):
        out.numeric_code = code
    for detail in error.get("details") or ():
        if not isinstance(detail, dict):
            continue
        if isinstance(detail.get("reason"), str) and out.provider_code is None:
            out.provider_code = detail["reason"]  # google.rpc.ErrorInfo
        delay = detail.get("retryDelay")  # google.rpc.RetryInfo, "37s"
        if isinstance(delay, str) and delay.endswith("s"):
            out.retry_after = _non_negative(delay[:-1])
    return out


def _message(provider: str, fields: _ErrorFields, fallback: str) -> str:
    text = " ".join(fields.message.split()) if fields.message else ""
    if len(text) > 500:
        text = text[:500] + "…"
    return redact(f"{provider}: {text}") if text else fallback


def error_from_response(
    status: int, headers: httpx.Headers | Mapping[str, str], body: bytes, provider: str
) -> ProviderError:
    """Translate a non-2xx answer, its provider's JSON error body included."""
    fields = _error_fields(loads_or_none(body))
    codes = {c for c in (fields.provider_type, fields.provider_code) if c}
    type, retryable = _classify(status, codes)
    if fields.message:
        message = _message(provider, fields, "")
    elif body.strip():
        message = f"{provider} answered HTTP {status}: {excerpt(body, page=True)}"
    else:
        message = f"{provider} answered HTTP {status}"
    if 300 <= status < 400 and headers.get("location"):
        message += f" (a redirect to {redact(headers['location'])})"
    retry_after = parse_retry_after(headers)
    return ProviderError(
        type,
        message,
        status=status,
        retry_after=retry_after if retry_after is not None else fields.retry_after,
        retryable=retryable,
        provider_type=fields.provider_type,
        provider_code=fields.provider_code,
    )


def error_from_event(payload: Mapping[str, Any], provider: str) -> ProviderError:
    """Translate an error object that arrived inside a stream."""
    fields = _error_fields(payload)
    codes = {c for c in (fields.provider_type, fields.provider_code) if c}
    numeric = fields.numeric_code
    status = numeric if numeric is not None and 400 <= numeric < 600 else None
    type, retryable = _classify(status, codes)
    return ProviderError(
        type,
        _message(provider, fields, f"{provider} sent an error mid-stream"),
        status=status,
        retry_after=fields.retry_after,
        retryable=retryable,
        provider_type=fields.provider_type,
        provider_code=fields.provider_code,
    )


def _address(exc: httpx.HTTPError) -> str:
    try:
        url = exc.request.url
    except RuntimeError:  # raised before it had a request
        return "its address"
    port = url.port or {"http": 80, "https": 443}.get(url.scheme)
    return f"{url.host}:{port}" if port else str(url.host)


def error_from_transport(exc: Exception, provider: str) -> ProviderError:
    """Translate an httpx exception (connecting, sending or reading)."""
    detail = redact(str(exc)) or type(exc).__name__
    where = _address(exc) if isinstance(exc, httpx.HTTPError) else "its address"
    if isinstance(exc, httpx.ConnectTimeout):
        return ProviderError("timeout", f"timed out connecting to {provider} at {where}", retryable=True)
    if isinstance(exc, httpx.TimeoutException):
        return ProviderError("timeout", f"{provider} timed out: {detail}", retryable=True)
    if isinstance(exc, httpx.ProxyError):
        return ProviderError(
            "upstream_error", f"the proxy failed to reach {provider} at {where}: {detail}", retryable=True
        )
    if isinstance(exc, httpx.ConnectError):
        return ProviderError(
            "upstream_error", f"could not connect to {provider} at {where}: {detail}", retryable=True
        )
    if isinstance(exc, (httpx.InvalidURL, httpx.UnsupportedProtocol, httpx.LocalProtocolError)):
        return ProviderError("upstream_error", f"bad request to {provider}: {detail}")
    if isinstance(exc, httpx.DecodingError):
        return ProviderError("protocol", f"{provider} sent an undecodable body: {detail}")
    return ProviderError("upstream_error", f"connection to {provider} failed: {detail}", retryable=True)


def protocol_error(provider: str, what: str, data: bytes | str) -> ProviderError:
    return ProviderError("protocol", f"{provider} sent {what}: {excerpt(data)!r}")


def truncated_error(provider: str, missing: str) -> ProviderError:
    return ProviderError("truncated", f"{provider}'s stream ended before {missing}", retryable=True)
