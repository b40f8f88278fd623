"""The OpenAI-compatible door: `POST /v1/chat/completions` and `GET /v1/models`.

A completion is a turn like any other (`chat.turns`): the same auth, ownership, rate
limits, budgets, usage and storage, and the same generation every client sees, so its
reply can be attached to on `/api/messages/{id}/stream` (`X-Message-ID`). What is new is
only the shape: OpenAI's body (`chat.v1_bodies`), chunks (`chat.v1_chunks`) and errors
(`chat.v1_errors`, rendered for every /v1 path by `chat.errors`), and when a stream's
status is decided (`chat.v1_stream`).

Deliberate choices:
- The client owns the history: what it sends is what the provider gets, and nothing
  stored is added. Each call is a new conversation (its system prompt kept as the
  conversation's) holding the call's new message and the reply; `X-Conversation-ID`
  continues one instead, so a client's calls can make one conversation with each turn
  stored once.
- A non-streaming call waits for the whole reply, as OpenAI's does, so it has no
  heartbeat: behind a proxy with a short read timeout, stream instead. It fails with the
  reply's error even after text came (a `chat.completion` is all or nothing); the text
  is stored with the failed reply all the same.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AsyncExitStack
from datetime import datetime
from functools import partial

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from . import events
from .attach import counted, reply_events
from .bodies import digits, idempotency_key
from .endpoints import body_of, current_user, services
from .errors import InvalidFields, NotFound
from .records import Message
from .services import Services
from .store import MAX_ID
from .turns import AcceptedTurn, accept_turn
from .v1_bodies import CompletionBody, parse_completion_body
from .v1_chunks import Chunks, completion, json_bytes, model_id
from .v1_errors import from_stream_error
from .v1_stream import V1EventStream, chunks_of, hold, resumed


def conversation_header(request: Request) -> int | None:
    """The conversation `X-Conversation-ID` asks to continue, if any."""
    raw = request.headers.get("x-conversation-id")
    if raw is None:
        return None
    if not digits(raw) or int(raw) > MAX_ID:
        raise InvalidFields({"X-Conversation-ID": "must be the id of a conversation of yours"})
    return int(raw)


def created_at(message: Message) -> int:
    """Unix seconds of when the reply was asked for: a chunk's `created`."""
    return int(datetime.fromisoformat(message.created_at).timestamp())


def ids_of(reply: Message) -> dict[str, str]:
    return {"x-conversation-id": str(reply.conversation_id), "x-message-id": str(reply.id)}


async def chat_completions(request: Request) -> Response:
    app, user = services(request), current_user(request)
    body = parse_completion_body(await body_of(request), app.settings, app.providers)
    key = idempotency_key(request.headers.get("idempotency-key"))
    ask = body.ask(user, conversation_header(request), key)
    if not body.stream:
        return await finished(app, user, await accept_turn(app, ask))
    app.limits.open_stream(user)  # counted from before the turn is stored, as the native stream
    release = partial(app.limits.stream_closed, user)
    stack = AsyncExitStack()
    try:
        accepted = await accept_turn(app, ask)
        return await streamed(app, user, accepted, body, stack, release)
    except BaseException:
        await stack.aclose()
        release()
        raise


async def streamed(
    app: Services,
    user: str,
    accepted: AcceptedTurn,
    body: CompletionBody,
    stack: AsyncExitStack,
    release: Callable[[], None],
) -> Response:
    """The reply's stream once its status is decided (`chat.v1_stream`)."""
    reply = accepted.reply
    subscription = await reply_events(app, user, reply, 0)
    assert subscription is not None  # from the first event on, there is always something
    reading = aiter(await stack.enter_async_context(subscription))
    opening = await hold(reading)
    if opening.error is not None:
        await stack.aclose()
        release()
        return opening.error.response(ids_of(reply))
    chunks = Chunks(reply.id, created_at(reply), model_id(reply.metadata))
    stream = chunks_of(opening, reading, chunks, body.include_usage)
    return V1EventStream(
        counted(resumed(stack, stream), release), ids_of(reply), stall=app.settings.client_stall_seconds
    )


async def finished(app: Services, user: str, accepted: AcceptedTurn) -> Response:
    """The whole reply as a `chat.completion`, or its failure as an HTTP error."""
    reply = accepted.reply
    generation = app.generations.get(reply.id)
    final: Message | None
    if generation is not None:
        await generation.finished.wait()
        if generation.lost is not None:
            lost = {"type": "storage", "message": f"the reply could not be stored: {generation.lost}"}
            return from_stream_error(lost).response(ids_of(reply))
        final = generation.final_row()
    else:  # a retry with the Idempotency-Key of a reply that has ended
        final = await app.store.get_message(user, reply.id)
    if final is None:
        raise NotFound(f"message {reply.id} not found")
    if final.status not in ("completed", "cancelled"):
        error = final.metadata.get("error") or events.INTERRUPTED
        return from_stream_error(error).response(ids_of(reply))
    answer = completion(final.id, created_at(final), final.metadata, final.content)
    return Response(json_bytes(answer), headers=ids_of(reply), media_type="application/json")


async def list_models(request: Request) -> Response:
    """Each usable provider's default model, the configured ones (SIDECHAT_MODEL, the
    fallback chain), as `provider/model`: what the settings say, no provider is asked."""
    app = services(request)
    ids: dict[str, str] = {}
    for info in app.providers.values():
        if info.available:
            ids[f"{info.name}/{info.default_model}"] = info.name
    for name, model in app.settings.fallback:
        fallback = app.providers.get(name)
        if fallback is not None and fallback.available:
            ids[f"{name}/{model or fallback.default_model}"] = name
    models = [{"id": id, "object": "model", "created": 0, "owned_by": owner} for id, owner in ids.items()]
    return JSONResponse({"object": "list", "data": models})
