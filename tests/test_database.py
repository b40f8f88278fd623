"""Opening the database: a clear `StartupError` for each way it can fail, and no thread left behind."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import pytest

from chat.database import connect
from chat.errors import StartupError
from chat.store import StorageFailed, Store
from tests.live import until

pytestmark = pytest.mark.anyio


def threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t is not threading.main_thread()}


async def refused(path: Path) -> str:
    before = threads()
    with pytest.raises(StartupError) as info:
        await connect(str(path))
    # aiosqlite's thread notices a close within a tenth of a second; one left open runs forever.
    await until(lambda: threads() <= before, timeout=5, what="the connection's thread to end")
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    return message


async def test_a_file_that_is_not_a_database(tmp_path: Path) -> None:
    path = tmp_path / "chat.db"
    path.write_bytes(b"this is not SQLite, just some text that is long enough " * 50)
    assert "is not a SQLite database" in await refused(path)


async def test_a_directory_that_does_not_exist(tmp_path: Path) -> None:
    message = await refused(tmp_path / "missing" / "chat.db")
    assert "does not exist" in message


async def test_a_path_that_is_a_directory(tmp_path: Path) -> None:
    assert "cannot open" in await refused(tmp_path)


async def test_a_directory_that_cannot_be_written() -> None:
    # /proc refuses new files even to root, who could write anywhere else.
    message = await refused(Path("/proc/sidechat-test.db"))
    assert "cannot be written" in message


async def test_a_good_database_gets_the_schema_and_wal(tmp_path: Path) -> None:
    db = await connect(str(tmp_path / "chat.db"))
    try:
        rows = list(await db.execute_fetchall("PRAGMA journal_mode"))
        assert rows[0][0] == "wal"
    finally:
        await db.close()


SHORT_LOCK = """
import sqlite3, sys, time
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
time.sleep(1.0)  # a backup's short lock
db.execute("COMMIT")
"""


@pytest.mark.parametrize(("busy_timeout", "waited_out"), [(10.0, True), (0.0, False)])
async def test_a_short_foreign_lock_is_waited_out_within_the_busy_timeout(
    tmp_path: Path, busy_timeout: float, waited_out: bool
) -> None:
    path = tmp_path / "chat.db"
    store = await Store.open(str(path), busy_timeout=busy_timeout)
    holder = subprocess.Popen(
        [sys.executable, "-c", SHORT_LOCK, str(path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        if waited_out:
            assert (await store.create_conversation("local")).id == 1
        else:
            with pytest.raises(StorageFailed) as info:
                await store.create_conversation("local")
            assert info.value.reason == "the database is locked by another process"
    finally:
        holder.wait(10)
        assert holder.stdout is not None
        holder.stdout.close()
        await store.close()
