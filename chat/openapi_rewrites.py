"""Generating a reply again and editing the last message, in the OpenAPI document
(`chat.rewrites`): their routes and their bodies."""

from __future__ import annotations

from typing import Any

from .config import Settings
from .openapi_responses import BODY_ERRORS, Errors, operation, turn_answers
from .openapi_schemas import OPTIONS, Schema, ref

REWRITE_ERRORS: Errors = {
    **BODY_ERRORS,
    404: ("not_found",),
    409: ("conflict",),
    429: ("rate_limited", "quota_exceeded"),
    503: ("storage_unavailable", "shutting_down"),
}
WAIT = {"type": "boolean", "default": False, "description": "answer 200 with the finished reply"}
LATEST = (
    "Only the conversation's latest reply or user message that was not replaced yet, and not while"
    " its reply streams (409, with `superseded_by` when it was replaced already). The old rows stay,"
    " marked `superseded_by`; the new ones say which they `supersedes`; the feeds tell it as a new"
    " turn (`generation.started` with `supersedes`)."
)


def rewrite_schemas(settings: Settings) -> dict[str, Schema]:
    return {
        "RegenerateBody": {
            "type": "object",
            "description": "All optional, the body too; unknown fields are ignored. Unless asked, the"
            " reply is made by the provider and model the replaced one was asked of.",
            "properties": {**OPTIONS, "wait": WAIT},
        },
        "EditBody": {
            "type": "object",
            "description": "Unknown fields are ignored; null is the same as leaving a field out.",
            "required": ["message"],
            "properties": {
                "message": {"type": "string", "pattern": r"\S", "maxLength": settings.max_message_chars},
                **OPTIONS,
                "wait": WAIT,
            },
        },
    }


def rewrite_paths() -> dict[str, Any]:
    return {
        "/api/messages/{message_id}/regenerate": {
            "post": {
                **operation(
                    "regenerate",
                    "Generate a reply again, or try a failed one again, from the same history",
                    turn_answers(),
                    REWRITE_ERRORS,
                    parameters=("MessageId",),
                    body=ref("schemas", "RegenerateBody"),
                    body_required=False,
                ),
                "description": LATEST,
            }
        },
        "/api/messages/{message_id}/edit": {
            "post": {
                **operation(
                    "edit",
                    "Replace the last user message, with a new reply from the history before it",
                    turn_answers(),
                    REWRITE_ERRORS,
                    parameters=("UserMessageId",),
                    body=ref("schemas", "EditBody"),
                ),
                "description": LATEST,
            }
        },
    }
