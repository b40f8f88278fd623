from __future__ import annotations

import pytest

from chat.history import build_turns
from chat.providers.base import Turn
from chat.records import Message

_ids = iter(range(1, 10_000))


def msg(role: str, content: str, status: str = "completed") -> Message:
    return Message(next(_ids), 1, role, content, status, {}, 0, "t", "t")


def test_completed_turns_then_the_new_message() -> None:
    turns = build_turns([msg("user", "a"), msg("assistant", "b")], "c", limit=10)
    assert turns == [Turn("user", "a"), Turn("assistant", "b"), Turn("user", "c")]


@pytest.mark.parametrize("status", ["failed", "interrupted", "streaming", "cancelled"])
def test_unfinished_replies_and_their_questions_are_dropped(status: str) -> None:
    earlier = [msg("user", "a"), msg("assistant", "b"), msg("user", "c"), msg("assistant", "partial", status)]
    assert build_turns(earlier, "d", limit=10) == [
        Turn("user", "a"),
        Turn("assistant", "b"),
        Turn("user", "d"),
    ]


def test_empty_reply_is_never_sent_back() -> None:
    earlier = [msg("user", "a"), msg("assistant", "  ")]
    assert build_turns(earlier, "again", limit=10) == [Turn("user", "again")]


def test_of_consecutive_questions_the_last_answered_one_is_kept() -> None:
    earlier = [
        msg("user", "q1"),
        msg("assistant", "", "failed"),
        msg("user", "q1 again"),
        msg("assistant", "ans"),
    ]
    assert build_turns(earlier, "next", limit=10) == [
        Turn("user", "q1 again"),
        Turn("assistant", "ans"),
        Turn("user", "next"),
    ]


def test_limit_keeps_the_newest_and_starts_with_a_user_turn() -> None:
    earlier = [msg(r, f"{r}{i}") for i in range(5) for r in ("user", "assistant")]
    turns = build_turns(earlier, "new", limit=4)
    assert turns == [Turn("user", "user4"), Turn("assistant", "assistant4"), Turn("user", "new")]
    assert [t.role for t in build_turns(earlier, "new", limit=5)] == [
        "user",
        "assistant",
        "user",
        "assistant",
        "user",
    ]


def test_system_rows_are_not_turns() -> None:
    assert build_turns([msg("system", "be nice"), msg("user", "a")], "b", limit=10) == [Turn("user", "b")]


def test_replaced_messages_are_not_part_of_the_history() -> None:
    question, answer = msg("user", "q"), msg("assistant", "first try")
    question.metadata["superseded_by"] = 99
    answer.metadata["superseded_by"] = 100
    again = msg("assistant", "second try")
    again.metadata["superseded_by"] = 101
    earlier = [msg("user", "a"), msg("assistant", "b"), question, answer, again]
    assert build_turns(earlier, "q, better", limit=10) == [
        Turn("user", "a"),
        Turn("assistant", "b"),
        Turn("user", "q, better"),
    ]
    kept = [msg("user", "a"), msg("assistant", "b"), msg("user", "q"), answer, msg("assistant", "third")]
    assert build_turns(kept, "next", limit=10)[-3:] == [
        Turn("user", "q"),
        Turn("assistant", "third"),
        Turn("user", "next"),
    ]
