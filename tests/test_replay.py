"""A finished reply told again from its row: the same ids and endings as it had live."""

from __future__ import annotations

import json
from typing import Any

import pytest

from chat import events
from chat.records import Message
from chat.replay import UNKNOWN_END, stored_events
from chat.sse import SSEDecoder

META = {"user_message_id": 6, "provider": "openai", "model": "gpt-4o-mini", "finish_reason": "stop"}


def reply(status: str = "completed", content: str = "Hello!", last_event_id: int = 9, **meta: Any) -> Message:
    return Message(7, 3, "assistant", content, status, {**META, **meta}, last_event_id, "t", "t")


def told(message: Message, after: int) -> list[tuple[str | None, str, dict[str, Any]]]:
    decoder = SSEDecoder()
    return [
        (e.id, e.event, json.loads(e.data))
        for chunk in stored_events(message, after)
        for e in decoder.feed(chunk)
    ]


def test_from_the_start_it_is_start_the_whole_text_and_the_end() -> None:
    message = reply(
        usage={"input_tokens": 4, "output_tokens": 2},
        duration_ms=80,
        ttft_ms=20,
        request_id="req-1",
        cost_usd=0.0000018,
    )
    assert told(message, 0) == [
        (
            "1",
            "start",
            {
                "conversation_id": 3,
                "message_id": 7,
                "user_message_id": 6,
                "provider": "openai",
                "model": "gpt-4o-mini",
                "request_id": "req-1",  # of the request that started it, as stored
            },
        ),
        ("8", "token", {"text": "Hello!"}),
        (
            "9",
            "done",
            {
                "message_id": 7,
                "finish_reason": "stop",
                "usage": {"input_tokens": 4, "output_tokens": 2},
                "cost_usd": 0.0000018,
                "duration_ms": 80,
                "ttft_ms": 20,
            },
        ),
    ]


@pytest.mark.parametrize(("status", "reason"), [("completed", "stop"), ("cancelled", "cancelled")])
def test_a_row_stored_without_a_finish_reason_still_ends_with_one(status: str, reason: str) -> None:
    end = told(reply(status, finish_reason=None), 0)[-1]
    assert end[2]["finish_reason"] == reason


@pytest.mark.parametrize("after", range(1, 8))
def test_from_the_middle_it_resets_then_sends_the_whole_text(after: int) -> None:
    names = [(i, name) for i, name, _ in told(reply(), after)]
    assert names == [(None, "reset"), ("8", "token"), ("9", "done")]


def test_a_client_that_had_the_text_gets_only_the_end_and_then_nothing() -> None:
    assert [name for _, name, _ in told(reply(), 8)] == ["done"]
    assert stored_events(reply(), 9) == []
    assert stored_events(reply(), 10) == []


def test_a_fallback_is_told_as_it_was_live() -> None:
    message = reply(provider="anthropic", model="claude", requested={"provider": "openai", "model": "gpt-4o"})
    start, _, done = told(message, 0)
    assert (start[2]["provider"], start[2]["model"]) == ("openai", "gpt-4o")
    assert (done[2]["provider"], done[2]["model"]) == ("anthropic", "claude")


def test_a_failed_reply_ends_with_its_error_and_says_it_is_partial() -> None:
    error = {"type": "overloaded", "message": "busy"}
    end = told(reply("failed", content="Hel", error=error), 0)[-1]
    assert end == ("9", "error", {"message_id": 7, "error": error, "partial": True})


def test_a_reply_a_crash_cut_off_ends_past_any_id_it_reached() -> None:
    replay = told(reply("interrupted", content="cut", last_event_id=0, error=events.INTERRUPTED), 5)
    assert [(i, name) for i, name, _ in replay] == [
        (None, "reset"),
        (str(UNKNOWN_END - 1), "token"),
        (str(UNKNOWN_END), "error"),
    ]
    assert replay[-1][2]["error"]["type"] == "interrupted"


def test_an_empty_reply_has_no_token() -> None:
    assert [name for _, name, _ in told(reply("cancelled", content="", finish_reason="cancelled"), 0)] == [
        "start",
        "done",
    ]
