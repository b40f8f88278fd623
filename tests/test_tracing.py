"""Traces on a real server: the span tree of a chat, trace context from the client and to the
provider, the SDK set up from OTEL_* alone, and nothing at all without OpenTelemetry."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from chat.tracing import wants_otlp
from tests.conftest import settings_for
from tests.fakeupstream import FakeUpstream, Reply, openai_reply
from tests.live import chat_stream, serve, until

pytestmark = pytest.mark.anyio
ROOT = Path(__file__).resolve().parent.parent
CLIENT_TRACE = "0af7651916cd43dd8448eb211c80319c"
CLIENT_SPAN = "b7ad6b7169203331"
TRACEPARENT = f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"


@pytest.fixture(scope="module")
def exported() -> Iterator[InMemorySpanExporter]:
    """Every span of this module's servers, in memory. OpenTelemetry lets a process set its
    global provider once: set it if no one has, else hang the exporter on the one there."""
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        trace.set_tracer_provider(TracerProvider())
        provider = trace.get_tracer_provider()
    assert isinstance(provider, TracerProvider)
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield exporter
    exporter.shutdown()  # the processor stays on the provider; it keeps nothing from now on


@pytest.fixture
def spans(exported: InMemorySpanExporter) -> InMemorySpanExporter:
    exported.clear()
    return exported


def named(spans: InMemorySpanExporter, name: str) -> list[ReadableSpan]:
    return [s for s in spans.get_finished_spans() if s.name == name]


def parent_of(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


async def test_a_chat_is_a_request_span_with_the_upstream_call_and_the_writes_under_it(
    spans: InMemorySpanExporter, upstream: FakeUpstream, tmp_path: Path
) -> None:
    upstream.add(Reply(openai_reply("Hel", "lo", usage=(12, 2))))
    async with serve(settings_for(upstream, tmp_path)) as url, httpx.AsyncClient(base_url=url) as http:
        transcript = await chat_stream(http, {"message": "hi"})
        assert transcript.terminal.event == "done"
        await until(lambda: named(spans, "POST /api/chat/stream") and named(spans, "chat gpt-4o-mini"))

    (request,) = named(spans, "POST /api/chat/stream")
    (call,) = named(spans, "chat gpt-4o-mini")
    assert request.kind is SpanKind.SERVER and request.parent is None
    assert request.attributes is not None and call.attributes is not None
    assert request.attributes["http.route"] == "/api/chat/stream"
    assert request.attributes["http.response.status_code"] == 200
    assert request.attributes["sidechat.request_id"] == transcript.headers["x-request-id"]

    assert call.kind is SpanKind.CLIENT
    assert call.context.trace_id == request.context.trace_id
    assert parent_of(call) == request.context.span_id
    assert call.attributes["gen_ai.provider.name"] == "openai"
    assert call.attributes["gen_ai.request.model"] == "gpt-4o-mini"
    assert call.attributes["sidechat.outcome"] == "completed"
    assert call.attributes["sidechat.deltas"] == 2
    assert call.attributes["gen_ai.usage.output_tokens"] == 2
    assert call.attributes["gen_ai.usage.input_tokens"] == 12
    assert call.attributes["sidechat.ttft_ms"] == transcript.terminal.data["ttft_ms"]
    assert call.attributes["gen_ai.response.finish_reasons"] == ("stop",)

    (sent,) = upstream.requests  # the provider was told the upstream call's span, as its parent
    assert sent.headers["traceparent"].split("-")[:3] == [
        "00",
        f"{call.context.trace_id:032x}",
        f"{call.context.span_id:016x}",
    ]
    assert "baggage" not in sent.headers

    writes = [s for s in spans.get_finished_spans() if s.attributes and "db.operation.name" in s.attributes]
    startup = [s for s in writes if s.parent is None]  # rows a crash left streaming become interrupted
    assert [s.name for s in startup] == ["UPDATE messages"]
    writes = [s for s in writes if s.parent is not None]
    turn = [s for s in writes if parent_of(s) == request.context.span_id]
    end = [s for s in writes if parent_of(s) == call.context.span_id]
    assert [s.name for s in turn] == ["INSERT conversations", "INSERT messages"]
    assert [s.name for s in end] == ["UPDATE messages"]  # the reply's end, stored from its task
    assert all(s.kind is SpanKind.CLIENT and s.context.trace_id == request.context.trace_id for s in writes)
    (insert,) = [s for s in turn if s.name == "INSERT messages"]
    assert insert.attributes == {
        "db.system.name": "sqlite",
        "db.operation.name": "INSERT",
        "db.collection.name": "messages",
    }


async def test_a_client_traceparent_makes_the_request_span_its_child(
    spans: InMemorySpanExporter, upstream: FakeUpstream, tmp_path: Path
) -> None:
    upstream.add(Reply(openai_reply("ok")))
    async with serve(settings_for(upstream, tmp_path)) as url, httpx.AsyncClient(base_url=url) as http:
        headers = {"traceparent": TRACEPARENT, "baggage": "secret=for-us-only"}
        transcript = await chat_stream(http, {"message": "hi"}, headers=headers)
        assert transcript.terminal.event == "done"
        await until(lambda: named(spans, "chat gpt-4o-mini"))

    (request,) = named(spans, "POST /api/chat/stream")
    (call,) = named(spans, "chat gpt-4o-mini")
    assert f"{request.context.trace_id:032x}" == CLIENT_TRACE
    assert parent_of(request) == int(CLIENT_SPAN, 16)
    assert request.parent is not None and request.parent.is_remote
    assert parent_of(call) == request.context.span_id
    (sent,) = upstream.requests
    assert sent.headers["traceparent"].startswith(f"00-{CLIENT_TRACE}-{call.context.span_id:016x}")
    assert "baggage" not in sent.headers  # the caller's baggage is not the provider's business


async def test_a_failed_call_is_an_error_span_with_each_failure_as_an_event(
    spans: InMemorySpanExporter, upstream: FakeUpstream, tmp_path: Path
) -> None:
    body = b'{"error": {"message": "no", "type": "server_error"}}'
    upstream.add(*[Reply([body], status=500, headers={"content-type": "application/json"})] * 2)
    async with serve(settings_for(upstream, tmp_path, retry_attempts=2)) as url:
        async with httpx.AsyncClient(base_url=url) as http:
            transcript = await chat_stream(http, {"message": "hi"})
            assert transcript.terminal.event == "error"
            await until(lambda: named(spans, "chat gpt-4o-mini"))

    (call,) = named(spans, "chat gpt-4o-mini")
    assert call.status.status_code is StatusCode.ERROR
    assert call.attributes is not None
    assert call.attributes["sidechat.outcome"] == "failed"
    assert call.attributes["error.type"] == "upstream_error"
    assert "sidechat.ttft_ms" not in call.attributes
    failures = [e for e in call.events if e.name == "upstream_failed"]
    assert [(e.attributes or {}).get("sidechat.retried") for e in failures] == [True, False]
    assert all((e.attributes or {}).get("http.response.status_code") == 500 for e in failures)
    traceparents = {seen.headers["traceparent"] for seen in upstream.requests}
    assert [t.split("-")[1:3] for t in traceparents] == [
        [f"{call.context.trace_id:032x}", f"{call.context.span_id:016x}"]
    ]


async def test_names_stay_bounded_and_the_probes_and_metrics_are_not_traced(
    spans: InMemorySpanExporter, upstream: FakeUpstream, tmp_path: Path
) -> None:
    upstream.add(Reply(openai_reply("ok")))
    async with serve(settings_for(upstream, tmp_path), prefix="/chat") as url:
        async with httpx.AsyncClient(base_url=url) as http:
            for path in ("/healthz", "/readyz", "/metrics", "/api/conversations/12345", "/no/such/4242"):
                await http.get(path)
            transcript = await chat_stream(http, {"message": "hi", "model": "a-model-a-user-typed"})
            assert transcript.terminal.event == "done"
            await until(lambda: named(spans, "chat"))

    names = {s.name for s in spans.get_finished_spans() if s.kind is SpanKind.SERVER}
    assert names == {"GET /api/conversations/{conversation_id}", "GET", "POST /api/chat/stream"}
    (call,) = named(spans, "chat")
    assert call.attributes is not None and call.attributes["gen_ai.request.model"] == "a-model-a-user-typed"
    (conversation,) = named(spans, "GET /api/conversations/{conversation_id}")
    assert (
        conversation.attributes is not None
        and conversation.attributes["url.path"] == "/chat/api/conversations/12345"
    )


@pytest.mark.parametrize(
    ("environ", "wanted"),
    [
        ({}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, True),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"}, True),
        ({"OTEL_TRACES_EXPORTER": "otlp"}, True),
        ({"OTEL_TRACES_EXPORTER": "console,otlp"}, True),
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, False),
        ({"OTEL_SDK_DISABLED": "true", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, False),
    ],
)
def test_which_environments_ask_for_otlp(environ: dict[str, str], wanted: bool) -> None:
    assert wants_otlp(environ) is wanted


def run_python(parts: list[str], tmp_path: Path) -> str:
    """The script of `parts` in a Python process of its own (OpenTelemetry's provider is set
    once per process, and an import refused must be refused from the start); its output."""
    done = subprocess.run(
        [sys.executable, "-c", "\n".join(textwrap.dedent(part) for part in parts)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "TMP": str(tmp_path)},
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


SERVE_A_CHAT = """
    import asyncio, httpx, sys
    from chat.config import Settings
    from tests.live import chat_stream, serve

    async def chat(db):
        async with serve(Settings(db=db, demo_delay=0.001)) as url:
            async with httpx.AsyncClient(base_url=url) as http:
                transcript = await chat_stream(http, {"message": "hi"})
                assert transcript.terminal.event == "done", transcript.names
"""


def test_without_opentelemetry_nothing_of_it_is_loaded_and_a_chat_works(tmp_path: Path) -> None:
    script = [
        """
        import sys

        class NoOpenTelemetry:  # as if the otel extra were not installed
            def find_spec(self, name, path=None, target=None):
                if name == "opentelemetry" or name.startswith("opentelemetry."):
                    raise ModuleNotFoundError(f"No module named {name!r}", name=name)
                return None

        sys.meta_path.insert(0, NoOpenTelemetry())
        """,
        SERVE_A_CHAT,
        f"""
        asyncio.run(chat({str(tmp_path / "chat.db")!r}))
        from app import create_app
        from chat import telemetry
        sinks = [type(sink).__name__ for sink in create_app(Settings(db=":memory:")).telemetry.sinks]
        loaded = sorted(name for name in sys.modules if name.startswith("opentelemetry") or name == "chat.tracing")
        print(sinks, loaded, telemetry.propagators)
        """,
    ]
    assert run_python(script, tmp_path).split() == ["['LogSink',", "'MetricsSink']", "[]", "[]"]


def test_with_no_provider_configured_no_span_is_made_but_the_callers_trace_goes_upstream(
    tmp_path: Path,
) -> None:
    script = [
        f"""
        import asyncio, httpx
        from chat.tracing import TracingSink
        from tests.conftest import settings_for
        from tests.fakeupstream import FakeUpstream, Reply, openai_reply
        from tests.live import chat_stream, serve

        async def main():
            async with FakeUpstream(Reply(openai_reply("ok")), Reply(openai_reply("ok"))) as upstream:
                async with serve(settings_for(upstream, Path({str(tmp_path)!r}))) as url:
                    async with httpx.AsyncClient(base_url=url) as http:
                        await chat_stream(http, {{"message": "hi"}}, headers={{"traceparent": {TRACEPARENT!r}}})
                        await chat_stream(http, {{"message": "hi"}})
            print(TracingSink.recording(), [seen.headers.get("traceparent") for seen in upstream.requests])

        from pathlib import Path
        asyncio.run(main())
        """,
    ]
    assert run_python(script, tmp_path).strip() == f"False [{TRACEPARENT!r}, None]"


def test_an_otlp_endpoint_alone_sets_up_the_sdk_and_spans_reach_it(tmp_path: Path) -> None:
    script = [
        SERVE_A_CHAT,
        f"""
        import os
        from opentelemetry import trace
        from tests.fakeupstream import FakeUpstream, Reply

        async def main():
            accepted = Reply([], headers={{"content-type": "application/x-protobuf"}})
            async with FakeUpstream(*[accepted] * 10) as collector:
                os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"] = collector.url
                os.environ["OTEL_SERVICE_NAME"] = "chat-sidecar"
                await chat({str(tmp_path / "chat.db")!r})
                provider = trace.get_tracer_provider()
                await asyncio.to_thread(provider.shutdown)  # exports what is left
                posted = [seen for seen in collector.requests if seen.method == "POST"]
                print(type(provider).__module__, {{seen.path for seen in posted}})
                print(b"chat-sidecar" in b"".join(seen.body for seen in posted))
                print(b"POST /api/chat/stream" in b"".join(seen.body for seen in posted))

        asyncio.run(main())
        """,
    ]
    assert run_python(script, tmp_path).split("\n")[:3] == [
        "opentelemetry.sdk.trace {'/v1/traces'}",
        "True",
        "True",
    ]


async def test_a_provider_the_operator_configured_is_kept(
    spans: InMemorySpanExporter, upstream: FakeUpstream, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    configured = trace.get_tracer_provider()
    async with serve(settings_for(upstream, tmp_path)) as url, httpx.AsyncClient(base_url=url) as http:
        assert (await http.get("/api/conversations")).status_code == 200
        await until(lambda: named(spans, "GET /api/conversations"))
    assert trace.get_tracer_provider() is configured
