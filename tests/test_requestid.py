"""X-Request-ID: a sane one is echoed, anything else replaced, on every response."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from chat.config import Settings
from chat.requestid import request_id
from tests.live import serve

pytestmark = pytest.mark.anyio


def scope(*values: bytes) -> dict[str, object]:
    return {"headers": [(b"x-request-id", value) for value in values]}


@pytest.mark.parametrize("value", [b"abc-123", b"req_1.2:3", b"A" * 128])
def test_a_sane_id_is_kept(value: bytes) -> None:
    assert request_id(scope(value)) == value


@pytest.mark.parametrize(
    "value", [b"", b"A" * 129, b"two words", b"line\r\nSet-Cookie: x=1", b"<script>", "caf\u00e9".encode()]
)
def test_anything_else_is_replaced_by_a_fresh_id(value: bytes) -> None:
    made = request_id(scope(value))
    assert made != value and len(made) == 32 and made.isalnum()


def test_each_request_without_one_gets_its_own() -> None:
    assert request_id(scope()) != request_id(scope())


async def test_every_response_carries_it(tmp_path: Path) -> None:
    async with serve(Settings(db=str(tmp_path / "chat.db"), demo_delay=0)) as url:
        async with httpx.AsyncClient(base_url=url, timeout=10) as http:
            for method, path in [("GET", "/healthz"), ("GET", "/api/conversations"), ("GET", "/nowhere")]:
                echoed = await http.request(method, path, headers={"x-request-id": "trace-42"})
                assert echoed.headers["x-request-id"] == "trace-42"
            replaced = await http.get("/api/conversations", headers={"x-request-id": "bad id <x>"})
            assert (
                replaced.headers["x-request-id"] != "bad id <x>"
                and len(replaced.headers["x-request-id"]) == 32
            )
            foreign = await http.get(
                "/api/conversations", headers={"host": "evil.example", "x-request-id": "r1"}
            )
            assert foreign.status_code == 400 and foreign.headers["x-request-id"] == "r1"
            async with http.stream("POST", "/api/chat/stream", json={"message": "hi"}) as stream:
                assert len(stream.headers["x-request-id"]) == 32
                await stream.aread()
