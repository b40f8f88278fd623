"""Schema versions: a database made by the last release (tests/oldschema.py) is upgraded at
start-up with its rows whole; a newer one is refused; a failed step changes nothing."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import httpx
import pytest

from chat.config import Settings
from chat.database import connect
from chat.errors import StartupError
from chat.store import Store
from chat.upgrades import LATEST, STEPS, Step, TooNew, add_columns, statements, upgrade
from tests.live import chat_stream, serve
from tests.oldschema import old_database
from tests.processes import PYTHON, free_port, run

pytestmark = pytest.mark.anyio


def version(path: Path) -> int:
    with sqlite3.connect(path) as db:
        return int(db.execute("PRAGMA user_version").fetchone()[0])


def columns(path: Path, table: str) -> set[str]:
    with sqlite3.connect(path) as db:
        return {row[1] for row in db.execute(f"PRAGMA table_info({table})")}


def indexes(path: Path) -> set[str]:
    with sqlite3.connect(path) as db:
        return {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}


async def test_the_last_releases_database_is_upgraded_with_its_rows_whole(tmp_path: Path) -> None:
    path = tmp_path / "chat.db"
    old_database(path)
    assert "replies_by_completion" not in indexes(path)
    store = await Store.open(str(path))
    try:
        assert version(path) == LATEST == 2
        assert "replies_by_completion" in indexes(path)
        conversation = await store.get_conversation("bob", 1)  # a member still sees it
        assert conversation is not None and conversation.title == "Old times"
        assert conversation.message_count == 2
        user, reply = await store.list_messages(1)
        assert (user.content, user.user_id, reply.content, reply.status) == (
            "hello there",
            "alice",
            "General Kenobi",
            "completed",
        )
        assert reply.metadata["usage"] == {"input_tokens": 3, "output_tokens": 9}
        found = await store.find_turn("alice", "alice:key-1")
        assert found is not None and found[2] == "hash-1"  # the idempotency key still holds
        # New writes work on it, and the index serves a window of replies by when they ended.
        _, new_reply = await store.start_turn(1, "again", metadata={"provider": "demo"}, author="alice")
        await store.finish_message(
            new_reply.id, status="completed", content="yes", metadata={}, last_event_id=3
        )
    finally:
        await store.close()
    with sqlite3.connect(path) as db:
        plan = " ".join(
            str(row[-1])
            for row in db.execute(
                "EXPLAIN QUERY PLAN SELECT count(*) FROM messages"
                " WHERE role = 'assistant' AND completed_at >= '2025-01-01' AND completed_at < '2026-01-01'"
            )
        )
        assert "replies_by_completion" in plan


async def test_a_server_starts_on_the_old_database_and_serves_it(tmp_path: Path) -> None:
    path = tmp_path / "chat.db"
    old_database(path)
    async with serve(Settings(db=str(path), demo_delay=0)) as url:
        async with httpx.AsyncClient(base_url=url, timeout=10) as client:
            listed = (await client.get("/api/conversations")).json()["conversations"]
            assert listed == []  # alice's and bob's, not the local user's
            reply = await chat_stream(client, {"message": "hi"})
            assert reply.names[-1] == "done"
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT status FROM messages WHERE content = 'half a rep'").fetchone() == (
            "interrupted",
        )
    assert version(path) == LATEST


async def test_a_database_from_before_a_column_gets_it(tmp_path: Path) -> None:
    path = tmp_path / "chat.db"
    old_database(path)
    with sqlite3.connect(path) as db:
        db.execute("ALTER TABLE messages DROP COLUMN user_id")  # as before messages had authors
    db = await connect(str(path))
    await db.close()
    assert "user_id" in columns(path, "messages") and version(path) == LATEST


async def test_two_processes_starting_at_once_upgrade_once(tmp_path: Path) -> None:
    path = tmp_path / "chat.db"
    old_database(path)
    with sqlite3.connect(path) as db:
        db.execute("ALTER TABLE messages DROP COLUMN request_hash")
    # Without the upgrade's transaction both would see version 0 and add the column twice.
    both = await asyncio.gather(connect(str(path)), connect(str(path)))
    for db in both:
        await db.close()
    assert "request_hash" in columns(path, "messages") and version(path) == LATEST


async def test_a_new_database_is_made_at_the_newest_version_with_incremental_vacuum(tmp_path: Path) -> None:
    path = tmp_path / "chat.db"
    db = await connect(str(path))
    await db.close()
    assert version(path) == LATEST
    with sqlite3.connect(path) as plain:
        assert plain.execute("PRAGMA auto_vacuum").fetchone() == (2,)  # incremental


async def failing(db: object) -> None:
    raise RuntimeError("a step that breaks")


async def test_a_failed_step_changes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "chat.db"
    old_database(path)
    steps = (
        Step(1, "a column", add_columns(("conversations", "colour", "TEXT"))),
        Step(2, "broken", failing),
    )
    db = await connect(str(path))  # up to date, then pretend it was version 0 again
    await db.execute("PRAGMA user_version = 0")
    with pytest.raises(RuntimeError, match="a step that breaks"):
        await upgrade(db, "CREATE TABLE IF NOT EXISTS later (id INTEGER PRIMARY KEY);", steps)
    await db.close()
    assert version(path) == 0
    assert "colour" not in columns(path, "conversations") and columns(path, "later") == set()


async def test_a_database_newer_than_the_code_is_refused_and_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "chat.db"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE conversations (id INTEGER PRIMARY KEY)")
        db.execute(f"PRAGMA user_version = {LATEST + 1}")
    with pytest.raises(StartupError) as info:
        await connect(str(path))
    assert str(info.value) == (
        f"the database {path} (SIDECHAT_DB or --db) has schema version {LATEST + 1}, newer than this"
        f" sidechat knows ({LATEST}): it was upgraded by a newer sidechat; run that one, or restore"
        " a backup made before the upgrade"
    )
    assert version(path) == LATEST + 1 and indexes(path) == set()
    result = await run([PYTHON, "-m", "chat", "serve", "--port", str(free_port()), "--db", str(path)])
    assert result.returncode != 0 and "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if "cannot start" in line]
    assert len(errors) == 1 and errors[0].endswith(f"sidechat cannot start: {info.value}")


def test_too_new_says_both_versions() -> None:
    assert str(TooNew(5, 2)) == "schema version 5, newer than this sidechat knows (2)"


def test_the_steps_are_numbered_from_one_without_gaps() -> None:
    assert [step.version for step in STEPS] == list(range(1, LATEST + 1))


def test_a_script_splits_into_whole_statements_triggers_included() -> None:
    schema = (Path(__file__).parent.parent / "schema.sql").read_text()
    found = list(statements(schema))
    assert all(sqlite3.complete_statement(s) for s in found)
    triggers = [s for s in found if "CREATE TRIGGER" in s]
    assert len(triggers) == 3 and all(s.endswith("END;") for s in triggers)
    assert sum("CREATE" in s for s in found) == schema.count("CREATE ")


def test_a_script_that_ends_mid_statement_is_an_error() -> None:
    with pytest.raises(ValueError, match="middle of a statement"):
        list(statements("CREATE TABLE a (id INTEGER);\nCREATE TABLE b (\n-- trailing\n"))
    assert list(statements("CREATE TABLE a (id INTEGER);\n-- only a comment after it\n")) == [
        "CREATE TABLE a (id INTEGER);"
    ]
