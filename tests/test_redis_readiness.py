"""/readyz with SIDECHAT_REDIS_URL: not ready while Redis does not answer, ready again when
it does, without a restart."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest

from chat.config import Settings
from tests.live import serve, until

if TYPE_CHECKING:  # imported as a plugin below, which must come first
    from tests.redis_server import RedisServer

pytestmark = pytest.mark.anyio
pytest_plugins = ["tests.redis_server"]


async def test_readyz_says_redis_is_unreachable_while_it_is(
    own_redis_server: RedisServer, tmp_path: Path
) -> None:
    settings = Settings(db=str(tmp_path / "chat.db"), redis_url=own_redis_server.url)
    async with serve(settings) as url, httpx.AsyncClient(base_url=url, timeout=10) as http:
        assert (await http.get("/readyz")).json() == {"status": "ok"}
        own_redis_server.stop()
        down = await http.get("/readyz")
        assert down.status_code == 503
        assert "Redis (SIDECHAT_REDIS_URL) is unreachable" in down.json()["reason"]
        own_redis_server.start()

        async def ready() -> bool:
            return (await http.get("/readyz")).status_code == 200

        await until(ready, timeout=20, what="ready again once Redis is back")


async def test_without_redis_readiness_is_the_databases_alone(tmp_path: Path) -> None:
    async with serve(Settings(db=str(tmp_path / "chat.db"))) as url, httpx.AsyncClient(base_url=url) as http:
        assert (await http.get("/readyz")).json() == {"status": "ok"}
