"""Request bodies: read within a size limit, parsed as JSON, fields checked.

Every problem with a body's fields is collected, so one 422 names them all. A chat
body carries the new `message`, or the whole history the client owns as `messages`
(`chat.owned_history`): exactly one of the two.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
from dataclasses import dataclass
from typing import Any

from starlette.requests import ClientDisconnect, Request

from .config import Settings
from .errors import (
    BadRequest,
    ClientGone,
    InvalidFields,
    PayloadTooLarge,
    RequestTimeout,
    UnsupportedMediaType,
)
from .owned_history import new_message, parse_messages, text_problem
from .providers.base import Turn
from .rewrites import RewriteRequest
from .turns import TurnRequest

MAX_KEY_CHARS = 200  # an Idempotency-Key

log = logging.getLogger("sidechat")


async def read_json(
    request: Request, max_bytes: int, *, timeout: float = 10.0, optional: bool = False
) -> dict[str, Any]:
    """The body as a JSON object; an `optional` body may also be left out entirely. A body
    that has not all arrived within `timeout` seconds is a 408."""
    declared = request.headers.get("content-length", "")
    if optional and (declared == "0" or not (declared or "transfer-encoding" in request.headers)):
        return {}  # no body at all
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/json":
        raise UnsupportedMediaType("send the body as JSON with content-type: application/json")
    if digits(declared) and int(declared) > max_bytes:
        raise PayloadTooLarge(f"the body is over {max_bytes} bytes", max_bytes=max_bytes)
    body = bytearray()
    try:
        async with asyncio.timeout(timeout):
            async for chunk in request.stream():
                body += chunk
                if len(body) > max_bytes:
                    raise PayloadTooLarge(f"the body is over {max_bytes} bytes", max_bytes=max_bytes)
    except TimeoutError:
        raise RequestTimeout(f"the body did not arrive within {timeout:g}s") from None
    except ClientDisconnect:
        log.info("%s %s: the client went away before its body had arrived", request.method, request.url.path)
        raise ClientGone("the client went away before its body had arrived") from None
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"the body is not valid JSON: {exc}") from None
    except RecursionError:
        raise BadRequest("the body is not valid JSON: nested too deeply") from None
    if not isinstance(data, dict):
        raise InvalidFields({"body": "must be a JSON object"})
    return data


def digits(raw: str, most: int = 19) -> bool:
    """Plain ASCII digits, few enough to be an integer SQLite can hold."""
    return 0 < len(raw) <= most and raw.isascii() and raw.isdigit()


class Fields:
    """The fields of one body, checked one by one; `check()` raises for all problems at once."""

    def __init__(self, data: dict[str, Any]) -> None:
        self.data = data
        self.problems: dict[str, str] = {}

    def text(
        self,
        name: str,
        *,
        required: bool = False,
        max_chars: int = 10_000,
        blank: bool = False,
        printable: bool = False,
    ) -> str | None:
        """A string field; a `printable` one (a name, not prose) holds no control characters."""
        value = self.data.get(name)
        if value is None:
            if required:
                self.problems[name] = "required"
            return None
        problem = text_problem(value, max_chars, blank=blank)
        if problem is None and printable and not value.isprintable():
            problem = "must be printable: no newlines or other control characters"
        if problem is None:
            return str(value)
        self.problems[name] = problem
        return None

    def integer(self, name: str, *, low: int = 1, high: int = 2**62) -> int | None:
        value = self.data.get(name)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            self.problems[name] = "must be an integer"
        elif not low <= value <= high:
            self.problems[name] = f"must be between {low} and {high}"
        else:
            return value
        return None

    def number(self, name: str, *, low: float, high: float) -> float | None:
        value = self.data.get(name)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            self.problems[name] = "must be a number"
        elif not low <= value <= high:
            self.problems[name] = f"must be between {low} and {high}"
        else:
            return float(value)
        return None

    def boolean(self, name: str) -> bool:
        value = self.data.get(name, False)
        if not isinstance(value, bool):
            self.problems[name] = "must be true or false"
            return False
        return value

    def check(self) -> None:
        if self.problems:
            raise InvalidFields(self.problems)


@dataclass(slots=True)
class ChatBody:
    message: str
    conversation_id: int | None
    provider: str | None
    model: str | None
    temperature: float | None
    max_tokens: int | None
    system: str | None
    wait: bool
    history: tuple[Turn, ...] | None = None  # the client's own, when it sent `messages`

    def ask(self, user: str, idempotency_key: str | None) -> TurnRequest:
        return TurnRequest(
            user=user,
            message=self.message,
            conversation_id=self.conversation_id,
            provider=self.provider,
            model=self.model,
            temperature=self.temperature,
            max_tokens=self.max_tokens,
            system=self.system,
            idempotency_key=idempotency_key,
            history=self.history,
        )


@dataclass(slots=True)
class RewriteBody:
    """A regenerate's body (all of it optional), or an edit's (its `message` required)."""

    message: str
    provider: str | None
    model: str | None
    temperature: float | None
    max_tokens: int | None
    wait: bool

    def ask(self, user: str, message_id: int) -> RewriteRequest:
        return RewriteRequest(
            user=user,
            message_id=message_id,
            message=self.message,
            provider=self.provider,
            model=self.model,
            temperature=self.temperature,
            max_tokens=self.max_tokens,
        )


def _options(fields: Fields) -> dict[str, Any]:
    """What every body that starts a reply may choose: provider, model, and sampling."""
    return {
        "provider": fields.text("provider", max_chars=40, printable=True),
        "model": fields.text("model", max_chars=200, printable=True),
        "temperature": fields.number("temperature", low=0, high=2),
        "max_tokens": fields.integer("max_tokens", high=1_000_000),
    }


def parse_chat_body(data: dict[str, Any], settings: Settings) -> ChatBody:
    fields = Fields(data)
    longest = settings.max_message_chars
    history = _history(fields, longest)
    body = ChatBody(
        message=fields.text("message", required=history is None, max_chars=longest) or "",
        conversation_id=fields.integer("conversation_id"),
        **_options(fields),
        system=fields.text("system", max_chars=longest, blank=True),
        wait=fields.boolean("wait"),
        history=history,
    )
    fields.check()
    if history is not None:
        body.message = new_message(history)
    return body


def _history(fields: Fields, longest: int) -> tuple[Turn, ...] | None:
    """The `messages` a client sent in place of `message`, its system prompt among them."""
    raw = fields.data.get("messages")
    if raw is None:
        return None
    for other in ("message", "system"):
        if fields.data.get(other) is not None:
            why = "send message or messages, not both" if other == "message" else "put it in messages"
            fields.problems[other] = f"must be left out when messages are sent: {why}"
    turns, problems = parse_messages(raw, longest)
    fields.problems.update(problems)
    return turns


def parse_rewrite_body(data: dict[str, Any], settings: Settings, *, edit: bool) -> RewriteBody:
    """An edit's body must have the new `message`; a regenerate's has none (one sent is ignored)."""
    fields = Fields(data)
    longest = settings.max_message_chars
    body = RewriteBody(
        message=(fields.text("message", required=True, max_chars=longest) or "") if edit else "",
        **_options(fields),
        wait=fields.boolean("wait"),
    )
    fields.check()
    return body


def idempotency_key(raw: str | None) -> str | None:
    if raw is None:
        return None
    key = raw.strip()
    if not key or len(key) > MAX_KEY_CHARS:
        raise InvalidFields({"idempotency_key": f"must be 1 to {MAX_KEY_CHARS} characters"})
    return key
