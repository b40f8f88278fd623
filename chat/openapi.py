"""`GET /openapi.json`: the API described as OpenAPI 3.1.

Built from plain dicts: each operation names its own answers, and `operation()` adds
what every route shares (the request id both ways, the Host check's 400, and on /api
the bearer token and its 401). The reusable parts are in `chat.openapi_schemas` (bodies),
`chat.openapi_parameters` (parameters, headers) and `chat.openapi_responses`; sharing and
the live feeds are in `chat.openapi_feeds`; regenerating and editing in `chat.openapi_rewrites`;
usage in `chat.openapi_usage`; the OpenAI-compatible door in `chat.openapi_v1`.
`tests/test_openapi.py` holds the document to the routes the app serves and to real
responses, and `tests/test_fuzz.py` fuzzes the API from it.

Deliberate choices:
- Limits that are settings (the longest message) come from the settings the app runs
  with, so the document is true of this server, not of the defaults.
- HEAD, which Starlette answers wherever GET is, is not listed: it is not an operation
  of ours, only HTTP's.
- An event stream's `schema` describes one event (`{event, data, id}`), not the body as
  one string: OpenAPI 3.2 says this with `itemSchema`, and schemathesis reads 3.1 so, so
  every event the fuzz sees is checked.
- A live feed's event says what its `data` holds with `contentMediaType` and `contentSchema`
  (one per kind of event), which schemathesis checks; a reply's `Event` leaves `data` a line
  of JSON. A feed never ends by itself, so a client that reads one to its end waits forever:
  the tests read its first events and close it.
- Each error response names the `error.type` values that status can carry, so a new
  kind of error is documented where it can happen or the tests fail.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .cli import package_version
from .config import Settings
from .openapi_feeds import feed_schemas, sync_paths
from .openapi_parameters import HEADERS, PARAMETERS, SECURITY_SCHEMES
from .openapi_responses import (
    BODY_ERRORS,
    OWNER_ONLY,
    TURN_ERRORS,
    answer,
    array,
    conversation_links,
    error_schemas,
    event_stream,
    operation,
    turn_answers,
)
from .openapi_rewrites import rewrite_paths, rewrite_schemas
from .openapi_schemas import closed, nullable, ref, schemas
from .openapi_usage import usage_paths, usage_schemas
from .openapi_v1 import v1_parameters, v1_paths, v1_schemas


def paths() -> dict[str, Any]:
    chat_body, conversation_body = ref("schemas", "ChatBody"), ref("schemas", "ConversationBody")
    conversation = closed({"conversation": ref("schemas", "Conversation")})
    message = closed({"message": ref("schemas", "Message")})
    return {
        "/api/chat/stream": {
            "post": operation(
                "chat_stream",
                "Send a message and stream the reply",
                {200: event_stream("the reply's events, from `start` to `done` or `error`")},
                {**TURN_ERRORS, 503: (*TURN_ERRORS[503], "too_many_connections")},
                parameters=("IdempotencyKey",),
                body=chat_body,
            )
        },
        "/api/chat": {
            "post": operation(
                "chat",
                "Send a message; the reply runs on, to attach to or wait for",
                turn_answers(),
                TURN_ERRORS,
                parameters=("IdempotencyKey",),
                body=chat_body,
            )
        },
        "/api/messages/{message_id}/stream": {
            "get": operation(
                "attach",
                "Attach to a reply, running or finished, resuming after Last-Event-ID",
                {
                    200: event_stream("the reply's events after Last-Event-ID"),
                    204: answer("the stream had ended and you have every event: stop reconnecting"),
                },
                {404: ("not_found",), 422: ("invalid_request",), 503: ("too_many_connections",)},
                parameters=("MessageId", "LastEventId", "LastEventIdQuery"),
            )
        },
        "/api/messages/{message_id}/cancel": {
            "post": operation(
                "cancel",
                "Stop a running reply; it keeps the text it had",
                {200: answer("the reply, cancelled", message)},
                {404: ("not_found",), 409: ("conflict",)},
                parameters=("MessageId",),
            )
        },
        **rewrite_paths(),
        "/api/conversations": {
            "get": operation(
                "list_conversations",
                "Your conversations, newest activity first",
                {
                    200: answer(
                        "a page; pass `next_cursor` as `cursor` for the next",
                        closed({"conversations": array("Conversation"), "next_cursor": nullable("string")}),
                    )
                },
                {422: ("invalid_request",)},
                parameters=("Limit", "Cursor"),
            ),
            "post": operation(
                "create_conversation",
                "Start a conversation (the body may be left out)",
                {
                    201: answer(
                        "created", conversation, links=conversation_links("$response.body#/conversation/id")
                    )
                },
                {**BODY_ERRORS, 409: ("storage_off",), 503: ("storage_unavailable",)},
                body=conversation_body,
                body_required=False,
            ),
        },
        **sync_paths(),
        "/api/conversations/{conversation_id}": {
            "get": operation(
                "get_conversation",
                "A conversation and a page of its messages: the newest, oldest first within the page",
                {
                    200: answer(
                        "pass `next_before_id` as `before_id` for the page before",
                        closed(
                            {
                                "conversation": ref("schemas", "Conversation"),
                                "messages": array("Message"),
                                "next_before_id": nullable("integer"),
                            }
                        ),
                    )
                },
                {404: ("not_found",), 422: ("invalid_request",)},
                parameters=("ConversationId", "Limit", "BeforeId"),
            ),
            "patch": operation(
                "update_conversation",
                "Rename it, or change its system prompt, provider or model",
                {
                    200: answer(
                        "updated", conversation, links=conversation_links("$response.body#/conversation/id")
                    )
                },
                {**BODY_ERRORS, **OWNER_ONLY, 503: ("storage_unavailable",)},
                parameters=("ConversationId",),
                body=conversation_body,
            ),
            "delete": operation(
                "delete_conversation",
                "Delete it with its messages and members; its running replies are stopped",
                {204: answer("deleted")},
                {**OWNER_ONLY, 503: ("storage_unavailable",)},
                parameters=("ConversationId",),
            ),
        },
        "/api/conversations/{conversation_id}/messages": {
            "get": operation(
                "list_messages",
                "Its messages after `after_id`, oldest first: the catch-up after a reconnect",
                {200: answer("the messages", closed({"messages": array("Message")}))},
                {404: ("not_found",), 422: ("invalid_request",)},
                parameters=("ConversationId", "AfterId"),
            )
        },
        "/api/providers": {
            "get": operation(
                "list_providers",
                "The providers this server knows, whether each can be used (never a key)",
                {
                    200: answer(
                        "the providers",
                        closed({"default": {"type": "string"}, "providers": array("Provider")}),
                    )
                },
            )
        },
        "/api/me": {
            "get": operation(
                "whoami",
                "Who the caller is: the user a token or the trusted header names (`local` with auth off)",
                {200: answer("the caller", closed({"user": {"type": "string"}}))},
            )
        },
        **usage_paths(),
        **v1_paths(),
        "/healthz": {
            "get": operation(
                "healthz",
                "Liveness: the process answers and can read its database",
                {
                    200: answer("alive", ref("schemas", "Health")),
                    503: answer("cannot read", ref("schemas", "Health")),
                },
                guarded=False,
                probe=True,
            )
        },
        "/readyz": {
            "get": operation(
                "readyz",
                "Readiness: 503 with the reason when this process cannot store what it is sent",
                {
                    200: answer("ready", ref("schemas", "Health")),
                    503: answer("not ready", ref("schemas", "Health")),
                },
                guarded=False,
                probe=True,
                parameters=("Deep",),
            )
        },
        "/openapi.json": {
            "get": operation(
                "openapi",
                "This document",
                {200: answer("OpenAPI 3.1", {"type": "object"})},
                guarded=False,
            )
        },
        "/": {
            "get": operation(
                "index",
                "The chat page",
                {200: {"description": "the page", "content": {"text/html": {"schema": {"type": "string"}}}}},
                guarded=False,
            )
        },
    }


def document(settings: Settings) -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "sidechat",
            "version": package_version(),
            "description": "A streaming chat relay: LLM replies as Server-Sent Events, stored in SQLite."
            ' Every JSON error is `{"error": {"type", "message", ...}}`.',
        },
        "paths": paths(),
        "components": {
            "schemas": {
                **schemas(settings),
                **feed_schemas(),
                **rewrite_schemas(settings),
                **usage_schemas(),
                **error_schemas(),
                **v1_schemas(settings),
            },
            "parameters": {**PARAMETERS, **v1_parameters()},
            "headers": HEADERS,
            "securitySchemes": SECURITY_SCHEMES,
        },
    }


async def openapi(request: Request) -> Response:
    return JSONResponse(document(request.app.state.services.settings))


routes = [Route("/openapi.json", openapi, methods=["GET"])]
