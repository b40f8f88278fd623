"""CORS: off unless SIDECHAT_CORS_ORIGINS names origins; then for the API and its streams."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from chat.config import Settings
from tests.live import serve

pytestmark = pytest.mark.anyio

ORIGIN = "https://app.example.com"
TOKEN = "cors-token-0123456789"


@pytest.fixture
async def url(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[str]:
    settings = Settings(db=str(tmp_path / "chat.db"), demo_delay=0, **getattr(request, "param", {}))
    async with serve(settings) as served:
        yield served


async def test_off_by_default(url: str) -> None:
    async with httpx.AsyncClient(base_url=url) as http:
        plain = await http.get("/api/conversations", headers={"origin": ORIGIN})
        assert "access-control-allow-origin" not in plain.headers
        preflight = await http.options("/api/chat", headers=preflight_headers())
        assert "access-control-allow-origin" not in preflight.headers


def preflight_headers(origin: str = ORIGIN, headers: str = "authorization, content-type") -> dict[str, str]:
    return {
        "origin": origin,
        "access-control-request-method": "POST",
        "access-control-request-headers": headers,
    }


CONFIGURED = {"cors_origins": (ORIGIN,), "api_tokens": ((TOKEN, "alice"),)}


@pytest.mark.parametrize("url", [CONFIGURED], indirect=True)
async def test_a_listed_origin_may_call_the_api_and_its_streams(url: str) -> None:
    async with httpx.AsyncClient(base_url=url, headers={"authorization": f"Bearer {TOKEN}"}) as http:
        preflight = await http.options("/api/chat/stream", headers=preflight_headers())
        assert preflight.status_code == 200  # a preflight carries no token, and needs none
        assert preflight.headers["access-control-allow-origin"] == ORIGIN
        assert "authorization" in preflight.headers["access-control-allow-headers"].lower()
        resume = await http.options(
            "/api/messages/1/stream",
            headers={**preflight_headers(headers="last-event-id"), "access-control-request-method": "GET"},
        )
        assert (
            resume.status_code == 200
            and "last-event-id" in resume.headers["access-control-allow-headers"].lower()
        )
        async with http.stream(
            "POST", "/api/chat/stream", json={"message": "hi"}, headers={"origin": ORIGIN}
        ) as s:
            assert s.headers["access-control-allow-origin"] == ORIGIN
            assert "x-message-id" in s.headers["access-control-expose-headers"].lower()
            assert "event: done" in (await s.aread()).decode()
        refused = await http.get(
            "/api/conversations", headers={"origin": ORIGIN, "authorization": "Bearer nope"}
        )
        assert refused.status_code == 401
        assert refused.headers["access-control-allow-origin"] == ORIGIN  # so the page can read why


@pytest.mark.parametrize("url", [CONFIGURED], indirect=True)
async def test_another_origin_gets_no_cors_headers(url: str) -> None:
    async with httpx.AsyncClient(base_url=url) as http:
        preflight = await http.options("/api/chat", headers=preflight_headers("https://evil.example"))
        assert preflight.status_code == 400
        assert "access-control-allow-origin" not in preflight.headers
        plain = await http.get("/healthz", headers={"origin": "https://evil.example"})
        assert "access-control-allow-origin" not in plain.headers
