"""`sidechat export --conversation ID --format json|markdown`: one conversation, whole, to stdout.

JSON is what the API answers for a conversation and its messages (`{"conversation",
"messages"}`, the same records the store returns), all its messages rather than a page, with
who may see it beside them (`owner`, `members`: what `.../members` answers). Markdown is for
a person: a heading per message, replies as the markdown they are, and a note on each that
did not simply complete.

The conversation is read in one read transaction through the store's own queries, so the
export is one moment of it even while a server is writing a reply into it.
"""

from __future__ import annotations

import json
from typing import Any

from .database import Database
from .maintenance import CommandError, reading
from .records import Conversation, Message
from .store import Store

FORMATS = ("json", "markdown")


async def export(path: str, conversation_id: int, form: str, *, busy_timeout: float) -> str:
    async with reading(path, busy_timeout=busy_timeout) as db:
        store = Store(Database(db, None))
        await db.execute("BEGIN")
        owners = list(
            await db.execute_fetchall(
                "SELECT user_id FROM conversations WHERE id = :id", {"id": conversation_id}
            )
        )
        conversation = await store.get_conversation(owners[0][0], conversation_id) if owners else None
        if conversation is None:
            raise CommandError(f"there is no conversation {conversation_id} in {path}")
        messages = await store.list_messages(conversation_id)
        members = await store.members(conversation_id)
        await db.execute("COMMIT")
    if form == "markdown":
        return as_markdown(conversation, members, messages)
    return as_json(conversation, members, messages)


def as_json(conversation: Conversation, members: list[str], messages: list[Message]) -> str:
    shown: dict[str, Any] = {
        "conversation": conversation.as_json(),
        "messages": [m.as_json() for m in messages],
        "owner": conversation.user_id,
        "members": members,
    }
    return json.dumps(shown, ensure_ascii=False, indent=2)


def as_markdown(conversation: Conversation, members: list[str], messages: list[Message]) -> str:
    lines = [f"# {conversation.title or f'Conversation {conversation.id}'}", ""]
    lines.append(f"- conversation {conversation.id}, owned by {conversation.user_id}")
    if members:
        lines.append(f"- shared with {', '.join(members)}")
    lines.append(f"- created {conversation.created_at}, last activity {conversation.updated_at}")
    if conversation.provider or conversation.model:
        lines.append(
            f"- provider {conversation.provider or 'default'}, model {conversation.model or 'default'}"
        )
    lines.append(f"- {len(messages)} messages")
    if conversation.system:
        lines += ["", "## System prompt", "", *quoted(conversation.system)]
    for message in messages:
        lines += ["", f"## {heading(message, conversation.user_id)}", ""]
        if note := status_note(message):
            lines += [f"*{note}*", ""]
        lines.append(message.content if message.content else "*(no text)*")
    return "\n".join(lines)


def quoted(text: str) -> list[str]:
    return [f"> {line}".rstrip() for line in text.splitlines()]


def heading(message: Message, owner: str) -> str:
    if message.role == "assistant":
        model = "/".join(str(message.metadata[k]) for k in ("provider", "model") if message.metadata.get(k))
        who = f"assistant ({model})" if model else "assistant"
    elif message.role == "user":
        who = message.user_id or owner
    else:
        who = message.role
    return f"{who} · {message.completed_at or message.created_at}"


def status_note(message: Message) -> str:
    """Why a message is not simply a finished one: how it ended, or what replaced it."""
    notes = []
    error = message.metadata.get("error")
    reason = f": {error['message']}" if isinstance(error, dict) and error.get("message") else ""
    if message.status == "streaming":
        notes.append("still being written when exported: the text so far")
    elif message.status in ("failed", "interrupted"):
        notes.append(f"{message.status}{reason}; the text it had by then")
    elif message.status == "cancelled":
        notes.append("cancelled; the text it had by then")
    if replaced := message.metadata.get("superseded_by"):
        notes.append(f"replaced by message {replaced}")
    return "; ".join(notes)
