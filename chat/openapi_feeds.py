"""The live feeds in the OpenAPI document: each kind of event a feed sends (`chat.feeds`) and
what its `data` holds, so a feed's events are checked one by one like any other answer."""

from __future__ import annotations

from typing import Any

from .openapi_responses import BODY_ERRORS, OWNER_ONLY, answer, feed, operation
from .openapi_schemas import EVENT, FINISH_REASON, STREAM_URL, Schema, closed, ref


def json_data(description: str, properties: dict[str, Schema], *, optional: tuple[str, ...] = ()) -> Schema:
    """An event's `data`, one line of JSON; `contentSchema` is what that JSON holds."""
    return {
        "type": "string",
        "pattern": r"^\{[^\n]*\}$",
        "contentMediaType": "application/json",
        "contentSchema": {**closed(properties, optional=optional), "description": description},
    }


INTEGER = {"type": "integer"}
STATUS = {"enum": ["completed", "failed", "cancelled", "interrupted"]}

# The kinds of event the feeds send (`chat.feeds`), by name, and what each one's `data` holds.
CONVERSATION_SHOWN = json_data(
    "created: new to you (yours, or shared with you); updated: renamed or changed",
    {"conversation": ref("schemas", "Conversation")},
)
FEED_EVENTS = {
    "conversation.created": CONVERSATION_SHOWN,
    "conversation.updated": CONVERSATION_SHOWN,
    "conversation.deleted": json_data(
        "deleted, or no longer shared with you; a conversation's own feed ends after it",
        {"conversation_id": INTEGER},
    ),
    "message.created": json_data("a user's message was stored", {"message": ref("schemas", "Message")}),
    "generation.started": json_data(
        "a reply began; attach to `stream_url` for its tokens. `supersedes`: the reply it replaces"
        " (generated again, or its message edited), which the page no longer shows",
        {
            "conversation_id": INTEGER,
            "message_id": INTEGER,
            "user_message_id": INTEGER,
            "provider": {"type": "string"},
            "model": {"type": "string"},
            "stream_url": STREAM_URL,
            "supersedes": INTEGER,
        },
        optional=("supersedes",),
    ),
    "generation.finished": json_data(
        "a reply ended; `error` only when it failed or was interrupted",
        {
            "conversation_id": INTEGER,
            "message_id": INTEGER,
            "status": STATUS,
            "finish_reason": FINISH_REASON,
            "usage": ref("schemas", "Usage"),
            "error": ref("schemas", "StreamError"),
        },
        optional=("error",),
    ),
    "token": json_data(
        "a piece of a reply, as it arrives",
        {"message_id": INTEGER, "text": {"type": "string", "minLength": 1}},
    ),
    "presence": json_data(
        "who follows this conversation's feed now: sent as someone's first connection opens"
        " and as their last one closes",
        {
            "users": {
                "type": "array",
                "items": {"type": "string"},
                "uniqueItems": True,
                "description": "sorted",
            }
        },
    ),
    "typing": json_data(
        "someone started or stopped typing (a `true` not said again ends by itself)",
        {"user": {"type": "string"}, "typing": {"type": "boolean"}},
    ),
    "reset": json_data(
        "events were missed (a resume from before the feed's window): fetch the current state over"
        " the API; it has no id of its own",
        {"reason": {"type": "string"}},
    ),
}
USER_EVENTS = (
    "conversation.created",
    "conversation.updated",
    "conversation.deleted",
    "message.created",
    "generation.started",
    "generation.finished",
    "reset",
)
CONVERSATION_EVENTS = (
    "conversation.updated",
    "conversation.deleted",
    "message.created",
    "generation.started",
    "token",
    "generation.finished",
    "presence",
    "typing",
    "reset",
)


def feed_event(description: str, names: tuple[str, ...]) -> Schema:
    """One event of a feed: `event` names its kind, and the kind says what `data` holds."""
    kinds = [
        {
            "if": {"properties": {"event": {"const": name}}},
            "then": {
                "properties": {"data": FEED_EVENTS[name]},
                "required": [] if name == "reset" else ["id"],
            },
        }
        for name in names
    ]
    shape = closed(
        {
            "event": {"enum": list(names)},
            "data": {"type": "string"},
            "id": {"type": "string", "pattern": "^[0-9]+$"},
            "retry": EVENT["properties"]["retry"],
        },
        optional=("id", "retry"),
    )
    return {**shape, "allOf": kinds, "description": description}


USER_EVENT = feed_event(
    """One event of your feed: what your other tabs and devices need to stay in step, for your
conversations and those shared with you. `data` is one line of JSON, described by the kind's
`contentSchema`; `id` is for Last-Event-ID. The feed never ends by itself; `: ping` comments
keep it open.""",
    USER_EVENTS,
)
CONVERSATION_EVENT = feed_event(
    """One event of a conversation's feed: its messages and replies (each reply's tokens tagged
with its message id), who follows it and who is typing. `data` is one line of JSON, described by
the kind's `contentSchema`; `id` is for Last-Event-ID. The feed ends only after
`conversation.deleted`, or when you stop being a member; `: ping` comments keep it open.""",
    CONVERSATION_EVENTS,
)


def sync_paths() -> dict[str, Any]:
    """Sharing and live sync: before the conversation's own routes in the document."""
    members = ref("schemas", "Members")
    member = {"conversation_id": "$request.path.conversation_id", "user": "$request.body#/user"}
    member_links = {"remove_member": {"operationId": "remove_member", "parameters": member}}
    return {
        # Sharing comes before the conversation's own routes: the fuzz (tests/test_fuzz.py) runs
        # them in this order, and after its deletes there would be nothing left to share.
        "/api/conversations/{conversation_id}/members": {
            "get": operation(
                "list_members",
                "Who shares it: its owner and its members",
                {200: answer("the owner and the members", members)},
                {404: ("not_found",)},
                parameters=("ConversationId",),
            ),
            "post": operation(
                "add_member",
                "Share it with a user, who may then read it, post, attach, cancel and subscribe",
                {
                    200: answer("a member already; nothing changed", members),
                    201: answer("added", members, links=member_links),
                },
                {**BODY_ERRORS, **OWNER_ONLY, 503: ("storage_unavailable",)},
                parameters=("ConversationId",),
                body=ref("schemas", "MemberBody"),
            ),
        },
        "/api/conversations/{conversation_id}/members/{user}": {
            "delete": operation(
                "remove_member",
                "Stop sharing it with a member",
                {204: answer("removed: every route of the conversation is a 404 to them again")},
                {**OWNER_ONLY, 503: ("storage_unavailable",)},
                parameters=("ConversationId", "MemberUser"),
            )
        },
        # Live sync (`chat.sync`): before the conversation's own routes too, for the same reason.
        "/api/events": {
            "get": operation(
                "user_events",
                "Your live feed: what changes in your conversations and those shared with you",
                {200: feed("from now, or after Last-Event-ID; it never ends by itself", "UserEvent")},
                {422: ("invalid_request",), 503: ("too_many_connections",)},
                parameters=("LastEventId", "LastEventIdQuery"),
            )
        },
        "/api/conversations/{conversation_id}/events": {
            "get": operation(
                "conversation_events",
                "A conversation's live feed: its messages, its replies' tokens, presence, typing",
                {
                    200: feed(
                        "from now, or after Last-Event-ID; it ends only after `conversation.deleted`,"
                        " or when you are no longer a member",
                        "ConversationEvent",
                    )
                },
                {404: ("not_found",), 422: ("invalid_request",), 503: ("too_many_connections",)},
                parameters=("ConversationId", "LastEventId", "LastEventIdQuery"),
            )
        },
        "/api/conversations/{conversation_id}/typing": {
            "post": operation(
                "typing",
                "Say you are typing in it, or have stopped: its feed tells the others",
                {204: answer("said, to whoever follows the conversation's feed")},
                {**BODY_ERRORS, 404: ("not_found",), 429: ("rate_limited",)},
                parameters=("ConversationId",),
                body=ref("schemas", "TypingBody"),
            )
        },
    }


def feed_schemas() -> dict[str, Schema]:
    return {"UserEvent": USER_EVENT, "ConversationEvent": CONVERSATION_EVENT}
