"""The stored things, as the store returns them and the API shows them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(slots=True)
class Conversation:
    id: int
    user_id: str
    title: str | None
    system: str | None
    provider: str | None
    model: str | None
    created_at: str
    updated_at: str
    message_count: int = 0
    last_message_at: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "title": self.title,
            "system": self.system,
            "provider": self.provider,
            "model": self.model,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "message_count": self.message_count,
            "last_message_at": self.last_message_at,
        }


@dataclass(slots=True)
class Message:
    id: int
    conversation_id: int
    role: str
    content: str
    status: str  # streaming, completed, failed, cancelled, interrupted
    metadata: dict[str, Any]
    last_event_id: int  # the id of the stream's terminal event, once it ended
    created_at: str
    completed_at: str | None
    user_id: str | None = None  # who wrote it, for a user message: in a shared conversation, who

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "conversation_id": self.conversation_id,
            "role": self.role,
            "user": self.user_id,
            "content": self.content,
            "status": self.status,
            "created_at": self.created_at,
            "completed_at": self.completed_at,
            "metadata": self.metadata,
        }
