"""The floor: the least a relay on sidechat's stack can do. Raw ASGI on uvicorn, httpx over aiohttp.

No framework, no parsing, no database, no fan-out, no heartbeat: a request's body goes
upstream as it came (to the same path on the provider), and the provider's bytes come
back as they arrive, one `send` per read. Whatever sidechat costs beyond this is
sidechat's own; the client reads the provider's format through it, as through `hop`.
"""

from __future__ import annotations

import argparse

import aiohttp
import httpx
import uvicorn
from httpx_aiohttp import AiohttpTransport

HEADERS = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]


class Floor:
    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.client: httpx.AsyncClient | None = None

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "lifespan":
            await self.lifespan(receive, send)
        elif scope["path"] == "/healthz":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"ok"})
        else:
            await self.relay(scope, receive, send)

    async def lifespan(self, receive, send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                # As sidechat's transport: no connection limit, so no stream queues behind another.
                session = aiohttp.ClientSession(
                    connector=aiohttp.TCPConnector(limit=0), auto_decompress=False
                )
                self.client = httpx.AsyncClient(transport=AiohttpTransport(client=session), timeout=600)
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                assert self.client is not None
                await self.client.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def relay(self, scope, receive, send) -> None:
        body, more = b"", True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        assert self.client is not None
        headers = {"content-type": "application/json", "authorization": "Bearer x", "x-api-key": "x"}
        url = self.upstream + scope["path"]
        async with self.client.stream("POST", url, content=body, headers=headers) as response:
            await send({"type": "http.response.start", "status": response.status_code, "headers": HEADERS})
            async for chunk in response.aiter_raw():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b""})


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="The floor relay, for comparison.")
    parser.add_argument("--port", type=int, default=8002)
    parser.add_argument("--upstream-port", type=int, required=True)
    parser.add_argument("--loop", default="auto")
    parser.add_argument("--http", default="auto")
    args = parser.parse_args()
    floor = Floor(f"http://127.0.0.1:{args.upstream_port}")
    uvicorn.run(
        floor,
        host="127.0.0.1",
        port=args.port,
        loop=args.loop,
        http=args.http,
        log_level="warning",
        backlog=8192,
    )
