"""The page and its files: served with a strict Content-Security-Policy, and nothing outside static/."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from chat.config import Settings
from chat.page import HEADERS
from tests.live import serve

pytestmark = pytest.mark.anyio


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    async with serve(Settings(db=str(tmp_path / "chat.db"))) as url:
        async with httpx.AsyncClient(base_url=url, timeout=10) as http:
            yield http


@pytest.mark.parametrize("path", ["/", "/static/index.html"])
async def test_the_page_and_its_files_carry_the_security_headers(
    client: httpx.AsyncClient, path: str
) -> None:
    response = await client.get(path)
    assert response.status_code == 200 and "<title>sidechat</title>" in response.text
    for name, value in HEADERS.items():
        assert response.headers[name] == value
    policy = response.headers["content-security-policy"]
    assert (
        "script-src 'self'" in policy and "unsafe-inline" not in policy and "frame-ancestors 'none'" in policy
    )


@pytest.mark.parametrize(
    "path",
    [
        "/static/../schema.sql",
        "/static/%2e%2e/schema.sql",
        "/static/..%2fschema.sql",
        "/static/%2e%2e%2fpyproject.toml",
    ],
)
async def test_nothing_outside_static_is_served(client: httpx.AsyncClient, path: str) -> None:
    response = await client.get(path)
    assert response.status_code == 404
    assert "CREATE TABLE" not in response.text and "[project]" not in response.text
