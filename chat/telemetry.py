"""What the service tells the ones watching it: the metrics, the logs and the traces.

One `Telemetry` per app holds the sinks that are on (`chat.metrics`, `chat.logs`,
`chat.tracing`); code that does something worth knowing about calls it, and each
sink hears of it. The moments are few and none is per token:

- a request, from its first byte to its response's last (`request`, a context);
- a generation, for as long as its task runs (`generation`, a context inside it,
  so a sink can make it current, as a trace span, for the upstream call);
- an upstream failure, retried or not (`upstream_failed`), and a fallback (`fell_back`);
- a database write (`db_write`, a context);
- and once, at start-up, the services the app opened (`opened`), for a sink that reads
  their state when asked (the metrics' gauges of running replies and subscribers).

The request id and the caller travel as context variables (`current`), which
the generation's task inherits when the request starts it: a sink, and the
adapters that send the id upstream, read them wherever they are.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from starlette.types import Scope

if TYPE_CHECKING:
    from starlette.routing import BaseRoute

    from .config import Settings
    from .generations import Generation
    from .providers.base import ProviderError
    from .services import Services


@dataclass(slots=True)
class RequestRecord:
    """One HTTP request as the sinks see it; `status` and `user` are filled in as it goes."""

    scope: Scope
    request_id: str
    client: str | None  # the caller's address, through trusted proxies
    started: float = field(default_factory=time.monotonic)
    status: int | None = None  # None: no response was started
    user: str | None = None

    @property
    def seconds(self) -> float:
        return time.monotonic() - self.started


request_id_var: ContextVar[str | None] = ContextVar("sidechat.request_id", default=None)


def current_request_id() -> str | None:
    """The id of the request being served, or of the one that started this generation."""
    return request_id_var.get()


# What adds trace context to an upstream request (`chat.tracing` puts W3C `traceparent`
# here when it is on); process-wide, as the propagation of OpenTelemetry itself is.
propagators: list[Callable[[dict[str, str]], None]] = []


def upstream_headers(request_id_header: str | None) -> dict[str, str]:
    """The headers that carry this request's id and trace upstream; `request_id_header` is
    the provider's name for the id, None when it takes none."""
    headers: dict[str, str] = {}
    if request_id_header and (value := request_id_var.get()):
        headers[request_id_header] = value
    for propagate in propagators:
        propagate(headers)
    return headers


class Sink:
    """A watcher; each moment does nothing unless a sink says otherwise."""

    def opened(self, services: Services) -> None:
        pass

    @contextmanager
    def request(self, record: RequestRecord) -> Iterator[None]:
        yield

    @contextmanager
    def generation(self, generation: Generation) -> Iterator[None]:
        yield

    @contextmanager
    def db_write(self, what: str) -> Iterator[None]:
        yield

    def upstream_failed(self, provider: str, error: ProviderError, *, retried: bool) -> None:
        pass

    def fell_back(self, provider: str, to: str) -> None:
        pass


class Telemetry:
    """The sinks that are on, heard in order; with none, each moment costs next to nothing."""

    def __init__(self, sinks: Sequence[Sink] = ()) -> None:
        self.sinks = tuple(sinks)
        # Per moment, the sinks that hear it: one that keeps Sink's do-nothing costs nothing.
        self._hearing = {
            moment: tuple(s for s in self.sinks if getattr(type(s), moment) is not getattr(Sink, moment))
            for moment in ("opened", "request", "generation", "db_write", "upstream_failed", "fell_back")
        }

    def opened(self, services: Services) -> None:
        for sink in self._hearing["opened"]:
            sink.opened(services)

    @contextmanager
    def request(self, record: RequestRecord) -> Iterator[None]:
        token = request_id_var.set(record.request_id)
        try:
            with self._all("request", record):
                yield
        finally:
            request_id_var.reset(token)

    def generation(self, generation: Generation) -> ExitStack:
        return self._all("generation", generation)

    def db_write(self, what: str) -> ExitStack:
        return self._all("db_write", what)

    def upstream_failed(self, provider: str, error: ProviderError, *, retried: bool) -> None:
        for sink in self._hearing["upstream_failed"]:
            sink.upstream_failed(provider, error, retried=retried)

    def fell_back(self, provider: str, to: str) -> None:
        for sink in self._hearing["fell_back"]:
            sink.fell_back(provider, to)

    def _all(self, moment: str, subject: Any) -> ExitStack:
        stack = ExitStack()
        for sink in self._hearing[moment]:
            stack.enter_context(getattr(sink, moment)(subject))
        return stack


NOTHING = Telemetry()  # for code run without an app: tests, scripts


def telemetry_for(settings: Settings, routes: list[BaseRoute]) -> Telemetry:
    """The sinks the settings turn on, for an app of `routes`: the log and the metrics
    always, the traces when OpenTelemetry is installed."""
    from .logs import LogSink
    from .metrics import MetricsSink

    sinks: list[Sink] = [LogSink(settings, routes), MetricsSink(settings, routes)]
    if (tracing := tracing_sink(settings, routes)) is not None:
        sinks.append(tracing)
    return Telemetry(sinks)


def tracing_sink(settings: Settings, routes: list[BaseRoute]) -> Sink | None:
    """`chat.tracing`'s sink, or None when `opentelemetry` cannot be imported (the `otel`
    extra is not installed): then not one of its modules is loaded."""
    try:
        from .tracing import TracingSink
    except ModuleNotFoundError as exc:
        if exc.name == "opentelemetry" or (exc.name or "").startswith("opentelemetry."):
            return None
        raise
    return TracingSink(settings, routes)
