"""Fixtures for provider tests; the fakes themselves are in `fakes.py`."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable

import httpx
import pytest
import respx

from .fakes import frame

Framing = Callable[[bytes], list[bytes]]

FRAMINGS = [
    ("whole", b"\n"),
    ("bytes", b"\n"),
    ("random", b"\n"),
    ("bytes", b"\r\n"),
    ("random", b"\r\n"),
]


@pytest.fixture(params=FRAMINGS, ids=lambda p: f"{p[0]}-{p[1]!r}")
def framing(request: pytest.FixtureRequest) -> Framing:
    split, newline = request.param
    return lambda data: frame(data, split, newline, seed=len(data))


@pytest.fixture
def router() -> Iterable[respx.MockRouter]:
    with respx.MockRouter(assert_all_called=False, assert_all_mocked=True) as mock:
        yield mock


@pytest.fixture
async def client(router: respx.MockRouter) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=httpx.MockTransport(router.async_handler)) as c:
        yield c
