"""Traces with OpenTelemetry, when it is installed (`pip install 'sidechat[otel]'`).

A span per request (server; its parent the caller's W3C `traceparent`, when it
sent one), per reply, which is the upstream call with its retries and fallback
(client; current in the reply's own task, so the `traceparent` sent upstream
names it), and per database write (client), each under whatever was current.
`chat.telemetry` loads this module only if `opentelemetry` can be imported:
without it nothing here runs, or is even read.

Switching it on: spans go to OpenTelemetry's global TracerProvider, which does
nothing until someone configures one (`opentelemetry-instrument`, or code of the
operator's own), so with the extra installed and nothing configured a span costs
a few microseconds and goes nowhere. When nothing is configured and the OTLP
exporter is asked for (`OTEL_EXPORTER_OTLP_ENDPOINT` or `..._TRACES_ENDPOINT`
set, or `OTEL_TRACES_EXPORTER=otlp`), sidechat configures the SDK itself: a
batch of spans at a time, from a thread of the SDK's own, to the OTLP/HTTP
exporter, which reads its endpoint, headers and timeout from `OTEL_*` too.

Deliberate choices:
- Upstream goes W3C trace context only (`traceparent`, `tracestate`), never the
  caller's `baggage`: that is the caller's business, and a provider is a third party.
- Span names come from bounded sets (method and route template; `chat` and a
  known model): a backend groups by them. Ids and paths are attributes; message
  text and SQL parameters are never recorded.
- The probes and `/metrics` get no span: an orchestrator and a scraper ask every
  few seconds, and those spans would drown the ones worth reading.
- Attributes are set once, when a span ends; nothing happens per token.
- The `OTEL_*` variables are OpenTelemetry's, read by its SDK; the two looked at
  here only decide whether to set the SDK up (`chat.config` has no part in them).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from opentelemetry import context, propagate, trace
from opentelemetry.propagators.textmap import TextMapPropagator
from opentelemetry.trace import ProxyTracerProvider, Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from starlette.routing import BaseRoute
from starlette.types import Scope

from .labels import OTHER, UNMATCHED, Labels, write_of
from .telemetry import NULL, RequestRecord, Sink, propagators

if TYPE_CHECKING:
    from .config import Settings
    from .generations import Generation
    from .providers.base import ProviderError
    from .services import Services

log = logging.getLogger("sidechat")

UNTRACED = ("/healthz", "/readyz", "/metrics")
_W3C = TraceContextTextMapPropagator()


def inject_trace_context(headers: dict[str, str]) -> None:
    """Add the current span's `traceparent` (and `tracestate`) to an upstream request."""
    _W3C.inject(headers)


class TracingSink(Sink):
    def __init__(
        self,
        settings: Settings,
        routes: list[BaseRoute] | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        configure_sdk(os.environ if environ is None else environ)
        self.tracer = trace.get_tracer("sidechat")  # follows the provider, even one set later
        self.labels = Labels(settings, routes)
        self.db_system = (
            "postgresql" if settings.db.startswith(("postgres://", "postgresql://")) else "sqlite"
        )
        if inject_trace_context not in propagators:  # process-wide, as OpenTelemetry's own
            propagators.append(inject_trace_context)

    def opened(self, services: Services) -> None:
        self.labels.know(services.providers, services.generations.prices)

    @staticmethod
    def recording() -> bool:
        """Whether a TracerProvider is configured. Until one is, every span would be a no-op
        that still costs some microseconds to make, so none is made (a caller's trace context
        is still passed on upstream, as OpenTelemetry's no-op spans would)."""
        return not isinstance(trace.get_tracer_provider(), ProxyTracerProvider)

    def request(self, record: RequestRecord) -> AbstractContextManager[None]:
        if _route_path(record.scope) in UNTRACED:
            return NULL
        if not self.recording():
            carrier = _carrier(record.scope)  # empty unless the caller sent a trace context
            return _attached(carrier) if carrier else NULL
        return self._request_span(record)

    @contextmanager
    def _request_span(self, record: RequestRecord) -> Iterator[None]:
        scope = record.scope
        method = self.labels.method(scope)
        method = "_OTHER" if method == OTHER else method
        attributes = _present(
            {
                "http.request.method": method,
                "url.path": scope.get("path"),
                "url.scheme": scope.get("scheme"),
                "network.protocol.version": scope.get("http_version"),
                "client.address": record.client,
                "sidechat.request_id": record.request_id,
            }
        )
        parent = propagate.extract(_carrier(scope))
        with self.tracer.start_as_current_span(
            "HTTP" if method == "_OTHER" else method,
            context=parent,
            kind=SpanKind.SERVER,
            attributes=attributes,
        ) as span:
            try:
                yield
            finally:
                if span.is_recording():
                    self._responded(span, record, method)

    def _responded(self, span: Span, record: RequestRecord, method: str) -> None:
        route = self.labels.route(record.scope)
        if route != UNMATCHED:
            span.update_name(f"{'HTTP' if method == '_OTHER' else method} {route}")
            span.set_attribute("http.route", route)
        if record.status is not None:
            span.set_attribute("http.response.status_code", record.status)
            if record.status >= 500:
                span.set_attribute("error.type", str(record.status))
                span.set_status(Status(StatusCode.ERROR))

    def generation(self, generation: Generation) -> AbstractContextManager[None]:
        return self._generation_span(generation) if self.recording() else NULL

    @contextmanager
    def _generation_span(self, generation: Generation) -> Iterator[None]:
        started, request = generation.metadata, generation.request
        model = started.get("model")
        name = f"chat {model}" if self.labels.model(model) != OTHER else "chat"
        attributes = _present(
            {
                "gen_ai.operation.name": "chat",
                "gen_ai.provider.name": started.get("provider"),
                "gen_ai.request.model": model,
                "gen_ai.request.max_tokens": request.max_tokens,
                "gen_ai.request.temperature": request.temperature,
                "sidechat.conversation_id": generation.conversation_id,
                "sidechat.message_id": generation.message_id,
            }
        )
        with self.tracer.start_as_current_span(name, kind=SpanKind.CLIENT, attributes=attributes) as span:
            try:
                yield
            finally:
                if span.is_recording():
                    _ended(span, generation)

    @contextmanager
    def db_write(self, what: str) -> Iterator[None]:
        if not self.recording():
            yield
            return
        operation, table = write_of(what)
        attributes = {
            "db.system.name": self.db_system,
            "db.operation.name": operation.upper(),
            "db.collection.name": table,
        }
        with self.tracer.start_as_current_span(
            f"{operation.upper()} {table}", kind=SpanKind.CLIENT, attributes=attributes
        ):
            yield

    def upstream_failed(self, provider: str, error: ProviderError, *, retried: bool) -> None:
        span = trace.get_current_span()  # the reply's: this is heard in its task
        if span.is_recording():
            attributes: dict[str, str | bool | int] = {
                "gen_ai.provider.name": provider,
                "error.type": error.type,
                "sidechat.retried": retried,
            }
            if error.status is not None:
                attributes["http.response.status_code"] = error.status
            span.add_event("upstream_failed", attributes)

    def fell_back(self, provider: str, to: str) -> None:
        span = trace.get_current_span()
        if span.is_recording():
            span.add_event("fell_back", {"gen_ai.provider.name": provider, "sidechat.answered_by": to})


def _ended(span: Span, generation: Generation) -> None:
    """A reply's span, told how it ended: outcome, tokens, timings, error."""
    row = generation.final_row()
    metadata: dict[str, Any] = row.metadata if row is not None else generation.metadata
    usage = metadata.get("usage") or {}
    error = metadata.get("error") or {}
    outcome = row.status if row is not None else "interrupted"
    attributes = _present(
        {
            "sidechat.outcome": outcome,
            "sidechat.deltas": generation.token_count,
            "sidechat.ttft_ms": metadata.get("ttft_ms"),
            "sidechat.duration_ms": metadata.get("duration_ms"),
            "gen_ai.usage.input_tokens": usage.get("input_tokens"),
            "gen_ai.usage.output_tokens": usage.get("output_tokens"),
            "gen_ai.response.finish_reasons": [metadata["finish_reason"]]
            if metadata.get("finish_reason")
            else None,
            "error.type": error.get("type"),
        }
    )
    if "requested" in metadata:  # a fallback answered
        attributes["sidechat.answered_by.provider"] = metadata.get("provider") or ""
        attributes["sidechat.answered_by.model"] = metadata.get("model") or ""
    span.set_attributes(attributes)
    if outcome == "failed":
        span.set_status(Status(StatusCode.ERROR, str(error.get("type") or "")))


def _present(attributes: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in attributes.items() if value is not None}


def _route_path(scope: Scope) -> str:
    path: str = scope["path"]
    prefix: str = scope.get("root_path", "")
    return path[len(prefix) :] if prefix and path.startswith(prefix + "/") else path


@contextmanager
def _attached(carrier: dict[str, str]) -> Iterator[None]:
    """The caller's trace context made current, for a request that is not traced itself."""
    token = context.attach(propagate.extract(carrier))
    try:
        yield
    finally:
        context.detach(token)


def _carrier(scope: Scope) -> dict[str, str]:
    """The request's headers that the propagators read (`traceparent` and the like)."""
    fields = _fields(propagate.get_global_textmap())
    return {n.decode("latin-1"): v.decode("latin-1") for n, v in scope["headers"] if n in fields}


@lru_cache(maxsize=4)  # the global propagator is set once, if ever: asking it each time builds a set
def _fields(textmap: TextMapPropagator) -> frozenset[bytes]:
    return frozenset(name.lower().encode("latin-1") for name in textmap.fields)


def wants_otlp(environ: Mapping[str, str]) -> bool:
    """Whether the environment asks for spans to go out over OTLP."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporters = environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporters:
        return "otlp" in {name.strip() for name in exporters.split(",")}
    return bool(
        environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    )


def configure_sdk(environ: Mapping[str, str]) -> None:
    """Set up OpenTelemetry's SDK with the OTLP/HTTP exporter, when the environment asks for
    it and no TracerProvider is configured yet (one that is, is the operator's: kept)."""
    if not wants_otlp(environ) or not isinstance(trace.get_tracer_provider(), ProxyTracerProvider):
        return
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ModuleNotFoundError as exc:
        log.warning(
            "tracing: OTLP export is asked for, but %s is not installed (pip install 'sidechat[otel]')",
            exc.name,
        )
        return
    resource = Resource.create()  # OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES count
    if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
        resource = resource.merge(Resource({"service.name": "sidechat"}))
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    endpoint = environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or environ.get(
        "OTEL_EXPORTER_OTLP_ENDPOINT", "http://localhost:4318"
    )
    log.info("tracing: spans go to %s over OTLP/HTTP", endpoint)
