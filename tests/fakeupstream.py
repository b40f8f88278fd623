"""A real HTTP server on a loopback port that plays scripted provider replies.

Each reply is a status, headers and a script of steps: bytes to send (each as
one chunk of a chunked body, so the client sees it at once), a float to sleep,
or an `asyncio.Event` to wait for, which lets a test hold the upstream mid-reply.
The server records every request and notices when the client hangs up early.
"""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

Step = bytes | float | asyncio.Event


@dataclass
class Reply:
    script: Sequence[Step] = ()
    status: int = 200
    headers: dict[str, str] = field(default_factory=lambda: {"content-type": "text/event-stream"})
    finish: bool = True  # send the chunked body's end; False leaves the connection hanging


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class FakeUpstream:
    """Plain HTTP on 127.0.0.1, or HTTPS as `localhost` when given a server `tls` context."""

    def __init__(self, *replies: Reply, tls: ssl.SSLContext | None = None) -> None:
        self.tls = tls
        self.replies = list(replies)
        self.requests: list[Seen] = []
        self.hangups = 0  # replies the client closed before they were finished
        self.hung_up = asyncio.Event()
        self.url = ""
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    def add(self, *replies: Reply) -> None:
        self.replies.extend(replies)

    async def __aenter__(self) -> FakeUpstream:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.tls)
        self.port = self._server.sockets[0].getsockname()[1]
        self.url = f"https://localhost:{self.port}" if self.tls else f"http://127.0.0.1:{self.port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.close()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            await self._answer(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            self._hung_up()
        finally:
            self._writers.discard(writer)
            writer.close()

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        request_line, *header_lines = head.decode("latin-1").split("\r\n")
        method, path, _ = request_line.split(" ", 2)
        headers = {}
        for line in header_lines:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        body = await reader.readexactly(int(headers.get("content-length", "0")))
        self.requests.append(Seen(method, path, headers, body))
        reply = (
            self.replies.pop(0)
            if self.replies
            else Reply(status=500, script=[b'{"error": "no reply scripted"}'])
        )

        hangup = asyncio.ensure_future(reader.read(1))  # b"" once the client closes
        # One request per connection keeps the hang-up watch simple.
        lines = [f"HTTP/1.1 {reply.status} Fake", "transfer-encoding: chunked", "connection: close"]
        lines += [f"{name}: {value}" for name, value in reply.headers.items()]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        try:
            for step in reply.script:
                if isinstance(step, bytes):
                    writer.write(b"%x\r\n%s\r\n" % (len(step), step))
                    await writer.drain()
                    continue
                waiting = asyncio.ensure_future(
                    asyncio.sleep(step) if isinstance(step, float) else step.wait()
                )
                await asyncio.wait((waiting, hangup), return_when=asyncio.FIRST_COMPLETED)
                if hangup.done():
                    waiting.cancel()
                    self._hung_up()
                    return
            if not reply.finish:
                await hangup
                self._hung_up()
                return
            writer.write(b"0\r\n\r\n")
            await writer.drain()
        finally:
            hangup.cancel()

    def _hung_up(self) -> None:
        self.hangups += 1
        self.hung_up.set()


def sse(data: Any, event: str | None = None) -> bytes:
    """One upstream SSE event, as providers write them."""
    text = data if isinstance(data, str) else json.dumps(data)
    return (f"event: {event}\n" if event else "").encode() + f"data: {text}\n\n".encode()


def openai_chunk(text: str | None = None, finish_reason: str | None = None) -> bytes:
    delta = {"content": text} if text is not None else {}
    return sse(
        {
            "id": "chatcmpl-1",
            "object": "chat.completion.chunk",
            "created": 1,
            "model": "gpt-4o-mini",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
        }
    )


def openai_reply(*tokens: str, usage: tuple[int, int] = (12, 2)) -> list[Step]:
    """A whole, well-formed OpenAI stream: tokens, finish, usage chunk, [DONE]."""
    steps: list[Step] = [openai_chunk(t) for t in tokens]
    steps.append(openai_chunk(finish_reason="stop"))
    steps.append(
        sse(
            {
                "id": "chatcmpl-1",
                "object": "chat.completion.chunk",
                "choices": [],
                "usage": {
                    "prompt_tokens": usage[0],
                    "completion_tokens": usage[1],
                    "total_tokens": sum(usage),
                },
            }
        )
    )
    steps.append(sse("[DONE]"))
    return steps
