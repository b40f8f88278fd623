"""The OpenAPI document's responses: a JSON answer, an event stream (a reply's, or a live
feed), and the error responses, each naming the `error.type` values its status can carry
(`chat.errors`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .limits import TYPING_RATE
from .openapi_schemas import TIMESTAMP, Schema, closed, ref

Errors = dict[int, tuple[str, ...]]


@dataclass(frozen=True, slots=True)
class Kind:
    """An `error.type`: when a client gets it, and the fields it always carries."""

    meaning: str
    carries: tuple[str, ...] = ()


RETRY = ("retry_after",)
ERROR_TYPES = {
    "invalid_host": Kind("a Host name this server does not serve (SIDECHAT_ALLOWED_HOSTS; auth off)"),
    "invalid_json": Kind("the body is not JSON"),
    "unauthorized": Kind("no bearer token, or one that is not valid (auth on)"),
    "forbidden": Kind("only the conversation's owner may do this, and you are a member"),
    "not_found": Kind("no such conversation or message, or one you neither own nor are a member of"),
    "request_timeout": Kind("the body did not arrive in time"),
    "conflict": Kind(
        "not now: a reply to cancel has already finished, or a message to regenerate or edit is not"
        " the conversation's latest, or its reply is still streaming; `status` is the message's,"
        " `superseded_by` what replaced it when it was replaced already",
        ("status",),
    ),
    "storage_off": Kind("SIDECHAT_STORE=none: nothing is kept, so no conversation can be made"),
    "payload_too_large": Kind("the body is over SIDECHAT_MAX_BODY_BYTES", ("max_bytes",)),
    "unsupported_media_type": Kind("the body is not sent as application/json"),
    "invalid_request": Kind("fields with problems; `fields` names each one's", ("fields",)),
    "idempotency_key_reused": Kind("the Idempotency-Key was used for a different request"),
    "rate_limited": Kind(
        "over SIDECHAT_RATE_LIMIT, or SIDECHAT_MAX_STREAMS_PER_USER replies running; for typing,"
        f" more than {TYPING_RATE[0]} updates in {TYPING_RATE[1]:g} seconds",
        RETRY,
    ),
    "quota_exceeded": Kind(
        "a budget of yours (SIDECHAT_USER_BUDGET) is spent until `resets_at`; a retry with the"
        " same Idempotency-Key is never refused",
        ("retry_after", "budget", "resets_at"),
    ),
    "storage_unavailable": Kind("the database refuses writes for now; nothing was stored", RETRY),
    "shutting_down": Kind("the server is stopping", RETRY),
    "too_many_connections": Kind("too many open event streams, the user's or in all", RETRY),
}
RETRY_STATUSES = (429, 503)

BODY_ERRORS: Errors = {
    400: ("invalid_json",),
    408: ("request_timeout",),
    413: ("payload_too_large",),
    415: ("unsupported_media_type",),
    422: ("invalid_request",),
}
OWNER_ONLY: Errors = {403: ("forbidden",), 404: ("not_found",)}  # 403: a member; 404: anyone else
TURN_ERRORS: Errors = {
    **BODY_ERRORS,
    404: ("not_found",),
    422: ("invalid_request", "idempotency_key_reused"),
    429: ("rate_limited", "quota_exceeded"),
    503: ("storage_unavailable", "shutting_down"),
}


def json_body(schema: Schema) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def answer(
    description: str, schema: Schema | None = None, *, links: dict[str, Any] | None = None, **headers: Schema
) -> dict[str, Any]:
    response: dict[str, Any] = {"description": description}
    if schema is not None:
        response["content"] = json_body(schema)
    if headers:
        response["headers"] = headers
    if links:
        response["links"] = links
    return response


def links_to(parameter: str, expression: str, *operations: str) -> dict[str, Any]:
    """Links from a response to the operations that take `parameter` from it (OpenAPI's
    runtime `expression`, as `$response.body#/conversation/id`)."""
    return {name: {"operationId": name, "parameters": {parameter: expression}} for name in operations}


def conversation_links(expression: str) -> dict[str, Any]:
    return links_to(
        "conversation_id",
        expression,
        "get_conversation",
        "list_messages",
        "update_conversation",
        "delete_conversation",
        "list_members",
        "add_member",
        "conversation_events",
        "typing",
    )


def reply_links(expression: str) -> dict[str, Any]:
    return links_to("message_id", expression, "attach", "cancel", "regenerate")


def turn_answers() -> dict[int, dict[str, Any]]:
    """What a request that starts a turn answers: 202 with where to attach, or with `wait`
    200 with the finished reply."""
    message = {
        "type": "object",
        "required": ["message"],
        "properties": {"message": ref("schemas", "Message")},
        "additionalProperties": False,
    }
    return {
        200: answer(
            "with `wait`: the finished reply",
            message,
            links={
                **conversation_links("$response.body#/message/conversation_id"),
                **reply_links("$response.body#/message/id"),
                **links_to("message_id", "$response.body#/message/metadata/user_message_id", "edit"),
            },
        ),
        202: answer(
            "stored and started; attach to `stream_url`",
            ref("schemas", "Accepted"),
            links={
                **conversation_links("$response.body#/conversation_id"),
                **reply_links("$response.body#/message_id"),
                **links_to("message_id", "$response.body#/user_message_id", "edit"),
            },
        ),
    }


def error_response(status: int, types: tuple[str, ...]) -> dict[str, Any]:
    """An `Error` whose `type` is one of `types`, each with the fields it carries."""
    kinds = [
        {
            "properties": {
                "error": {
                    "properties": {"type": {"const": name}},
                    "required": list(ERROR_TYPES[name].carries),
                }
            }
        }
        for name in types
    ]
    narrowed = kinds[0] if len(kinds) == 1 else {"anyOf": kinds}
    headers = {"Retry-After": ref("headers", "RetryAfter")} if status in RETRY_STATUSES else {}
    if types == ("unauthorized",):
        headers["WWW-Authenticate"] = ref("headers", "WWWAuthenticate")
    description = "; ".join(f"`{name}`: {ERROR_TYPES[name].meaning}" for name in types)
    return answer(description, {"allOf": [ref("schemas", "Error"), narrowed]}, **headers)


def feed(description: str, event: str) -> dict[str, Any]:
    """A live feed: events as they happen, `event` the schema of one."""
    return {
        "description": f"{description}; the schema is one event's",
        "content": {"text/event-stream": {"schema": ref("schemas", event)}},
    }


def event_stream(description: str) -> dict[str, Any]:
    return {
        "description": f"{description}; the schema is one event's",
        "headers": {
            "X-Conversation-ID": ref("headers", "ConversationId"),
            "X-Message-ID": ref("headers", "MessageId"),
        },
        "content": {"text/event-stream": {"schema": ref("schemas", "Event")}},
        "links": {
            **conversation_links("$response.header.X-Conversation-ID"),
            **reply_links("$response.header.X-Message-ID"),
        },
    }


def array(name: str) -> Schema:
    return {"type": "array", "items": ref("schemas", name)}


def operation(
    name: str,
    summary: str,
    answers: dict[int, dict[str, Any]],
    errors: Errors | None = None,
    *,
    parameters: tuple[str, ...] = (),
    body: Schema | None = None,
    body_required: bool = True,
    guarded: bool = True,
    probe: bool = False,
) -> dict[str, Any]:
    """One operation, with what every route shares added to what is its own."""
    errors = dict(errors or {})
    if not probe:  # a foreign Host is refused before routing, but not for the probes
        errors[400] = ("invalid_host", *errors.get(400, ()))
    if guarded:
        errors[401] = ("unauthorized",)
    responses = {**answers, **{status: error_response(status, types) for status, types in errors.items()}}
    for response in responses.values():
        response.setdefault("headers", {})["X-Request-ID"] = ref("headers", "RequestId")
    op: dict[str, Any] = {
        "operationId": name,
        "summary": summary,
        "parameters": [ref("parameters", p) for p in (*parameters, "RequestId")],
        "responses": {str(status): responses[status] for status in sorted(responses)},
    }
    if body is not None:
        op["requestBody"] = {"required": body_required, "content": json_body(body)}
    if guarded:
        op["security"] = [{"bearer": []}]
    return op


ERROR_FIELDS: dict[str, Schema] = {
    "type": {"type": "string"},
    "message": {"type": "string"},
    "fields": {
        "type": "object",
        "description": "422 invalid_request: each field's problem",
        "additionalProperties": {"type": "string"},
    },
    "status": {"type": "string", "description": "409 conflict: the message's real status"},
    "retry_after": {"type": "number", "minimum": 0, "description": "seconds"},
    "max_bytes": {"type": "integer", "description": "413: the largest body taken"},
    "cause": {"type": "string", "description": "503 storage_unavailable: what the database said"},
    "superseded_by": {"type": "integer", "description": "409 conflict: what replaced it already"},
    "budget": {
        "type": "string",
        "pattern": "^[0-9.]+(usd|tokens)/(day|month)$",
        "description": "429 quota_exceeded: the budget that is spent",
    },
    "resets_at": {**TIMESTAMP, "description": "429 quota_exceeded: when it is not any more"},
}
ERROR = closed(
    {
        "error": closed(
            ERROR_FIELDS, optional=tuple(name for name in ERROR_FIELDS if name not in ("type", "message"))
        )
    }
)


def error_schemas() -> dict[str, Schema]:
    return {"Error": ERROR}
