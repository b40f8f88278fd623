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
from contextlib import AbstractContextManager, ExitStack, contextmanager, nullcontext
from contextvars import ContextVar, Token
from dataclasses import dataclass, field
from types import TracebackType
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
    """A watcher; each moment does nothing unless a sink says otherwise.

    A request and a generation are heard either as a context around them (`request`,
    `generation`: what a trace span needs) or as their end alone (`request_ended`,
    `generation_ended`: all the log and the metrics need, and far less to hold while a
    stream lasts); the ends are heard once every context has been left."""

    def opened(self, services: Services) -> None:
        pass

    def request(self, record: RequestRecord) -> AbstractContextManager[None]:
        return NULL

    def request_ended(self, record: RequestRecord) -> None:
        pass

    def generation(self, generation: Generation) -> AbstractContextManager[None]:
        return NULL

    def generation_ended(self, generation: Generation) -> None:
        pass

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
            for moment in (
                "opened",
                "request",
                "request_ended",
                "generation",
                "generation_ended",
                "db_write",
                "upstream_failed",
                "fell_back",
            )
        }
        self._request_ended = tuple(sink.request_ended for sink in reversed(self._hearing["request_ended"]))
        self._generation_ended = tuple(
            sink.generation_ended for sink in reversed(self._hearing["generation_ended"])
        )

    def opened(self, services: Services) -> None:
        for sink in self._hearing["opened"]:
            sink.opened(services)

    def request(self, record: RequestRecord) -> Moment:
        contexts = tuple(sink.request(record) for sink in self._hearing["request"])
        return Moment(contexts, self._request_ended, record, record.request_id)

    def generation(self, generation: Generation) -> Moment:
        contexts = tuple(sink.generation(generation) for sink in self._hearing["generation"])
        return Moment(contexts, self._generation_ended, generation)

    def db_write(self, what: str) -> ExitStack:
        stack = ExitStack()
        for sink in self._hearing["db_write"]:
            stack.enter_context(sink.db_write(what))
        return stack

    def upstream_failed(self, provider: str, error: ProviderError, *, retried: bool) -> None:
        for sink in self._hearing["upstream_failed"]:
            sink.upstream_failed(provider, error, retried=retried)

    def fell_back(self, provider: str, to: str) -> None:
        for sink in self._hearing["fell_back"]:
            sink.fell_back(provider, to)


class Moment:
    """A request or a generation as the sinks hear it: their contexts entered in order and
    left in reverse, as an `ExitStack` would, then their ends. It is held for as long as a
    stream lasts, so it holds only that (an ExitStack makes a deque of its own, over 600 bytes)."""

    __slots__ = ("_contexts", "_ended", "_subject", "_request_id", "_token")

    def __init__(
        self,
        contexts: tuple[AbstractContextManager[None], ...],
        ended: tuple[Callable[[Any], None], ...],
        subject: Any,
        request_id: str | None = None,
    ) -> None:
        self._contexts = contexts
        self._ended = ended
        self._subject = subject
        self._request_id = request_id  # made current inside, when the moment is a request's
        self._token: Token[str | None] | None = None

    def __enter__(self) -> None:
        if self._request_id is not None:
            self._token = request_id_var.set(self._request_id)
        entered = 0
        try:
            for context in self._contexts:
                context.__enter__()
                entered += 1
        except BaseException as error:
            self._leave(entered, error)
            raise

    def __exit__(self, kind: object, error: BaseException | None, traceback: object) -> bool:
        return self._leave(len(self._contexts), error)

    def _leave(self, entered: int, error: BaseException | None) -> bool:
        """Leave the first `entered` contexts; True when they made `error` go away."""
        pending = error
        try:
            for context in reversed(self._contexts[:entered]):
                try:
                    if context.__exit__(type(pending) if pending else None, pending, _tb(pending)):
                        pending = None
                except BaseException as raised:
                    if raised is not pending and raised.__context__ is None:
                        raised.__context__ = pending
                    pending = raised
        finally:
            for ended in self._ended:
                ended(self._subject)
            if self._token is not None:
                request_id_var.reset(self._token)
        if pending is None or pending is error:
            return error is not None and pending is None
        raise pending


def _tb(error: BaseException | None) -> TracebackType | None:
    return None if error is None else error.__traceback__


NULL: AbstractContextManager[None] = nullcontext()  # a context that does nothing, and can be shared


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
