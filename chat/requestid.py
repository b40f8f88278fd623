"""`X-Request-ID`: the caller's, when it is a sane token, else one of ours; on every response.

A value that is echoed into a header (and later into logs) is checked first: a
caller's id is kept only if it is 1 to 128 characters of letters, digits and
`._:-`, so it can carry no newline, no second header and no markup.
"""

from __future__ import annotations

import re
import uuid

from starlette.types import Message, Scope, Send

from .telemetry import RequestRecord

HEADER = b"x-request-id"
KEY = "sidechat.request_id"  # where the scope keeps it
_SANE = re.compile(rb"[A-Za-z0-9._:-]{1,128}")


def request_id(scope: Scope) -> bytes:
    for name, value in scope["headers"]:
        if name == HEADER:
            if _SANE.fullmatch(value):
                return bytes(value)
            break
    return uuid.uuid4().hex.encode()


def stamped(send: Send, value: bytes, record: RequestRecord | None = None) -> Send:
    """`send`, with the request id added to the response's headers (and its status noted in
    `record`)."""

    async def send_stamped(message: Message) -> None:
        if message["type"] == "http.response.start":
            message["headers"] = [*message.get("headers", ()), (HEADER, value)]
            if record is not None:
                record.status = message["status"]
        await send(message)

    return send_stamped
