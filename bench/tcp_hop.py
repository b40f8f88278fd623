"""The least any relay process can cost: bytes copied between two sockets, nothing parsed.

Run on the relay core in front of the fake provider, it shows what the machine
itself charges for one more process in the path — the cross-core wake-up per
token, the CPU a wake-up costs on this kernel or VM — so the other relays'
figures can be read against it rather than against zero.
"""

from __future__ import annotations

import argparse
import asyncio
from typing import cast

from fake_provider import run


class Pipe(asyncio.Protocol):
    """One side of a proxied connection; `peer` is the other side."""

    def __init__(self, peer: Pipe | None = None) -> None:
        self.peer = peer
        self.transport: asyncio.Transport | None = None
        self.early: list[bytes] = []  # downstream bytes that came before the upstream connection

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.write(data)
        else:
            self.early.append(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.close()

    def pause_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.resume_reading()


class Downstream(Pipe):
    def __init__(self, upstream_port: int) -> None:
        super().__init__()
        self.upstream_port = upstream_port

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        asyncio.ensure_future(self.connect())

    async def connect(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            _, upstream = await loop.create_connection(lambda: Pipe(self), "127.0.0.1", self.upstream_port)
        except OSError:
            assert self.transport is not None
            self.transport.close()
            return
        self.peer = upstream
        for data in self.early:
            self.data_received(data)
        self.early.clear()


async def serve(port: int, upstream_port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Downstream(upstream_port), "127.0.0.1", port, backlog=8192)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="A TCP pass-through: the floor for any relay process.")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream-port", type=int, required=True)
    parser.add_argument("--loop", choices=("auto", "asyncio", "uvloop"), default="auto")
    args = parser.parse_args()
    run(serve(args.port, args.upstream_port), args.loop)
