"""The official OpenAI SDK pointed at a real sidechat, and each provider's fake reply.

The SDK is the client a user of the `/v1` door has, so the tests use it as it is
used: its exceptions, its retries, its stream reader. Each adapter's fake reply is the
byte stream its real API sends (`tests/fakeupstream.py`, `tests/test_live_providers.py`).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai

from chat.config import Settings
from tests.fakeupstream import FakeUpstream, Reply, Step, openai_reply
from tests.live import serve
from tests.test_live_providers import anthropic_reply, gemini_chunk, ollama_line

NDJSON = {"content-type": "application/x-ndjson"}


@dataclass(frozen=True)
class Fake:
    """A provider pointed at the fake upstream, and its reply of `Hello` in two pieces."""

    name: str
    model: str  # as the provider names its default
    settings: dict[str, Any]
    reply: Reply
    usage: tuple[int, int]  # what the fake reply counts: prompt, completion


def fakes(url: str) -> list[Fake]:
    gemini: list[Step] = [gemini_chunk("Hel"), gemini_chunk("lo", finish="STOP")]
    ollama: list[Step] = [ollama_line("Hel"), ollama_line("lo"), ollama_line("", done=True)]
    return [
        Fake(
            "openai",
            "gpt-4o-mini",
            {"openai_api_key": "sk-test", "openai_base_url": url},
            Reply(openai_reply("Hel", "lo", usage=(12, 2))),
            (12, 2),
        ),
        Fake(
            "anthropic",
            "claude-sonnet-4-5",
            {"anthropic_api_key": "sk-ant-test", "anthropic_base_url": url},
            Reply(anthropic_reply("Hel", "lo", usage=(25, 15))),
            (25, 15),
        ),
        Fake(
            "gemini",
            "gemini-2.5-flash",
            {"gemini_api_key": "AIza-test-key", "gemini_base_url": url},
            Reply(gemini),
            (8, 3),
        ),
        Fake("ollama", "llama3.2", {"ollama_base_url": url}, Reply(ollama, headers=NDJSON), (26, 3)),
    ]


def settings_in(tmp_path: Path, upstream: FakeUpstream, **changes: Any) -> Settings:
    """sidechat with the openai provider on the fake upstream, as the default."""
    values: dict[str, Any] = {
        "db": str(tmp_path / "chat.db"),
        "provider": "openai",
        "openai_api_key": "sk-test",
        "openai_base_url": upstream.url,
        "demo_delay": 0.0,
        "heartbeat_seconds": 5.0,
        "shutdown_grace_seconds": 0.5,
        "retry_attempts": 1,
        **changes,
    }
    return Settings(**values)


@dataclass
class Door:
    """sidechat's URL, the SDK on its /v1, and a plain client of its native API."""

    url: str
    sdk: openai.AsyncOpenAI
    http: httpx.AsyncClient


@contextlib.asynccontextmanager
async def door(
    settings: Settings, *, api_key: str = "not-a-key", max_retries: int = 0
) -> AsyncIterator[Door]:
    async with serve(settings) as url:
        sdk = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=api_key, max_retries=max_retries, timeout=10)
        headers = {"authorization": f"Bearer {api_key}"}
        async with sdk, httpx.AsyncClient(base_url=url, timeout=10, headers=headers) as http:
            yield Door(url, sdk, http)


USER = [{"role": "user", "content": "Say hello"}]
