"""The HTTP API: thin endpoints over the turns, the store and the running generations.

A handler parses what it was sent, calls one module that does the work, and
answers; errors are `chat.errors` types, rendered by the app.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .attach import counted, reply_events
from .auth import USER
from .bodies import Fields, digits, idempotency_key, parse_chat_body, read_json
from .errors import Conflict, InvalidFields, NotFound
from .outcome import CANCELLED
from .records import Conversation, Message
from .responses import EventStreamResponse
from .services import Services
from .store import MAX_ID
from .turns import AcceptedTurn, accept_turn, choose_provider

MAX_PAGE = 100


def services(request: Request) -> Services:
    return request.app.state.services  # type: ignore[no-any-return]


def current_user(request: Request) -> str:
    """Who is asking, as the app's gate (`chat.auth`) found before routing."""
    return request.scope[USER]  # type: ignore[no-any-return]


async def body_of(request: Request, *, optional: bool = False) -> dict[str, Any]:
    settings = services(request).settings
    return await read_json(request, settings.max_body_bytes, timeout=settings.body_timeout, optional=optional)


# -- chat --------------------------------------------------------------------------------


async def start_turn(request: Request) -> tuple[AcceptedTurn, bool]:
    """The turn a chat request asks for, and whether to wait for its reply."""
    app = services(request)
    body = parse_chat_body(await body_of(request), app.settings)
    key = idempotency_key(request.headers.get("idempotency-key"))
    return await accept_turn(app, body.ask(current_user(request), key)), body.wait


async def stream_reply(request: Request, find: Callable[[], Awaitable[tuple[Message, int]]]) -> Response:
    """Stream the reply `find` gives (and the event id to start after), counted as one of the
    user's open streams from before `find` runs (so a refused one stores nothing) to its end."""
    app, user = services(request), current_user(request)
    app.limits.open_stream(user)
    release = partial(app.limits.stream_closed, user)
    try:
        message, after = await find()
        events = await reply_events(app, user, message, after)
    except BaseException:
        release()
        raise
    if events is None:
        release()
        return Response(status_code=204)
    headers = {"x-conversation-id": str(message.conversation_id), "x-message-id": str(message.id)}
    return EventStreamResponse(counted(events, release), headers)


async def chat_stream(request: Request) -> Response:
    async def new_turn() -> tuple[Message, int]:
        accepted, _ = await start_turn(request)
        return accepted.reply, 0

    return await stream_reply(request, new_turn)


async def chat(request: Request) -> Response:
    app = services(request)
    accepted, wait = await start_turn(request)
    reply = accepted.reply
    if wait:
        generation = app.generations.get(reply.id)
        if generation is not None:
            await generation.finished.wait()
        message = await app.store.get_message(current_user(request), reply.id)
        if message is None:  # deleted in the meantime
            raise NotFound(f"message {reply.id} not found")
        return JSONResponse({"message": message.as_json()})
    return JSONResponse(
        {
            "conversation_id": reply.conversation_id,
            "user_message_id": accepted.user_message_id,
            "message_id": reply.id,
            "stream_url": f"/api/messages/{reply.id}/stream",
        },
        status_code=202,
    )


# -- messages ----------------------------------------------------------------------------


def path_id(request: Request, name: str) -> int:
    raw: str = request.path_params[name]
    if not digits(raw) or int(raw) > MAX_ID:  # not an id SQLite could hold: cannot exist
        raise NotFound(f"{name.split('_')[0]} {raw[:40]} not found")
    return int(raw)


def last_event_id(request: Request) -> int:
    raw = request.headers.get("last-event-id") or request.query_params.get("last_event_id") or "0"
    if not digits(raw.strip()):
        raise InvalidFields({"last_event_id": "must be a non-negative integer"})
    return int(raw)


async def reply_of(request: Request) -> Message:
    message_id = path_id(request, "message_id")
    message = await services(request).store.get_message(current_user(request), message_id)
    if message is None or message.role != "assistant":
        raise NotFound(f"message {message_id} not found")
    return message


async def attach(request: Request) -> Response:
    after = last_event_id(request)

    async def stored() -> tuple[Message, int]:
        return await reply_of(request), after

    return await stream_reply(request, stored)


async def cancel(request: Request) -> Response:
    app = services(request)
    message = await reply_of(request)
    message_id = message.id
    generation = app.generations.get(message_id)
    if generation is None or not await app.generations.stop(generation, CANCELLED):
        final = generation.final_row() if generation is not None else None
        status = final.status if final is not None else message.status  # not a stale `streaming`
        raise Conflict(f"message {message_id} has already finished", status=status)
    if not generation.finished.is_set():  # the database refuses its end for now: it will say this
        final = generation.final_row()
        assert final is not None
        return JSONResponse({"message": final.as_json()})
    stopped = await app.store.get_message(current_user(request), message_id)
    if stopped is None:  # its conversation was deleted meanwhile
        raise NotFound(f"message {message_id} not found")
    return JSONResponse({"message": stopped.as_json()})


# -- conversations -----------------------------------------------------------------------


def encode_cursor(conversation: Conversation) -> str:
    raw = f"{conversation.updated_at}|{conversation.id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[str, int]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        updated_at, _, last_id = raw.rpartition("|")
        if not digits(last_id):
            raise ValueError(last_id)
        return updated_at, int(last_id)
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise InvalidFields({"cursor": "is not a cursor this server gave out"}) from None


def query_int(request: Request, name: str, default: int, *, low: int, high: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    if not digits(raw) or not low <= int(raw) <= high:
        raise InvalidFields({name: f"must be an integer between {low} and {high}"})
    return int(raw)


async def list_conversations(request: Request) -> Response:
    app = services(request)
    limit = query_int(request, "limit", 20, low=1, high=MAX_PAGE)
    cursor = request.query_params.get("cursor")
    before = decode_cursor(cursor) if cursor else None
    page = await app.store.list_conversations(current_user(request), limit=limit + 1, before=before)
    more = len(page) > limit
    page = page[:limit]
    return JSONResponse(
        {
            "conversations": [c.as_json() for c in page],
            "next_cursor": encode_cursor(page[-1]) if more else None,
        }
    )


def parse_conversation_fields(data: dict[str, Any], app: Services) -> dict[str, str | None]:
    fields = Fields(data)
    changes: dict[str, str | None] = {}
    for name, max_chars in (("title", 200), ("system", app.settings.max_message_chars), ("model", 200)):
        if name in data:
            changes[name] = fields.text(name, max_chars=max_chars, blank=name == "system")
    if "provider" in data:
        changes["provider"] = fields.text("provider", max_chars=40)
    fields.check()
    if changes.get("provider"):
        choose_provider(app.providers, changes["provider"] or "")
    return changes


async def create_conversation(request: Request) -> Response:
    app = services(request)
    body = await body_of(request, optional=True)
    changes = parse_conversation_fields(body, app)
    conversation = await app.store.create_conversation(current_user(request), **changes)
    return JSONResponse({"conversation": conversation.as_json()}, status_code=201)


async def owned_conversation(request: Request) -> Conversation:
    conversation_id = path_id(request, "conversation_id")
    conversation = await services(request).store.get_conversation(current_user(request), conversation_id)
    if conversation is None:
        raise NotFound(f"conversation {conversation_id} not found")
    return conversation


async def get_conversation(request: Request) -> Response:
    """The conversation and a page of its messages: the newest by default, oldest first within
    the page; `next_before_id` asks for the page before it."""
    conversation = await owned_conversation(request)
    limit = query_int(request, "limit", 20, low=1, high=MAX_PAGE)
    before_id = query_int(request, "before_id", MAX_ID, low=1, high=MAX_ID)
    store = services(request).store
    page = await store.recent_messages(conversation.id, before_id=before_id, limit=limit + 1)
    older = len(page) > limit
    page = page[-limit:]
    return JSONResponse(
        {
            "conversation": conversation.as_json(),
            "messages": [m.as_json() for m in page],
            "next_before_id": page[0].id if older else None,
        }
    )


async def list_messages(request: Request) -> Response:
    conversation = await owned_conversation(request)
    after_id = query_int(request, "after_id", 0, low=0, high=2**62)
    messages = await services(request).store.list_messages(conversation.id, after_id=after_id)
    return JSONResponse({"messages": [m.as_json() for m in messages]})


async def update_conversation(request: Request) -> Response:
    app = services(request)
    conversation = await owned_conversation(request)
    changes = parse_conversation_fields(await body_of(request), app)
    updated = await app.store.update_conversation(current_user(request), conversation.id, changes)
    if updated is None:
        raise NotFound(f"conversation {conversation.id} not found")
    return JSONResponse({"conversation": updated.as_json()})


async def delete_conversation(request: Request) -> Response:
    app = services(request)
    conversation = await owned_conversation(request)
    await app.generations.stop_conversation(conversation.id)
    deleted = await app.store.delete_conversation(current_user(request), conversation.id)
    # A turn stored while the first stop waited has no row left, but may still be running.
    await app.generations.stop_conversation(conversation.id)
    if not deleted:  # a twin request deleted it while this one waited: only one of them did
        raise NotFound(f"conversation {conversation.id} not found")
    return Response(status_code=204)


# -- the rest ----------------------------------------------------------------------------


async def list_providers(request: Request) -> Response:
    app = services(request)
    return JSONResponse(
        {
            "default": app.settings.provider,
            "providers": [info.as_json(app.settings.provider) for info in app.providers.values()],
        }
    )


async def healthz(request: Request) -> Response:
    if await services(request).store.ping():
        return JSONResponse({"status": "ok"})
    return JSONResponse({"status": "unavailable"}, status_code=503)


async def readyz(request: Request) -> Response:
    """503 with the reason when this process should not get traffic (it cannot store what it
    is sent); `?deep=1` also checks the database's integrity."""
    readiness = services(request).readiness
    problem = await readiness.problem(deep=request.query_params.get("deep") == "1") if readiness else None
    if problem is not None:
        return JSONResponse({"status": "unavailable", "reason": problem}, status_code=503)
    return JSONResponse({"status": "ok"})


routes = [
    Route("/api/chat/stream", chat_stream, methods=["POST"]),
    Route("/api/chat", chat, methods=["POST"]),
    Route("/api/messages/{message_id}/stream", attach, methods=["GET"]),
    Route("/api/messages/{message_id}/cancel", cancel, methods=["POST"]),
    Route("/api/conversations", list_conversations, methods=["GET"]),
    Route("/api/conversations", create_conversation, methods=["POST"]),
    Route("/api/conversations/{conversation_id}", get_conversation, methods=["GET"]),
    Route("/api/conversations/{conversation_id}", update_conversation, methods=["PATCH"]),
    Route("/api/conversations/{conversation_id}", delete_conversation, methods=["DELETE"]),
    Route("/api/conversations/{conversation_id}/messages", list_messages, methods=["GET"]),
    Route("/api/providers", list_providers, methods=["GET"]),
    Route("/healthz", healthz, methods=["GET"]),
    Route("/readyz", readyz, methods=["GET"]),
]
