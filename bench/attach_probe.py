"""How long a client takes to attach to a reply running elsewhere, and how far behind it follows.

For each reply: POST /api/chat/stream on process A (the origin) with stamped tokens a few ms
apart; once A's first token is in, GET /api/messages/{id}/stream on process B (the follower,
which may be A itself: the baseline). Both streams are then read to their end in this one
event loop, each event's arrival taken with one clock reading per chunk, so:

- attach: from just before B's connect to the arrival of B's first event (of any kind);
- lag: for every token that reached A after B's first event (B follows it live, not from a
  backlog), its arrival on B less its arrival on A, matched by event id.

B must receive every token A did, with the same ids, in increasing order; anything else is
counted as an error, never silently measured.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

now_ns = time.monotonic_ns


@dataclass
class Event:
    at_ns: int
    id: int | None
    name: str
    data: bytes


class Response:
    """One SSE response on a raw HTTP/1.1 connection (chunked or not), read event by event."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.status = 0
        self.chunked = False
        self.buffer = bytearray()

    @classmethod
    async def open(cls, port: int, head: str, body: bytes = b"") -> Response:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(head.encode() + body)
        response = cls(reader, writer)
        raw = (await reader.readuntil(b"\r\n\r\n")).lower()
        response.status = int(raw[9:12])
        response.chunked = b"transfer-encoding: chunked" in raw
        return response

    async def chunks(self) -> AsyncIterator[tuple[int, bytes]]:
        while True:
            if self.chunked:
                size = int((await self.reader.readline()).split(b";")[0], 16)
                if size == 0:
                    return
                data = (await self.reader.readexactly(size + 2))[:-2]
            else:
                data = await self.reader.read(65536)
                if not data:
                    return
            yield now_ns(), data

    async def events(self) -> AsyncIterator[Event]:
        async for at, data in self.chunks():
            self.buffer += data
            while (end := self.buffer.find(b"\n\n")) >= 0:
                block = bytes(self.buffer[:end])
                del self.buffer[: end + 2]
                if block.startswith(b":"):  # a heartbeat
                    continue
                fields = dict(line.partition(b": ")[::2] for line in block.split(b"\n"))
                ident = fields.get(b"id")
                yield Event(
                    at,
                    int(ident) if ident else None,
                    fields.get(b"event", b"").decode(),
                    fields.get(b"data", b""),
                )

    def close(self) -> None:
        self.writer.close()


@dataclass
class Probe:
    attach_us: list[int] = field(default_factory=list)
    lag_us: list[int] = field(default_factory=list)
    tokens: int = 0
    errors: list[str] = field(default_factory=list)


async def one_reply(origin: int, follower: int, tokens: int, gap_ms: float, tag: str, probe: Probe) -> None:
    body = json.dumps({"message": f"bench:tokens={tokens},gap_ms={gap_ms:g},stamp=1 {tag}"}).encode()
    head = (
        "POST /api/chat/stream HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"
        f"accept: text/event-stream\r\ncontent-length: {len(body)}\r\n\r\n"
    )
    a = await Response.open(origin, head, body)
    if a.status != 200:
        probe.errors.append(f"POST answered {a.status}")
        return a.close()
    a_events = a.events()
    a_tokens: dict[int, int] = {}
    message_id = 0
    async for event in a_events:
        if event.name == "start":
            message_id = json.loads(event.data)["message_id"]
        elif event.name == "token" and event.id is not None:
            a_tokens[event.id] = event.at_ns
            break
    asked = now_ns()
    b = await Response.open(
        follower,
        f"GET /api/messages/{message_id}/stream HTTP/1.1\r\nhost: 127.0.0.1\r\naccept: text/event-stream\r\n\r\n",
    )
    b_tokens: dict[int, int] = {}
    first: list[int] = []  # the arrival of B's first event
    last = [0]  # the last token id B got

    async def read_a() -> str:
        async for event in a_events:
            if event.name == "token" and event.id is not None:
                a_tokens[event.id] = event.at_ns
            elif event.name in ("done", "error"):
                return event.name
        return "ended"

    async def read_b() -> str:
        async for event in b.events():
            if not first:
                first.append(event.at_ns)
            if event.name == "token" and event.id is not None:
                if event.id <= last[0]:
                    probe.errors.append(f"id {event.id} after {last[0]} on the follower")
                last[0] = event.id
                b_tokens[event.id] = event.at_ns
            elif event.name in ("done", "error"):
                return event.name
        return "ended"

    try:
        if b.status != 200:
            probe.errors.append(f"attach answered {b.status}")
            return
        ends = await asyncio.wait_for(asyncio.gather(read_a(), read_b()), 60)
    finally:
        a.close()
        b.close()
    if list(ends) != ["done", "done"]:
        probe.errors.append(f"the streams ended with {ends}")
    if sorted(b_tokens) != sorted(a_tokens) or len(a_tokens) != tokens:
        probe.errors.append(
            f"the follower got {len(b_tokens)} tokens, the origin {len(a_tokens)} of {tokens}"
        )
        return
    probe.attach_us.append((first[0] - asked) // 1000)
    probe.lag_us += [(b_tokens[i] - at) // 1000 for i, at in a_tokens.items() if at > first[0]]
    probe.tokens += len(b_tokens)


async def attach_on(origin: int, follower: int, replies: int, tokens: int, gap_ms: float, tag: str) -> Probe:
    probe = Probe()
    for n in range(replies):
        await one_reply(origin, follower, tokens, gap_ms, f"{tag}#{n}", probe)
    return probe


@dataclass
class Crowd:
    attach_us: list[int] = field(default_factory=list)  # of the followers that got the whole reply
    followed: int = 0
    refused: dict[str, int] = field(default_factory=dict)  # what the others got instead


async def crowd_on(origin: int, follower: int, followers: int, tokens: int, gap_ms: float, tag: str) -> Crowd:
    """`followers` clients attaching at once to one reply running on `origin`: how many follow it
    to its end (every token, then `done`), and how soon each had its first event."""
    body = json.dumps({"message": f"bench:tokens={tokens},gap_ms={gap_ms:g} {tag}"}).encode()
    head = (
        "POST /api/chat/stream HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"
        f"accept: text/event-stream\r\ncontent-length: {len(body)}\r\n\r\n"
    )
    a = await Response.open(origin, head, body)
    crowd = Crowd()
    try:
        message_id = 0
        async for event in a.events():
            if event.name == "start":
                message_id = json.loads(event.data)["message_id"]
            elif event.name == "token":
                break
        outcomes = await asyncio.wait_for(
            asyncio.gather(*(follow(follower, message_id, tokens) for _ in range(followers))), 120
        )
    finally:
        a.close()
    for outcome in outcomes:
        if isinstance(outcome, int):
            crowd.followed += 1
            crowd.attach_us.append(outcome)
        else:
            crowd.refused[outcome] = crowd.refused.get(outcome, 0) + 1
    return crowd


async def follow(port: int, message_id: int, tokens: int) -> int | str:
    """µs to the first event when the whole reply came, else what came instead."""
    asked = now_ns()
    head = f"GET /api/messages/{message_id}/stream HTTP/1.1\r\nhost: 127.0.0.1\r\naccept: text/event-stream\r\n\r\n"
    b = await Response.open(port, head)
    try:
        if b.status != 200:
            return f"http {b.status}"
        first, seen = 0, 0
        async for event in b.events():
            first = first or event.at_ns
            if event.name == "token":
                seen += 1
            elif event.name in ("done", "error"):
                if event.name == "done" and seen == tokens:
                    return (first - asked) // 1000
                return f"{event.name} after {seen} tokens"
        return f"ended after {seen} tokens"
    finally:
        b.close()
