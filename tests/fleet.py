"""Several real sidechat processes (`python -m chat serve`) on one database and one Redis, each
on a loopback port of its own, pointed at a fake upstream the test runs, as users run them
behind a load balancer."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

from tests.fakeupstream import FakeUpstream
from tests.processes import PYTHON, Server, free_port, running


def fleet_env(upstream: FakeUpstream, db: str, redis_url: str, prefix: str) -> dict[str, str]:
    return {
        "SIDECHAT_DB": db,
        "SIDECHAT_REDIS_URL": redis_url,
        "SIDECHAT_REDIS_PREFIX": prefix,
        "SIDECHAT_PROVIDER": "openai",
        "OPENAI_API_KEY": "sk-test",
        "OPENAI_BASE_URL": upstream.url,
        "SIDECHAT_HEARTBEAT_SECONDS": "5",
        "SIDECHAT_SHUTDOWN_GRACE_SECONDS": "0.5",
    }


@asynccontextmanager
async def fleet(count: int, env: dict[str, str], directory: Path) -> AsyncIterator[list[Server]]:
    """`count` processes serving with `env`, each logging to `directory/sidechat-<n>.log`; killed
    after the block."""
    directory.mkdir(parents=True, exist_ok=True)
    async with AsyncExitStack() as stack:
        servers = []
        for number in range(count):
            port = free_port()
            command = [PYTHON, "-m", "chat", "serve", "--host", "127.0.0.1", "--port", str(port)]
            log = directory / f"sidechat-{number}.log"
            servers.append(await stack.enter_async_context(running(command, port=port, env=env, log=log)))
        yield servers
