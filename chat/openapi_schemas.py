"""The schemas of the OpenAPI document: what the API's bodies hold, both ways.

Shapes are read off the code that makes them (`records.py`, `bodies.py`, `errors.py`, `feeds.py`,
`api.py`), and say `additionalProperties` the way the code behaves: a request body's
unknown fields are ignored, so bodies allow them; a response holds exactly the fields
listed, so an undocumented one breaks the schema (and `tests/test_openapi.py`).
"""

from __future__ import annotations

from typing import Any

from .config import Settings

Schema = dict[str, Any]


def ref(kind: str, name: str) -> Schema:
    """A reference to `#/components/<kind>/<name>`."""
    return {"$ref": f"#/components/{kind}/{name}"}


def nullable(kind: str, **more: Any) -> Schema:
    return {"type": [kind, "null"], **more}


def closed(properties: dict[str, Schema], *, optional: tuple[str, ...] = ()) -> Schema:
    """An object with exactly these properties; all of them required but the `optional`."""
    return {
        "type": "object",
        "required": [name for name in properties if name not in optional],
        "properties": properties,
        "additionalProperties": False,
    }


TIMESTAMP = {"type": "string", "format": "date-time"}

CONVERSATION = closed(
    {
        "id": {"type": "integer"},
        "title": nullable("string"),
        "system": nullable("string"),
        "provider": nullable("string"),
        "model": nullable("string"),
        "created_at": TIMESTAMP,
        "updated_at": {**TIMESTAMP, "description": "last activity; the list is ordered by it"},
        "message_count": {"type": "integer", "minimum": 0},
        "last_message_at": nullable("string", format="date-time"),
    }
)

STREAM_ERROR = {
    "type": "object",
    "description": "Why a reply failed (`auth`, `rate_limited`, `overloaded`, `upstream_error`,"
    " `timeout`, `truncated`, `protocol`, `prompt_blocked`, `shutdown`, `interrupted`, `storage`);"
    " the provider's own type and code ride along when it sent them.",
    "required": ["type", "message"],
    "properties": {
        "type": {"type": "string"},
        "message": {"type": "string"},
        "status": {"type": "integer"},
        "retry_after": {"type": "number"},
        "provider_type": {"type": "string"},
        "provider_code": {"type": "string"},
    },
}

FINISH_REASON = nullable(
    "string", description="`stop`, `length`, `tool_calls`, `content_filter` or `cancelled`"
)

MESSAGE_METADATA = {
    "type": "object",
    "description": "What the reply was made with and how it went; a user message's has only"
    " `supersedes` and `superseded_by`, when it was edited. Fields appear as the reply gets that far.",
    "properties": {
        "provider": {"type": "string"},
        "model": {"type": "string"},
        "request_id": nullable("string", description="the X-Request-ID of the request that asked for it"),
        "requested": {
            "type": "object",
            "description": "the provider and model asked for, when a fallback answered instead",
            "properties": {"provider": {"type": "string"}, "model": {"type": "string"}},
        },
        "user_message_id": {"type": "integer"},
        "asked_by": {"type": "string", "description": "who asked for the reply: whom it is billed to"},
        "usage": {
            **ref("schemas", "Usage"),
            "description": "what the provider counted, also for a reply cancelled or failed before its end",
        },
        "cost_usd": ref("schemas", "Cost"),
        "finish_reason": FINISH_REASON,
        "tool_calls": {
            "type": "array",
            "description": "the calls the model made, whole, in OpenAI's shape (`{id, type: function,"
            " function: {name, arguments}}`); sidechat runs none",
            "items": {"type": "object"},
        },
        "duration_ms": nullable("integer"),
        "ttft_ms": nullable("integer"),
        "error": {"oneOf": [ref("schemas", "StreamError"), {"type": "null"}]},
        "supersedes": {"type": "integer", "description": "the message it replaced (regenerated, edited)"},
        "superseded_by": {"type": "integer", "description": "what replaced it: no longer sent to providers"},
    },
}

MESSAGE = closed(
    {
        "id": {"type": "integer"},
        "conversation_id": {"type": "integer"},
        "role": {"enum": ["user", "assistant", "system"]},
        "user": nullable(
            "string",
            description="who wrote it, for a user message (a shared conversation has several authors);"
            " null for a reply, and for a message stored before authors were",
        ),
        "content": {"type": "string"},
        "status": {"enum": ["streaming", "completed", "failed", "cancelled", "interrupted"]},
        "created_at": TIMESTAMP,
        "completed_at": nullable("string", format="date-time"),
        "metadata": ref("schemas", "MessageMetadata"),
    }
)

PROVIDER = closed(
    {
        "name": {"type": "string"},
        "default_model": {"type": "string"},
        "key_set": {"type": "boolean"},
        "available": {"type": "boolean", "description": "usable now: configured, or needs no key"},
        "default": {"type": "boolean"},
    }
)

STREAM_URL = {"type": "string", "pattern": "^/api/messages/[0-9]+/stream$"}

ACCEPTED = closed(
    {
        "conversation_id": {"type": "integer"},
        "user_message_id": {"type": "integer"},
        "message_id": {"type": "integer"},
        "stream_url": STREAM_URL,
    }
)

EVENT = {
    **closed(
        {
            "event": {"enum": ["start", "provider", "token", "reset", "done", "error"]},
            "data": {"type": "string", "pattern": r"^\{[^\n]*\}$", "contentMediaType": "application/json"},
            "id": {"type": "string", "pattern": "^[0-9]+$"},
            "retry": {"type": "integer", "description": "milliseconds; sent once, before the first event"},
        },
        optional=("id", "retry"),
    ),
    "description": """One event of a reply's stream; `data` is always one line of JSON, `id` counts
the reply's events from 1, for Last-Event-ID.
- `start` {conversation_id, message_id, user_message_id, provider, model, request_id}: first, once stored
- `provider` {provider, model}: a fallback answers instead of the provider asked
- `token` {text}: each piece of the reply as it arrives
- `reset` {message_id}, no id: drop the text you have; the whole stored text follows as one token
- `done` {message_id, finish_reason, usage, cost_usd, duration_ms, ttft_ms}: the end
- `error` {message_id, error: StreamError, partial}: the end, when the reply failed
Exactly one of `done` and `error` ends the stream; `: ping` comments keep a quiet one open.""",
}

MEMBERS = closed(
    {
        "owner": {"type": "string", "description": "the owner's user id; not a member"},
        "members": {"type": "array", "items": {"type": "string"}, "description": "sorted"},
    }
)

MEMBER_BODY = {
    "type": "object",
    "description": "Unknown fields are ignored.",
    "required": ["user"],
    "properties": {
        "user": {
            "type": "string",
            "pattern": r"\S",
            "maxLength": 200,
            "examples": ["bob"],
            "description": "a user id (as a token or the trusted header names them), not the owner's;"
            " no control characters",
        }
    },
}

TYPING_BODY = {
    "type": "object",
    "description": "Unknown fields are ignored.",
    "required": ["typing"],
    "properties": {
        "typing": {
            "type": "boolean",
            "description": "`true` as you start, and again every few seconds while you go on;"
            " `false` as you stop",
        }
    },
}


HEALTH = closed(
    {
        "status": {"enum": ["ok", "unavailable"]},
        "reason": {"type": "string"},
        "store": {"enum": ["none"], "description": "SIDECHAT_STORE=none: there is no database"},
    },
    optional=("reason", "store"),
)


def text(
    max_chars: int, *, blank: bool = False, printable: bool = False, null: str = "the same as leaving it out"
) -> Schema:
    """A text field as `bodies.Fields.text` checks it; `null` says what a JSON null means."""
    schema: Schema = nullable("string", maxLength=max_chars, description=f"null is {null}")
    if not blank:  # not empty, nor only whitespace; a name has no control characters either
        schema["pattern"] = r"^[^\x00-\x1f\x7f-\x9f]*\S[^\x00-\x1f\x7f-\x9f]*$" if printable else r"\S"
    return schema


# What every body that starts a reply may choose (`bodies._options`).
OPTIONS = {
    "provider": text(40, printable=True),
    "model": text(200, printable=True),
    "temperature": nullable("number", minimum=0, maximum=2),
    "max_tokens": nullable("integer", minimum=1, maximum=1_000_000),
}


def chat_body(settings: Settings) -> Schema:
    longest = settings.max_message_chars
    return {
        "type": "object",
        "description": "Unknown fields are ignored; null is the same as leaving a field out. Send"
        " `message` (the history is the conversation's), or `messages`, a history of your own"
        " sent upstream as it is, without `system` (a system message in it is the prompt).",
        "anyOf": [{"required": ["message"]}, {"required": ["messages"]}],
        "properties": {
            "message": nullable("string", pattern=r"\S", maxLength=longest),
            "messages": {
                "type": ["array", "null"],
                "minItems": 1,
                "description": "the last one a user's, whose content is stored as the new message",
                "items": {
                    "type": "object",
                    "required": ["role", "content"],
                    "properties": {
                        "role": {"enum": ["system", "user", "assistant"]},
                        "content": {"type": "string", "maxLength": longest},
                    },
                },
            },
            "conversation_id": nullable(
                "integer", minimum=1, maximum=2**62, description="continue this conversation"
            ),
            **OPTIONS,
            "system": text(longest, blank=True),
            "wait": {
                "type": "boolean",
                "default": False,
                "description": "POST /api/chat only: answer 200 with the finished reply",
            },
        },
    }


def conversation_body(settings: Settings) -> Schema:
    cleared = "clears it"
    return {
        "type": "object",
        "description": "Unknown fields are ignored; a field left out is left as it is.",
        "properties": {
            "title": text(200, null=cleared),
            "system": text(settings.max_message_chars, blank=True, null=cleared),
            "provider": text(40, null=cleared),
            "model": text(200, null=cleared),
        },
    }


def schemas(settings: Settings) -> dict[str, Schema]:
    return {
        "Conversation": CONVERSATION,
        "Message": MESSAGE,
        "MessageMetadata": MESSAGE_METADATA,
        "Event": EVENT,
        "StreamError": STREAM_ERROR,
        "Provider": PROVIDER,
        "Health": HEALTH,
        "Accepted": ACCEPTED,
        "Members": MEMBERS,
        "MemberBody": MEMBER_BODY,
        "TypingBody": TYPING_BODY,
        "ChatBody": chat_body(settings),
        "ConversationBody": conversation_body(settings),
    }
