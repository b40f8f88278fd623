"""Fakes for provider tests: an upstream that sends bytes the way a network
does, cut at awkward places."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Iterable

import httpx

from chat.providers.base import ChatRequest, Finish, Turn


class FakeBody(httpx.AsyncByteStream):
    """A response body sent piece by piece, that can stall and records its closing."""

    def __init__(
        self,
        chunks: Iterable[bytes],
        *,
        hang: bool = False,
        stall_before: int | None = None,
        stall: float = 3600.0,
    ) -> None:
        self.chunks = list(chunks)
        self.hang = hang  # after the last chunk, keep the connection open forever
        self.stall_before = stall_before  # index of the chunk to hold back
        self.stall = stall
        self.sent = 0
        self.closed = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for index, chunk in enumerate(self.chunks):
            if index == self.stall_before:
                await asyncio.sleep(self.stall)
            await asyncio.sleep(0)  # a network read is a suspension point
            self.sent += 1
            yield chunk
        if self.hang:
            await asyncio.Event().wait()

    async def aclose(self) -> None:
        self.closed = True


def frame(data: bytes, split: str, newline: bytes = b"\n", *, seed: int = 0) -> list[bytes]:
    if newline != b"\n":
        data = data.replace(b"\n", newline)
    if split == "whole":
        return [data]
    if split == "bytes":
        return [data[i : i + 1] for i in range(len(data))]
    rng = random.Random(seed)
    out, i = [], 0
    while i < len(data):
        n = rng.randint(1, 23)
        out.append(data[i : i + n])
        i += n
    return out


def chat_request(
    message: str = "Say hello",
    *,
    model: str = "",
    system: str | None = None,
    temperature: float | None = None,
    max_tokens: int | None = None,
    history: list[Turn] | None = None,
) -> ChatRequest:
    return ChatRequest(
        model=model,
        turns=[*(history or []), Turn("user", message)],
        system=system,
        temperature=temperature,
        max_tokens=max_tokens,
    )


async def collect(stream: AsyncIterator[str | Finish]) -> tuple[list[str], Finish]:
    texts: list[str] = []
    finish: Finish | None = None
    async for item in stream:
        assert finish is None, "nothing may follow the Finish"
        if isinstance(item, Finish):
            finish = item
        else:
            assert isinstance(item, str) and item
            texts.append(item)
    assert finish is not None, "the stream must end with a Finish"
    return texts, finish


def event_stream(
    response_body: FakeBody, content_type: str = "text/event-stream"
) -> httpx.Response:
    return httpx.Response(200, headers={"content-type": content_type}, stream=response_body)
