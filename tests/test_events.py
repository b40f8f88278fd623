"""Reply event payloads: one builder for the live stream and the replay."""

from __future__ import annotations

import pytest

from chat import events

META = {"user_message_id": 1, "provider": "openai", "model": "gpt-4o-mini", "finish_reason": "stop"}


def test_start_names_what_was_asked_even_when_a_fallback_answered() -> None:
    answered = {
        **META,
        "provider": "anthropic",
        "model": "claude",
        "requested": {"provider": "openai", "model": "gpt-4o"},
    }
    assert events.start(3, 2, META) == {
        "conversation_id": 3,
        "message_id": 2,
        "user_message_id": 1,
        "provider": "openai",
        "model": "gpt-4o-mini",
        "request_id": None,
    }
    assert events.start(3, 2, {**META, "request_id": "abc"})["request_id"] == "abc"
    assert (events.start(3, 2, answered)["provider"], events.start(3, 2, answered)["model"]) == (
        "openai",
        "gpt-4o",
    )


def test_done_says_who_answered_only_when_a_fallback_did() -> None:
    assert "provider" not in events.done(2, META)
    answered = {**META, "provider": "anthropic", "model": "claude", "requested": {"provider": "openai"}}
    assert (events.done(2, answered)["provider"], events.done(2, answered)["model"]) == (
        "anthropic",
        "claude",
    )


@pytest.mark.parametrize(
    ("status", "name"),
    [("completed", "done"), ("cancelled", "done"), ("failed", "error"), ("interrupted", "error")],
)
def test_the_terminal_event_follows_the_status(status: str, name: str) -> None:
    assert events.terminal(2, status, META, partial=False)[0] == name


def test_an_error_with_no_stored_cause_is_an_interruption() -> None:
    assert events.terminal(2, "interrupted", META, partial=True) == (
        "error",
        {"message_id": 2, "error": events.INTERRUPTED, "partial": True},
    )
    assert events.INTERRUPTED["type"] == "interrupted" and events.SHUTDOWN["type"] == "shutdown"


def test_done_carries_the_cost_and_null_for_a_row_from_before_costs() -> None:
    assert events.done(2, {**META, "cost_usd": 3.0e-6})["cost_usd"] == 3.0e-6
    assert events.done(2, {**META, "cost_usd": None})["cost_usd"] is None
    old = {k: v for k, v in META.items() if k != "cost_usd"}
    assert events.done(2, old)["cost_usd"] is None
