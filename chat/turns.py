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
"""

from __future__ import annotations

import hashlib
import json
from contextlib import suppress
from dataclasses import asdict, dataclass

from .errors import InvalidFields, KeyReused, NotFound, ServiceUnavailable, StorageUnavailable
from .generations import Generation
from .history import build_turns
from .providers import ProviderInfo
from .providers.base import ChatRequest
from .records import Conversation, Message
from .services import Services
from .store import ConversationGone, KeyTaken, StorageFailed

TITLE_CHARS = 50


@dataclass(frozen=True, slots=True)
class TurnRequest:
    """What a user asks for, from whichever front door."""

    user: str
    message: str
    conversation_id: int | None = None
    provider: str | None = None
    model: str | None = None
    temperature: float | None = None
    max_tokens: int | None = None
    system: str | None = None
    idempotency_key: str | None = None

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


def title_from(text: str) -> str:
    title = " ".join(text.split())
    return title if len(title) <= TITLE_CHARS else title[: TITLE_CHARS - 1].rstrip() + "…"


def choose_provider(providers: dict[str, ProviderInfo], name: str) -> ProviderInfo:
    info = providers.get(name)
    if info is None:
        known = ", ".join(providers)
        raise InvalidFields({"provider": f"unknown provider {name!r}; known: {known}"})
    if not info.available:
        raise InvalidFields({"provider": f"provider {name!r} is not configured: set {info.key_variable}"})
    return info


async def accept_turn(services: Services, ask: TurnRequest) -> AcceptedTurn:
    """Store the turn and start its generation, or find the one a retry asks for."""
    if services.generations.closing:
        raise ServiceUnavailable("the server is shutting down; try again shortly", retry_after=5)
    if services.generations.keeper.full:
        raise StorageUnavailable(
            "too many replies are waiting for the database to take them; try again shortly",
            retry_after=5,
            cause="the database is refusing writes",
        )
    store = services.store
    conversation: Conversation | None = None
    if ask.conversation_id is not None:
        conversation = await store.get_conversation(ask.user, ask.conversation_id)
        if conversation is None:
            raise NotFound(f"conversation {ask.conversation_id} not found")

    asked = ask.provider or (conversation and conversation.provider) or services.settings.provider
    info = choose_provider(services.providers, asked)
    same_provider = conversation is not None and conversation.provider in (None, info.name)
    model = (
        ask.model or (conversation.model if conversation and same_provider else None) or info.default_model
    )

    key = f"{ask.user}:{ask.idempotency_key}" if ask.idempotency_key else None
    fingerprint = ask.fingerprint() if key else None
    if key and (first := await store.find_turn(ask.user, key)):
        return _retried(first, fingerprint)  # a retry: no new reply, so no limit applies

    services.limits.admit_generation(ask.user)  # given back when the generation ends
    started = False
    try:
        accepted, started = await _store_and_start(services, ask, conversation, info, model, key, fingerprint)
        return accepted
    finally:
        if not started:
            services.limits.generation_ended(ask.user)


async def _store_and_start(
    services: Services,
    ask: TurnRequest,
    conversation: Conversation | None,
    info: ProviderInfo,
    model: str,
    key: str | None,
    fingerprint: str | None,
) -> tuple[AcceptedTurn, bool]:
    """The stored turn, and whether its generation was started here (not by a twin)."""
    store = services.store
    created = conversation is None
    if conversation is None:
        conversation = await store.create_conversation(
            ask.user, title=title_from(ask.message), system=ask.system, provider=info.name, model=ask.model
        )
        earlier = []
    else:
        if conversation.title is None:
            owner = conversation.user_id  # a member's first message titles it too
            await store.update_conversation(owner, conversation.id, {"title": title_from(ask.message)})
        earlier = await store.recent_messages(conversation.id, limit=services.settings.history_messages)
    try:
        user_message, reply = await store.start_turn(
            conversation.id,
            ask.message,
            metadata={"provider": info.name, "model": model},
            idempotency_key=key,
            request_hash=fingerprint,
            author=ask.user,
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
        return _retried(twin, fingerprint), False

    assert info.provider is not None
    # Everyone the conversation is shown to, read before the reply starts so that the feeds
    # announce it before its first token.
    audience = [ask.user] if created else [conversation.user_id, *await store.members(conversation.id)]
    request = ChatRequest(
        model=model,
        turns=build_turns(earlier, ask.message, limit=services.settings.history_messages),
        system=ask.system if ask.system is not None else conversation.system,
        temperature=ask.temperature,
        max_tokens=ask.max_tokens,
    )

    def ended(generation: Generation) -> None:
        services.limits.generation_ended(ask.user)
        if (final := generation.final_row()) is not None:
            services.feeds.turn_finished(audience, final)

    services.generations.start(
        info.provider,
        request,
        reply,
        user_message_id=user_message.id,
        stop_when_abandoned=services.settings.on_disconnect == "cancel",
        on_end=ended,
    )
    services.feeds.turn_started(audience, conversation if created else None, user_message, reply)
    return AcceptedTurn(user_message.id, reply), True


def _retried(first: tuple[Message, Message, str | None], fingerprint: str | None) -> AcceptedTurn:
    asked, reply, stored = first
    if stored is not None and stored != fingerprint:
        raise KeyReused("this Idempotency-Key was already used for a different request; use a new key")
    return AcceptedTurn(asked.id, reply)
