"""sidechat as a whole process: started the ways users start it, stopped with signals."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.live import until

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    url: str
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")


async def healthy(url: str, process: subprocess.Popen[bytes]) -> bool:
    if process.poll() is not None:
        raise AssertionError(f"the server exited with {process.returncode} before it answered")
    async with httpx.AsyncClient() as probe:
        try:
            return (await probe.get(f"{url}/healthz")).status_code == 200
        except httpx.TransportError:
            return False


@asynccontextmanager
async def running(
    command: Sequence[str], *, port: int, env: dict[str, str], log: Path, cwd: Path = ROOT
) -> AsyncIterator[Server]:
    """Start `command`, wait until it answers /healthz on `port`, and kill it after the block."""
    with log.open("wb") as output:
        process = subprocess.Popen(
            list(command), cwd=cwd, env={**os.environ, **env}, stdout=output, stderr=subprocess.STDOUT
        )
    server = Server(process, f"http://127.0.0.1:{port}", log)
    try:
        try:
            await until(lambda: healthy(server.url, process), timeout=30, what="the server to answer")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; its log:\n{server.output()}") from None
        yield server
    finally:
        if process.poll() is None:
            process.kill()
        await asyncio.to_thread(process.wait, 10)


async def run(
    command: Sequence[str], *, env: dict[str, str] | None = None, cwd: Path = ROOT, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    """Run a command that is meant to end by itself, and what it printed."""
    return await asyncio.to_thread(
        subprocess.run,
        list(command),
        cwd=cwd,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
