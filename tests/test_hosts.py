"""Only our own Host names are served: what stops a DNS-rebinding page."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from chat.config import Settings
from chat.hosts import AllowedHosts, host_name
from tests.live import serve

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize(
    ("value", "name"),
    [
        ("localhost:8000", "localhost"),
        ("127.0.0.1", "127.0.0.1"),
        ("[::1]:8000", "::1"),
        ("::1", "::1"),
        ("API.Example", "api.example"),
    ],
)
def test_host_names_lose_their_port_and_case(value: str, name: str) -> None:
    assert host_name(value) == name


def scope(host: bytes | None) -> dict[str, object]:
    return {"type": "http", "path": "/api/conversations", "headers": [(b"host", host)] if host else []}


def test_the_local_names_and_the_bind_address_are_served_and_no_others() -> None:
    hosts = AllowedHosts(Settings(host="10.0.0.5"))
    for served in (b"localhost:8000", b"127.0.0.1:8000", b"[::1]:8000", b"10.0.0.5:8000"):
        assert hosts.allow(scope(served)), served
    for refused in (b"evil.example", b"evil.example:8000", b"127.0.0.1.evil.example", None):
        assert not hosts.allow(scope(refused)), refused


def test_allowed_hosts_adds_names_and_star_allows_any() -> None:
    assert AllowedHosts(Settings(allowed_hosts=("chat.internal",))).allow(scope(b"chat.internal:443"))
    assert AllowedHosts(Settings(allowed_hosts=("*",))).allow(scope(b"anything.example"))


def test_allowed_hosts_is_read_from_the_environment() -> None:
    assert Settings.from_env({"SIDECHAT_ALLOWED_HOSTS": "a.example, b.example"}).allowed_hosts == (
        "a.example",
        "b.example",
    )


async def test_a_foreign_host_gets_400_but_the_probes_answer(tmp_path: Path) -> None:
    async with serve(Settings(db=str(tmp_path / "chat.db"), demo_delay=0)) as url:
        async with httpx.AsyncClient(base_url=url, timeout=10) as client:
            foreign = {"host": "rebound.evil.example"}
            refused = await client.post("/api/chat", json={"message": "hi"}, headers=foreign)
            listed = await client.get("/api/conversations", headers=foreign)
            probes = [await client.get(path, headers=foreign) for path in ("/healthz", "/readyz")]
            own = await client.get("/api/conversations")
    assert refused.status_code == listed.status_code == 400
    assert refused.json()["error"]["type"] == "invalid_host"
    assert [p.status_code for p in probes] == [200, 200]
    assert own.status_code == 200 and own.json()["conversations"] == []  # nothing was stored
