"""The conversation routes: list (newest activity first, by cursor), create, read a page
of, rename or re-prompt, delete, and share with members.

Deliberate choices:
- Someone who is neither the owner nor a member gets a 404 for any of a conversation's
  routes, as if it did not exist, so an id tells a stranger nothing. A member already
  knows it exists, so what only the owner may do (rename, delete, change members) is a
  403 to them.
- Users are not registered anywhere (a token or a trusted header names them), so any
  name can be added; adding a member again is a 200 with the same answer, so a retried
  POST is harmless.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from .bodies import Fields, digits
from .elsewhere import stop_conversation_everywhere
from .endpoints import MAX_PAGE, body_of, current_user, path_id, query_int, services
from .errors import Forbidden, InvalidFields, NotFound, StorageOff
from .records import Conversation
from .services import Services
from .store import MAX_ID, ConversationGone
from .turns import choose_provider


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
            prose = name == "system"
            changes[name] = fields.text(name, max_chars=max_chars, blank=prose, printable=not prose)
    if "provider" in data:
        changes["provider"] = fields.text("provider", max_chars=40, printable=True)
    fields.check()
    if changes.get("provider"):
        choose_provider(app.providers, changes["provider"] or "")
    return changes


async def create_conversation(request: Request) -> Response:
    app = services(request)
    if not app.settings.stored:  # a conversation that cannot be kept would be a 404 next time
        raise StorageOff(
            "storage is off (SIDECHAT_STORE=none): conversations are not kept;"
            " send the whole history with each chat as `messages`"
        )
    body = await body_of(request, optional=True)
    changes = parse_conversation_fields(body, app)
    user = current_user(request)
    conversation = await app.store.create_conversation(user, **changes)
    shown = {"conversation": conversation.as_json()}
    app.feeds.to_users([user], "conversation.created", shown)
    return JSONResponse(shown, status_code=201)


async def path_conversation(request: Request, *, owner_only: bool = False) -> Conversation:
    """The conversation the path names, if the caller owns it or is a member (else a 404);
    `owner_only`: a member gets a 403."""
    conversation_id = path_id(request, "conversation_id")
    user = current_user(request)
    conversation = await services(request).store.get_conversation(user, conversation_id)
    if conversation is None:
        raise NotFound(f"conversation {conversation_id} not found")
    if owner_only and conversation.user_id != user:
        raise Forbidden(f"only the owner of conversation {conversation_id} may do this")
    return conversation


async def audience(app: Services, conversation: Conversation) -> list[str]:
    """Everyone the conversation is shown to: its owner and its members."""
    return [conversation.user_id, *await app.store.members(conversation.id)]


async def get_conversation(request: Request) -> Response:
    """The conversation and a page of its messages: the newest by default, oldest first within
    the page; `next_before_id` asks for the page before it."""
    conversation = await path_conversation(request)
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
    conversation = await path_conversation(request)
    after_id = query_int(request, "after_id", 0, low=0, high=2**62)
    messages = await services(request).store.list_messages(conversation.id, after_id=after_id)
    return JSONResponse({"messages": [m.as_json() for m in messages]})


async def update_conversation(request: Request) -> Response:
    app = services(request)
    conversation = await path_conversation(request, owner_only=True)
    changes = parse_conversation_fields(await body_of(request), app)
    updated = await app.store.update_conversation(current_user(request), conversation.id, changes)
    if updated is None:
        raise NotFound(f"conversation {conversation.id} not found")
    shown = {"conversation": updated.as_json()}
    app.feeds.to_everyone(conversation.id, await audience(app, conversation), "conversation.updated", shown)
    return JSONResponse(shown)


async def delete_conversation(request: Request) -> Response:
    app = services(request)
    conversation = await path_conversation(request, owner_only=True)
    users = await audience(app, conversation)  # read before its members go with it
    await _stop_replies(app, conversation.id)
    deleted = await app.store.delete_conversation(current_user(request), conversation.id)
    # A turn stored while the first stop waited has no row left, but may still be running.
    await _stop_replies(app, conversation.id)
    if not deleted:  # a twin request deleted it while this one waited: only one of them did
        raise NotFound(f"conversation {conversation.id} not found")
    app.feeds.conversation_deleted(conversation.id, users)
    return Response(status_code=204)


async def _stop_replies(app: Services, conversation_id: int) -> None:
    """Stop the replies of the conversation that run here, and those other processes run."""
    await app.generations.stop_conversation(conversation_id)
    await stop_conversation_everywhere(app.broker, conversation_id)


# -- members -----------------------------------------------------------------------------


def members_json(conversation: Conversation, members: list[str]) -> dict[str, Any]:
    return {"owner": conversation.user_id, "members": members}


async def list_members(request: Request) -> Response:
    conversation = await path_conversation(request)
    members = await services(request).store.members(conversation.id)
    return JSONResponse(members_json(conversation, members))


async def add_member(request: Request) -> Response:
    """201 with the members when `user` was added, 200 when they were a member already."""
    app = services(request)
    conversation = await path_conversation(request, owner_only=True)
    fields = Fields(await body_of(request))
    user = fields.text("user", required=True, max_chars=200, printable=True)
    fields.check()
    assert user is not None
    if user == conversation.user_id:
        raise InvalidFields({"user": "is the conversation's owner"})
    try:
        added = await app.store.add_member(conversation.id, user)
    except ConversationGone:  # deleted while this request waited
        raise NotFound(f"conversation {conversation.id} not found") from None
    if added:  # it is theirs to see now
        app.feeds.to_users([user], "conversation.created", {"conversation": conversation.as_json()})
    members = await app.store.members(conversation.id)
    return JSONResponse(members_json(conversation, members), status_code=201 if added else 200)


async def remove_member(request: Request) -> Response:
    app = services(request)
    conversation = await path_conversation(request, owner_only=True)
    user: str = request.path_params["user"]
    if not await app.store.remove_member(conversation.id, user):
        raise NotFound(f"{user[:200]!r} is not a member of conversation {conversation.id}")
    app.feeds.member_removed(conversation.id, user)
    return Response(status_code=204)
