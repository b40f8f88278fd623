"""`/metrics` on a real server: what real replies do to it, bounded labels, who may read it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from chat.app import create_app
from chat.broker import Broker
from chat.config import Settings
from chat.keeping import Keeper
from chat.metrics import MetricsSink
from chat.providers.base import ChatRequest, Turn
from chat.providers.demo import DemoProvider
from chat.running import Generations
from chat.telemetry import Telemetry
from tests.conftest import settings_for
from tests.fakeupstream import FakeUpstream, Reply, openai_chunk, openai_reply, sse
from tests.live import EventReader, chat_stream, serve, until
from tests.test_keeping import Refusing

pytestmark = pytest.mark.anyio

ERROR_500 = Reply(
    [b'{"error": {"message": "The server had an error", "type": "server_error"}}'],
    status=500,
    headers={"content-type": "application/json"},
)


class Scrape:
    """One reading of /metrics, parsed with prometheus-client's own parser."""

    def __init__(self, text: str) -> None:
        self.samples: list[Sample] = [s for f in text_string_to_metric_families(text) for s in f.samples]

    def value(self, name: str, **labels: str) -> float:
        """The sum of `name`'s samples whose labels include `labels`; 0 when there are none."""
        return sum(s.value for s in self.samples if s.name == name and labels.items() <= s.labels.items())

    def series(self, name: str) -> list[dict[str, str]]:
        return [s.labels for s in self.samples if s.name == name]


async def scrape(client: httpx.AsyncClient, **headers: str) -> Scrape:
    response = await client.get("/metrics", headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return Scrape(response.text)


async def settles(client: httpx.AsyncClient, name: str, value: float, **labels: str) -> Scrape:
    """Scrape until `name{labels}` reads `value` (a reply is counted as its task ends, just
    after its terminal event went out): the last scrape."""

    async def read() -> Scrape | None:
        now = await scrape(client)
        return now if now.value(name, **labels) == value else None

    found: Scrape = await until(read, what=f"{name}{labels} == {value}")
    return found


@pytest.fixture
async def served(upstream: FakeUpstream, tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    """sidechat on the fake upstream, retrying a failure once, with a rate limit out of the way."""
    settings = settings_for(upstream, tmp_path, retry_attempts=2, rate_limit=(1000, 60.0))
    async with serve(settings) as url, httpx.AsyncClient(base_url=url, timeout=10) as http:
        yield http


async def test_a_completed_reply_counts_its_request_tokens_timings_and_writes(
    served: httpx.AsyncClient, upstream: FakeUpstream
) -> None:
    before = await scrape(served)
    assert before.value("sidechat_generations_total") == 0  # an app counts only its own
    upstream.add(Reply(openai_reply("Hel", "lo", usage=(12, 2))))

    transcript = await chat_stream(served, {"message": "hi"})
    assert transcript.terminal.event == "done"

    model = {"provider": "openai", "model": "gpt-4o-mini"}
    after = await settles(served, "sidechat_generations_total", 1, **model, outcome="completed")
    after = await settles(
        served, "sidechat_requests_total", 1, method="POST", route="/api/chat/stream", status="200"
    )
    assert after.value("sidechat_generations_total") == 1
    assert after.value("sidechat_deltas_relayed_total", **model) == 2
    assert after.value("sidechat_input_tokens_total", **model) == 12
    assert after.value("sidechat_output_tokens_total", **model) == 2
    assert after.value("sidechat_cost_usd_total", **model) == pytest.approx(
        transcript.terminal.data["cost_usd"]
    )
    assert transcript.terminal.data["cost_usd"] > 0
    assert after.value("sidechat_time_to_first_token_seconds_count", **model) == 1
    assert after.value("sidechat_generation_duration_seconds_count", **model, outcome="completed") == 1
    assert after.value("sidechat_time_to_first_token_seconds_bucket", **model, le="60.0") == 1
    assert after.value("sidechat_db_write_seconds_count", operation="insert", table="messages") >= 1
    assert after.value("sidechat_db_write_seconds_count", operation="update", table="messages") >= 1
    assert after.value("sidechat_db_write_errors_total") == 0
    assert after.value("sidechat_upstream_errors_total") == 0
    assert after.value("sidechat_generations_running") == 0
    assert after.value("process_resident_memory_bytes") > 0


async def test_tokens_read_from_the_prompt_cache_are_counted_apart(
    served: httpx.AsyncClient, upstream: FakeUpstream
) -> None:
    usage = {"prompt_tokens": 100, "completion_tokens": 1, "prompt_tokens_details": {"cached_tokens": 80}}
    chunk = {"id": "c", "object": "chat.completion.chunk", "choices": [], "usage": usage}
    upstream.add(Reply([openai_chunk("ok"), openai_chunk(finish_reason="stop"), sse(chunk), sse("[DONE]")]))

    assert (await chat_stream(served, {"message": "hi"})).terminal.event == "done"

    after = await settles(served, "sidechat_generations_total", 1, outcome="completed")
    assert after.value("sidechat_input_tokens_total", provider="openai") == 100
    assert after.value("sidechat_cached_input_tokens_total", provider="openai") == 80


async def test_a_failed_reply_counts_each_upstream_error_and_the_retry(
    served: httpx.AsyncClient, upstream: FakeUpstream
) -> None:
    upstream.add(ERROR_500, ERROR_500)  # the first try and the one retry

    transcript = await chat_stream(served, {"message": "hi"})
    assert transcript.terminal.event == "error"

    after = await settles(served, "sidechat_generations_total", 1, provider="openai", outcome="failed")
    assert after.value("sidechat_upstream_errors_total", provider="openai", type="upstream_error") == 2
    assert after.value("sidechat_upstream_retries_total", provider="openai") == 1
    assert after.value("sidechat_time_to_first_token_seconds_count") == 0
    assert after.value("sidechat_generation_duration_seconds_count", outcome="failed") == 1
    assert after.value("sidechat_deltas_relayed_total") == 0


async def test_an_error_mid_stream_fails_the_reply_with_what_was_relayed(
    served: httpx.AsyncClient, upstream: FakeUpstream
) -> None:
    upstream.add(Reply([openai_chunk("half"), sse({"error": {"message": "boom", "type": "server_error"}})]))

    transcript = await chat_stream(served, {"message": "hi"})
    assert transcript.names == ["start", "token", "error"]

    after = await settles(served, "sidechat_generations_total", 1, provider="openai", outcome="failed")
    assert after.value("sidechat_upstream_errors_total", provider="openai") == 1  # after a token: no retry
    assert after.value("sidechat_upstream_retries_total") == 0
    assert after.value("sidechat_deltas_relayed_total", provider="openai") == 1
    assert after.value("sidechat_time_to_first_token_seconds_count", provider="openai") == 1


async def test_a_cancelled_reply_and_the_gauges_while_it_runs(
    served: httpx.AsyncClient, upstream: FakeUpstream
) -> None:
    held = asyncio.Event()
    upstream.add(Reply([openai_chunk("first"), held, *openai_reply(" never")]))

    async with served.stream("POST", "/api/chat/stream", json={"message": "hi"}) as response:
        reader = EventReader(response)
        head = await reader.read(until=2)
        assert head.names == ["start", "token"]
        running = await scrape(served)
        assert running.value("sidechat_generations_running") == 1
        assert running.value("sidechat_subscribers_connected") == 1
        message_id = head.events[0].data["message_id"]
        assert (await served.post(f"/api/messages/{message_id}/cancel")).status_code == 200
        rest = await reader.read()
    assert rest.terminal.data["finish_reason"] == "cancelled"

    after = await settles(served, "sidechat_generations_total", 1, provider="openai", outcome="cancelled")
    assert after.value("sidechat_deltas_relayed_total", provider="openai") == 1
    after = await settles(served, "sidechat_subscribers_connected", 0)
    assert after.value("sidechat_generations_running") == 0
    assert (
        after.value("sidechat_requests_total", route="/api/messages/{message_id}/cancel", status="200") == 1
    )


async def test_model_names_a_user_chooses_become_other_not_new_series(
    served: httpx.AsyncClient, upstream: FakeUpstream
) -> None:
    count = 25
    for n in range(count):
        upstream.add(Reply(openai_reply("ok")))
        transcript = await chat_stream(served, {"message": "hi", "model": f"chosen-by-a-user-{n}"})
        assert transcript.terminal.event == "done"

    after = await settles(served, "sidechat_generations_total", count, model="other")
    for name in (
        "sidechat_generations_total",
        "sidechat_deltas_relayed_total",
        "sidechat_output_tokens_total",
    ):
        assert after.series(name) == [
            {
                "provider": "openai",
                "model": "other",
                **({"outcome": "completed"} if "generations" in name else {}),
            }
        ]
    assert len(after.series("sidechat_time_to_first_token_seconds_count")) == 1
    assert "chosen-by-a-user" not in (await served.get("/metrics")).text


async def test_a_path_is_its_route_template_and_strange_methods_and_paths_are_bounded(
    served: httpx.AsyncClient,
) -> None:
    for n, method in enumerate(("PROPFIND", "MKCOL", "REPORT", "PURGE", "LOCK")):  # ones HTTP parsers know
        assert (await served.get(f"/api/conversations/{1000 + n}")).status_code == 404
        assert (await served.get(f"/no/such/path/{n}")).status_code == 404
        assert (await served.request(method, "/api/conversations")).status_code == 405

    after = await settles(served, "sidechat_requests_total", 5, route="unmatched", status="404")
    assert (
        after.value("sidechat_requests_total", method="GET", route="/api/conversations/{conversation_id}")
        == 5
    )
    assert (
        after.value("sidechat_requests_total", method="other", route="/api/conversations", status="405") == 5
    )
    routes = {labels["route"] for labels in after.series("sidechat_requests_total")} - {"/metrics"}
    assert routes == {"/api/conversations/{conversation_id}", "unmatched", "/api/conversations"}


async def test_every_app_has_a_registry_of_its_own(tmp_path: Path) -> None:
    one, two = (create_app(Settings(db=str(tmp_path / f"{n}.db"))) for n in (1, 2))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=one), base_url="http://127.0.0.1") as http:
        assert (await http.get("/no/such")).status_code == 404
        first = Scrape((await http.get("/metrics")).text)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=two), base_url="http://127.0.0.1") as http:
        second = Scrape((await http.get("/metrics")).text)
    assert first.value("sidechat_requests_total", route="unmatched") == 1
    assert second.value("sidechat_requests_total", route="unmatched") == 0


# -- who may read it -----------------------------------------------------------------------


async def test_a_metrics_token_is_needed_when_set_and_an_api_token_does_not_open_it(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    settings = settings_for(
        upstream, tmp_path, metrics_token="scrape-secret", api_tokens=(("api-secret", "alice"),)
    )
    async with serve(settings) as url, httpx.AsyncClient(base_url=url) as http:
        missing = await http.get("/metrics")
        wrong = await http.get("/metrics", headers={"Authorization": "Bearer scrape-secreT"})
        api = await http.get("/metrics", headers={"Authorization": "Bearer api-secret"})
        basic = await http.get("/metrics", auth=("x", "scrape-secret"))
        right = await http.get("/metrics", headers={"Authorization": "Bearer scrape-secret"})
        api_with_scrape_token = await http.get(
            "/api/conversations", headers={"Authorization": "Bearer scrape-secret"}
        )

    for refused in (missing, wrong, api, basic):
        assert refused.status_code == 401
        assert refused.json()["error"]["type"] == "unauthorized"
        assert "SIDECHAT_METRICS_TOKEN" in refused.json()["error"]["message"]
        assert refused.headers["www-authenticate"].startswith("Bearer")
    assert 'error="invalid_token"' in wrong.headers["www-authenticate"]
    assert "invalid_token" not in missing.headers["www-authenticate"]
    assert right.status_code == 200
    assert Scrape(right.text).value("sidechat_requests_total", route="/metrics", status="401") == 4
    assert api_with_scrape_token.status_code == 401  # nor does the scrape token open the API


async def test_without_a_token_only_callers_on_this_machine_may_read_it(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    settings = settings_for(upstream, tmp_path, api_tokens=(("api-secret", "alice"),))
    async with serve(settings) as url, httpx.AsyncClient(base_url=url) as http:
        local = await http.get("/metrics")  # no API token needed: it is not the API
        gated = await http.get("/api/conversations")
        proxied = [
            await http.get("/metrics", headers={name: "203.0.113.9"})
            for name in ("X-Forwarded-For", "X-Real-IP", "Forwarded")
        ]
    assert local.status_code == 200
    assert gated.status_code == 401
    for refused in proxied:
        assert refused.status_code == 403
        assert refused.json()["error"]["type"] == "forbidden"
        assert "SIDECHAT_METRICS_TOKEN" in refused.json()["error"]["message"]


@pytest.mark.parametrize(
    ("token", "presented", "status"),
    [(None, None, 403), ("scrape-secret", None, 401), ("scrape-secret", "scrape-secret", 200)],
)
async def test_a_peer_on_another_machine_needs_the_token(
    tmp_path: Path, token: str | None, presented: str | None, status: int
) -> None:
    app = create_app(Settings(db=str(tmp_path / "chat.db"), host="0.0.0.0", metrics_token=token))
    transport = httpx.ASGITransport(app=app, client=("198.51.100.7", 40000))
    headers = {"Authorization": f"Bearer {presented}"} if presented else {}
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as http:
        response = await http.get("/metrics", headers=headers)
    assert response.status_code == status


@pytest.mark.parametrize(("token", "status"), [(None, 400), ("scrape-secret", 200)])
async def test_a_foreign_host_is_refused_unless_the_token_guards_it(
    upstream: FakeUpstream, tmp_path: Path, token: str | None, status: int
) -> None:
    """A DNS-rebinding page has the browser send its own Host; it cannot send the token."""
    async with serve(settings_for(upstream, tmp_path, metrics_token=token)) as url:
        async with httpx.AsyncClient(base_url=url) as http:
            headers = {"Host": "rebound.example", "Authorization": f"Bearer {token or 'guess'}"}
            response = await http.get("/metrics", headers=headers)
    assert response.status_code == status


async def test_it_is_served_under_a_path_prefix_and_only_by_get(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    async with serve(settings_for(upstream, tmp_path), prefix="/chat") as url:
        async with httpx.AsyncClient(base_url=url) as http:
            assert (await http.get("/healthz")).status_code == 200
            posted = await http.post("/metrics")
            page = await scrape(http)
            document = (await http.get("/openapi.json")).json()
    assert posted.status_code == 405
    assert page.value("sidechat_requests_total", route="/healthz", status="200") == 1
    assert "/metrics" not in document["paths"]


async def test_prometheus_may_ask_for_openmetrics(served: httpx.AsyncClient) -> None:
    response = await served.get("/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    assert response.headers["content-type"].startswith("application/openmetrics-text")
    assert response.text.endswith("# EOF\n")


async def test_a_reply_whose_end_the_database_never_took_is_counted_as_such(tmp_path: Path) -> None:
    sink = MetricsSink(Settings())
    store = await Refusing.open(str(tmp_path / "chat.db"))
    try:
        keeper = Keeper(store, checkpoint_seconds=0)
        generations = Generations(Broker(retention=30), keeper, telemetry=Telemetry([sink]))
        conversation = await store.create_conversation("local")
        asked, reply = await store.start_turn(conversation.id, "hi", metadata={"provider": "demo"})
        request = ChatRequest(model="demo-1", turns=[Turn("user", "hi")])
        generation = generations.start(DemoProvider(delay=0), request, reply, user_message_id=asked.id)
        await until(lambda: keeper.pending == 1, what="the final write to be refused")
        keeper.give_up()
        await generation.finished.wait()
    finally:
        await store.close()
    assert generation.lost == "the disk is full"
    counted = {
        s.labels["outcome"]: s.value
        for family in text_string_to_metric_families(generate_latest(sink.registry).decode())
        if family.name == "sidechat_generations"
        for s in family.samples
        if s.name == "sidechat_generations_total"
    }
    assert counted == {"storage_failed": 1.0}
