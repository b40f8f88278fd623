"""Replacing a turn: its reply generated again (a regenerate, or the retry of a reply that
failed), or its user message edited, with a new reply. What `POST /api/messages/{id}/regenerate`
and `…/edit` become before a stream starts; like `chat.turns`, it knows nothing of HTTP.

Deliberate choices:
- Only the conversation's newest reply, or user message, that nothing replaced yet may be
  replaced, and not while its reply still streams; anything else is a 409. One that was
  replaced already names its replacement (`superseded_by`), so a client retrying a request
  that did succeed learns the new id, rather than paying for a second reply.
- The provider is sent the history the replaced reply had: what came before its question,
  less what was replaced since. The system prompt is the conversation's: a `system` sent
  with one chat request is not stored, and neither are its temperature and max_tokens, so
  those are this request's own.
- Unless asked otherwise, the new reply is made by the provider and model the replaced one
  was asked of (`requested`, when a fallback answered), whoever asks for it.
- An edited message is stored as written by whoever edited it: in a shared conversation a
  member may edit the last message as they may post one, and the row says who wrote what.
- The checks before the write make the errors clear and cost no slot of the rate limit; the
  write checks again (`chat.store_rewrites`), so two racing requests cannot both replace a turn.
- A new reply is a new cost: the budgets of whoever asks for it are checked (`within_budget`),
  and it is billed to them (`asked_by`), whoever asked the replaced one.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import ApiError, Conflict, NotFound
from .history import build_turns
from .providers.base import ChatRequest
from .records import Conversation, Message
from .services import Services
from .store import NotLatest
from .turns import (
    AcceptedTurn,
    admitted,
    choose_model,
    refuse_when_busy,
    reply_metadata,
    start_reply,
    within_budget,
)


@dataclass(frozen=True, slots=True)
class RewriteRequest:
    """A turn to replace: `message_id` names its reply (regenerate) or its user message (edit)."""

    user: str
    message_id: int
    message: str = ""  # an edit's new text
    provider: str | None = None
    model: str | None = None
    temperature: float | None = None
    max_tokens: int | None = None


async def regenerate(services: Services, ask: RewriteRequest) -> AcceptedTurn:
    """Store a new reply in place of the reply `ask` names, and start its generation."""
    refuse_when_busy(services)
    store, limit = services.store, services.settings.history_messages
    old, conversation = await _replaceable(services, ask, "assistant")
    earlier = await store.history(old.conversation_id, before_id=old.id, limit=limit + 1)
    if not earlier or earlier[-1].role != "user":  # every reply stored here follows its question
        raise Conflict(f"message {old.id} answers no message that is still shown", status=old.status)
    asked, earlier = earlier[-1], earlier[:-1]
    info, model = choose_model(services, ask.provider, ask.model, _asked_of(old))
    audience = [conversation.user_id, *await store.members(conversation.id)]
    await within_budget(services, ask.user)
    async with admitted(services, ask.user) as slot:
        try:
            reply = await store.regenerate_reply(old.id, metadata=reply_metadata(info.name, model, ask.user))
        except NotLatest:
            raise await _refusal(services, ask.user, old.id) from None
        request = _request(services, conversation, earlier, asked.content, model, ask)
        return start_reply(services, slot, info, request, asked, reply, audience=audience, asked_is_new=False)


async def edit(services: Services, ask: RewriteRequest) -> AcceptedTurn:
    """Store `ask.message` in place of the user message `ask` names, with a new reply in place
    of its reply, and start that reply's generation."""
    refuse_when_busy(services)
    store, limit = services.store, services.settings.history_messages
    old, conversation = await _replaceable(services, ask, "user")
    reply = (await store.newest_current(old.conversation_id)).get("assistant")
    if reply is not None and reply.id < old.id:  # not its reply: it has none (not made by us)
        reply = None
    earlier = await store.history(old.conversation_id, before_id=old.id, limit=limit)
    usual = _asked_of(reply) if reply else (conversation.provider, conversation.model)
    info, model = choose_model(services, ask.provider, ask.model, usual)
    audience = [conversation.user_id, *await store.members(conversation.id)]
    await within_budget(services, ask.user)
    async with admitted(services, ask.user) as slot:
        try:
            asked, new_reply = await store.edit_turn(
                old.id,
                reply.id if reply else None,
                ask.message,
                metadata=reply_metadata(info.name, model, ask.user),
                author=ask.user,
            )
        except NotLatest:
            raise await _refusal(services, ask.user, old.id) from None
        request = _request(services, conversation, earlier, ask.message, model, ask)
        return start_reply(services, slot, info, request, asked, new_reply, audience=audience)


async def _replaceable(services: Services, ask: RewriteRequest, role: str) -> tuple[Message, Conversation]:
    """The message `ask` names, of `role`, and its conversation: a 404 if the user may not see
    it, a 409 if it may not be replaced now."""
    store = services.store
    message = await store.get_message(ask.user, ask.message_id)
    if message is None or message.role != role:
        raise NotFound(f"message {ask.message_id} not found")
    conversation = await store.get_conversation(ask.user, message.conversation_id)
    if conversation is None:  # deleted meanwhile
        raise NotFound(f"message {ask.message_id} not found")
    check_replaceable(message, await store.newest_current(message.conversation_id))
    return message, conversation


def check_replaceable(message: Message, newest: dict[str, Message]) -> None:
    """A 409 unless `message` is the newest of its role in `newest` (the conversation's newest
    of each role not replaced), and no reply to it is still streaming."""
    status = message.status
    replaced_by = message.metadata.get("superseded_by")
    if replaced_by is not None:
        raise Conflict(
            f"message {message.id} was replaced already, by message {replaced_by}",
            status=status,
            superseded_by=replaced_by,
        )
    latest = newest.get(message.role)
    if latest is None or latest.id != message.id:
        what = "reply can be generated again" if message.role == "assistant" else "user message can be edited"
        raise Conflict(
            f"message {message.id} is not the latest: only a conversation's latest {what}", status=status
        )
    reply = newest.get("assistant")
    if reply is not None and reply.id >= message.id and reply.status == "streaming":
        raise Conflict(
            f"reply {reply.id} is still being generated; stop it first"
            f" (POST /api/messages/{reply.id}/cancel)",
            status=status,
        )


async def _refusal(services: Services, user: str, message_id: int) -> ApiError:
    """Why a write found the message no longer replaceable: another request came first."""
    message = await services.store.get_message(user, message_id)
    if message is None:
        return NotFound(f"message {message_id} not found")
    try:
        check_replaceable(message, await services.store.newest_current(message.conversation_id))
    except Conflict as exc:
        return exc
    return Conflict("the conversation changed meanwhile; fetch it and try again", status=message.status)


def _asked_of(reply: Message) -> tuple[str | None, str | None]:
    """The provider and model a reply was asked of (not a fallback that answered instead)."""
    asked = reply.metadata.get("requested") or reply.metadata
    return asked.get("provider"), asked.get("model")


def _request(
    services: Services,
    conversation: Conversation,
    earlier: list[Message],
    text: str,
    model: str,
    ask: RewriteRequest,
) -> ChatRequest:
    return ChatRequest(
        model=model,
        turns=build_turns(earlier, text, limit=services.settings.history_messages),
        system=conversation.system,
        temperature=ask.temperature,
        max_tokens=ask.max_tokens,
    )
