"""Fakes for provider tests: an upstream that sends bytes the way a network
does, cut at awkward places."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Iterable, Sequence

import httpx

from chat.providers.base import ChatRequest, Finish, Item, ProviderError, Turn, Usage


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


async def collect(stream: AsyncIterator[Item]) -> tuple[list[str], Finish]:
    texts, finish, _ = await collect_all(stream)
    return texts, finish


async def collect_all(stream: AsyncIterator[Item]) -> tuple[list[str], Finish, list[Usage]]:
    """The texts, the Finish, and the `Usage` items told on the way (counts so far: each at
    least the one before)."""
    texts: list[str] = []
    finish: Finish | None = None
    usages: list[Usage] = []
    async for item in stream:
        assert finish is None, "nothing may follow the Finish"
        if isinstance(item, Finish):
            finish = item
        elif isinstance(item, Usage):
            assert not usages or usages[-1] != item, "a Usage is told when it changes"
            usages.append(item)
        else:
            assert isinstance(item, str) and item
            texts.append(item)
    assert finish is not None, "the stream must end with a Finish"
    return texts, finish, usages


def event_stream(response_body: FakeBody, content_type: str = "text/event-stream") -> httpx.Response:
    return httpx.Response(200, headers={"content-type": content_type}, stream=response_body)


Step = str | Finish | Usage | ProviderError | float


class FakeClock:
    """A monotonic clock that moves only when told to, and a sleep that moves it."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []
        self.log: list[str] = []  # sleeps and closings, in order, shared with ScriptedProvider

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.log.append(f"sleep {seconds:g}")
        self.now += seconds


class ScriptedProvider:
    """A provider whose every call plays the next script: text, `Usage` and `Finish` are
    yielded, a `ProviderError` is raised, a float moves the fake clock on (an attempt taking
    time)."""

    def __init__(
        self,
        *scripts: Sequence[Step],
        name: str = "fake",
        default_model: str = "fake-1",
        clock: FakeClock | None = None,
    ) -> None:
        self.name = name
        self.default_model = default_model
        self.scripts = list(scripts)
        self.requests: list[ChatRequest] = []
        self.closed = 0  # streams whose cleanup ran
        self.clock = clock

    @property
    def calls(self) -> int:
        return len(self.requests)

    async def stream(self, request: ChatRequest) -> AsyncIterator[Item]:
        self.requests.append(request)
        script = self.scripts.pop(0)
        try:
            for step in script:
                await asyncio.sleep(0)
                if isinstance(step, ProviderError):
                    raise step
                if isinstance(step, float):
                    assert self.clock is not None
                    self.clock.now += step
                    continue
                yield step
        finally:
            self.closed += 1
            if self.clock is not None:
                self.clock.log.append(f"closed {self.name} {len(self.requests)}")
