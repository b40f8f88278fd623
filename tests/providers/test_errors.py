from __future__ import annotations

import email.utils
import json
from typing import Any

import httpx
import pytest

from chat.providers.base import ProviderError
from chat.providers.errors import (
    error_from_event,
    error_from_response,
    error_from_transport,
    parse_retry_after,
    redact,
)


def answer(
    status: int, body: Any, headers: dict[str, str] | None = None, provider: str = "openai"
) -> ProviderError:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return error_from_response(status, httpx.Headers(headers or {}), raw, provider)


@pytest.mark.parametrize(
    ("status", "type", "retryable"),
    [
        (400, "upstream_error", False),
        (401, "auth", False),
        (403, "auth", False),
        (404, "upstream_error", False),
        (408, "timeout", True),
        (409, "upstream_error", True),
        (422, "upstream_error", False),
        (429, "rate_limited", True),
        (500, "upstream_error", True),
        (502, "upstream_error", True),
        (503, "overloaded", True),
        (504, "timeout", True),
        (529, "overloaded", True),
    ],
)
def test_status_maps_to_type(status: int, type: str, retryable: bool) -> None:
    error = answer(status, b"")
    assert (error.type, error.retryable, error.status) == (type, retryable, status)
    assert error.message == f"openai answered HTTP {status}"


def test_redirect_is_not_retryable_and_names_its_target() -> None:
    error = answer(302, b"", {"location": "http://portal.example/login?token=abc123"})
    assert (error.type, error.retryable) == ("upstream_error", False)
    assert "http://portal.example/login?token=[redacted]" in error.message


def test_openai_error_body() -> None:
    error = answer(
        401,
        {
            "error": {
                "message": "Incorrect API key provided: sk-proj-********************************************Ab1Z. "
                "You can find your API key at https://platform.openai.com/account/api-keys.",
                "type": "invalid_request_error",
                "param": None,
                "code": "invalid_api_key",
            }
        },
    )
    assert (error.type, error.provider_type, error.provider_code) == (
        "auth",
        "invalid_request_error",
        "invalid_api_key",
    )
    assert error.message.startswith("openai: Incorrect API key provided: [redacted]. You can find")
    assert "Ab1Z" not in error.message


@pytest.mark.parametrize("code", ["insufficient_quota", "billing_hard_limit_reached"])
def test_quota_429_is_not_retryable(code: str) -> None:
    error = answer(
        429, {"error": {"message": "You exceeded your current quota.", "type": code, "code": code}}
    )
    assert (error.type, error.retryable, error.provider_code) == ("rate_limited", False, code)


def test_anthropic_overloaded_body_wins_over_status() -> None:
    body = {
        "type": "error",
        "error": {"type": "overloaded_error", "message": "Overloaded"},
        "request_id": "req_1",
    }
    error = answer(500, body, provider="anthropic")
    assert (error.type, error.retryable, error.provider_type) == (
        "overloaded",
        True,
        "overloaded_error",
    )
    assert error.message == "anthropic: Overloaded"


def test_gemini_retry_info_and_status() -> None:
    body = {
        "error": {
            "code": 429,
            "message": "You exceeded your current quota, please check your plan and billing details.",
            "status": "RESOURCE_EXHAUSTED",
            "details": [
                {
                    "@type": "type.googleapis.com/google.rpc.QuotaFailure",
                    "violations": [{"quotaId": "x"}],
                },
                {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "37s"},
            ],
        }
    }
    error = answer(429, body, provider="gemini")
    assert (error.type, error.retryable, error.retry_after, error.provider_type) == (
        "rate_limited",
        True,
        37.0,
        "RESOURCE_EXHAUSTED",
    )


def test_ollama_error_string() -> None:
    error = answer(404, {"error": 'model "llama9" not found, try pulling it first'}, provider="ollama")
    assert error.message == 'ollama: model "llama9" not found, try pulling it first'
    assert error.provider_type is None


def test_html_error_page_becomes_a_short_excerpt() -> None:
    page = (
        b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
        + b"<center><h1>502 Bad Gateway</h1></center>\r\n" * 200
        + b"<hr><center>cloudflare</center>\r\n</body>\r\n</html>\r\n"
    )
    error = answer(502, page)
    assert error.message == "openai answered HTTP 502: 502 Bad Gateway"


def test_plain_text_body_is_cut_short() -> None:
    error = answer(500, b"Internal error " * 100)
    assert error.message.startswith("openai answered HTTP 500: Internal error Internal")
    assert len(error.message) < 260


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"retry-after": "7"}, 7.0),
        ({"retry-after": "1.5"}, 1.5),
        ({"retry-after-ms": "250", "retry-after": "7"}, 0.25),
        ({"retry-after-ms": "junk", "retry-after": "7"}, 7.0),
        ({"retry-after": "-3"}, None),
        ({"retry-after": "soon"}, None),
        ({"retry-after": "nan"}, None),
        ({}, None),
    ],
)
def test_retry_after(headers: dict[str, str], expected: float | None) -> None:
    assert parse_retry_after(httpx.Headers(headers)) == expected


def test_retry_after_http_date() -> None:
    now = 1_700_000_000.0
    date = email.utils.formatdate(now + 30, usegmt=True)
    assert parse_retry_after(httpx.Headers({"retry-after": date}), now=now) == pytest.approx(30)
    assert parse_retry_after(httpx.Headers({"retry-after": date}), now=now + 60) == 0


def test_retry_after_rides_on_the_error() -> None:
    error = answer(429, {"error": {"message": "slow down"}}, {"Retry-After": "12"})
    assert error.retry_after == 12.0


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ("bad key sk-proj-AbCdEf123456_-xyz given", "AbCdEf123456"),
        ("bad key sk-ant-api03-AbCdEf123456-xyzXYZ given", "AbCdEf123456"),
        ("key AIzaSyD-1234567890abcdefghijklmnopqrstu rejected", "1234567890abcdef"),
        ("header Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.abc.def sent", "eyJhbGci"),
        (
            "GET https://x.googleapis.com/v1beta/models?key=AIzaSecret123&alt=sse failed",
            "Secret123",
        ),
        ("GET /v1?api_key=hunter2 failed", "hunter2"),
    ],
)
def test_redact_hides_keys(text: str, secret: str) -> None:
    redacted = redact(text)
    assert secret not in redacted
    assert "[redacted]" in redacted


def test_redact_leaves_ordinary_words() -> None:
    text = "task-queue overflow in a disk-backed store; the bearer of bad news; key=value"
    assert redact(text) == text


def test_error_from_event_anthropic_overloaded() -> None:
    error = error_from_event(
        {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}},
        "anthropic",
    )
    assert (error.type, error.retryable, error.status) == ("overloaded", True, None)


@pytest.mark.parametrize(
    ("payload", "type", "retryable"),
    [
        (
            {"error": {"message": "boom", "type": "server_error", "code": None}},
            "upstream_error",
            True,
        ),
        ({"error": {"message": "slow", "type": "rate_limit_error"}}, "rate_limited", True),
        ({"error": {"code": 502, "message": "Provider returned error"}}, "upstream_error", True),
        ({"error": {"code": 429, "message": "Rate limited upstream"}}, "rate_limited", True),
        ({"error": "something broke"}, "upstream_error", True),
        (
            {"error": {"code": 504, "message": "late", "status": "DEADLINE_EXCEEDED"}},
            "timeout",
            True,
        ),
    ],
)
def test_error_from_event(payload: dict[str, Any], type: str, retryable: bool) -> None:
    error = error_from_event(payload, "openai")
    assert (error.type, error.retryable) == (type, retryable)
    assert error.message.startswith("openai: ")


@pytest.mark.parametrize(
    ("exc", "type", "retryable"),
    [
        (httpx.ConnectError("[Errno 111] Connection refused"), "upstream_error", True),
        (httpx.ConnectTimeout("timed out"), "timeout", True),
        (httpx.ReadTimeout("timed out"), "timeout", True),
        (
            httpx.RemoteProtocolError("peer closed connection without sending complete message body"),
            "upstream_error",
            True,
        ),
        (httpx.ReadError("connection reset"), "upstream_error", True),
        (
            httpx.UnsupportedProtocol("Request URL is missing an 'http://' or 'https://' protocol."),
            "upstream_error",
            False,
        ),
    ],
)
def test_error_from_transport(exc: Exception, type: str, retryable: bool) -> None:
    error = error_from_transport(exc, "openai")
    assert (error.type, error.retryable) == (type, retryable)


def test_error_from_transport_redacts_urls() -> None:
    error = error_from_transport(httpx.ConnectError("failed: https://h/x?key=AIzaSecretSecret"), "gemini")
    assert "AIzaSecret" not in error.message
