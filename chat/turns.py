"""Accepting a turn: what a chat request becomes before any stream starts.

A turn is the user's message and the assistant reply-to-be. Accepting one picks
the provider and model, honours an idempotency key, creates (and titles) the
conversation or continues it with its history, stores both rows in one write and
starts the generation. It knows nothing of HTTP: the chat routes call it, and so
can any other front door.

Deliberate choices:
- An idempotency key is scoped by user and remembered with a hash of what was
  asked, so a retry attaches to the first turn (never a second paid call) and a
  key reused for a different request is refused rather than answered wrongly.
- A conversation's model goes with its provider: a turn that names another
  provider gets that provider's default model, not the conversation's.
- A client that owns its history (`history`: the native API's `messages`, and every
  `/v1` call) has it sent upstream exactly as given, system turns included, and none
  of the stored history is added; what is stored is the new message and the reply
  (and, for a new conversation, the leading system prompt as its `system`).
- A turn replaced (a reply generated again, the last message edited) is `chat.rewrites`;
  it shares the admission, the choice of model and the start of the reply made here.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import asdict, dataclass
from functools import partial
from typing import Any

from .errors import InvalidFields, KeyReused, NotFound, ServiceUnavailable, StorageUnavailable
from .generations import Generation
from .history import build_turns, leading_system, sent_before
from .providers import ProviderInfo
from .providers.base import ChatRequest, Turn
from .records import Conversation, Message
from .services import Services
from .store import ConversationGone, KeyTaken, StorageFailed
from .telemetry import current_request_id
from .usage import spent_since

TITLE_CHARS = 50


@dataclass(frozen=True, slots=True)
class TurnRequest:
    """What a user asks for, from whichever front door. `message` is what is stored as the
    user's; `history`, when the client owns it, is every turn to send, ending with it."""

    user: str
    message: str
    conversation_id: int | None = None
    provider: str | None = None
    model: str | None = None
    temperature: float | None = None
    max_tokens: int | None = None
    system: str | None = None
    idempotency_key: str | None = None
    history: tuple[Turn, ...] | None = None
    stop: tuple[str, ...] = ()
    tools: tuple[dict[str, Any], ...] = ()
    tool_choice: str | dict[str, Any] | None = None
    keep_history: bool = False  # a new conversation stores the `history` it was sent (/v1)

    def fingerprint(self) -> str:
        """The same for the same request, whoever sends it again and under which key."""
        asked = {k: v for k, v in asdict(self).items() if k not in ("user", "idempotency_key")}
        return hashlib.sha256(json.dumps(asked, sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class AcceptedTurn:
    """A stored turn whose generation runs: new, or the first of a retry with the same key."""

    user_message_id: int
    reply: Message  # as stored when accepted

    @property
    def conversation_id(self) -> int:
        return self.reply.conversation_id


def reply_metadata(provider: str, model: str, asked_by: str) -> dict[str, str | None]:
    """What a reply row starts with: who is asked, who asked (the user it is billed to, in
    `/api/usage` and their budgets), and the request that asked (`X-Request-ID`)."""
    return {"provider": provider, "model": model, "asked_by": asked_by, "request_id": current_request_id()}


def title_from(text: str) -> str:
    title = " ".join(text.split())
    return title if len(title) <= TITLE_CHARS else title[: TITLE_CHARS - 1].rstrip() + "…"


@dataclass(slots=True)
class Slot:
    """One of `user`'s running replies, admitted by the limits; a generation takes it over."""

    user: str
    taken: bool = False


def choose_provider(providers: dict[str, ProviderInfo], name: str) -> ProviderInfo:
    info = providers.get(name)
    if info is None:
        known = ", ".join(providers)
        raise InvalidFields({"provider": f"unknown provider {name!r}; known: {known}"})
    if not info.available:
        raise InvalidFields({"provider": f"provider {name!r} is not configured: set {info.key_variable}"})
    return info


def choose_model(
    services: Services, provider: str | None, model: str | None, usual: tuple[str | None, str | None]
) -> tuple[ProviderInfo, str]:
    """The provider and model a reply is made with: those asked for, else the `usual` ones
    (the conversation's, or the replaced reply's), else the server's; a model goes with its
    provider."""
    usual_provider, usual_model = usual
    info = choose_provider(services.providers, provider or usual_provider or services.settings.provider)
    same_provider = usual_provider in (None, info.name)
    return info, model or (usual_model if same_provider else None) or info.default_model


def refuse_when_busy(services: Services) -> None:
    """No new reply while shutting down, or while too many wait for the database."""
    if services.generations.closing:
        raise ServiceUnavailable("the server is shutting down; try again shortly", retry_after=5)
    if services.generations.keeper.full:
        raise StorageUnavailable(
            "too many replies are waiting for the database to take them; try again shortly",
            retry_after=5,
            cause="the database is refusing writes",
        )


async def within_budget(services: Services, user: str) -> None:
    """`QuotaExceeded` when one of `user`'s budgets (SIDECHAT_USER_BUDGET) is spent."""
    await services.limits.budgets.check(user, partial(spent_since, services.store))


@asynccontextmanager
async def admitted(services: Services, user: str) -> AsyncIterator[Slot]:
    """A slot for one more running reply of `user`'s (else `RateLimited`), given back on the
    way out unless a generation took it (`start_reply`), which gives it back as it ends."""
    limits = services.limits
    await limits.admit_generation(user)
    slot = Slot(user)
    try:
        yield slot
    finally:
        if not slot.taken:
            limits.generation_ended(user)


def start_reply(
    services: Services,
    slot: Slot,
    info: ProviderInfo,
    request: ChatRequest,
    asked: Message,
    reply: Message,
    *,
    audience: list[str],
    created: Conversation | None = None,
    asked_is_new: bool = True,
) -> AcceptedTurn:
    """Run the generation of `reply` (stored, `streaming`) to `asked`, and tell the feeds of
    everyone in `audience`; `created` when the conversation is new."""
    assert info.provider is not None

    limits = services.limits

    def ended(generation: Generation) -> None:
        limits.generation_ended(slot.user)
        if (final := generation.final_row()) is not None:
            usage, cost = final.metadata.get("usage") or {}, final.metadata.get("cost_usd")
            tokens = (usage.get("input_tokens") or 0) + (usage.get("output_tokens") or 0)
            limits.budgets.spent(slot.user, tokens, cost)
            services.feeds.turn_finished(audience, final)

    services.generations.start(
        info.provider,
        request,
        reply,
        user_message_id=asked.id,
        stop_when_abandoned=services.settings.on_disconnect == "cancel",
        on_end=ended,
        user=slot.user,
    )
    slot.taken = True
    services.feeds.turn_started(audience, created, asked, reply, asked_is_new=asked_is_new)
    return AcceptedTurn(asked.id, reply)


async def accept_turn(services: Services, ask: TurnRequest) -> AcceptedTurn:
    """Store the turn and start its generation, or find the one a retry asks for."""
    refuse_when_busy(services)
    store = services.store
    conversation: Conversation | None = None
    if ask.conversation_id is not None:
        conversation = await store.get_conversation(ask.user, ask.conversation_id)
        if conversation is None:
            raise NotFound(f"conversation {ask.conversation_id} not found")
    usual = (conversation.provider, conversation.model) if conversation else (None, None)
    info, model = choose_model(services, ask.provider, ask.model, usual)

    key = f"{ask.user}:{ask.idempotency_key}" if ask.idempotency_key else None
    fingerprint = ask.fingerprint() if key else None
    if key and (first := await store.find_turn(ask.user, key)):
        return _retried(first, fingerprint)  # a retry: no new reply, so no limit applies

    await within_budget(services, ask.user)
    async with admitted(services, ask.user) as slot:
        return await _store_and_start(services, slot, ask, conversation, info, model, key, fingerprint)


async def _store_and_start(
    services: Services,
    slot: Slot,
    ask: TurnRequest,
    conversation: Conversation | None,
    info: ProviderInfo,
    model: str,
    key: str | None,
    fingerprint: str | None,
) -> AcceptedTurn:
    """The stored turn, its generation started with `slot`; or a twin's, which has its own."""
    store = services.store
    created = conversation is None
    owned = ask.history is not None  # the client's history, sent as it is: none of ours read
    earlier: list[Message] = []
    if conversation is None:
        system = leading_system(ask.history) if ask.history is not None else ask.system
        conversation = await store.create_conversation(
            ask.user, title=title_from(ask.message), system=system, provider=info.name, model=ask.model
        )
    else:
        if conversation.title is None:
            owner = conversation.user_id  # a member's first message titles it too
            await store.update_conversation(owner, conversation.id, {"title": title_from(ask.message)})
        if not owned:
            earlier = await store.history(conversation.id, limit=services.settings.history_messages)
    try:
        user_message, reply = await store.start_turn(
            conversation.id,
            ask.message,
            metadata=reply_metadata(info.name, model, ask.user),
            idempotency_key=key,
            request_hash=fingerprint,
            author=ask.user,
            earlier=sent_before(ask.history) if created and ask.keep_history and ask.history else (),
        )
    except ConversationGone:
        raise NotFound(f"conversation {conversation.id} not found") from None
    except StorageFailed:
        if created:  # nothing half-stored: not even the empty conversation, if it can be helped
            with suppress(StorageFailed):
                await store.delete_conversation(ask.user, conversation.id)
        raise
    except KeyTaken:  # a twin request with this key won the race
        twin = await store.find_turn(ask.user, key or "")
        if twin is None:  # and its conversation is gone already
            raise NotFound(f"conversation {conversation.id} not found") from None
        return _retried(twin, fingerprint)

    # Everyone the conversation is shown to, read before the reply starts so that the feeds
    # announce it before its first token.
    audience = [ask.user] if created else [conversation.user_id, *await store.members(conversation.id)]
    request = ChatRequest(
        model=model,
        turns=list(ask.history)
        if ask.history is not None
        else build_turns(earlier, ask.message, limit=services.settings.history_messages),
        system=None if owned else ask.system if ask.system is not None else conversation.system,
        temperature=ask.temperature,
        max_tokens=ask.max_tokens,
        stop=ask.stop,
        tools=ask.tools,
        tool_choice=ask.tool_choice,
    )
    created_one = conversation if created else None
    return start_reply(
        services, slot, info, request, user_message, reply, audience=audience, created=created_one
    )


def _retried(first: tuple[Message, Message, str | None], fingerprint: str | None) -> AcceptedTurn:
    asked, reply, stored = first
    if stored is not None and stored != fingerprint:
        raise KeyReused("this Idempotency-Key was already used for a different request; use a new key")
    return AcceptedTurn(asked.id, reply)
