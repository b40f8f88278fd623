"""Request bodies checked field by field: every problem named in one 422."""

from __future__ import annotations

import pytest

from chat.bodies import Fields, digits, idempotency_key, parse_chat_body
from chat.config import Settings
from chat.errors import InvalidFields
from chat.turns import TurnRequest


def test_every_problem_is_named_at_once() -> None:
    fields = Fields({"message": "", "temperature": True, "max_tokens": 0, "wait": "yes"})
    fields.text("message", required=True)
    fields.number("temperature", low=0, high=2)
    fields.integer("max_tokens")
    fields.boolean("wait")
    with pytest.raises(InvalidFields) as info:
        fields.check()
    assert info.value.extra["fields"] == {
        "message": "must not be empty",
        "temperature": "must be a number",
        "max_tokens": "must be between 1 and 4611686018427387904",
        "wait": "must be true or false",
    }


def test_a_lone_surrogate_is_refused() -> None:
    fields = Fields({"message": "half an emoji \ud83d"})
    assert fields.text("message") is None
    assert "lone surrogate" in fields.problems["message"]


def test_a_chat_body_becomes_the_turn_it_asks_for() -> None:
    body = parse_chat_body(
        {"message": "hi", "conversation_id": 3, "temperature": 0.5, "wait": True}, Settings()
    )
    assert body.wait is True
    assert body.ask("alice", "k1") == TurnRequest(
        user="alice", message="hi", conversation_id=3, temperature=0.5, idempotency_key="k1"
    )


@pytest.mark.parametrize(("raw", "key"), [(None, None), ("abc", "abc"), (" abc ", "abc")])
def test_an_idempotency_key_is_trimmed(raw: str | None, key: str | None) -> None:
    assert idempotency_key(raw) == key


@pytest.mark.parametrize("raw", ["", "  ", "k" * 201])
def test_an_empty_or_huge_idempotency_key_is_refused(raw: str) -> None:
    with pytest.raises(InvalidFields):
        idempotency_key(raw)


@pytest.mark.parametrize(
    ("raw", "ok"), [("7", True), ("0042", True), ("-1", False), ("٣", False), ("9" * 20, False)]
)
def test_digits_are_ascii_and_few_enough_for_sqlite(raw: str, ok: bool) -> None:
    assert digits(raw) is ok
