"""The API on PostgreSQL where it differs from SQLite: the server going away and coming back
under a running sidechat, and start-up against a server that is not there.

Not collected yet: rename it tests/test_pg_api.py in the commit where chat/services.py opens
its store and readiness through chat.stores (open_database, open_readiness) and chat/cli.py's
first line shows the database as chat.stores.shown does. Both pass then (tried on a copy
of the branch with those three lines changed)."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from chat.config import Settings
from tests.live import serve, until
from tests.postgres import postgres_server
from tests.processes import PYTHON, free_port, run

pytestmark = pytest.mark.anyio


async def chat_answers(client: httpx.AsyncClient) -> bool:
    return (await client.post("/api/chat", json={"message": "again"})).status_code == 202


async def test_a_postgres_that_goes_away_is_503_until_it_is_back_without_a_restart() -> None:
    with postgres_server() as server:
        settings = Settings(db=server.database(), demo_delay=0.0, shutdown_grace_seconds=0.5)
        async with serve(settings) as url, httpx.AsyncClient(base_url=url, timeout=10) as client:
            first = await client.post("/api/chat", json={"message": "hi", "wait": True})
            assert first.status_code == 200 and first.json()["message"]["status"] == "completed", first.text
            assert (await client.get("/readyz")).status_code == 200
            server.stop()
            refused = await client.post("/api/chat", json={"message": "now?"})
            not_ready = await client.get("/readyz")
            server.start()
            await until(lambda: chat_answers(client), what="chats once Postgres is back")
            assert (await client.get("/readyz")).status_code == 200
            conversation = first.json()["message"]["conversation_id"]
            listed = await client.get(f"/api/conversations/{conversation}/messages")
    assert refused.status_code == 503 and refused.headers["retry-after"]
    error = refused.json()["error"]
    assert error["type"] == "storage_unavailable" and "database" in error["cause"]
    assert not_ready.status_code == 503 and "cannot be written" in not_ready.text
    assert listed.status_code == 200 and len(listed.json()["messages"]) == 2


async def test_serve_against_an_unreachable_postgres_stops_with_one_line(tmp_path: Path) -> None:
    db = f"postgresql://sidechat:s3cret@127.0.0.1:{free_port()}/chat"
    result = await run([PYTHON, "-m", "chat", "serve", "--port", str(free_port()), "--db", db], timeout=60)
    assert result.returncode != 0
    said = [line for line in (result.stdout + result.stderr).splitlines() if "cannot start" in line]
    assert len(said) == 1, result.stdout + result.stderr
    assert said[0].endswith(
        "sidechat cannot start: cannot reach the PostgreSQL database postgresql://sidechat:***@"
        f"{db.rpartition('@')[2]} (SIDECHAT_DB or --db): Connection refused"
    )
    assert (
        "s3cret" not in result.stdout + result.stderr
    )  # serve's first line must show the URL as chat.stores.shown does
