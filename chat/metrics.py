"""The metrics: what `GET /metrics` tells a Prometheus (`chat.metrics_page` serves it).

Every name starts with `sidechat_`; the list, with what each means, is in the
README's Operations section and in each metric's help text below.

Deliberate choices:
- A registry of the app's own, never prometheus-client's global one: one process
  may run several apps (the tests do), and each must count only its own.
- Label values only from bounded sets (`chat.labels`): a model a user names that
  this process does not know is `other`, a path is its route template.
- Nothing is counted per token. A reply's deltas and tokens are added once, when
  it ends; the gauges (running replies, subscribers, replies waiting for their
  final write) are read from the services when scraped, not kept up to date.
- `process_*` (CPU, memory, open files) come along, under the names every
  Prometheus client gives them, so the usual dashboards find them.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector
from starlette.routing import BaseRoute

from .labels import STORAGE_FAILED, Labels, write_of
from .telemetry import RequestRecord, Sink

if TYPE_CHECKING:
    from .config import Settings
    from .generations import Generation
    from .providers.base import ProviderError
    from .services import Services

# Seconds. A first token comes in tens of milliseconds from a small local model and in
# tens of seconds from a reasoning model; a reply takes from a moment to many minutes.
TTFT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 20.0, 30.0, 60.0)
DURATION_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0)
DB_WRITE_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0)

MODEL = ("provider", "model")


class Metrics:
    """The app's registry and every metric in it."""

    def __init__(self) -> None:
        self.registry = registry = CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=registry)

        def counter(name: str, doc: str, labels: tuple[str, ...]) -> Counter:
            return Counter(f"sidechat_{name}", doc, labels, registry=registry)

        def gauge(name: str, doc: str) -> Gauge:
            return Gauge(f"sidechat_{name}", doc, registry=registry)

        def histogram(name: str, doc: str, labels: tuple[str, ...], buckets: tuple[float, ...]) -> Histogram:
            return Histogram(f"sidechat_{name}", doc, labels, buckets=buckets, registry=registry)

        self.requests = counter(
            "requests",
            "HTTP requests by method, route template and status, counted as they end",
            ("method", "route", "status"),
        )
        self.running = gauge("generations_running", "Replies being generated in this process")
        self.subscribers = gauge(
            "subscribers_connected", "Clients following a reply or a live feed in this process"
        )
        self.waiting = gauge(
            "replies_waiting_for_storage", "Finished replies held in memory: the database refused their end"
        )
        self.generations = counter(
            "generations",
            "Replies by the provider and model that answered and how they ended",
            (*MODEL, "outcome"),
        )
        self.ttft = histogram(
            "time_to_first_token_seconds", "From the start of a reply to its first text", MODEL, TTFT_BUCKETS
        )
        self.duration = histogram(
            "generation_duration_seconds",
            "From the start of a reply to its end",
            (*MODEL, "outcome"),
            DURATION_BUCKETS,
        )
        self.deltas = counter("deltas_relayed", "Text deltas relayed to clients (token events)", MODEL)
        self.input_tokens = counter("input_tokens", "Input tokens the providers reported", MODEL)
        self.output_tokens = counter("output_tokens", "Output tokens the providers reported", MODEL)
        self.cached_tokens = counter(
            "cached_input_tokens", "Input tokens the providers read from their prompt cache", MODEL
        )
        self.cost = counter("cost_usd", "What the replies cost, in USD, at the price table's prices", MODEL)
        self.upstream_errors = counter(
            "upstream_errors", "Failed provider calls (each attempt), by error type", ("provider", "type")
        )
        self.retries = counter(
            "upstream_retries", "Provider calls tried again after a failure", ("provider",)
        )
        self.fallbacks = counter(
            "fallbacks", "Replies handed to the next provider of SIDECHAT_FALLBACK", ("provider", "to")
        )
        self.db_writes = histogram(
            "db_write_seconds",
            "Database writes by operation and table",
            ("operation", "table"),
            DB_WRITE_BUCKETS,
        )
        self.db_write_errors = counter(
            "db_write_errors", "Database writes that failed", ("operation", "table")
        )


class MetricsSink(Sink):
    def __init__(self, settings: Settings, routes: list[BaseRoute] | None = None) -> None:
        self.settings = settings
        self.labels = Labels(settings, routes)
        self.metrics = Metrics()

    @property
    def registry(self) -> CollectorRegistry:
        return self.metrics.registry

    def opened(self, services: Services) -> None:
        self.labels.know(services.providers, services.generations.prices)
        m, generations, broker = self.metrics, services.generations, services.broker
        m.running.set_function(lambda: generations.running)
        m.subscribers.set_function(lambda: broker.subscribers)
        m.waiting.set_function(lambda: generations.keeper.pending)

    def request_ended(self, record: RequestRecord) -> None:
        scope, labels = record.scope, self.labels
        status = "none" if record.status is None else str(record.status)  # none: no response began
        self.metrics.requests.labels(labels.method(scope), labels.route(scope), status).inc()

    def generation_ended(self, generation: Generation) -> None:
        row = generation.final_row()
        status = STORAGE_FAILED if generation.lost else row.status if row else None
        self._ended(generation, status, row.metadata if row else generation.metadata)

    def _ended(self, generation: Generation, status: str | None, metadata: dict[str, Any]) -> None:
        m, labels = self.metrics, self.labels
        who = (labels.provider(metadata.get("provider")), labels.model(metadata.get("model")))
        outcome = labels.outcome(status)
        m.generations.labels(*who, outcome).inc()
        if (ttft_ms := metadata.get("ttft_ms")) is not None:
            m.ttft.labels(*who).observe(ttft_ms / 1000)
        if (duration_ms := metadata.get("duration_ms")) is not None:
            m.duration.labels(*who, outcome).observe(duration_ms / 1000)
        if generation.token_count:
            m.deltas.labels(*who).inc(generation.token_count)
        usage = metadata.get("usage") or {}
        for counter, key in (
            (m.input_tokens, "input_tokens"),
            (m.output_tokens, "output_tokens"),
            (m.cached_tokens, "cached_input_tokens"),
        ):
            if isinstance(tokens := usage.get(key), int) and tokens > 0:
                counter.labels(*who).inc(tokens)
        if isinstance(cost := metadata.get("cost_usd"), int | float) and cost > 0:
            m.cost.labels(*who).inc(cost)

    @contextmanager
    def db_write(self, what: str) -> Iterator[None]:
        started = time.perf_counter()
        operation, table = write_of(what)
        try:
            yield
        except Exception:
            self.metrics.db_write_errors.labels(operation, table).inc()
            raise
        finally:
            self.metrics.db_writes.labels(operation, table).observe(time.perf_counter() - started)

    def upstream_failed(self, provider: str, error: ProviderError, *, retried: bool) -> None:
        name = self.labels.provider(provider)
        self.metrics.upstream_errors.labels(name, self.labels.error_type(error.type)).inc()
        if retried:
            self.metrics.retries.labels(name).inc()

    def fell_back(self, provider: str, to: str) -> None:
        self.metrics.fallbacks.labels(self.labels.provider(provider), self.labels.provider(to)).inc()
