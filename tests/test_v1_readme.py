"""The README's five lines of the OpenAI SDK, run as they are written against a real sidechat."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import httpx
import pytest

from chat.config import Settings
from tests.live import chat_stream, serve
from tests.processes import ROOT, run

pytestmark = pytest.mark.anyio


def readme_sdk_example() -> str:
    text = (ROOT / "README.md").read_text()
    section = text.split("## The OpenAI-compatible API: `/v1`", 1)[1]
    found = re.search(r"```python\n(.*?)```", section, re.S)
    assert found is not None, "the /v1 section has no python example"
    return found.group(1)


def test_the_example_is_five_lines_of_code() -> None:
    lines = [line for line in readme_sdk_example().splitlines() if line.strip()]
    assert len(lines) == 5 and "127.0.0.1:8000/v1" in lines[1]


async def test_the_readmes_sdk_example_prints_the_reply(tmp_path: Path) -> None:
    async with serve(Settings(db=str(tmp_path / "chat.db"), demo_delay=0)) as url:
        async with httpx.AsyncClient(base_url=url, timeout=10) as http:
            expected = (await chat_stream(http, {"message": "Say hello"})).text  # the demo's reply
        code = readme_sdk_example().replace("http://127.0.0.1:8000", url)
        ran = await run([sys.executable, "-c", code], timeout=60)
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout == expected
