"""The offline provider: a deterministic markdown reply, streamed with pacing.

It exists so the service, the page and `curl -N` work on a fresh machine with
no key and no network. The reply is a pure function of the last user turn
(`demo_reply`), so tests can compare against it; it is cut into word-sized
pieces that keep their leading whitespace, so the deltas join back exactly.
Its tokens are words: the prompt's, told before the first piece (so a cancelled
demo reply has a usage, as a real one does), and the pieces, told at the end.
It ignores tools (it answers in text, as a model that chose to call none), stop
sequences and sampling: it is a stand-in, not a model.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator

from .base import ChatRequest, Finish, Usage

DEFAULT_MODEL = "demo-1"
_QUOTE_LIMIT = 60
_PIECE = re.compile(r"\s*\S+|\s+")


def demo_reply(prompt: str) -> str:
    said = " ".join(prompt.split())
    if len(said) > _QUOTE_LIMIT:
        said = said[:_QUOTE_LIMIT].rstrip() + "…"
    said = said.replace("`", "'") or "(nothing)"
    words = len(prompt.split())
    return (
        "## Demo reply\n"
        "\n"
        f"You said: *“{said}”*. This answer comes from sidechat's offline demo "
        "provider, so it is the same every time and needs no network or API key.\n"
        "\n"
        "- It streams one word at a time, like a real model.\n"
        f"- Your message had {words} word{'s' if words != 1 else ''}.\n"
        "- Set `OPENAI_API_KEY`, `ANTHROPIC_API_KEY` or `GEMINI_API_KEY` for real answers.\n"
        "\n"
        "```python\n"
        "def greet(name: str) -> str:\n"
        '    return f"Hello, {name}!"\n'
        "\n"
        'print(greet("sidechat"))\n'
        "```\n"
    )


def split_pieces(text: str) -> list[str]:
    return _PIECE.findall(text)


class DemoProvider:
    def __init__(self, *, delay: float = 0.02, default_model: str | None = None) -> None:
        self.name = "demo"
        self.default_model = default_model or DEFAULT_MODEL
        self._delay = delay

    def __repr__(self) -> str:
        return f"DemoProvider(delay={self._delay!r})"

    async def stream(self, request: ChatRequest) -> AsyncIterator[str | Finish | Usage]:
        prompt = next((t.content for t in reversed(request.turns) if t.role == "user"), "")
        pieces = split_pieces(demo_reply(prompt))
        words = len((request.system or "").split()) + sum(len(t.content.split()) for t in request.turns)
        yield Usage(input_tokens=words, output_tokens=0)  # the prompt's count first, as Anthropic's
        for piece in pieces:
            await asyncio.sleep(self._delay)
            yield piece
        yield Finish("stop", Usage(input_tokens=words, output_tokens=len(pieces)))
