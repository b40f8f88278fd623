"""The one upstream HTTP client: httpx, carried over aiohttp by the httpx-aiohttp package.

httpx stays the HTTP API everywhere (adapters, tests, respx); only the transport
under the shared client changes. Measured in bench/: with httpx's default
transport, reading a provider's stream (httpcore + h11 + anyio, with a cancel
scope per read) was half of the relay's CPU per token, and its pool scans every
queued request on every change, which stalled thousands of open streams.
aiohttp parses in C and reads whatever has arrived in one call. The OpenAI SDK
offers the same transport (`DefaultAioHttpClient`).

Deliberate choices:
- No connection limit: aiohttp's default of 100 would queue the 101st
  concurrent generation behind the others.
- The aiohttp session is ours. Proxies come from `HTTPS_PROXY`, `HTTP_PROXY` and
  `NO_PROXY` (and their lower-case forms), worked out once per host: aiohttp's own
  `trust_env` asks the environment and reads `~/.netrc` in a worker thread on every
  request, two thread round trips on the start path of every chat (bench/). A
  proxy's credentials go in its URL (`http://user:pass@proxy:3128`). Certificates are checked against
  `SIDECHAT_CA_BUNDLE` when it is set, else `SSL_CERT_FILE` or `SSL_CERT_DIR`,
  else certifi's roots, as httpx would.
- aiohttp's exceptions are translated here, most specific first, before the
  package's own table sees them: it turns a refused connection (and a server
  that hangs up mid-stream) into `ConnectTimeout`, which would make "could not
  connect" read as "timed out". A connection error's message is the OS's
  reason ("Connection refused"), not aiohttp's internals.
"""

from __future__ import annotations

import os
import ssl
import urllib.request
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager

import aiohttp
import httpx
from httpx_aiohttp import AiohttpTransport as PackageTransport

from .errors import StartupError
from .providers.deadlines import Timeouts

KEEPALIVE_SECONDS = 15.0
PROXY_HOSTS = 1024  # hosts whose proxy is remembered; providers are a handful

# Most specific first: the first match wins.
_EXCEPTIONS: list[tuple[type[BaseException], type[httpx.TransportError]]] = [
    (aiohttp.ConnectionTimeoutError, httpx.ConnectTimeout),
    (aiohttp.SocketTimeoutError, httpx.ReadTimeout),
    (aiohttp.ServerTimeoutError, httpx.ReadTimeout),
    (TimeoutError, httpx.ReadTimeout),
    (aiohttp.ClientProxyConnectionError, httpx.ProxyError),
    (aiohttp.ClientHttpProxyError, httpx.ProxyError),
    (aiohttp.ClientConnectorError, httpx.ConnectError),
    (aiohttp.ServerDisconnectedError, httpx.RemoteProtocolError),
    (aiohttp.ClientPayloadError, httpx.RemoteProtocolError),
    (aiohttp.ClientResponseError, httpx.RemoteProtocolError),
    (aiohttp.InvalidURL, httpx.UnsupportedProtocol),
    (aiohttp.ClientError, httpx.ReadError),
]


def _describe(exc: BaseException) -> str:
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        reason: BaseException = exc.certificate_error
    elif isinstance(exc, aiohttp.ClientConnectorError):
        reason = exc.os_error
    else:
        return str(exc) or type(exc).__name__
    if isinstance(reason, ssl.SSLCertVerificationError):
        return f"its certificate is not trusted ({reason.verify_message}); SIDECHAT_CA_BUNDLE can name the CA"
    if isinstance(reason, ssl.SSLError):
        return f"TLS failed ({reason.reason or reason})"
    if isinstance(reason, OSError) and reason.errno is not None and reason.errno > 0:
        return os.strerror(reason.errno)  # "Connection refused", not the call that failed
    return getattr(reason, "strerror", None) or str(reason) or type(reason).__name__


def _translated(exc: BaseException, request: httpx.Request) -> httpx.TransportError | None:
    for source, target in _EXCEPTIONS:
        if isinstance(exc, source):
            return target(_describe(exc), request=request)
    return None


@contextmanager
def _as_httpx_errors(request: httpx.Request) -> Iterator[None]:
    try:
        yield
    except (TimeoutError, aiohttp.ClientError) as exc:
        translated = _translated(exc, request)
        if translated is None:
            raise
        raise translated from exc
    except httpx.TransportError as exc:  # the package's own translation, of what it caught first
        translated = _translated(exc.__cause__, request) if exc.__cause__ is not None else None
        if translated is None:
            raise
        raise translated from exc.__cause__


class _Body(httpx.AsyncByteStream):
    def __init__(self, inner: httpx.AsyncByteStream, request: httpx.Request) -> None:
        self._inner = inner
        self._request = request

    async def __aiter__(self) -> AsyncIterator[bytes]:
        with _as_httpx_errors(self._request):
            async for chunk in self._inner:
                yield chunk

    async def aclose(self) -> None:
        await self._inner.aclose()  # a body left before its end closes its connection


class EnvironmentProxies:
    """The proxy the environment names for a URL, or None: read once, then remembered per host."""

    def __init__(self) -> None:
        named = urllib.request.getproxies_environment()
        self._named: dict[str, str] = {
            scheme: named[scheme] for scheme in ("http", "https") if scheme in named
        }
        self._chosen: dict[tuple[str, str], httpx.Proxy | None] = {}

    def for_url(self, url: httpx.URL) -> httpx.Proxy | None:
        key = (url.scheme, url.netloc.decode("ascii"))
        if key not in self._chosen:
            if len(self._chosen) >= PROXY_HOSTS:
                self._chosen.clear()
            proxy = self._named.get(url.scheme)
            bypassed = proxy is not None and urllib.request.proxy_bypass(key[1])  # NO_PROXY, on Linux
            self._chosen[key] = httpx.Proxy(proxy) if proxy is not None and not bypassed else None
        return self._chosen[key]


class AiohttpTransport(PackageTransport):
    """The package's transport, on our session and with our exception translation."""

    def __init__(self, ssl_context: ssl.SSLContext) -> None:
        super().__init__(verify=ssl_context, client=self._session)
        self._ssl_context = ssl_context
        self._proxies = EnvironmentProxies()

    def _session(self) -> aiohttp.ClientSession:
        # Made on first use, inside the running loop, as aiohttp requires.
        connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=KEEPALIVE_SECONDS, ssl=self._ssl_context)
        return aiohttp.ClientSession(connector=connector, auto_decompress=False)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        # The package reads `self.proxy` before its first await, so setting it here, with no
        # await in between, gives this request its own proxy however many run at once.
        self.proxy = self._proxies.for_url(request.url)
        with _as_httpx_errors(request):
            response = await super().handle_async_request(request)
        assert isinstance(response.stream, httpx.AsyncByteStream)
        response.stream = _Body(response.stream, request)
        return response


def ssl_context(ca_bundle: str | None) -> ssl.SSLContext:
    """Trust `ca_bundle` (a PEM file, or a directory of them) when given, else what httpx would."""
    if ca_bundle is None:
        return httpx.create_ssl_context()
    try:
        if os.path.isdir(ca_bundle):
            return ssl.create_default_context(capath=ca_bundle)
        return ssl.create_default_context(cafile=ca_bundle)
    except (OSError, ssl.SSLError) as exc:
        raise StartupError(
            f"SIDECHAT_CA_BUNDLE={ca_bundle!r}: cannot read certificates from it ({exc})"
        ) from None


@asynccontextmanager
async def upstream_client(
    timeouts: Timeouts, *, ca_bundle: str | None = None
) -> AsyncIterator[httpx.AsyncClient]:
    """The client every provider adapter shares, open for as long as the block lasts."""
    transport = AiohttpTransport(ssl_context(ca_bundle))
    async with httpx.AsyncClient(transport=transport, timeout=timeouts.for_client()) as client:
        yield client
