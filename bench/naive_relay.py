"""The relay our users would otherwise write: Starlette + sse-starlette + httpx.

No database, no replay, no retries: the obvious code, kept as the yardstick.
One concession to fairness: the shared httpx client may open as many upstream
connections as there are streams (httpx's default of 100 would queue the rest).
Configured like sidechat: SIDECHAT_PROVIDER, OPENAI_* / ANTHROPIC_*, and
NAIVE_PING_SECONDS for sse-starlette's heartbeat.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
from collections.abc import AsyncIterator

import httpx
import uvicorn
from sse_starlette.sse import EventSourceResponse
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

ANTHROPIC = os.environ.get("SIDECHAT_PROVIDER") == "anthropic"
PING = float(os.environ.get("NAIVE_PING_SECONDS", "15"))
if ANTHROPIC:
    URL = os.environ.get("ANTHROPIC_BASE_URL", "https://api.anthropic.com") + "/v1/messages"
    HEADERS = {"x-api-key": os.environ.get("ANTHROPIC_API_KEY", ""), "anthropic-version": "2023-06-01"}
else:
    URL = os.environ.get("OPENAI_BASE_URL", "https://api.openai.com/v1") + "/chat/completions"
    HEADERS = {"authorization": f"Bearer {os.environ.get('OPENAI_API_KEY', '')}"}


def text_of(event: dict) -> str | None:
    if ANTHROPIC:
        return event["delta"].get("text") if event.get("type") == "content_block_delta" else None
    return event["choices"][0]["delta"].get("content") if event.get("choices") else None


async def chat_stream(request: Request) -> EventSourceResponse:
    message = (await request.json())["message"]
    body = {
        "model": "gpt-4o-mini",
        "max_tokens": 4096,
        "stream": True,
        "messages": [{"role": "user", "content": message}],
    }
    client: httpx.AsyncClient = request.app.state.client

    async def events() -> AsyncIterator[dict[str, str]]:
        try:
            async with client.stream("POST", URL, json=body, headers=HEADERS) as response:
                async for line in response.aiter_lines():
                    if not line.startswith("data:") or line == "data: [DONE]":
                        continue
                    text = text_of(json.loads(line[5:]))
                    if text:
                        yield {"event": "token", "data": json.dumps({"text": text})}
            yield {"event": "done", "data": "{}"}
        except httpx.HTTPError as exc:
            yield {"event": "error", "data": json.dumps({"error": str(exc)})}

    return EventSourceResponse(events(), ping=PING)


async def healthz(request: Request) -> JSONResponse:
    return JSONResponse({"status": "ok"})


@contextlib.asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    limits = httpx.Limits(max_connections=10_000, max_keepalive_connections=100)
    async with httpx.AsyncClient(timeout=60, limits=limits) as app.state.client:
        yield


app = Starlette(
    routes=[Route("/api/chat/stream", chat_stream, methods=["POST"]), Route("/healthz", healthz)],
    lifespan=lifespan,
)

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="The naive relay, for comparison.")
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--loop", default="auto")
    parser.add_argument("--http", default="auto")
    args = parser.parse_args()
    uvicorn.run(app, host="127.0.0.1", port=args.port, loop=args.loop, http=args.http)
