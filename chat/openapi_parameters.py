"""The OpenAPI document's parameters, response headers and security scheme: what requests
and responses carry besides their bodies, read off `chat.endpoints`, `chat.bodies` and
`chat.requestid`."""

from __future__ import annotations

from typing import Any

from .bodies import MAX_KEY_CHARS
from .endpoints import MAX_PAGE
from .openapi_schemas import Schema
from .store import MAX_ID  # a larger id is a 404, never a 422: no row can have it
from .usage import WHEN_PATTERN

REQUEST_ID = "^[A-Za-z0-9._:-]{1,128}$"  # as `chat.requestid` keeps a caller's
WHEN = "^" + WHEN_PATTERN.pattern + "$"  # as `chat.usage` reads `since` and `until`


def parameter(where: str, name: str, schema: Schema, description: str, **more: Any) -> Schema:
    return {"in": where, "name": name, "schema": schema, "description": description, **more}


PARAMETERS = {
    "ConversationId": parameter(
        "path",
        "conversation_id",
        {"type": "integer", "minimum": 1, "maximum": MAX_ID},
        "a conversation",
        required=True,
    ),
    "MessageId": parameter(
        "path",
        "message_id",
        {"type": "integer", "minimum": 1, "maximum": MAX_ID},
        "an assistant message",
        required=True,
    ),
    "UserMessageId": parameter(
        "path",
        "message_id",
        {"type": "integer", "minimum": 1, "maximum": MAX_ID},
        "a user message",
        required=True,
    ),
    "MemberUser": parameter(
        "path",
        "user",
        {"type": "string", "minLength": 1, "examples": ["bob"]},
        "a member's user id",
        required=True,
    ),
    "RequestId": parameter(
        "header",
        "X-Request-ID",
        {"type": "string"},
        f"Echoed in the response's X-Request-ID when it matches `{REQUEST_ID}`; any other value"
        " is replaced by a generated id, never refused.",
    ),
    "IdempotencyKey": parameter(
        "header",
        "Idempotency-Key",
        {"type": "string", "minLength": 1, "maxLength": MAX_KEY_CHARS},
        "A retry with the same key gets the first attempt's turn instead of a second; the same"
        " key for a different request is a 422 `idempotency_key_reused`.",
    ),
    "LastEventId": parameter(
        "header",
        "Last-Event-ID",
        {"type": "string", "pattern": r"^([0-9]{1,19})?$"},
        "resume after this event id; empty is the same as leaving it out",
    ),
    "LastEventIdQuery": parameter(
        "query",
        "last_event_id",
        {"type": "string"},
        "the same as Last-Event-ID, for clients that cannot set headers: digits, else a 422;"
        " not read at all when the header is sent",
    ),
    "Limit": parameter(
        "query",
        "limit",
        {"type": "integer", "minimum": 1, "maximum": MAX_PAGE, "default": 20},
        "how many at most",
    ),
    "Cursor": parameter("query", "cursor", {"type": "string"}, "a `next_cursor` this server gave out"),
    "BeforeId": parameter(
        "query",
        "before_id",
        {"type": "integer", "minimum": 1, "maximum": MAX_ID},
        "only messages older than this id: a `next_before_id`",
    ),
    "AfterId": parameter(
        "query",
        "after_id",
        {"type": "integer", "minimum": 0, "maximum": 2**62},
        "only messages newer than this id",
    ),
    "Since": parameter(
        "query",
        "since",
        {"type": "string", "pattern": WHEN, "examples": ["2026-12-01", "2026-12-01T09:30:00Z"]},
        "replies that ended at or after this ISO 8601 time or date (a time without an offset is UTC)",
    ),
    "Until": parameter(
        "query",
        "until",
        {"type": "string", "pattern": WHEN, "examples": ["2026-12-31"]},
        "replies that ended before this ISO 8601 time; a date means the end of that day",
    ),
    "Deep": parameter("query", "deep", {"type": "string"}, "`1`: also check the database's integrity"),
}


def header(schema: Schema, description: str, *, required: bool = True) -> Schema:
    return {"schema": schema, "description": description, "required": required}


HEADERS = {
    "RequestId": header({"type": "string", "pattern": REQUEST_ID}, "the request's id, as sent or generated"),
    "RetryAfter": header({"type": "string", "pattern": "^[0-9]+$"}, "seconds to wait before trying again"),
    "WWWAuthenticate": header({"type": "string", "pattern": "^Bearer "}, "RFC 6750's challenge"),
    "ConversationId": header({"type": "string", "pattern": "^[0-9]+$"}, "the conversation"),
    "MessageId": header({"type": "string", "pattern": "^[0-9]+$"}, "the assistant message"),
}

SECURITY_SCHEMES = {
    "bearer": {
        "type": "http",
        "scheme": "bearer",
        "description": "Needed on every /api route when SIDECHAT_API_TOKENS (or its file) is set;"
        " each token names a user, who sees only their own conversations. Without tokens there is"
        " one local user and only local Host names are served.",
    }
}
