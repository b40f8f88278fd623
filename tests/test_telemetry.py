"""The telemetry seam: every moment reaches every sink, in order, and the sinks the app turns on."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from chat.config import Settings
from chat.logs import LogSink
from chat.metrics import MetricsSink
from chat.providers.base import ProviderError
from chat.services import open_services
from chat.telemetry import (
    RequestRecord,
    Sink,
    Telemetry,
    current_request_id,
    propagators,
    telemetry_for,
    upstream_headers,
)
from chat.tracing import TracingSink, inject_trace_context

pytestmark = pytest.mark.anyio


class Heard(Sink):
    """A sink that notes each moment it hears, and the request id current inside it."""

    def __init__(self, name: str, said: list[tuple[Any, ...]]) -> None:
        self.name = name
        self.said = said

    def opened(self, services: Any) -> None:
        self.said.append((self.name, "opened", services.settings.db))

    @contextmanager
    def request(self, record: RequestRecord) -> Iterator[None]:
        self.said.append((self.name, "request", current_request_id()))
        yield
        self.said.append((self.name, "request ended", record.status))

    @contextmanager
    def db_write(self, what: str) -> Iterator[None]:
        self.said.append((self.name, "db_write", what))
        yield

    def upstream_failed(self, provider: str, error: ProviderError, *, retried: bool) -> None:
        self.said.append((self.name, "upstream_failed", provider, error.type, retried))

    def fell_back(self, provider: str, to: str) -> None:
        self.said.append((self.name, "fell_back", provider, to))


def record(request_id: str = "req-1") -> RequestRecord:
    return RequestRecord(
        {"type": "http", "method": "GET", "path": "/", "headers": []}, request_id, "127.0.0.1"
    )


async def test_every_moment_reaches_every_sink_and_contexts_unwind_in_reverse(tmp_path: Path) -> None:
    said: list[tuple[Any, ...]] = []
    telemetry = Telemetry([Heard("a", said), Heard("b", said)])

    asked = record()
    with telemetry.request(asked):
        asked.status = 204
        with telemetry.db_write("INSERT INTO messages"):
            pass
    telemetry.upstream_failed("openai", ProviderError("overloaded", "busy"), retried=True)
    telemetry.fell_back("openai", "anthropic")
    async with open_services(Settings(db=str(tmp_path / "chat.db"))) as services:
        telemetry.opened(services)

    assert said == [
        ("a", "request", "req-1"),
        ("b", "request", "req-1"),
        ("a", "db_write", "INSERT INTO messages"),
        ("b", "db_write", "INSERT INTO messages"),
        ("b", "request ended", 204),
        ("a", "request ended", 204),
        ("a", "upstream_failed", "openai", "overloaded", True),
        ("b", "upstream_failed", "openai", "overloaded", True),
        ("a", "fell_back", "openai", "anthropic"),
        ("b", "fell_back", "openai", "anthropic"),
        ("a", "opened", str(tmp_path / "chat.db")),
        ("b", "opened", str(tmp_path / "chat.db")),
    ]
    assert current_request_id() is None  # the request's id is gone with it


class Ends(Sink):
    """A sink that hears only the ends of requests and generations."""

    def __init__(self, name: str, said: list[tuple[Any, ...]]) -> None:
        self.name = name
        self.said = said

    def request_ended(self, record: RequestRecord) -> None:
        self.said.append((self.name, "request ended", record.status, current_request_id()))

    def generation_ended(self, generation: Any) -> None:
        self.said.append((self.name, "generation ended", generation))


def test_the_ends_are_heard_after_every_context_has_been_left_even_on_an_error() -> None:
    said: list[tuple[Any, ...]] = []
    telemetry = Telemetry([Ends("a", said), Heard("b", said), Ends("c", said)])

    asked, failed = record(), record("req-2")
    with telemetry.request(asked):
        asked.status = 204
    with pytest.raises(RuntimeError), telemetry.request(failed):
        failed.status = 500
        raise RuntimeError("the handler failed")
    with telemetry.generation("the generation"):
        pass

    assert said == [
        ("b", "request", "req-1"),
        ("b", "request ended", 204),
        ("c", "request ended", 204, "req-1"),  # the request's id is still current for them
        ("a", "request ended", 204, "req-1"),
        ("b", "request", "req-2"),
        ("c", "request ended", 500, "req-2"),  # heard however the request ended
        ("a", "request ended", 500, "req-2"),
        ("c", "generation ended", "the generation"),
        ("a", "generation ended", "the generation"),
    ]
    assert current_request_id() is None


class Swallows(Sink):
    """A sink whose request context makes an error go away, or raises one of its own."""

    def __init__(self, raises: BaseException | None = None) -> None:
        self.raises = raises
        self.left = 0

    @contextmanager
    def request(self, record: RequestRecord) -> Iterator[None]:
        try:
            yield
        except ValueError:
            pass
        finally:
            self.left += 1
            if self.raises is not None:
                raise self.raises


def test_a_moment_passes_errors_through_its_contexts_as_an_exit_stack_does() -> None:
    inner, outer = Swallows(), Swallows()
    with Telemetry([outer, inner]).request(record()):
        raise ValueError("swallowed by the inner context")
    assert (outer.left, inner.left) == (1, 1)

    failing = Swallows(raises=KeyError("raised while leaving"))
    with pytest.raises(KeyError) as raised, Telemetry([Swallows(), failing]).request(record()):
        raise RuntimeError("the first error")
    assert isinstance(raised.value.__context__, RuntimeError)  # the first error is kept, as context
    assert current_request_id() is None


def test_a_sink_that_overrides_nothing_hears_everything_quietly() -> None:
    telemetry = Telemetry([Sink()])
    with telemetry.request(record()), telemetry.db_write("DELETE FROM members"):
        telemetry.upstream_failed("demo", ProviderError("timeout", "slow"), retried=False)
        telemetry.fell_back("demo", "openai")
    assert current_request_id() is None


def test_the_app_turns_on_the_log_the_metrics_and_with_opentelemetry_the_traces(tmp_path: Path) -> None:
    sinks = telemetry_for(Settings(db=str(tmp_path / "chat.db")), []).sinks
    assert [type(sink) for sink in sinks] == [LogSink, MetricsSink, TracingSink]
    assert propagators.count(inject_trace_context) == 1  # however many apps were made


def test_upstream_headers_carry_the_request_id_under_the_providers_name_for_it() -> None:
    with Telemetry().request(record("abc-123")):
        assert upstream_headers("X-Client-Request-Id").get("X-Client-Request-Id") == "abc-123"
        assert "X-Client-Request-Id" not in upstream_headers(None)
    assert "X-Client-Request-Id" not in upstream_headers("X-Client-Request-Id")
