"""Readiness: the deep check is SQLite's quick check, run at most once a minute; with nothing
stored, there is no database to probe."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiosqlite
import pytest

from chat.config import Settings
from chat.keeping import Keeper
from chat.readiness import DEEP_EVERY, Readiness
from chat.services import open_services
from chat.store import Store
from chat.store_none import MemoryStore

pytestmark = pytest.mark.anyio


class Counting:
    """A real connection that counts the quick checks run on it."""

    def __init__(self, connection: aiosqlite.Connection) -> None:
        self.connection = connection
        self.quick_checks = 0

    async def execute(self, sql: str, *args: Any) -> Any:
        return await self.connection.execute(sql, *args)

    async def execute_fetchall(self, sql: str, *args: Any) -> Any:
        self.quick_checks += sql == "PRAGMA quick_check"
        return await self.connection.execute_fetchall(sql, *args)


async def test_the_deep_check_runs_at_most_once_a_minute(tmp_path: Path) -> None:
    path = str(tmp_path / "chat.db")
    store = await Store.open(path)
    now = [0.0]
    async with aiosqlite.connect(path, isolation_level=None) as connection:
        probe = Counting(connection)
        readiness = Readiness(path, probe, Keeper(store), clock=lambda: now[0])  # type: ignore[arg-type]
        for _ in range(5):
            assert await readiness.problem(deep=True) is None
        assert await readiness.problem() is None
        assert probe.quick_checks == 1
        now[0] += DEEP_EVERY
        assert await readiness.problem(deep=True) is None
        assert probe.quick_checks == 2
    await store.close()


async def test_with_nothing_stored_no_database_is_probed(tmp_path: Path) -> None:
    settings = Settings(store="none", db=str(tmp_path / "chat.db"), provider="demo")
    async with open_services(settings) as services:
        assert isinstance(services.store, MemoryStore)
        assert services.readiness is None  # so /readyz answers ready while the process answers
        assert services.generations.keeper.checkpoint_seconds == 0
    assert list(tmp_path.iterdir()) == []
