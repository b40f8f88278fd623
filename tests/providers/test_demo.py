from __future__ import annotations

import asyncio
import time

import pytest

from chat.providers.base import Finish, Turn, Usage
from chat.providers.demo import DemoProvider, demo_reply, split_pieces

from .fakes import chat_request, collect, collect_all

pytestmark = pytest.mark.anyio


def test_reply_is_deterministic_markdown_quoting_the_prompt() -> None:
    reply = demo_reply("How do I reverse a list in Python?")
    assert reply == demo_reply("How do I reverse a list in Python?")
    assert reply.startswith("## ")
    assert "How do I reverse a list in Python?" in reply
    assert "\n- " in reply
    assert "```python\n" in reply and reply.rstrip().endswith("```")
    assert reply != demo_reply("Something else")


def test_long_prompt_is_quoted_by_a_prefix() -> None:
    prompt = "word " * 100
    reply = demo_reply(prompt)
    assert "word word" in reply
    assert prompt.strip() not in reply


@pytest.mark.parametrize("text", ["", "  lead", "a  b\n\nc ", "## Title\n\n- x\n", "\n"])
def test_pieces_join_back_exactly(text: str) -> None:
    assert "".join(split_pieces(text)) == text
    assert all(split_pieces(text))


async def test_streams_the_reply_token_by_token() -> None:
    request = chat_request(
        "Tell me a joke",
        system="Be kind.",
        history=[Turn("user", "Hi there"), Turn("assistant", "Hello")],
    )
    texts, finish = await collect(DemoProvider(delay=0).stream(request))
    assert "".join(texts) == demo_reply("Tell me a joke")
    assert len(texts) > 20
    assert finish == Finish("stop", Usage(input_tokens=2 + 2 + 1 + 4, output_tokens=len(texts)))


async def test_paces_tokens_with_the_delay() -> None:
    started = time.monotonic()
    texts, _ = await collect(DemoProvider(delay=0.002).stream(chat_request("Hi")))
    assert time.monotonic() - started >= 0.002 * len(texts)


async def test_tells_the_prompts_count_before_its_first_piece() -> None:
    texts, finish, usages = await collect_all(DemoProvider(delay=0).stream(chat_request("Say hi now")))
    assert usages == [Usage(input_tokens=3, output_tokens=0)]
    assert finish.usage == Usage(input_tokens=3, output_tokens=len(texts))


async def test_can_be_cancelled_mid_stream() -> None:
    stream = DemoProvider(delay=10).stream(chat_request("Hi"))
    assert await anext(stream) == Usage(input_tokens=1, output_tokens=0)  # told at once
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.05):
            await anext(stream)
    await stream.aclose()  # type: ignore[attr-defined]


def test_names_and_default_model() -> None:
    provider = DemoProvider(default_model="demo-2")
    assert (provider.name, provider.default_model) == ("demo", "demo-2")
    assert DemoProvider().default_model == "demo-1"
