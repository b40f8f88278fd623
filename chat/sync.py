"""The live-sync routes: a user's feed, a conversation's feed, and typing.

    GET  /api/events                           the user's feed (`chat.feeds`)
    GET  /api/conversations/{id}/events        one conversation's feed, presence included
    POST /api/conversations/{id}/typing        {"typing": true|false} -> 204

Feeds are event streams like a reply's: resumable with `Last-Event-ID`, kept alive
by heartbeats, and counted against the open-stream caps.
"""

from __future__ import annotations

from functools import partial

from starlette.requests import Request
from starlette.responses import Response

from .attach import counted
from .bodies import Fields
from .conversations import path_conversation
from .endpoints import body_of, current_user, last_event_id, services
from .errors import ServiceUnavailable
from .responses import Events, EventStreamResponse


def feed_response(request: Request, events: Events) -> Response:
    app, user = services(request), current_user(request)
    if app.feeds.closing:
        raise ServiceUnavailable("the server is shutting down; reconnect shortly", retry_after=5)
    app.limits.open_stream(user)
    release = partial(app.limits.stream_closed, user)
    return EventStreamResponse(counted(events, release), stall=app.settings.client_stall_seconds)


async def user_events(request: Request) -> Response:
    after = last_event_id(request)
    return feed_response(request, services(request).feeds.follow_user(current_user(request), after))


async def conversation_events(request: Request) -> Response:
    after = last_event_id(request)
    conversation = await path_conversation(request)
    feeds = services(request).feeds
    return feed_response(request, feeds.follow_conversation(conversation.id, current_user(request), after))


async def typing(request: Request) -> Response:
    app, user = services(request), current_user(request)
    conversation = await path_conversation(request)
    fields = Fields(await body_of(request))
    if "typing" not in fields.data:
        fields.problems["typing"] = "required"
    value = fields.boolean("typing")
    fields.check()
    app.limits.admit_typing(user)
    app.feeds.typing(conversation.id, user, value)
    return Response(status_code=204)
