"""The HTTP API: thin endpoints over the turns, the store and the running generations,
and the route table (the conversation routes are in `chat.conversations`).

A handler parses what it was sent, calls one module that does the work, and
answers; errors are `chat.errors` types, rendered by the app.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import partial

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from .attach import counted, ended, reply_events
from .bodies import idempotency_key, parse_chat_body, parse_rewrite_body
from .conversations import (
    add_member,
    create_conversation,
    delete_conversation,
    get_conversation,
    list_conversations,
    list_members,
    list_messages,
    remove_member,
    update_conversation,
)
from .endpoints import body_of, current_user, last_event_id, path_id, route, services
from .errors import Conflict, NotFound
from .outcome import CANCELLED
from .records import Message
from .redis_services import cancel_in_another_process
from .responses import EventStreamResponse
from .rewrites import edit, regenerate
from .sync import conversation_events, typing, user_events
from .turns import AcceptedTurn, accept_turn
from .usage import usage_report
from .v1_api import chat_completions, list_models

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
    return EventStreamResponse(counted(events, release), headers, stall=app.settings.client_stall_seconds)


async def chat_stream(request: Request) -> Response:
    async def new_turn() -> tuple[Message, int]:
        accepted, _ = await start_turn(request)
        return accepted.reply, 0

    return await stream_reply(request, new_turn)


async def chat(request: Request) -> Response:
    accepted, wait = await start_turn(request)
    return await answer_turn(request, accepted, wait)


async def answer_turn(request: Request, accepted: AcceptedTurn, wait: bool) -> Response:
    """202 with where to attach to the reply; with `wait`, 200 with the reply once it ended."""
    app = services(request)
    reply = accepted.reply
    if wait:
        await ended(app, reply)
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


async def reply_of(request: Request) -> Message:
    message_id = path_id(request, "message_id")
    message = await services(request).store.get_message(current_user(request), message_id)
    if message is None or message.role != "assistant":
        raise NotFound(f"message {message_id} not found")
    return message


async def regenerate_reply(request: Request) -> Response:
    """The reply generated again (or tried again, if it failed), from the same history."""
    message_id = path_id(request, "message_id")
    app = services(request)
    body = parse_rewrite_body(await body_of(request, optional=True), app.settings, edit=False)
    accepted = await regenerate(app, body.ask(current_user(request), message_id))
    return await answer_turn(request, accepted, body.wait)


async def edit_message(request: Request) -> Response:
    """The conversation's last user message replaced by the body's, with a new reply."""
    message_id = path_id(request, "message_id")
    app = services(request)
    body = parse_rewrite_body(await body_of(request), app.settings, edit=True)
    accepted = await edit(app, body.ask(current_user(request), message_id))
    return await answer_turn(request, accepted, body.wait)


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
    if generation is None and (elsewhere := await cancel_in_another_process(app.broker, message_id)):
        if not elsewhere.stopped or elsewhere.message is None:
            status = elsewhere.message["status"] if elsewhere.message else message.status
            raise Conflict(f"message {message_id} has already finished", status=status)
        if not elsewhere.finished:
            return JSONResponse({"message": elsewhere.message})
        generation = None
    elif generation is None or not await app.generations.stop(generation, CANCELLED):
        final = generation.final_row() if generation is not None else None
        status = final.status if final is not None else message.status  # not a stale `streaming`
        raise Conflict(f"message {message_id} has already finished", status=status)
    if (
        generation is not None and not generation.finished.is_set()
    ):  # the database refuses its end for now: it will say this
        final = generation.final_row()
        assert final is not None
        return JSONResponse({"message": final.as_json()})
    stopped = await app.store.get_message(current_user(request), message_id)
    if stopped is None:  # its conversation was deleted meanwhile
        raise NotFound(f"message {message_id} not found")
    return JSONResponse({"message": stopped.as_json()})


# -- the rest ----------------------------------------------------------------------------


async def list_providers(request: Request) -> Response:
    app = services(request)
    return JSONResponse(
        {
            "default": app.settings.provider,
            "providers": [info.as_json(app.settings.provider) for info in app.providers.values()],
        }
    )


async def whoami(request: Request) -> Response:
    """Who the caller is, as the token or the trusted header names them (`local` with auth
    off): a page tells its own presence and typing from others' by it."""
    return JSONResponse({"user": current_user(request)})


async def usage(request: Request) -> Response:
    """The caller's tokens and cost per provider and model, between `since` and `until`."""
    query = request.query_params
    report = await usage_report(
        services(request).store, current_user(request), query.get("since"), query.get("until")
    )
    return JSONResponse(report)


def _ok(request: Request) -> JSONResponse:
    """Healthy; with `"store": "none"` when there is no database to be healthy with."""
    stored = services(request).settings.stored
    return JSONResponse({"status": "ok"} if stored else {"status": "ok", "store": "none"})


async def healthz(request: Request) -> Response:
    if await services(request).store.ping():
        return _ok(request)
    return JSONResponse({"status": "unavailable"}, status_code=503)


async def readyz(request: Request) -> Response:
    """503 with the reason when this process should not get traffic (it cannot store what it
    is sent); `?deep=1` also checks the database's integrity."""
    app = services(request)
    readiness = app.readiness
    problem = await readiness.problem(deep=request.query_params.get("deep") == "1") if readiness else None
    problem = problem or await app.broker.problem()
    if problem is not None:
        return JSONResponse({"status": "unavailable", "reason": problem}, status_code=503)
    return _ok(request)


routes = [
    route("/api/chat/stream", POST=chat_stream),
    route("/api/chat", POST=chat),
    route("/api/messages/{message_id}/stream", GET=attach),
    route("/api/messages/{message_id}/cancel", POST=cancel),
    route("/api/messages/{message_id}/regenerate", POST=regenerate_reply),
    route("/api/messages/{message_id}/edit", POST=edit_message),
    route("/api/conversations", GET=list_conversations, POST=create_conversation),
    route(
        "/api/conversations/{conversation_id}",
        GET=get_conversation,
        PATCH=update_conversation,
        DELETE=delete_conversation,
    ),
    route("/api/conversations/{conversation_id}/messages", GET=list_messages),
    route("/api/conversations/{conversation_id}/members", GET=list_members, POST=add_member),
    route("/api/conversations/{conversation_id}/members/{user}", DELETE=remove_member),
    route("/api/events", GET=user_events),
    route("/api/conversations/{conversation_id}/events", GET=conversation_events),
    route("/api/conversations/{conversation_id}/typing", POST=typing),
    route("/api/providers", GET=list_providers),
    route("/api/me", GET=whoami),
    route("/api/usage", GET=usage),
    route("/v1/chat/completions", POST=chat_completions),
    route("/v1/models", GET=list_models),
    route("/healthz", GET=healthz),
    route("/readyz", GET=readyz),
]
