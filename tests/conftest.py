from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from chat.config import Settings
from tests.fakeupstream import FakeUpstream
from tests.live import serve


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def upstream() -> AsyncIterator[FakeUpstream]:
    """A real provider-shaped HTTP server on a loopback port; tests script its replies."""
    async with FakeUpstream() as fake:
        yield fake


def settings_for(upstream: FakeUpstream, tmp_path: Path, **changes: object) -> Settings:
    """sidechat pointed at the fake upstream as its OpenAI provider."""
    values: dict[str, object] = {
        "db": str(tmp_path / "chat.db"),
        "provider": "openai",
        "openai_api_key": "sk-test",
        "openai_base_url": upstream.url,
        "heartbeat_seconds": 5.0,
        "shutdown_grace_seconds": 0.5,
        **changes,
    }
    return Settings(**values)  # type: ignore[arg-type]


@pytest.fixture
async def client(
    upstream: FakeUpstream, tmp_path: Path, request: pytest.FixtureRequest
) -> AsyncIterator[httpx.AsyncClient]:
    """A client of sidechat on a real uvicorn server; parametrize indirectly to change settings."""
    async with serve(settings_for(upstream, tmp_path, **getattr(request, "param", {}))) as url:
        async with httpx.AsyncClient(base_url=url, timeout=10) as http:
            yield http
