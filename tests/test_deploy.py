"""deploy/sidechat.service: systemd accepts it without a warning, its hardening scores as
`systemd-analyze security` says is OK, and what it says of sidechat holds: the command it
starts, where the database goes, and a stop timeout a stop with replies running fits in."""

from __future__ import annotations

import asyncio
import shutil
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from chat.config import Settings
from tests.fakeupstream import FakeUpstream, Reply, openai_chunk
from tests.live import EventReader
from tests.processes import ROOT, free_port, run, running
from tests.test_cli import SIDECHAT
from tests.test_live_durability import pointed_at

pytestmark = pytest.mark.anyio

UNIT = ROOT / "deploy" / "sidechat.service"
INSTALLED = "/opt/sidechat/bin/sidechat"  # where the unit expects the console script
ANALYZE = shutil.which("systemd-analyze")


def entries(text: str) -> list[tuple[str, str, str]]:
    """(section, key, value) for each setting, in order; a key may come more than once."""
    found, section = [], ""
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        key, equals, value = line.partition("=")
        assert equals and key.strip() and section, f"line {number} is not a setting: {raw!r}"
        found.append((section, key.strip(), value.strip()))
    return found


def settings(section: str) -> dict[str, list[str]]:
    chosen: dict[str, list[str]] = {}
    for where, key, value in entries(UNIT.read_text()):
        if where == section:
            chosen.setdefault(key, []).append(value)
    return chosen


SERVICE = settings("Service")


def one(key: str) -> str:
    (value,) = SERVICE[key]
    return value


def installed(tmp_path: Path, text: str | None = None) -> Path:
    """The unit as installed here: ExecStart names this checkout's console script, which
    systemd-analyze checks is there and executable."""
    text = UNIT.read_text() if text is None else text
    assert text.count(INSTALLED) == 1
    unit = tmp_path / "sidechat.service"
    unit.write_text(text.replace(INSTALLED, SIDECHAT))
    return unit


async def verify(unit: Path) -> subprocess.CompletedProcess[str]:
    assert ANALYZE is not None
    return await run([ANALYZE, "verify", str(unit)], cwd=unit.parent)


async def test_systemd_accepts_the_unit_without_a_word(tmp_path: Path) -> None:
    if ANALYZE is None:
        # Without systemd here, at least every line is a section, a comment or a setting.
        assert {section for section, _, _ in entries(UNIT.read_text())} == {"Unit", "Service", "Install"}
        return
    result = await verify(installed(tmp_path))
    assert result.returncode == 0 and result.stdout + result.stderr == "", result.stderr
    # The check can fail: a misspelt key is only a warning, and the test sees it.
    broken = await verify(
        installed(tmp_path, UNIT.read_text().replace("NoNewPrivileges=", "NoNewPrivilege="))
    )
    assert "Unknown key 'NoNewPrivilege'" in broken.stderr


async def test_its_hardening_is_rated_ok_by_systemd(tmp_path: Path) -> None:
    hardening = ["NoNewPrivileges", "PrivateTmp", "ProtectHome", "PrivateDevices", "RestrictSUIDSGID"]
    assert all(SERVICE[key] == ["yes"] for key in hardening)
    assert SERVICE["ProtectSystem"] == ["strict"] and SERVICE["CapabilityBoundingSet"] == [""]
    if ANALYZE is None:
        return
    # The threshold is in tenths of the level it prints: 20 is "2.0", the top of what it calls OK.
    result = await run([ANALYZE, "security", "--offline=yes", "--threshold=20", str(installed(tmp_path))])
    assert result.returncode == 0, result.stdout[-2000:]


def test_it_starts_sidechat_serve_as_a_user_of_its_own() -> None:
    assert one("ExecStart") == f"{INSTALLED} serve"
    assert Path(INSTALLED).name == "sidechat"  # the console script pyproject.toml declares
    assert one("User") == one("Group") == "sidechat"
    assert one("Type") == "exec" and one("Restart") == "on-failure"
    assert one("EnvironmentFile") == "/etc/sidechat/env"
    assert settings("Install") == {"WantedBy": ["multi-user.target"]}


def test_the_database_is_in_the_state_directory_it_may_write() -> None:
    state = f"/var/lib/{one('StateDirectory')}"
    assert one("WorkingDirectory") == state and one("ReadWritePaths") == state
    assert one("Environment") == f"SIDECHAT_DB={state}/sidechat.db"


def test_the_stop_timeout_outlasts_the_shutdown_grace() -> None:
    assert one("KillSignal") == "SIGTERM" and one("KillMode") == "mixed"
    # The grace, then the last writes of the replies it cut off: well inside the timeout.
    assert float(one("TimeoutStopSec")) >= Settings().shutdown_grace_seconds + 10


async def test_a_stop_with_a_reply_running_ends_cleanly_inside_the_stop_timeout(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    """SIGTERM, as systemd sends it, with the default grace and a reply that never ends: sidechat
    ends by itself, cleanly, before TimeoutStopSec would kill it."""
    upstream.add(Reply([openai_chunk("never "), asyncio.Event()]))
    port = free_port()
    env = pointed_at(upstream, SIDECHAT_PORT=str(port), SIDECHAT_DB=str(tmp_path / "chat.db"))
    async with running([SIDECHAT, "serve"], port=port, env=env, log=tmp_path / "server.log") as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
            async with client.stream("POST", "/api/chat/stream", json={"message": "hi"}) as response:
                reader = EventReader(response)
                assert (await reader.read(until=2)).names == ["start", "token"]
                stopped = time.monotonic()
                server.process.send_signal(signal.SIGTERM)
                rest = await reader.read()
            status = await asyncio.to_thread(server.process.wait, float(one("TimeoutStopSec")))
            took = time.monotonic() - stopped
    # uvicorn ends a SIGTERM'd process by the same signal once it has shut down; systemd
    # counts death by SIGTERM as a clean stop, so Restart=on-failure leaves it stopped.
    assert status in (0, -signal.SIGTERM), server.output()
    assert took < float(one("TimeoutStopSec"))
    assert rest.terminal.event == "error" and rest.terminal.data["error"]["type"] == "shutdown"
