"""sidechat installed as users install it: `pip install .` into a new virtualenv, not editable,
then served from a directory that has nothing of the checkout in it."""

from __future__ import annotations

import venv
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from tests.live import chat_stream
from tests.processes import ROOT, free_port, run, running

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
async def installed(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Path]:
    """The bin directory of a fresh virtualenv with sidechat installed from this checkout."""
    home = tmp_path_factory.mktemp("venv")
    venv.create(home, with_pip=True)
    pip = [str(home / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    result = await run([*pip, str(ROOT)], cwd=home, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    yield home / "bin"


async def test_the_wheel_serves_the_api_and_the_page_from_anywhere(installed: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    port = free_port()
    command = [str(installed / "sidechat"), "serve", "--port", str(port)]
    env = {"SIDECHAT_DEMO_DELAY": "0", "PYTHONPATH": ""}
    async with running(command, port=port, env=env, log=tmp_path / "server.log", cwd=elsewhere) as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
            transcript = await chat_stream(client, {"message": "hi"})
            page = await client.get("/")
    assert transcript.names[0] == "start" and transcript.names[-1] == "done"
    assert "Demo reply" in transcript.text
    assert transcript.terminal.data["cost_usd"] == 0.0  # priced by the table the wheel ships
    assert page.status_code == 200 and "<title>sidechat</title>" in page.text
    assert (elsewhere / "sidechat.db").exists()  # the default database is where it runs


async def test_the_wheel_installs_the_package_and_no_top_level_app(installed: Path, tmp_path: Path) -> None:
    python = str(installed / "python")
    found = await run(
        [python, "-c", "import chat.app, importlib.util; print(importlib.util.find_spec('app'))"],
        cwd=tmp_path,
    )
    assert found.returncode == 0, found.stderr
    assert found.stdout.strip() == "None"
    assert (await run([python, "-m", "chat", "--version"], cwd=tmp_path)).stdout.startswith("sidechat ")
    priced = await run(
        [
            python,
            "-c",
            "import chat.prices as p; print(p.resource('prices.toml'), p.built_in().price_of('openai', 'gpt-4o-mini'))",
        ],
        cwd=tmp_path,
    )
    assert priced.returncode == 0, priced.stderr
    shipped, price = priced.stdout.strip().split(" ", 1)
    assert shipped.endswith("site-packages/chat/prices.toml") and price.startswith("Price(input=0.15")


async def test_an_installation_without_its_schema_says_so(installed: Path, tmp_path: Path) -> None:
    python = str(installed / "python")
    where = await run([python, "-c", "import chat, os; print(os.path.dirname(chat.__file__))"], cwd=tmp_path)
    schema = Path(where.stdout.strip()) / "schema.sql"
    kept = schema.read_bytes()
    schema.unlink()
    try:
        result = await run(
            [
                str(installed / "sidechat"),
                "serve",
                "--port",
                str(free_port()),
                "--db",
                str(tmp_path / "x.db"),
            ],
            cwd=tmp_path,
            timeout=20,
        )
    finally:
        schema.write_bytes(kept)
    assert result.returncode != 0
    reason = f"sidechat cannot start: this installation of sidechat is incomplete: schema.sql is missing from {schema.parent}"
    errors = [line for line in result.stderr.splitlines() if "cannot start" in line]
    assert len(errors) == 1 and errors[0].endswith(reason)
    assert "Traceback" not in result.stderr
