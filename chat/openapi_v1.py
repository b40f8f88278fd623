"""The OpenAI-compatible door in the OpenAPI document: `POST /v1/chat/completions` and
`GET /v1/models`, their bodies as `chat.v1_bodies` checks them (never stricter: a request
the document calls invalid is one the server refuses), OpenAI's answers (`chat.v1_chunks`)
and OpenAI's error shape (`chat.v1_errors`). A 400 may also be the native `invalid_host`,
which is refused before any route."""

from __future__ import annotations

from typing import Any

from .config import Settings
from .openapi_responses import operation
from .openapi_schemas import Schema, closed, nullable, ref
from .v1_bodies import MAX_MODEL_CHARS, MAX_STOP, MAX_TOOLS, TOOL_CHOICES

V1_ERROR = closed(
    {
        "error": closed(
            {
                "message": {"type": "string"},
                "type": {
                    "type": "string",
                    "description": "`invalid_request_error` for a bad body, else sidechat's",
                },
                "code": nullable(
                    "string", description="OpenAI's for a bad field; the provider's, when it sent one"
                ),
                "param": nullable("string", description="the field at fault, as `messages[2].content`"),
            }
        )
    }
)
FUNCTION = {
    "type": "object",
    "required": ["type", "function"],
    "properties": {
        "type": {"const": "function"},
        "function": {
            "type": "object",
            "required": ["name"],
            "properties": {"name": {"type": "string", "minLength": 1}},
        },
    },
}
CALL = {
    "type": "object",
    "required": ["id", "function"],
    "properties": {
        "id": {"type": "string"},
        "type": {"const": "function"},
        "function": closed(
            {"name": {"type": "string"}, "arguments": {"type": "string", "description": "JSON text"}}
        ),
    },
}
USAGE = {
    "type": "object",
    "required": ["prompt_tokens", "completion_tokens", "total_tokens"],
    "properties": {
        "prompt_tokens": {"type": "integer", "minimum": 0},
        "completion_tokens": {"type": "integer", "minimum": 0},
        "total_tokens": {"type": "integer", "minimum": 0},
        "prompt_tokens_details": closed({"cached_tokens": {"type": "integer", "minimum": 0}}),
    },
    "additionalProperties": False,
}
FINISH = {"enum": ["stop", "length", "tool_calls", "content_filter", "cancelled"]}


def message_schema(settings: Settings) -> Schema:
    text = {"type": "string", "maxLength": settings.max_message_chars}
    part = {
        "type": "object",
        "required": ["type", "text"],
        "properties": {"type": {"const": "text"}, "text": {"type": "string"}},
    }
    return {
        "type": "object",
        "description": "A user message's content must not be blank; the last message is a user's,"
        " or tool results. `developer` is taken as `system`.",
        "required": ["role"],
        "properties": {
            "role": {"enum": ["system", "developer", "user", "assistant", "tool"]},
            "content": {"anyOf": [text, {"type": "array", "items": part}, {"type": "null"}]},
            "tool_calls": {"type": "array", "items": CALL, "description": "an assistant's only"},
            "tool_call_id": {"type": "string", "description": "a tool result's: the call it answers"},
        },
    }


def completion_body(settings: Settings) -> Schema:
    tokens = nullable("integer", minimum=1, maximum=1_000_000)
    stop = {"type": "string", "minLength": 1}
    return {
        "type": "object",
        "description": "OpenAI's body; unknown fields are ignored, null is the same as leaving a field out.",
        "required": ["model", "messages"],
        "properties": {
            "model": {
                "type": "string",
                "maxLength": MAX_MODEL_CHARS,
                "pattern": r"^[^\x00-\x1f\x7f-\x9f]*\S[^\x00-\x1f\x7f-\x9f]*$",
                "description": "`provider/model` (the prefix only when it names a usable provider),"
                " else a model of the default provider",
                "examples": ["demo/demo-1", "openai/gpt-4o-mini"],
            },
            "messages": {"type": "array", "minItems": 1, "items": message_schema(settings)},
            "stream": nullable("boolean"),
            "stream_options": {
                "type": ["object", "null"],
                "properties": {"include_usage": nullable("boolean")},
            },
            "temperature": nullable("number", minimum=0, maximum=2),
            "max_completion_tokens": tokens,
            "max_tokens": {**tokens, "description": "the older name of max_completion_tokens"},
            "stop": {
                "anyOf": [stop, {"type": "array", "maxItems": MAX_STOP, "items": stop}, {"type": "null"}]
            },
            "n": nullable("integer", minimum=1, maximum=1),
            "user": nullable("string", description="checked, not used"),
            "tools": {"type": ["array", "null"], "maxItems": MAX_TOOLS, "items": FUNCTION},
            "tool_choice": {"anyOf": [{"enum": list(TOOL_CHOICES)}, FUNCTION, {"type": "null"}]},
        },
        "examples": [{"model": "demo/demo-1", "messages": [{"role": "user", "content": "Say hello"}]}],
    }


COMPLETION = closed(
    {
        "id": {"type": "string", "pattern": "^chatcmpl-[0-9]+$"},
        "object": {"const": "chat.completion"},
        "created": {"type": "integer"},
        "model": {"type": "string", "description": "`provider/model` of who answered"},
        "system_fingerprint": {"type": "null"},
        "choices": {
            "type": "array",
            "minItems": 1,
            "maxItems": 1,
            "items": closed(
                {
                    "index": {"const": 0},
                    "message": closed(
                        {
                            "role": {"const": "assistant"},
                            "content": nullable("string"),
                            "refusal": {"type": "null"},
                            "tool_calls": {"type": "array", "items": CALL},
                        },
                        optional=("tool_calls",),
                    ),
                    "logprobs": {"type": "null"},
                    "finish_reason": FINISH,
                }
            ),
        },
        "usage": USAGE,
    }
)
CHUNK_EVENT = closed(
    {
        "event": {"const": "message"},
        "data": {
            "type": "string",
            "pattern": r"^(\[DONE\]|\{[^\n]*\})$",
            "description": "a `chat.completion.chunk`, an `{error}`, or `[DONE]`",
        },
    }
)
MODELS = closed(
    {
        "object": {"const": "list"},
        "data": {
            "type": "array",
            "items": closed(
                {
                    "id": {"type": "string", "pattern": "^[^/]+/"},
                    "object": {"const": "model"},
                    "created": {"type": "integer"},
                    "owned_by": {"type": "string", "description": "the provider"},
                }
            ),
        },
    }
)


def v1_errors(*statuses: int) -> dict[int, dict[str, Any]]:
    """OpenAI-shaped error answers; a 400 may also be the native `invalid_host`."""
    retry_after = {"schema": {"type": "string", "pattern": "^[0-9]+$"}, "required": False}
    out = {}
    for status in statuses:
        schema = (
            {"anyOf": [ref("schemas", "V1Error"), ref("schemas", "Error")]}
            if status == 400
            else ref("schemas", "V1Error")
        )
        headers: dict[str, Any] = {"Retry-After": retry_after} if status in (429, 502, 503, 504) else {}
        headers["x-should-retry"] = {"schema": {"enum": ["true", "false"]}, "required": False}
        out[status] = {
            "description": _MEANINGS[status],
            "headers": headers,
            "content": {"application/json": {"schema": schema}},
        }
    return out


_MEANINGS = {
    400: "a bad body, a provider that refused the request, or a blocked prompt (see chat.v1_errors)",
    401: "no sidechat token as the bearer (api_key), or a wrong one (auth on)",
    404: "no such conversation (X-Conversation-ID), or the provider knows no such model",
    408: "the body did not arrive in time",
    413: "the body is over SIDECHAT_MAX_BODY_BYTES",
    429: "our rate limit, too many replies running, a spent budget, or the provider's 429",
    502: "the provider failed, or refused sidechat's key (`upstream_auth`)",
    503: "the provider is overloaded, or sidechat is shutting down or cannot store",
    504: "the provider timed out",
}


def v1_operation(
    name: str, summary: str, answers: dict[int, dict[str, Any]], *statuses: int, **more: Any
) -> Schema:
    """An operation as `openapi_responses.operation` makes one, with OpenAI's error answers."""
    op = operation(name, summary, answers, **more)
    for status, response in v1_errors(400, 401, *statuses).items():
        response["headers"]["X-Request-ID"] = ref("headers", "RequestId")
        op["responses"][str(status)] = response
    op["responses"] = dict(sorted(op["responses"].items()))
    return op


def v1_paths() -> dict[str, Any]:
    ids = {"X-Conversation-ID": ref("headers", "ConversationId"), "X-Message-ID": ref("headers", "MessageId")}
    answered = {
        "description": "`stream: false`: the whole reply; `stream: true`: its chunks, the schema"
        " being one event's",
        "headers": ids,
        "content": {
            "application/json": {"schema": ref("schemas", "ChatCompletion")},
            "text/event-stream": {"schema": ref("schemas", "ChatCompletionChunkEvent")},
        },
    }
    return {
        "/v1/chat/completions": {
            "post": v1_operation(
                "chat_completions",
                "OpenAI's chat completions: a turn stored as a conversation of its own (or of"
                " X-Conversation-ID's), the reply streamed as chunks or answered whole",
                {200: answered},
                404,
                408,
                413,
                429,
                502,
                503,
                504,
                parameters=("IdempotencyKey", "ConversationHeader"),
                body=ref("schemas", "ChatCompletionBody"),
            )
        },
        "/v1/models": {
            "get": v1_operation(
                "list_models",
                "The `provider/model` ids configured (each usable provider's default, the fallback"
                " chain's); no provider is asked",
                {
                    200: {
                        "description": "the models",
                        "content": {"application/json": {"schema": ref("schemas", "Models")}},
                    }
                },
            )
        },
    }


def v1_parameters() -> dict[str, Any]:
    return {
        "ConversationHeader": {
            "in": "header",
            "name": "X-Conversation-ID",
            "schema": {"type": "string", "pattern": "^[0-9]{1,19}$"},
            "description": "continue this conversation of yours instead of starting one",
        }
    }


def v1_schemas(settings: Settings) -> dict[str, Schema]:
    return {
        "V1Error": V1_ERROR,
        "ChatCompletionBody": completion_body(settings),
        "ChatCompletion": COMPLETION,
        "ChatCompletionChunkEvent": CHUNK_EVENT,
        "Models": MODELS,
    }
