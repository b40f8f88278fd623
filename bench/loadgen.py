"""Load generator: C concurrent SSE streams over a hand-written HTTP/1.1 client.

Each stream is an `asyncio.Protocol` on its own connection. `data_received`
takes one clock reading, undoes the chunked framing and splits events on the
blank line with `bytes.find`; an event is classified by a needle search
(`event: token`, or the provider's own token shape when reading the fake
provider directly) and a stamped token's send time is read with one more
`find` and an `int()`, never a JSON parse. So the client's cost per token is
small and nearly the same whichever server it reads.

Prints one JSON object: the raw samples in microseconds (the runner merges
processes and computes percentiles), counts, errors, its own CPU seconds and
the CLOCK_MONOTONIC times that mark the run, which other processes on this
machine can compare with theirs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import re
import resource
import sys
import time
from collections import Counter
from typing import Any, cast
from urllib.parse import urlsplit

now_ns = time.monotonic_ns

# kind -> (path, token needle, done needle); every kind treats `event: error` as an error
KINDS = {
    "relay": (None, b"event: token", b"event: done"),
    "openai": ("/v1/chat/completions", b'{"content":"', b"data: [DONE]"),
    "anthropic": ("/v1/messages", b'"text_delta"', b"event: message_stop"),
}


def bench_token(index: int) -> str:
    """Stream `index`'s bearer token: one simulated user per stream (run.py writes the tokens file)."""
    return f"bench-token-{index:08d}"


class Run:
    def __init__(self, args: argparse.Namespace) -> None:
        path, self.token_needle, self.done_needle = KINDS[args.kind]
        # Stream i goes to URL i mod n: round robin over the servers given.
        self.servers = []
        for text in args.url:
            url = urlsplit(text)
            self.servers.append(
                (url.hostname or "127.0.0.1", url.port or 80, url.path if path is None else path)
            )
        self.kind = args.kind
        self.tokens = args.tokens
        self.knobs = f"bench:tokens={args.tokens},first_ms={args.first_ms:g},gap_ms={args.gap_ms:g},stamp={int(args.stamp)}"
        self.stamp = args.stamp
        self.tag = args.tag
        self.hold = args.hold
        self.auth = args.auth
        self.errors: Counter[str] = Counter()
        self.ttft: list[int] = []
        self.latency: list[int] = []
        self.starts: list[int] = []
        self.headers: list[int] = []
        self.durations: list[int] = []
        self.gaps: list[int] = []
        self.token_count = 0
        self.pings = 0
        self.completed = 0
        self.first_ns = 0
        self.last_ns = 0

    def server(self, index: int) -> tuple[str, int, str]:
        return self.servers[index % len(self.servers)]

    def request(self, index: int) -> bytes:
        host, port, path = self.server(index)
        message = f"{self.knobs} {self.tag}#{index}"
        if self.kind == "relay":
            body: dict[str, Any] = {"message": message}
        else:
            body = {
                "model": "bench",
                "max_tokens": 4096,
                "stream": True,
                "messages": [{"role": "user", "content": message}],
            }
        data = json.dumps(body).encode()
        auth = ""
        if self.auth == "tokens":
            auth = f"authorization: Bearer {bench_token(index)}\r\n"
        elif self.auth == "header":
            auth = f"x-user: user{index}\r\n"
        return (
            f"POST {path} HTTP/1.1\r\nhost: {host}:{port}\r\ncontent-type: application/json\r\n"
            f"accept: text/event-stream\r\n{auth}content-length: {len(data)}\r\n\r\n"
        ).encode() + data


class Stream(asyncio.Protocol):
    def __init__(self, run: Run, index: int) -> None:
        self.run = run
        self.index = index
        self.began = now_ns()
        self.transport: asyncio.Transport | None = None
        self.raw = bytearray()
        self.sse = bytearray()
        self.head = True
        self.chunked = True
        self.need = 0  # payload bytes left in the current chunk
        self.skip = 0  # CRLF bytes left after it
        self.sep = b""
        self.tokens = 0
        self.last_event = 0
        self.terminal: str | None = None
        self.error: str | None = None
        self.opened: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no asyncio.Transport subclass
        if self.error is not None:  # given up on while connecting
            transport.close()
            return
        self.transport.write(self.run.request(self.index))

    def connection_lost(self, exc: Exception | None) -> None:
        if self.terminal is None and self.error is None and not self.run.hold:
            self.fail(f"closed early: {exc!r}" if exc else "closed before the terminal event")
        if not self.opened.done():
            self.opened.set_result(None)
        if not self.closed.done():
            self.closed.set_result(None)

    def fail(self, reason: str) -> None:
        self.error = reason
        self.run.errors[re.sub(r"\d+", "N", reason)[:100]] += 1  # ids and counts vary: group by kind
        if not self.opened.done():
            self.opened.set_result(None)
        if self.transport is not None:
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        now = now_ns()
        raw = self.raw
        raw += data
        if self.head:
            end = raw.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(raw[:end]).lower()
            del raw[: end + 4]
            self.head = False
            self.chunked = b"transfer-encoding: chunked" in head
            status = int(head[9:12])
            self.run.headers.append((now - self.began) // 1000)
            self.last_event = now
            if status != 200:
                return self.fail(f"http {status}")
            if not self.opened.done():
                self.opened.set_result(None)
        if self.chunked:
            ended = self.dechunk()
        else:
            self.sse += raw
            raw.clear()
            ended = False
        if self.sse:
            self.events(now)
        if ended:
            self.finish(now)

    def dechunk(self) -> bool:
        raw, sse, pos = self.raw, self.sse, 0
        ended = False
        while True:
            if self.need:
                n = min(self.need, len(raw) - pos)
                sse += raw[pos : pos + n]
                pos += n
                self.need -= n
                if self.need:
                    break
                self.skip = 2
            if self.skip:
                n = min(self.skip, len(raw) - pos)
                pos += n
                self.skip -= n
                if self.skip:
                    break
            k = raw.find(b"\r\n", pos)
            if k < 0:
                break
            size = int(raw[pos:k].split(b";")[0], 16)
            pos = k + 2
            if size == 0:
                ended = True
                break
            self.need = size
        del raw[:pos]
        return ended

    def events(self, now: int) -> None:
        sse, run = self.sse, self.run
        if not self.sep:
            self.sep = b"\r\n\r\n" if b"\r\n" in sse else b"\n\n"
        sep, width, pos = self.sep, len(self.sep), 0
        while (k := sse.find(sep, pos)) >= 0:
            if sse[pos] == 58:  # ":" a comment: the relay's heartbeat
                run.pings += 1
                if self.last_event:
                    run.gaps.append((now - self.last_event) // 1000)
                self.last_event = now
            elif sse.find(run.token_needle, pos, k) >= 0:
                if not self.tokens:
                    run.ttft.append((now - self.began) // 1000)
                    if not run.first_ns:
                        run.first_ns = now
                self.tokens += 1
                run.token_count += 1
                run.last_ns = now
                if run.stamp:
                    at = sse.find(b'"@', pos, k)
                    if at >= 0:
                        run.latency.append((now - int(sse[at + 2 : sse.find(b" ", at, k)])) // 1000)
            elif sse.find(run.done_needle, pos, k) >= 0:
                self.terminal = "done"
            elif sse.find(b"event: error", pos, k) >= 0:
                self.terminal = "error"
                self.fail("error event: " + bytes(sse[pos:k]).decode(errors="replace").partition("data: ")[2])
            elif sse.find(b"event: start", pos, k) >= 0:
                run.starts.append((now - self.began) // 1000)
                self.last_event = now
            pos = k + width
        del sse[:pos]

    def finish(self, now: int) -> None:
        run = self.run
        if self.error is None:
            if self.terminal != "done":
                self.fail("body ended before the terminal event")
            elif self.tokens != run.tokens:
                self.fail(f"got {self.tokens} of {run.tokens} tokens")
            else:
                run.completed += 1
                run.durations.append((now - self.began) // 1000)
        assert self.transport is not None
        self.transport.close()


async def open_stream(run: Run, index: int, streams: list[Stream]) -> Stream:
    stream = Stream(run, index)
    streams.append(stream)
    try:
        host, port, _ = run.server(index)
        await asyncio.get_running_loop().create_connection(lambda: stream, host, port)
    except OSError as exc:
        stream.fail(f"connect: {exc.strerror or exc!r}")
        stream.closed.set_result(None)
    return stream


async def main(args: argparse.Namespace) -> dict[str, Any]:
    run = Run(args)
    streams: list[Stream] = []
    indexes = iter(range(args.total or args.streams))
    opening = asyncio.Semaphore(args.open_concurrency or args.streams)
    began = now_ns()
    cpu = time.process_time()

    # Streams begin at random moments within the ramp, so their token clocks are out of phase.
    offset = random.Random(args.seed).uniform

    stopped = False  # no new streams: the open budget is spent

    async def worker() -> None:
        for index in indexes:
            if stopped:
                return
            if args.ramp_ms and index < args.streams:
                await asyncio.sleep(max(0.0, began / 1e9 + offset(0, args.ramp_ms / 1000) - time.monotonic()))
            async with opening:
                if stopped:
                    return
                stream = await open_stream(run, index, streams)
                await stream.opened
            await stream.closed

    workers = asyncio.gather(*(worker() for _ in range(args.streams)))
    all_open = hold_end = held = 0
    try:
        if args.hold:
            # Hold what opened within the budget; the rest count as errors.
            give_up = time.monotonic() + (args.open_budget or args.deadline)
            while len(streams) < args.streams or not all(s.opened.done() for s in streams):
                if time.monotonic() > give_up:
                    stopped = True
                    for s in streams:
                        if not s.opened.done():
                            s.fail("not open within the open budget")
                    break
                await asyncio.sleep(0.05)
            all_open = now_ns()
            await asyncio.sleep(args.hold)
            hold_end = now_ns()
            held = sum(1 for s in streams if s.error is None and not s.closed.done())
            for s in streams:
                if s.transport is not None:
                    s.transport.close()
        await asyncio.wait_for(workers, max(1.0, args.deadline - (now_ns() - began) / 1e9))
    except TimeoutError:
        for s in streams:
            if not s.closed.done():
                s.fail("deadline passed")
        workers.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await workers
    return {
        "streams": len(streams),
        "completed": run.completed,
        "held": held,
        "tokens": run.token_count,
        "errors": dict(run.errors),
        "ttft_us": run.ttft,
        "latency_us": run.latency,
        "start_us": run.starts,
        "headers_us": run.headers,
        "duration_us": run.durations,
        "ping_gaps_us": run.gaps,
        "pings": run.pings,
        "began_ns": began,
        "first_token_ns": run.first_ns,
        "last_ns": run.last_ns or now_ns(),
        "all_open_ns": all_open,
        "hold_end_ns": hold_end,
        "cpu_s": time.process_time() - cpu,
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Open concurrent SSE streams and time them.")
    parser.add_argument(
        "--url",
        required=True,
        action="append",
        help="the relay's chat URL, or the fake provider's base URL; given again, streams go round robin",
    )
    parser.add_argument("--kind", choices=tuple(KINDS), default="relay")
    parser.add_argument("--streams", type=int, default=1, help="concurrent streams")
    parser.add_argument("--total", type=int, default=0, help="streams in all (default: --streams)")
    parser.add_argument("--tokens", type=int, default=20)
    parser.add_argument("--first-ms", type=float, default=0)
    parser.add_argument("--gap-ms", type=float, default=0)
    parser.add_argument("--stamp", action="store_true")
    parser.add_argument(
        "--ramp-ms", type=float, default=0, help="begin the first streams at random moments this long"
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--hold", type=float, default=0, help="keep all streams open this long, then close them"
    )
    parser.add_argument("--open-budget", type=float, default=0, help="with --hold: seconds to open them all")
    parser.add_argument(
        "--open-concurrency", type=int, default=0, help="at most this many streams awaiting headers"
    )
    parser.add_argument("--deadline", type=float, default=120)
    parser.add_argument(
        "--auth",
        choices=("none", "tokens", "header"),
        default="none",
        help="stream i's bearer token (bench_token), or `x-user: user<i>` for a trusted-header relay",
    )
    parser.add_argument("--tag", default="run", help="put in every message, to find the stored rows")
    parser.add_argument("--loop", choices=("auto", "asyncio", "uvloop"), default="auto")
    return parser.parse_args(argv)


if __name__ == "__main__":
    arguments = parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    sys.path.insert(0, __file__.rpartition("/")[0] or ".")
    from fake_provider import run as run_loop

    result: dict[str, Any] = {}

    async def collect() -> None:
        result.update(await main(arguments))

    run_loop(collect(), arguments.loop)
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
