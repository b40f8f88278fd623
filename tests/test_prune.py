"""`sidechat prune`, run as users run it, against the database of a real server that is
writing to it: what is idle goes with its messages, members and idempotency keys; a
conversation whose reply is streaming stays; --dry-run changes nothing; space comes back."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import pytest

from chat.maintenance import writing
from chat.prune import cutoff, give_back
from chat.store import Store
from chat.upgrades import LATEST
from tests.fakeupstream import FakeUpstream
from tests.oldschema import old_database
from tests.processes import run
from tests.test_cli import SIDECHAT
from tests.workload import Workload, age, busy, command_while_chatting, count, held, sidechat

pytestmark = pytest.mark.anyio


async def conversation(workload: Workload, *, key: str | None = None, message: str = "hi") -> int:
    """A new conversation with one finished turn, from the demo provider."""
    headers = {"Idempotency-Key": key} if key else {}
    answer = await workload.client.post(
        "/api/chat", json={"message": message, "provider": "demo", "wait": True}, headers=headers
    )
    assert answer.status_code == 200, answer.text
    return int(answer.json()["message"]["conversation_id"])


def tables(db: Path) -> list[str]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as connection:
        return [
            repr(row)
            for table in ("conversations", "messages", "members")
            for row in connection.execute(f"SELECT * FROM {table} ORDER BY 1, 2")
        ]


async def test_idle_conversations_go_with_all_they_hold_while_the_server_writes(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    async with busy(upstream, tmp_path) as workload:
        old = await conversation(workload)
        shared = await conversation(workload, key="key-of-an-old-turn")
        added = await workload.client.post(f"/api/conversations/{shared}/members", json={"user": "bob"})
        assert added.status_code == 201
        recent = await conversation(workload)
        age(workload.db, [old, shared, workload.conversation_id], days=40)  # the held one too

        result, _ = await command_while_chatting(workload, "prune", "--days", "30")

        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith(
            "deleted 2 conversations idle for 30 days or more (4 messages);"
            " kept 1 with a reply still streaming; the file went from"
        )
        for gone in (old, shared):
            assert (await workload.client.get(f"/api/conversations/{gone}")).status_code == 404
            assert count(workload.db, "SELECT count(*) FROM messages WHERE conversation_id = ?", gone) == 0
        assert count(workload.db, "SELECT count(*) FROM members") == 0
        assert (
            count(
                workload.db, "SELECT count(*) FROM messages WHERE idempotency_key LIKE '%key-of-an-old-turn'"
            )
            == 0
        )
        assert count(workload.db, "SELECT count(*) FROM pragma_foreign_key_check") == 0
        for kept in (recent, workload.conversation_id):
            assert (await workload.client.get(f"/api/conversations/{kept}")).status_code == 200
        # The reply that was streaming all along ends as if nothing happened, and is stored.
        rest = await workload.finish()
        assert rest.names[-1] == "done"
        assert (
            count(
                workload.db,
                "SELECT count(*) FROM messages WHERE id = ? AND status = 'completed'",
                workload.message_id,
            )
            == 1
        )


async def test_a_dry_run_says_what_would_go_and_changes_nothing(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    async with busy(upstream, tmp_path) as workload:
        old = await conversation(workload)
        await conversation(workload)
        age(workload.db, [old, workload.conversation_id], days=8)
        before = tables(workload.db)
        result = await run([SIDECHAT, "prune", "--days", "7", "--dry-run", "--db", str(workload.db)])
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == (
            "would delete 1 conversation idle for 7 days or more (2 messages); kept 1 with a reply still streaming"
        )
        assert tables(workload.db) == before


async def test_days_0_takes_every_conversation_but_one_still_streaming(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    async with busy(upstream, tmp_path) as workload:
        for _ in range(3):
            await conversation(workload)
        first = await sidechat(workload.db, "prune", "--days", "0")
        assert first.returncode == 0, first.stderr
        assert first.stdout.startswith("deleted 3 conversations idle for 0 days or more (6 messages); kept 1")
        assert count(workload.db, "SELECT count(*) FROM conversations") == 1
        assert (await workload.finish()).names[-1] == "done"
        second = await sidechat(workload.db, "prune", "--days", "0")
        assert second.stdout.startswith("deleted 1 conversation idle for 0 days or more (2 messages);")
        assert count(workload.db, "SELECT count(*) FROM conversations") == 0
        assert count(workload.db, "SELECT count(*) FROM messages") == 0


async def test_the_space_comes_back_while_the_server_has_the_file_open(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    async with busy(upstream, tmp_path) as workload:
        ids = [await conversation(workload, message="long " * 18_000) for _ in range(20)]  # ~90 KB each
        age(workload.db, ids, days=100)
        size = (workload.db).stat().st_size + Path(f"{workload.db}-wal").stat().st_size
        assert size > 2_000_000
        result = await sidechat(workload.db, "prune", "--days", "90")
        assert result.returncode == 0, result.stderr
        assert "deleted 20 conversations" in result.stdout and "the file went from" in result.stdout
        assert workload.db.stat().st_size < 500_000
        assert Path(f"{workload.db}-wal").stat().st_size < 100_000  # checkpointed and truncated


async def test_an_old_database_is_upgraded_and_vacuum_shrinks_it_once(tmp_path: Path) -> None:
    db = tmp_path / "chat.db"
    old_database(db, filler=300)
    size = db.stat().st_size
    first = await sidechat(db, "prune", "--days", "30")
    assert first.returncode == 0, first.stderr
    # Conversation 2's reply was left streaming by a crash: it stays until a server starts.
    assert first.stdout.startswith(
        "deleted 301 conversations idle for 30 days or more (602 messages); kept 1"
    )
    assert "free inside the file for new rows; the file keeps its size" in first.stdout
    assert "`prune --vacuum` shrinks it" in first.stdout
    assert db.stat().st_size >= size
    with sqlite3.connect(db) as connection:
        assert connection.execute("PRAGMA user_version").fetchone() == (LATEST,)
    second = await sidechat(db, "prune", "--days", "30", "--vacuum")
    assert second.returncode == 0, second.stderr
    assert "deleted 0 conversations" in second.stdout and "the file went from" in second.stdout
    assert db.stat().st_size < size / 10
    with sqlite3.connect(db) as connection:
        assert connection.execute("PRAGMA auto_vacuum").fetchone() == (2,)  # incremental from now on
        assert connection.execute("SELECT content FROM messages WHERE status = 'streaming'").fetchone() == (
            "half a rep",
        )


async def test_a_database_locked_past_the_busy_timeout_is_one_line_and_nothing_goes(tmp_path: Path) -> None:
    db = tmp_path / "chat.db"
    store = await Store.open(str(db))
    await store.create_conversation("local")
    await store.close()
    age(db, [1], days=10)
    with held(db, "BEGIN IMMEDIATE"):
        result = await sidechat(db, "prune", "--days", "1", env={"SIDECHAT_DB_BUSY_TIMEOUT": "0.2"})
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.splitlines() == [
        f"sidechat prune: cannot use the database {db} (SIDECHAT_DB or --db): it is locked by another"
        " process (waited 0.2 s: SIDECHAT_DB_BUSY_TIMEOUT)"
    ]
    assert count(db, "SELECT count(*) FROM conversations") == 1


@pytest.mark.parametrize("days", ["-1", "seven", "1.5"])
async def test_days_must_be_a_whole_number_of_0_or_more(tmp_path: Path, days: str) -> None:
    result = await sidechat(tmp_path / "chat.db", "prune", "--days", days)
    assert result.returncode == 2 and "expected a whole number of 0 or more" in result.stderr


def test_the_cutoff_is_a_timestamp_as_the_columns_hold_it() -> None:
    assert cutoff(2, datetime(2026, 3, 3, 12, 0, 0, 5000, tzinfo=UTC)) == "2026-03-01T12:00:00.005Z"


async def big_database(tmp_path: Path, conversations: int = 40) -> Path:
    """A database of this version with `conversations` old conversations of ~50 KB each."""
    db = tmp_path / "chat.db"
    store = await Store.open(str(db))
    try:
        for _ in range(conversations):
            made = await store.create_conversation("local")
            _, reply = await store.start_turn(made.id, "long " * 10_000, metadata={})
            await store.finish_message(
                reply.id, status="completed", content="ok", metadata={}, last_event_id=2
            )
    finally:
        await store.close()
    age(db, list(range(1, conversations + 1)), days=10)
    return db


async def test_a_reader_on_an_old_snapshot_delays_the_shrinking_and_prune_says_so(tmp_path: Path) -> None:
    db = await big_database(tmp_path)
    reading = "BEGIN; SELECT count(*) FROM conversations"  # a read transaction left open
    with held(db, reading):
        result = await sidechat(db, "prune", "--days", "1", env={"SIDECHAT_DB_BUSY_TIMEOUT": "0.2"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("deleted 40 conversations")
    assert "freed; the file shrinks at the server's next checkpoint (it was busy)" in result.stdout
    assert count(db, "SELECT count(*) FROM conversations") == 0


async def test_space_that_cannot_be_given_back_now_is_said_and_the_deletions_stand(tmp_path: Path) -> None:
    db = await big_database(tmp_path)
    async with writing(str(db), busy_timeout=0.1) as connection:
        await connection.execute("DELETE FROM conversations")
        with held(db, "BEGIN IMMEDIATE"):
            said = await give_back(connection, str(db), vacuum=False)
    assert said == (
        "no space given back now (the database is locked by another process): new rows reuse it,"
        " and the next prune gives it back"
    )
    assert count(db, "SELECT count(*) FROM conversations") == 0
