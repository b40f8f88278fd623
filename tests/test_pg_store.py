"""What only the PostgreSQL store has: its schema's version, its start-up errors, a server
that goes away and comes back, writers racing side by side. (Everything the two stores
share is tested on both by the `store` fixture: tests/test_store*.py.)"""

from __future__ import annotations

import asyncio
import inspect
import re
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import asyncpg
import pytest

from chat.config import Settings
from chat.errors import StartupError
from chat.keeping import Keeper
from chat.pg_database import LATEST, apply_schema, reason_of
from chat.pg_readiness import PgReadiness
from chat.pg_store import PgStore
from chat.pg_usage import PgUsage
from chat.readiness import Readiness
from chat.resources import resource
from chat.store import KeyTaken, NotLatest, StorageFailed, Store
from chat.stores import is_postgres, open_database, open_readiness, shown
from chat.telemetry import Sink, Telemetry
from chat.upgrades import TooNew
from tests.live import until
from tests.postgres import Postgres, postgres_server
from tests.processes import free_port

pytestmark = pytest.mark.anyio

STAMP = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z")


@pytest.fixture
async def url(postgres: Postgres) -> object:
    made = postgres.database()
    yield made
    postgres.drop(made)


async def scalar(url: str, sql: str) -> object:
    connection = await asyncpg.connect(url)
    try:
        return await connection.fetchval(sql)
    finally:
        await connection.close()


def test_every_method_of_the_store_is_its_own() -> None:
    public = {n for n, v in vars(Store).items() if inspect.isfunction(v) or isinstance(v, classmethod)}
    inherited = {n for n in public - {"__init__"} if getattr(PgStore, n) is getattr(Store, n)}
    assert not inherited, f"PgStore runs SQLite's SQL for {sorted(inherited)}"


def test_a_url_names_postgres_and_its_password_is_never_shown() -> None:
    assert is_postgres("postgresql://u@h/db") and is_postgres("postgres://h/db")
    assert not is_postgres("./sidechat.db") and not is_postgres("file:chat.db?mode=memory")
    assert shown("postgresql://sidechat:s3cret@db:5432/chat") == "postgresql://sidechat:***@db:5432/chat"
    assert shown("postgresql://db/chat") == "postgresql://db/chat"


async def test_the_schema_applies_twice_and_records_its_version(url: str) -> None:
    for _ in range(2):
        store = await open_database(Settings(db=url))
        assert isinstance(store, PgStore)
        await store.close()
    assert await scalar(url, "SELECT version FROM schema_version") == LATEST
    assert await scalar(url, "SELECT count(*) FROM pg_trigger WHERE NOT tgisinternal") == 3


async def test_processes_starting_together_apply_the_schema_one_after_another(url: str) -> None:
    stores = await asyncio.gather(*(PgStore.open(url) for _ in range(4)))
    for store in stores:
        await store.close()
    assert await scalar(url, "SELECT count(*) FROM schema_version") == 1


async def test_a_database_from_a_newer_sidechat_is_refused(url: str) -> None:
    await (await PgStore.open(url)).close()
    connection = await asyncpg.connect(url)
    await connection.execute("UPDATE schema_version SET version = 99")
    await connection.close()
    with pytest.raises(StartupError, match=r"schema version 99, newer than this sidechat knows \(1\)"):
        await PgStore.open(url)


async def test_an_unreachable_server_stops_start_up_in_one_line() -> None:
    url = f"postgresql://sidechat:s3cret@127.0.0.1:{free_port()}/chat"
    with pytest.raises(StartupError) as caught:
        await open_database(Settings(db=url))
    said = str(caught.value)
    assert said.startswith("cannot reach the PostgreSQL database postgresql://sidechat:***@127.0.0.1:")
    assert "(SIDECHAT_DB or --db)" in said and "refused" in said.lower()
    assert "s3cret" not in said and "\n" not in said


async def test_a_missing_database_or_a_bad_url_says_so(postgres: Postgres) -> None:
    with pytest.raises(StartupError, match='database "nowhere" does not exist'):
        await PgStore.open(f"{postgres.url}/nowhere")
    with pytest.raises(StartupError, match="not a usable postgresql:// URL"):
        await PgStore.open(f"postgresql://127.0.0.1:{postgres.port}/x?sslmode=sometimes")


async def test_a_server_that_goes_away_is_storage_failed_until_it_is_back() -> None:
    with postgres_server() as server:
        url = server.database()
        store = await PgStore.open(url)
        try:
            conversation = await store.create_conversation("local")
            server.stop()
            with pytest.raises(StorageFailed) as write:
                await store.start_turn(conversation.id, "hello", metadata={})
            with pytest.raises(StorageFailed) as read:
                await store.get_conversation("local", conversation.id)
            for caught in (write, read):
                assert "database" in caught.value.reason
            assert not await store.ping()
            server.start()  # the same store, not reopened: the pool connects again
            _, reply = await store.start_turn(conversation.id, "hello", metadata={})
            assert (await store.get_message("local", reply.id)) is not None
            assert await store.ping()
        finally:
            await store.close()


async def test_a_refusal_that_can_pass_is_told_in_words(url: str) -> None:
    connection = await asyncpg.connect(url)
    try:
        await connection.execute("CREATE TABLE t (x int); SET default_transaction_read_only = on")
        with pytest.raises(asyncpg.PostgresError) as caught:
            await connection.execute("INSERT INTO t VALUES (1)")
    finally:
        await connection.close()
    assert reason_of(caught.value) == "the database is read-only"
    assert reason_of(ValueError("a bug")) is None


async def test_twins_racing_on_one_key_make_one_turn(url: str) -> None:
    store = await PgStore.open(url)
    try:
        conversation = await store.create_conversation("local")
        results = await asyncio.gather(
            *(store.start_turn(conversation.id, "hi", metadata={}, idempotency_key="k") for _ in range(5)),
            return_exceptions=True,
        )
        assert sorted(type(r).__name__ for r in results) == ["KeyTaken"] * 4 + ["tuple"]
        assert all(isinstance(r, tuple | KeyTaken) for r in results)
        assert len(await store.list_messages(conversation.id)) == 2
    finally:
        await store.close()


async def test_twins_racing_to_regenerate_one_reply_make_one(url: str) -> None:
    store = await PgStore.open(url)
    try:
        conversation = await store.create_conversation("local")
        _, reply = await store.start_turn(conversation.id, "hi", metadata={})
        await store.finish_message(reply.id, status="completed", content="a", metadata={}, last_event_id=1)
        results = await asyncio.gather(
            *(store.regenerate_reply(reply.id, metadata={}) for _ in range(5)), return_exceptions=True
        )
        won = [r for r in results if not isinstance(r, BaseException)]
        assert len(won) == 1 and all(isinstance(r, NotLatest) for r in results if r not in won)
        old = await store.get_message("local", reply.id)
        assert old is not None and old.metadata["superseded_by"] == won[0].id
    finally:
        await store.close()


async def test_text_postgres_cannot_hold_is_stored_as_near_as_it_can(url: str) -> None:
    store = await PgStore.open(url)
    try:
        conversation = await store.create_conversation("local", title="a\x00b")
        _, reply = await store.start_turn(conversation.id, "nul\x00here", metadata={"why": "\x00"})
        await store.finish_message(
            reply.id,
            status="completed",
            content="\ud83d\ude00 \ud83d",
            metadata={"k": "\x00"},
            last_event_id=2,
        )
        stored = await store.get_message("local", reply.id)
        assert stored is not None
        assert (stored.content, stored.metadata) == ("\U0001f600 \ufffd", {"k": "\ufffd"})
        asked = (await store.list_messages(conversation.id))[0]
        assert asked.content == "nul\ufffdhere"
        shown_conversation = await store.get_conversation("local", conversation.id)
        assert shown_conversation is not None and shown_conversation.title == "a\ufffdb"
        assert STAMP.fullmatch(shown_conversation.created_at) and STAMP.fullmatch(stored.completed_at or "")
    finally:
        await store.close()


async def test_the_usage_bridge_refuses_a_statement_it_has_no_twin_for(url: str) -> None:
    store = await PgStore.open(url)
    try:
        assert isinstance(store._db, PgUsage)
        with pytest.raises(NotImplementedError, match="no PostgreSQL twin"):
            await store._db.rows("SELECT 1", {})
        with pytest.raises(NotImplementedError):
            await store._db.write("DELETE FROM messages", {})
        with pytest.raises(NotImplementedError):
            await store._db.written("DELETE FROM messages RETURNING id", {})
        assert await store._db.ping()
    finally:
        await store.close()


async def test_a_server_that_never_answers_stops_start_up_in_time() -> None:
    silent = socket.socket()  # accepts connections (the backlog does) and says nothing
    silent.bind(("127.0.0.1", 0))
    silent.listen()
    try:
        url = f"postgresql://postgres@127.0.0.1:{silent.getsockname()[1]}/chat"
        with pytest.raises(StartupError, match=r"^cannot reach .*: it did not answer in time$"):
            await PgStore.open(url, busy_timeout=0.5)
    finally:
        silent.close()
    assert reason_of(TimeoutError()) == "the database did not answer in time"


async def test_readiness_writes_its_row_and_says_when_the_server_is_gone(tmp_path: Path) -> None:
    with postgres_server() as server:
        settings = Settings(db=server.database())
        store = await open_database(settings)
        keeper = Keeper(store, checkpoint_seconds=0.0, checkpoint_chars=0, max_pending=10)
        readiness = await open_readiness(settings, store, keeper)
        try:
            assert isinstance(readiness, PgReadiness)
            assert await readiness.problem(deep=True) is None
            assert await scalar(settings.db, "SELECT count(*) FROM readiness") == 1
            server.stop()
            problem = await readiness.problem()
            assert problem is not None and problem.startswith("the database cannot be written: the ")
            server.start()
            assert await until(lambda: _ready(readiness), what="readiness once the server is back")
        finally:
            await readiness.close()
            await store.close()
    sqlite = await open_readiness(Settings(db=str(tmp_path / "chat.db")), store, keeper)
    assert isinstance(sqlite, Readiness) and not isinstance(sqlite, PgReadiness)  # SQLite's, as before
    await sqlite.close()


async def _ready(readiness: Readiness) -> bool:
    return await readiness.problem() is None


class Writes(Sink):
    """Every statement the store sends as a write, in order."""

    def __init__(self) -> None:
        self.sent: list[str] = []

    @contextmanager
    def db_write(self, what: str) -> Iterator[None]:
        self.sent.append(what.split()[0])
        yield


async def test_the_hot_path_is_one_statement_per_write_and_triggers_keep_the_rest(url: str) -> None:
    writes = Writes()
    store = await PgStore.open(url, telemetry=Telemetry([writes]))
    try:
        conversation = await store.create_conversation("local")
        writes.sent.clear()
        _, reply = await store.start_turn(conversation.id, "hi", metadata={}, earlier=[("user", "before")])
        await store.checkpoint_message(reply.id, "partial")
        await store.finish_message(reply.id, status="completed", content="done", metadata={}, last_event_id=3)
        assert writes.sent == ["INSERT", "UPDATE", "UPDATE"]
        ended = await store.get_message("local", reply.id)
        seen = await store.get_conversation("local", conversation.id)
        assert ended is not None and seen is not None
        assert seen.updated_at == ended.completed_at and seen.message_count == 3  # the triggers
    finally:
        await store.close()


async def test_an_older_database_takes_its_steps_once_and_a_failed_step_changes_nothing(url: str) -> None:
    schema = resource("schema_pg.sql").read_text()
    ran: list[str] = []

    async def add_column(connection: asyncpg.Connection) -> None:
        ran.append("step 2")
        await connection.execute("ALTER TABLE messages ADD COLUMN tokens integer")

    async def refused(connection: asyncpg.Connection) -> None:
        raise RuntimeError("step 3 went wrong")

    connection = await asyncpg.connect(url)
    try:
        assert await apply_schema(connection, schema, ()) == 0  # new: made whole at version 1
        assert await apply_schema(connection, schema, (add_column,)) == 1
        assert await apply_schema(connection, schema, (add_column,)) == 2  # done: not again
        assert ran == ["step 2"]
        with pytest.raises(RuntimeError, match="step 3"):
            await apply_schema(connection, schema, (add_column, refused))
        assert await connection.fetchval("SELECT version FROM schema_version") == 2
        with pytest.raises(TooNew):
            await apply_schema(connection, schema, ())
    finally:
        await connection.close()
