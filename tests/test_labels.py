"""Label values stay in bounded sets: routes, providers, known models, outcomes, error types."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from starlette.routing import Route

from chat.config import Settings
from chat.labels import OTHER, UNMATCHED, Labels, known_models, write_of
from chat.prices import ANY_MODEL, Price, Prices, built_in
from chat.providers import build_providers
from chat.providers.base import ERROR_TYPES
from chat.providers.deadlines import Timeouts
from chat.store import Store
from chat.telemetry import Sink, Telemetry
from chat.transport import upstream_client

pytestmark = pytest.mark.anyio


class Writes(Sink):
    def __init__(self) -> None:
        self.seen: list[str] = []

    @contextmanager
    def db_write(self, what: str) -> Iterator[None]:
        self.seen.append(what)
        yield


async def test_every_write_the_store_makes_names_a_table_of_the_schema(tmp_path: Path) -> None:
    writes = Writes()
    store = await Store.open(str(tmp_path / "chat.db"), telemetry=Telemetry([writes]))
    try:
        conversation = await store.create_conversation("alice", title="t")
        _, reply = await store.start_turn(conversation.id, "hi", metadata={"provider": "demo", "model": "m"})
        await store.checkpoint_message(reply.id, "par")
        await store.finish_message(reply.id, status="completed", content="done", metadata={}, last_event_id=3)
        await store.regenerate_reply(reply.id, metadata={})
        await store.update_conversation("alice", conversation.id, {"title": "new"})
        await store.add_member(conversation.id, "bob")
        await store.remove_member(conversation.id, "bob")
        await store.delete_conversation("alice", conversation.id)
        await store.interrupt_streaming({"type": "interrupted", "message": "x"})
    finally:
        await store.close()

    found = {write_of(sql) for sql in writes.seen}
    assert found == {
        ("insert", "conversations"),
        ("insert", "messages"),
        ("update", "messages"),
        ("update", "conversations"),
        ("insert", "members"),
        ("delete", "members"),
        ("delete", "conversations"),
    }


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        ("  insert or ignore into members (a) VALUES (:a)", ("insert", "members")),
        ('DELETE FROM "messages" WHERE id = :id', ("delete", "messages")),
        ("SELECT 1", (OTHER, OTHER)),
        ("", (OTHER, OTHER)),
    ],
)
def test_a_write_is_its_operation_and_table_never_its_values(sql: str, expected: tuple[str, str]) -> None:
    assert write_of(sql) == expected


async def test_known_models_are_the_defaults_the_chosen_model_and_the_fallbacks() -> None:
    settings = Settings(
        provider="openai",
        model="gpt-4.1",
        openai_api_key="sk-x",
        fallback=(("anthropic", "claude-x"), ("demo", "")),
    )
    async with upstream_client(Timeouts()) as client:
        providers = build_providers(settings, client, Timeouts())
    assert known_models(settings) == {"gpt-4.1", "claude-x"}
    models = known_models(settings, providers)
    assert {"gpt-4.1", "claude-x", "claude-sonnet-4-5", "gemini-2.5-flash", "llama3.2"} <= models
    assert "gpt-4o-mini" not in models  # SIDECHAT_MODEL replaced openai's default

    labels = Labels(settings)
    assert labels.model("claude-sonnet-4-5") == OTHER  # until the providers are known
    labels.know(providers)
    assert labels.model("claude-sonnet-4-5") == "claude-sonnet-4-5"
    assert labels.model("gpt-4.1") == "gpt-4.1"
    assert labels.model("my-own-finetune") == OTHER
    assert labels.model(None) == OTHER
    assert labels.provider("anthropic") == "anthropic"
    assert labels.provider("someone-else") == OTHER


def test_the_price_tables_models_are_known_but_not_its_catch_all() -> None:
    prices = Prices({"openai": {"ft:gpt-4o-mini:acme": Price(1.0, 2.0), ANY_MODEL: Price(0.0, 0.0)}})
    assert known_models(Settings(), prices=prices) == {"ft:gpt-4o-mini:acme"}
    assert "gpt-4o-mini" in known_models(Settings(), prices=built_in())
    labels = Labels(Settings())
    labels.know({}, prices)
    assert (labels.model("ft:gpt-4o-mini:acme"), labels.model(ANY_MODEL)) == ("ft:gpt-4o-mini:acme", OTHER)


def test_outcomes_error_types_methods_and_routes_come_from_their_sets() -> None:
    labels = Labels(Settings(), [Route("/api/messages/{message_id}", lambda r: None)])
    assert [labels.outcome(s) for s in ("completed", "failed", "cancelled", "interrupted")] == [
        "completed",
        "failed",
        "cancelled",
        "interrupted",
    ]
    assert labels.outcome("streaming") == OTHER
    assert labels.outcome(None) == "interrupted"
    assert {labels.error_type(t) for t in ERROR_TYPES} == ERROR_TYPES
    assert labels.error_type("something a provider said") == OTHER
    scope = {"type": "http", "method": "GET", "path": "/api/messages/42", "root_path": "", "headers": []}
    assert labels.route(scope) == "/api/messages/{message_id}"
    assert labels.route({**scope, "path": "/elsewhere/42"}) == UNMATCHED
    assert labels.method({**scope, "method": "BREW"}) == OTHER
