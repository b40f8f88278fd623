"""How a reply ended: what its provider's stream did, and the row's status and metadata for it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from . import events
from .providers.base import Answerer, Finish, ProviderError, Usage

# Why a generation was stopped early, and how it ends.
CANCELLED = "cancelled"  # a user asked, the conversation was deleted, or every client left
SHUTDOWN = "shutdown"  # the server is stopping


@dataclass(slots=True)
class Relayed:
    """How the provider's stream went."""

    finish: Finish | None = None
    error: ProviderError | None = None
    answerer: Answerer | None = None  # set when a fallback answered instead
    ttft_ms: int | None = None


def conclude(
    relayed: Relayed, stop_reason: str | None, started_with: dict[str, Any], seconds: float
) -> tuple[str, dict[str, Any]]:
    """The row's status and the metadata stored with it, from the metadata it started with."""
    finish = relayed.finish
    metadata: dict[str, Any] = {
        **started_with,
        "usage": (finish.usage if finish else Usage()).as_dict(),
        "finish_reason": None,
        "duration_ms": round(seconds * 1000),
        "ttft_ms": relayed.ttft_ms,
        "error": None,
    }
    if relayed.answerer is not None:
        metadata["requested"] = {"provider": metadata["provider"], "model": metadata["model"]}
        metadata["provider"], metadata["model"] = relayed.answerer.provider, relayed.answerer.model
    if stop_reason == SHUTDOWN:
        metadata["error"] = events.SHUTDOWN
        return "interrupted", metadata
    if stop_reason == CANCELLED:
        metadata["finish_reason"] = "cancelled"
        return "cancelled", metadata
    if relayed.error is not None:
        metadata["error"] = relayed.error.as_dict()
        return "failed", metadata
    assert finish is not None
    metadata["finish_reason"] = finish.reason
    return "completed", metadata
