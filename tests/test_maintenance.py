"""`sidechat stats` and `sidechat backup` against the database of a real server that is writing
to it, and what every maintenance command says when the database is missing, not one,
newer than the code, or locked."""

from __future__ import annotations

import asyncio
import json
import re
import sqlite3
from contextlib import closing
from pathlib import Path

import pytest

from chat.store import Store
from chat.upgrades import LATEST
from tests.fakeupstream import FakeUpstream, Reply, openai_chunk
from tests.live import until
from tests.processes import PYTHON, run
from tests.test_cli import SIDECHAT
from tests.workload import busy, command_while_chatting, held, sidechat

pytestmark = pytest.mark.anyio

COMMANDS = [["prune", "--days", "1"], ["export", "--conversation", "1"], ["stats"], ["backup", "copy.db"]]


async def test_stats_count_a_database_in_use_at_one_moment(upstream: FakeUpstream, tmp_path: Path) -> None:
    async with busy(upstream, tmp_path) as workload:
        upstream.add(Reply([b'{"error": {"message": "no", "type": "invalid_request_error"}}'], status=400))
        failed = await workload.client.post("/api/chat", json={"message": "fail", "wait": True})
        assert failed.json()["message"]["status"] == "failed"
        gate = asyncio.Event()
        upstream.add(Reply([openai_chunk("about to be "), gate]))
        started = (await workload.client.post("/api/chat", json={"message": "cancel me"})).json()
        await until(lambda: len(upstream.requests) == 3, what="the reply to reach the provider")
        assert (
            await workload.client.post(f"/api/messages/{started['message_id']}/cancel")
        ).status_code == 200

        result, chatter = await command_while_chatting(workload, "stats", "--json")

        assert result.returncode == 0, result.stderr
        found = json.loads(result.stdout)
        replies = found["replies"]
        # The held reply, and maybe the chat being written at that moment.
        assert replies["streaming"] in (1, 2)
        assert (replies["failed"], replies["cancelled"], replies["interrupted"]) == (1, 1, 0)
        # One read transaction: every conversation is one turn, so the counts agree exactly,
        # however many chats were written while they were read.
        by_role = found["messages_by_role"]
        assert by_role["user"] == by_role["assistant"] == found["conversations"] == sum(replies.values())
        assert found["messages"] == 2 * found["conversations"] and by_role["system"] == 0
        assert found["schema_version"] == LATEST and found["auto_vacuum"] == "incremental"
        assert found["file_bytes"] > 0 and found["database"] == str(workload.db)
        assert replies["completed"] <= chatter.done
        text = await run([SIDECHAT, "stats", "--db", str(workload.db)])
        lines = text.stdout.splitlines()
        assert lines[0] == f"database       {workload.db} (schema version {LATEST})"
        assert lines[3].startswith("conversations  ") and int(lines[3].split()[1]) >= found["conversations"]
        assert re.match(
            r"replies        [12] streaming, \d+ completed, 1 failed, 1 cancelled, 0 interrupted$", lines[5]
        )


async def test_a_backup_is_one_consistent_moment_while_the_server_writes(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    async with busy(upstream, tmp_path) as workload:
        copy = tmp_path / "backup.db"
        result, _ = await command_while_chatting(workload, "backup", str(copy))
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith(f"backed up {workload.db} to {copy}: ")
        with closing(sqlite3.connect(copy)) as db:
            assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
            assert db.execute("PRAGMA foreign_key_check").fetchall() == []
            assert db.execute("PRAGMA journal_mode").fetchone() == ("delete",)  # one file, no log beside
            assert db.execute("PRAGMA user_version").fetchone() == (LATEST,)
            held = db.execute("SELECT status FROM messages WHERE id = ?", (workload.message_id,)).fetchone()
            assert held == ("streaming",)
            users, replies, conversations = db.execute(
                "SELECT (SELECT count(*) FROM messages WHERE role = 'user'),"
                " (SELECT count(*) FROM messages WHERE role = 'assistant'),"
                " (SELECT count(*) FROM conversations)"
            ).fetchone()
        assert users == replies == conversations >= 2  # no turn caught half-written
        assert f"{conversations} conversations, {users + replies} messages" in result.stdout
        assert not Path(f"{copy}-wal").exists() and not list(tmp_path.glob(".*partial"))
        # A backup is a database sidechat serves as it is.
        store = await Store.open(str(copy))
        try:
            assert await store.get_conversation("local", workload.conversation_id) is not None
        finally:
            await store.close()


async def test_a_backup_into_a_directory_is_named_for_its_time(tmp_path: Path) -> None:
    db = await a_database(tmp_path)
    (tmp_path / "backups").mkdir()
    result = await sidechat(db, "backup", str(tmp_path / "backups"))
    assert result.returncode == 0, result.stderr
    (made,) = (tmp_path / "backups").iterdir()
    assert made.name.startswith("sidechat-") and made.name.endswith("Z.db")
    assert str(made) in result.stdout


async def test_a_failed_backup_leaves_the_last_good_one_whole(tmp_path: Path) -> None:
    good = tmp_path / "backup.db"
    await sidechat(await a_database(tmp_path), "backup", str(good))
    before = good.read_bytes()
    broken = tmp_path / "broken.db"
    broken.write_bytes(b"not a database at all " * 200)
    result = await sidechat(broken, "backup", str(good))
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"sidechat backup: the database {broken} (SIDECHAT_DB or --db) is not a SQLite database"
    ]
    assert good.read_bytes() == before and not list(tmp_path.glob(".*partial"))


@pytest.mark.parametrize("where", ["missing directory", "the database itself"])
async def test_a_backup_that_cannot_go_there_says_why(tmp_path: Path, where: str) -> None:
    db = await a_database(tmp_path)
    target = tmp_path / "nowhere" / "copy.db" if where == "missing directory" else db
    result = await sidechat(db, "backup", str(target))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    said = "does not exist" if where == "missing directory" else "would overwrite the database itself"
    assert len(result.stderr.splitlines()) == 1 and said in result.stderr


@pytest.mark.parametrize("command", COMMANDS)
async def test_a_missing_database_is_one_line_and_is_not_created(tmp_path: Path, command: list[str]) -> None:
    db = tmp_path / "typo.db"
    result = await run([PYTHON, "-m", "chat", *command, "--db", str(db)], cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"sidechat {command[0]}: there is no database at {db} (SIDECHAT_DB or --db)"
    ]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("command", COMMANDS)
async def test_a_file_that_is_not_a_database_is_one_line(tmp_path: Path, command: list[str]) -> None:
    db = tmp_path / "notes.db"
    db.write_bytes(b"these are my notes, not SQLite " * 100)
    result = await run([PYTHON, "-m", "chat", *command, "--db", str(db)], cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"sidechat {command[0]}: the database {db} (SIDECHAT_DB or --db) is not a SQLite database"
    ]


@pytest.mark.parametrize("command", COMMANDS[:3])
async def test_a_database_newer_than_the_code_is_refused(tmp_path: Path, command: list[str]) -> None:
    db = await a_database(tmp_path)
    with closing(sqlite3.connect(db)) as connection:
        connection.execute(f"PRAGMA user_version = {LATEST + 1}")
    result = await sidechat(db, *command)
    assert result.returncode == 1 and len(result.stderr.splitlines()) == 1
    assert f"schema version {LATEST + 1}, newer than this sidechat knows ({LATEST})" in result.stderr


async def test_reads_go_on_while_another_process_holds_the_write_lock(tmp_path: Path) -> None:
    db = await a_database(tmp_path)
    fast = {"SIDECHAT_DB_BUSY_TIMEOUT": "0.2"}
    with held(db, "BEGIN IMMEDIATE; INSERT INTO conversations (created_at, updated_at) VALUES ('x', 'x')"):
        for command in (["stats"], ["export", "--conversation", "1"], ["backup", str(tmp_path / "copy.db")]):
            result = await sidechat(db, *command, env=fast)
            assert result.returncode == 0, result.stderr
        assert (
            '"conversations": 1' in (await sidechat(db, "stats", "--json", env=fast)).stdout
        )  # not 2: uncommitted


async def test_a_lock_that_keeps_readers_out_is_one_line(tmp_path: Path) -> None:
    db = await a_database(tmp_path)
    with held(db, "PRAGMA locking_mode = EXCLUSIVE; BEGIN EXCLUSIVE"):
        result = await sidechat(db, "stats", env={"SIDECHAT_DB_BUSY_TIMEOUT": "0.2"})
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.splitlines() == [
        f"sidechat stats: cannot use the database {db} (SIDECHAT_DB or --db): it is locked by another"
        " process (waited 0.2 s: SIDECHAT_DB_BUSY_TIMEOUT)"
    ]


async def test_a_bad_setting_is_one_line_naming_it(tmp_path: Path) -> None:
    result = await sidechat(await a_database(tmp_path), "stats", env={"SIDECHAT_DB_BUSY_TIMEOUT": "soon"})
    assert result.returncode == 2 and result.stderr.startswith(
        "sidechat stats: SIDECHAT_DB_BUSY_TIMEOUT='soon'"
    )


async def test_the_database_comes_from_the_environment_as_for_serve(tmp_path: Path) -> None:
    db = await a_database(tmp_path)
    result = await run([SIDECHAT, "stats", "--json"], env={"SIDECHAT_DB": str(db)})
    assert result.returncode == 0 and json.loads(result.stdout)["database"] == str(db)
    default = await run([SIDECHAT, "stats"], cwd=tmp_path, env={"SIDECHAT_DB": ""})
    assert "there is no database at ./sidechat.db" in default.stderr


async def a_database(tmp_path: Path) -> Path:
    """A database with one conversation of one finished turn."""
    db = tmp_path / "chat.db"
    store = await Store.open(str(db))
    try:
        conversation = await store.create_conversation("local", title="one")
        _, reply = await store.start_turn(conversation.id, "hi", metadata={"provider": "demo"})
        await store.finish_message(
            reply.id, status="completed", content="hello", metadata={}, last_event_id=3
        )
    finally:
        await store.close()
    return db
