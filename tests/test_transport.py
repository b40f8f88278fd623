"""httpx over the aiohttp transport: errors keep httpx's types, connections are reused
only when a response was read to its end."""

from __future__ import annotations

import asyncio
import socket
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import trustme

from chat.errors import StartupError
from chat.providers.deadlines import Timeouts
from chat.transport import EnvironmentProxies, ssl_context, upstream_client
from tests.conftest import Proxy
from tests.fakeupstream import FakeUpstream, Reply

TIMEOUTS = Timeouts(connect=5, first_token=5, idle=5)

pytestmark = pytest.mark.anyio


class KeepAliveServer:
    """Answers every request on a connection with `body`, counting connections."""

    def __init__(self, body: bytes = b"hello", pause: float = 0.0) -> None:
        self.body = body
        self.pause = pause
        self.connections = 0
        self.url = ""
        self._writers: list[asyncio.StreamWriter] = []

    async def __aenter__(self) -> KeepAliveServer:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._server.close()
        for writer in self._writers:
            writer.close()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.append(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    (
                        int(line.split(b":")[1])
                        for line in head.split(b"\r\n")
                        if line.lower().startswith(b"content-length")
                    ),
                    0,
                )
                await reader.readexactly(length)
                writer.write(
                    b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ntransfer-encoding: chunked\r\n\r\n"
                )
                writer.write(b"%x\r\n%s\r\n" % (len(self.body), self.body))
                await writer.drain()
                await asyncio.sleep(self.pause)
                writer.write(b"0\r\n\r\n")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with upstream_client(TIMEOUTS) as http:
        yield http


async def test_a_response_read_to_its_end_frees_its_connection_for_the_next(
    client: httpx.AsyncClient,
) -> None:
    async with KeepAliveServer() as server:
        for _ in range(3):
            async with client.stream("POST", server.url, json={"n": 1}) as response:
                assert response.status_code == 200
                assert b"".join([chunk async for chunk in response.aiter_bytes()]) == b"hello"
        assert server.connections == 1


async def test_a_response_closed_early_is_not_reused(client: httpx.AsyncClient) -> None:
    async with KeepAliveServer(pause=1.0) as server:
        for _ in range(2):
            async with client.stream("POST", server.url, json={}) as response:
                async for chunk in response.aiter_bytes():
                    assert chunk == b"hello"
                    break  # leave before the body's end
        assert server.connections == 2


async def test_request_body_and_headers_arrive() -> None:
    seen: list[bytes] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        seen.append(head + await reader.readexactly(7))
        writer.write(b"HTTP/1.1 201 Created\r\nx-thing: 1\r\ncontent-length: 2\r\n\r\nok")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1/x"
    async with upstream_client(TIMEOUTS) as client:
        response = await client.post(url, json={"a": 1}, headers={"authorization": "Bearer k"})
    server.close()
    await server.wait_closed()

    assert (response.status_code, response.headers["x-thing"], response.text) == (201, "1", "ok")
    request = seen[0].lower()
    assert request.startswith(b"post /v1/x http/1.1")
    assert b"authorization: bearer k" in request
    assert request.endswith(b'{"a":1}')


async def test_connection_refused_is_httpx_connect_error(client: httpx.AsyncClient) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(httpx.ConnectError) as info:
        await client.get(f"http://127.0.0.1:{port}/")
    assert not isinstance(info.value, httpx.TimeoutException)  # the package would say ConnectTimeout
    assert str(info.value) == "Connection refused"


async def test_stalled_body_is_httpx_read_timeout(client: httpx.AsyncClient) -> None:
    async with KeepAliveServer(pause=2.0) as server:
        with pytest.raises(httpx.ReadTimeout):
            async with client.stream("POST", server.url, timeout=httpx.Timeout(5, read=0.2)) as response:
                async for _ in response.aiter_bytes():
                    pass


async def test_unsupported_url_is_an_httpx_error(client: httpx.AsyncClient) -> None:
    with pytest.raises(httpx.HTTPError):
        await client.get("ftp://127.0.0.1/")


# -- proxies from the environment, and certificates --------------------------------------


async def read_reply(client: httpx.AsyncClient, url: str) -> bytes:
    async with client.stream("POST", url, json={}) as response:
        return b"".join([chunk async for chunk in response.aiter_bytes()])


@pytest.mark.parametrize("tls", [False, True], ids=["http", "https"])
async def test_requests_go_through_the_proxy_the_environment_names(
    tls: bool,
    upstream: FakeUpstream,
    tls_upstream: FakeUpstream,
    proxy: Proxy,
    authority: trustme.CA,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    target = tls_upstream if tls else upstream
    target.add(Reply([b"through the proxy"], headers={"content-type": "text/plain"}))
    monkeypatch.setenv("HTTPS_PROXY" if tls else "HTTP_PROXY", proxy.url)
    bundle = tmp_path / "ca.pem"
    authority.cert_pem.write_to_path(str(bundle))
    async with upstream_client(TIMEOUTS, ca_bundle=str(bundle)) as client:
        assert await read_reply(client, target.url + "/v1/x") == b"through the proxy"
    assert proxy.connections_to(target.port) == 1
    assert target.requests[0].path == "/v1/x"


async def test_no_proxy_goes_around_it(
    upstream: FakeUpstream, proxy: Proxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    upstream.add(Reply([b"direct"], headers={"content-type": "text/plain"}))
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    async with upstream_client(TIMEOUTS) as client:
        assert await read_reply(client, upstream.url) == b"direct"
    assert proxy.connections_to(upstream.port) == 0


async def test_a_certificate_from_an_unknown_authority_is_refused_and_named(
    tls_upstream: FakeUpstream,
) -> None:
    async with upstream_client(TIMEOUTS) as client:
        with pytest.raises(httpx.ConnectError) as info:
            await client.get(tls_upstream.url)
    assert "certificate is not trusted" in str(info.value) and "SIDECHAT_CA_BUNDLE" in str(info.value)
    assert tls_upstream.requests == []


@pytest.mark.parametrize("form", ["file", "directory"])
async def test_a_ca_bundle_makes_its_authority_trusted(
    form: str, tls_upstream: FakeUpstream, authority: trustme.CA, tmp_path: Path
) -> None:
    tls_upstream.add(Reply([b"trusted"], headers={"content-type": "text/plain"}))
    if form == "file":
        bundle = tmp_path / "ca.pem"
        authority.cert_pem.write_to_path(str(bundle))
    else:  # OpenSSL finds a CA in a directory by the hash of its subject
        bundle = tmp_path / "certs"
        bundle.mkdir()
        pem = authority.cert_pem.bytes()
        subject_hash = (
            subprocess.run(["openssl", "x509", "-hash", "-noout"], input=pem, capture_output=True, check=True)
            .stdout.decode()
            .strip()
        )
        (bundle / f"{subject_hash}.0").write_bytes(pem)
    async with upstream_client(TIMEOUTS, ca_bundle=str(bundle)) as client:
        assert await read_reply(client, tls_upstream.url) == b"trusted"


def test_a_ca_bundle_that_cannot_be_read_stops_start_up(tmp_path: Path) -> None:
    with pytest.raises(StartupError) as info:
        ssl_context(str(tmp_path / "missing.pem"))
    assert "SIDECHAT_CA_BUNDLE" in str(info.value)


def test_the_environment_s_proxies_are_chosen_per_host(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("http_proxy", "https_proxy", "no_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    monkeypatch.setenv("https_proxy", "http://alice:secret@proxy.example:3128")
    monkeypatch.setenv("HTTP_PROXY", "http://plain.example:8080")
    monkeypatch.setenv("NO_PROXY", "internal.example,local.example:8443")
    proxies = EnvironmentProxies()
    chosen = proxies.for_url(httpx.URL("https://api.openai.com/v1/chat"))
    assert chosen is not None and chosen.url == httpx.URL("http://proxy.example:3128")
    assert chosen.auth == ("alice", "secret")
    plain = proxies.for_url(httpx.URL("http://ollama.example:11434/api/chat"))
    assert plain is not None and plain.url == httpx.URL("http://plain.example:8080")
    assert proxies.for_url(httpx.URL("https://internal.example/v1")) is None
    assert proxies.for_url(httpx.URL("https://local.example:8443/v1")) is None
    assert proxies.for_url(httpx.URL("https://local.example/v1")) is not None
