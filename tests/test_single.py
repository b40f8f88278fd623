"""Without Redis, one process per database: a second is refused with a line naming
SIDECHAT_REDIS_URL, and the lock goes with the process that held it."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from chat.config import Settings
from chat.errors import StartupError
from chat.services import open_services
from chat.single import lock_path, sole_process
from tests.backends import Backend, every_backend, new_backend
from tests.processes import ROOT, free_port, run

pytestmark = pytest.mark.anyio


async def test_a_second_process_on_the_database_is_refused_until_the_first_ends(tmp_path: Path) -> None:
    settings = Settings(db=str(tmp_path / "chat.db"))
    async with open_services(settings):
        with pytest.raises(StartupError, match="SIDECHAT_REDIS_URL") as refused:
            async with open_services(settings):
                pass
        assert str(tmp_path / "chat.db") in str(refused.value)
    async with open_services(settings):  # the first let go as it ended
        pass


async def test_with_redis_or_nothing_stored_no_lock_is_taken(tmp_path: Path) -> None:
    shared = Settings(db=str(tmp_path / "chat.db"), redis_url="redis://127.0.0.1:6379/0")
    relay = Settings(db=str(tmp_path / "chat.db"), store="none")
    for settings in (shared, relay):
        async with sole_process(settings), sole_process(settings):
            pass
    assert not (tmp_path / "chat.db.lock").exists()


async def test_on_postgres_a_second_process_is_refused_until_the_first_ends(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    with new_backend("postgres", tmp_path, request) as database:
        settings = Settings(db=database.db)
        async with sole_process(settings):
            with pytest.raises(StartupError, match="needs SIDECHAT_REDIS_URL") as refused:
                async with sole_process(settings):
                    pass
            assert "secret" not in str(refused.value)
            async with sole_process(Settings(db=database.db, redis_url="redis://127.0.0.1:1/0")):
                pass  # with Redis, any number
        async with sole_process(settings):  # the first let go as it ended
            pass


async def test_on_a_postgres_that_does_not_answer_the_store_is_left_to_say_so(
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = Settings(db=f"postgresql://sidechat:secret@127.0.0.1:{free_port()}/sidechat")
    async with sole_process(settings):
        pass
    assert "cannot take the lock of postgresql://sidechat:***@127.0.0.1" in caplog.text
    assert "secret" not in caplog.text


def test_only_a_database_file_has_a_lock_file() -> None:
    assert lock_path("/var/lib/sidechat/sidechat.db") == "/var/lib/sidechat/sidechat.db.lock"
    assert lock_path(":memory:") is None
    assert lock_path("postgresql://sidechat@db/sidechat") is None


async def test_where_no_lock_file_can_be_made_it_starts_and_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = Settings(db=str(tmp_path / "missing" / "chat.db"))
    async with sole_process(settings):
        pass
    assert "a second process on this database would go unnoticed" in caplog.text


@every_backend
async def test_uvicorn_with_two_workers_and_no_redis_refuses_to_serve(
    tmp_path: Path, database: Backend
) -> None:
    command = [sys.executable, "-m", "uvicorn", "app:app", "--port", str(free_port()), "--workers", "2"]
    # It ends by itself (`run` would time out otherwise): uvicorn stops when a worker cannot
    # start, though it says so with status 0.
    ran = await run(command, env={"SIDECHAT_DB": database.db}, cwd=ROOT, timeout=60)
    log = ran.stdout + ran.stderr
    assert "failed to start, stopping the parent process" in log
    assert log.count("another sidechat process is serving the database") == 1
    assert "needs SIDECHAT_REDIS_URL" in log
