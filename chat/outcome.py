"""How a reply ended: what its provider's stream did, and the row's status and metadata for it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from . import events
from .prices import Prices
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
    usage: Usage | None = None  # the provider's latest count, told before any Finish

    def billed(self) -> Usage:
        """What the provider counted: its Finish's, else the latest it told on the way (a
        reply cancelled or failed before its end is billed too)."""
        finish = self.finish
        if finish is not None and finish.usage.reported:
            return finish.usage
        return self.usage or Usage()


def conclude(
    relayed: Relayed,
    stop_reason: str | None,
    started_with: dict[str, Any],
    seconds: float,
    prices: Prices | None = None,
) -> tuple[str, dict[str, Any]]:
    """The row's status and the metadata stored with it, from the metadata it started with;
    its `cost_usd` is the usage at the `prices` of the provider and model that answered (the
    one asked, or after a fallback the one that answered), None when either is unknown."""
    usage = relayed.billed()
    metadata: dict[str, Any] = {
        **started_with,
        "usage": usage.as_dict(),
        "cost_usd": None,
        "finish_reason": None,
        "duration_ms": round(seconds * 1000),
        "ttft_ms": relayed.ttft_ms,
        "error": None,
    }
    if relayed.answerer is not None:
        metadata["requested"] = {"provider": metadata["provider"], "model": metadata["model"]}
        metadata["provider"], metadata["model"] = relayed.answerer.provider, relayed.answerer.model
    if prices is not None:
        metadata["cost_usd"] = prices.cost(metadata.get("provider"), metadata.get("model"), usage)
    finish = relayed.finish
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
    if finish.tool_calls:  # what the model asked the client to run: the client runs it
        metadata["tool_calls"] = [call.as_json() for call in finish.tool_calls]
    return "completed", metadata
