from __future__ import annotations

import asyncio
import ssl
import subprocess
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import trustme
from playwright.async_api import Browser

from chat.config import Settings
from chat.store import Store
from tests.backends import BACKENDS, Backend, new_backend
from tests.browser import Console, chromium
from tests.fakeupstream import FakeUpstream
from tests.live import serve, until
from tests.postgres import Postgres, postgres_server
from tests.processes import free_port


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "backends(*kinds): the databases a served test runs on (tests/backends.py)"
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """`database` is each backend the closest `backends` mark names, else SQLite alone."""
    if "database" in metafunc.fixturenames:
        marked = metafunc.definition.get_closest_marker("backends")
        metafunc.parametrize("database", marked.args if marked else ("sqlite",), indirect=True)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    """A real PostgreSQL for the whole session, started when a test first needs it."""
    with postgres_server() as server:
        yield server


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """Each database a store runs on, new for the test: a SQLite file of its own, or a new
    database on the session's PostgreSQL."""
    with new_backend(request.param, tmp_path, request) as made:
        yield made


@pytest.fixture
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """The database a served test's sidechat keeps (`SIDECHAT_DB`): SQLite's file, and a new
    PostgreSQL database too where the test is marked `every_backend` (tests/backends.py)."""
    with new_backend(request.param, tmp_path, request, schema=True) as made:
        yield made


@pytest.fixture
async def store(backend: Backend) -> AsyncIterator[Store]:
    """A store on a new database of the test's own, on each backend (`backend`)."""
    opened = await backend.open()
    yield opened
    await opened.close()


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
    upstream: FakeUpstream, tmp_path: Path, database: Backend, request: pytest.FixtureRequest
) -> AsyncIterator[httpx.AsyncClient]:
    """A client of sidechat on a real uvicorn server, keeping its data in `database`;
    parametrize indirectly to change settings."""
    changes = {"db": database.db, **getattr(request, "param", {})}
    async with serve(settings_for(upstream, tmp_path, **changes)) as url:
        async with httpx.AsyncClient(base_url=url, timeout=10) as http:
            yield http


@dataclass
class Proxy:
    url: str
    log: Path

    def connections_to(self, port: int) -> int:
        """How many times the proxy opened a connection to `port` for a client."""
        said = self.log.read_text(errors="replace")
        return sum(said.count(f"opening connection to {host}:{port}") for host in ("localhost", "127.0.0.1"))


@pytest.fixture
async def proxy(tmp_path: Path) -> AsyncIterator[Proxy]:
    """A real forward proxy (Debian's tinyproxy) on a loopback port, logging what it opens."""
    port = free_port()
    config = tmp_path / "tinyproxy.conf"
    config.write_text(f"Port {port}\nListen 127.0.0.1\nAllow 127.0.0.1\nTimeout 60\nLogLevel Info\n")
    log = tmp_path / "tinyproxy.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            ["tinyproxy", "-d", "-c", str(config)], stdout=output, stderr=subprocess.STDOUT
        )

    async def listening() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"tinyproxy exited: {log.read_text()}")
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            return False
        writer.close()
        return True

    try:
        await until(listening, what="tinyproxy to listen")
        yield Proxy(f"http://127.0.0.1:{port}", log)
    finally:
        process.terminate()
        await asyncio.to_thread(process.wait, 10)


@pytest.fixture(scope="session")
def authority() -> trustme.CA:
    """A certificate authority no system trusts, for upstreams served over TLS."""
    return trustme.CA()


@pytest.fixture
async def tls_upstream(authority: trustme.CA) -> AsyncIterator[FakeUpstream]:
    """The fake provider over HTTPS, as `localhost`, with a certificate from `authority`."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert("localhost", "127.0.0.1").configure_cert(context)
    async with FakeUpstream(tls=context) as fake:
        yield fake


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    """Debian's Chromium, headless (tests/browser.py)."""
    async with chromium() as launched:
        yield launched


@pytest.fixture
def console() -> Iterator[Console]:
    """The browser console of every page a test opens: it must stay free of errors."""
    watched = Console()
    yield watched
    problems = watched.unexpected()
    assert not problems, "the page logged problems:\n" + "\n".join(problems)
