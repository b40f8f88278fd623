"""Opening the database: a clear `StartupError` for each way it can fail, and no thread left behind."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from chat.database import connect
from chat.errors import StartupError
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
