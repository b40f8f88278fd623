"""A fake LLM provider that is never the bottleneck: raw asyncio, one write per token.

`POST …/chat/completions` answers OpenAI chunks ended by `data: [DONE]`;
`POST …/messages` answers Anthropic's named events ended by `message_stop`;
`GET /stats` answers counters as JSON, `GET /healthz` 200. Each token is one chunk of a chunked
body, written with one `transport.write()`.

The knobs ride in the last user message, so the load generator sets them per
request and neither this server nor the relay in front of it is restarted:
`bench:tokens=200,first_ms=0,gap_ms=20,stamp=1` (anything after a space is
ignored). With `stamp=1` each token's text is `@<CLOCK_MONOTONIC ns> `, taken
just before the write, so a client on the same machine measures per-token
latency; otherwise token i is `w<i> `, so a stored reply can be checked.

Deliberate choices:
- Tokens are scheduled on an absolute clock (start + i * gap) so the offered
  rate does not drift with timer overhead.
- With no gap we still yield to the loop every few tokens and respect the
  transport's flow control, so 50 zero-delay streams share the server fairly.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import cast

HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\ntransfer-encoding: chunked\r\n\r\n"
END = b"0\r\n\r\n"
BURST = 16  # zero-gap streams yield to the loop after this many tokens

_OPENAI_CHUNK = (
    b'{"id":"chatcmpl-bench","object":"chat.completion.chunk","created":0,"model":"bench","choices":['
)


@dataclass(frozen=True)
class Form:
    """A provider's stream: what comes first, what goes around each token's text, what ends it."""

    head: bytes
    before: bytes
    after: bytes
    tail: bytes  # %-formatted with the output token count (and the total, for OpenAI)


OPENAI = Form(
    head=b"data: "
    + _OPENAI_CHUNK
    + b'{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}\n\n',
    before=b"data: " + _OPENAI_CHUNK + b'{"index":0,"delta":{"content":"',
    after=b'"},"finish_reason":null}]}\n\n',
    tail=(
        b"data: " + _OPENAI_CHUNK + b'{"index":0,"delta":{},"finish_reason":"stop"}]}\n\n'
        b"data: " + _OPENAI_CHUNK.removesuffix(b"[") + b'[],"usage":'
        b'{"prompt_tokens":10,"completion_tokens":%d,"total_tokens":%d}}\n\ndata: [DONE]\n\n'
    ),
)
ANTHROPIC = Form(
    head=(
        b'event: message_start\ndata: {"type":"message_start","message":{"id":"msg_bench","type":"message",'
        b'"role":"assistant","model":"bench","content":[],"stop_reason":null,'
        b'"usage":{"input_tokens":10,"output_tokens":1}}}\n\n'
        b"event: content_block_start\n"
        b'data: {"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}\n\n'
    ),
    before=b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"',
    after=b'"}}\n\n',
    tail=(
        b'event: content_block_stop\ndata: {"type":"content_block_stop","index":0}\n\n'
        b'event: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},'
        b'"usage":{"output_tokens":%d}}\n\n'
        b'event: message_stop\ndata: {"type":"message_stop"}\n\n'
    ),
)


@dataclass
class Knobs:
    tokens: int = 20
    first_ms: float = 0.0
    gap_ms: float = 0.0
    stamp: bool = False


def parse_knobs(body: bytes) -> Knobs:
    knobs = Knobs()
    start = body.rfind(b"bench:")
    if start < 0:
        return knobs
    end = min(i for i in (body.find(b" ", start), body.find(b'"', start), len(body)) if i >= 0)
    for pair in body[start + 6 : end].decode().split(","):
        name, _, value = pair.partition("=")
        if name == "tokens":
            knobs.tokens = int(value)
        elif name in ("first_ms", "gap_ms"):
            setattr(knobs, name, float(value))
        elif name == "stamp":
            knobs.stamp = value == "1"
    return knobs


def content_length(head: bytes) -> int:
    at = head.find(b"content-length:")
    if at < 0:
        return 0
    end = head.find(b"\r\n", at)
    return int(head[at + 15 : end if end >= 0 else len(head)])


def chunk(payload: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(payload), payload)


class Stats:
    def __init__(self) -> None:
        self.connections = self.open = self.requests = self.tokens = 0


class Connection(asyncio.Protocol):
    def __init__(self, stats: Stats) -> None:
        self.stats = stats
        self.buffer = bytearray()
        self.reply: asyncio.Task[None] | None = None
        self.writable = asyncio.Event()
        self.writable.set()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no asyncio.Transport subclass
        self.stats.connections += 1
        self.stats.open += 1

    def connection_lost(self, exc: Exception | None) -> None:
        self.stats.open -= 1
        self.writable.set()
        if self.reply is not None:
            self.reply.cancel()

    def pause_writing(self) -> None:
        self.writable.clear()

    def resume_writing(self) -> None:
        self.writable.set()

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if self.reply is None:
            self.take_request()

    def take_request(self) -> None:
        buffer = self.buffer
        end = buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        head = bytes(buffer[:end]).lower()
        length = content_length(head)
        if len(buffer) < end + 4 + length:
            return
        body = bytes(buffer[end + 4 : end + 4 + length])
        del buffer[: end + 4 + length]
        path = head.split(b" ", 2)[1].split(b"?")[0]
        self.stats.requests += 1
        if path.endswith(b"/chat/completions"):
            self.reply = asyncio.ensure_future(self.stream(OPENAI, parse_knobs(body)))
        elif path.endswith(b"/messages"):
            self.reply = asyncio.ensure_future(self.stream(ANTHROPIC, parse_knobs(body)))
        else:
            self.answer(path)

    def answer(self, path: bytes) -> None:
        assert self.transport is not None
        if path == b"/stats":
            status, body = b"200 OK", json.dumps(vars(self.stats)).encode()
        elif path == b"/healthz":
            status, body = b"200 OK", b'{"status":"ok"}'
        else:
            status, body = b"404 Not Found", b"{}"
        self.transport.write(
            b"HTTP/1.1 %b\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%b"
            % (status, len(body), body)
        )
        if self.buffer:
            self.take_request()

    async def stream(self, form: Form, knobs: Knobs) -> None:
        transport = self.transport
        assert transport is not None
        before, after = form.before, form.after
        transport.write(HEAD + chunk(form.head))
        loop = asyncio.get_running_loop()
        start = loop.time() + knobs.first_ms / 1000
        gap = knobs.gap_ms / 1000
        stamp = knobs.stamp
        stats = self.stats
        try:
            for i in range(knobs.tokens):
                if gap or i == 0:
                    delay = start + i * gap - loop.time()
                    if delay > 0:
                        await asyncio.sleep(delay)
                elif i % BURST == 0:
                    await asyncio.sleep(0)
                if not self.writable.is_set():
                    await self.writable.wait()
                if transport.is_closing():
                    return
                text = b"@%d " % time.monotonic_ns() if stamp else b"w%d " % i
                payload = before + text + after
                transport.write(b"%x\r\n%b\r\n" % (len(payload), payload))
                stats.tokens += 1
            counts = (knobs.tokens, knobs.tokens + 10) if form is OPENAI else (knobs.tokens,)
            transport.write(chunk(form.tail % counts) + END)
        finally:
            self.reply = None
        if self.buffer:
            self.take_request()


async def serve(host: str, port: int, ready: str | None) -> None:
    stats = Stats()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Connection(stats), host, port, backlog=8192)
    bound = server.sockets[0].getsockname()[1]
    print(f"fake provider listening on http://{host}:{bound}", flush=True)
    if ready:
        Path(ready).write_text(str(bound))
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description="A fake OpenAI/Anthropic streaming provider for benchmarks.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--loop", choices=("auto", "asyncio", "uvloop"), default="auto")
    parser.add_argument("--ready-file", help="write the bound port here once listening")
    args = parser.parse_args()
    run(serve(args.host, args.port, args.ready_file), args.loop)


def run(coroutine: object, loop: str) -> None:
    if loop != "asyncio":
        try:
            import uvloop

            uvloop.run(coroutine)  # type: ignore[arg-type]
            return
        except ImportError:
            if loop == "uvloop":
                raise
    asyncio.run(coroutine)  # type: ignore[arg-type]


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        pass
