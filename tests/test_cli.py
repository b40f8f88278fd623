"""The command line, run as users run it: `sidechat`, `python -m chat`, `python app.py`."""

from __future__ import annotations

import sqlite3
import subprocess
from importlib.metadata import version
from pathlib import Path

import httpx
import pytest

from tests.live import chat_stream
from tests.processes import PYTHON, free_port, run, running

pytestmark = pytest.mark.anyio

SIDECHAT = str(Path(PYTHON).parent / "sidechat")  # the console script, beside this Python


@pytest.mark.parametrize("command", [[SIDECHAT], [PYTHON, "-m", "chat"]])
async def test_version(command: list[str]) -> None:
    result = await run([*command, "--version"])
    assert result.returncode == 0
    assert result.stdout.strip() == f"sidechat {version('sidechat')}"


async def test_no_command_prints_the_commands_and_fails() -> None:
    result = await run([SIDECHAT])
    assert result.returncode == 2
    assert "serve" in result.stderr


async def test_the_help_lists_every_command() -> None:
    result = await run([SIDECHAT, "--help"])
    assert result.returncode == 0
    for command in ("serve", "prune", "export", "stats", "backup"):
        assert f"    {command} " in result.stdout, result.stdout


@pytest.mark.parametrize("command", ["prune", "export", "stats", "backup"])
async def test_every_maintenance_command_takes_the_database(command: str) -> None:
    result = await run([PYTHON, "-m", "chat", command, "--help"])
    assert result.returncode == 0 and "--db DB" in result.stdout


async def test_python_app_py_is_serve() -> None:
    result = await run([PYTHON, "app.py", "--help"])
    assert result.returncode == 0
    assert "--db" in result.stdout and "--port" in result.stdout


async def test_serve_listens_where_the_environment_says(tmp_path: Path) -> None:
    port = free_port()
    env = {"SIDECHAT_HOST": "127.0.0.1", "SIDECHAT_PORT": str(port), "SIDECHAT_DB": str(tmp_path / "chat.db")}
    env["SIDECHAT_DEMO_DELAY"] = "0"
    async with running([SIDECHAT, "serve"], port=port, env=env, log=tmp_path / "server.log") as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
            assert (await chat_stream(client, {"message": "hi"})).names[-1] == "done"


async def test_flags_override_the_environment(tmp_path: Path) -> None:
    port = free_port()
    env = {"SIDECHAT_PORT": str(free_port()), "SIDECHAT_DB": str(tmp_path / "unused.db")}
    command = [PYTHON, "-m", "chat", "serve", "--port", str(port), "--db", str(tmp_path / "chat.db")]
    async with running(command, port=port, env=env, log=tmp_path / "server.log"):
        pass
    assert (tmp_path / "chat.db").exists() and not (tmp_path / "unused.db").exists()


async def test_bad_configuration_is_one_line_naming_the_variable(tmp_path: Path) -> None:
    result = await run(
        [SIDECHAT, "serve", "--db", str(tmp_path / "chat.db")], env={"SIDECHAT_PORT": "eighty"}
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "sidechat cannot start: SIDECHAT_PORT='eighty': expected a port number from 1 to 65535"
    ]


@pytest.mark.parametrize("problem", ["not a database", "no such directory", "cannot be written"])
async def test_a_start_up_that_fails_exits_at_once_saying_why(tmp_path: Path, problem: str) -> None:
    if problem == "not a database":
        db = tmp_path / "chat.db"
        db.write_bytes(b"plain text, not SQLite " * 100)
        reason = "is not a SQLite database"
    elif problem == "no such directory":
        db = tmp_path / "missing" / "chat.db"
        reason = "does not exist"
    else:
        db = Path("/proc/sidechat-test.db")  # not writable, even by root
        reason = "cannot be written"
    result = await run([SIDECHAT, "serve", "--port", str(free_port()), "--db", str(db)], timeout=60)
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if "cannot start" in line]
    assert len(errors) == 1 and reason in errors[0] and str(db) in errors[0], result.stderr
    assert "Traceback" not in result.stderr


async def test_a_database_on_a_read_only_filesystem_stops_start_up_saying_so(tmp_path: Path) -> None:
    home = tmp_path / "ro"
    home.mkdir()
    sqlite3.connect(home / "chat.db").close()
    # A read-only bind mount in a namespace of its own: read-only even for root.
    script = (
        f'mount --bind "{home}" "{home}" && mount -o remount,bind,ro "{home}"'
        f' && exec "{SIDECHAT}" serve --port {free_port()} --db "{home}/chat.db"'
    )
    result = await run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script], timeout=20)
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if "cannot start" in line]
    assert len(errors) == 1 and errors[0].endswith(
        f"cannot write to the database {home}/chat.db (SIDECHAT_DB or --db): it is read-only"
    )


async def test_a_database_locked_by_another_process_stops_start_up_saying_so(tmp_path: Path) -> None:
    db = tmp_path / "chat.db"
    sqlite3.connect(db).close()
    hold = "import sqlite3, sys; d = sqlite3.connect(sys.argv[1], isolation_level=None); d.execute('BEGIN EXCLUSIVE'); print('locked', flush=True); sys.stdin.readline()"
    holder = subprocess.Popen(
        [PYTHON, "-c", hold, str(db)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        result = await run(
            [SIDECHAT, "serve", "--port", str(free_port()), "--db", str(db)],
            env={"SIDECHAT_DB_BUSY_TIMEOUT": "0.05"},
            timeout=20,
        )
    finally:
        assert holder.stdin is not None and holder.stdout is not None
        holder.stdin.close()
        holder.wait(10)
        holder.stdout.close()
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if "cannot start" in line]
    assert len(errors) == 1 and str(db) in errors[0] and "SIDECHAT_DB" in errors[0] and "locked" in errors[0]
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "command",
    [["stats"], ["prune", "--days", "1"], ["export", "--conversation", "1"], ["backup", "/tmp/x.db"]],
)
async def test_a_maintenance_command_on_postgresql_points_at_its_own_tools(command: list[str]) -> None:
    ran = await run([PYTHON, "-m", "chat", *command, "--db", "postgresql://sidechat:s3cret@db.example/chat"])
    assert ran.returncode == 2
    assert "is PostgreSQL: use pg_dump" in ran.stderr and "s3cret" not in ran.stderr
    assert len(ran.stderr.strip().splitlines()) == 1
