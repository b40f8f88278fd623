"""`sidechat export`: JSON that is what the API answers for the conversation, markdown a
person can read, from the database of a real server that is writing to it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from chat.export import as_markdown, status_note
from chat.records import Conversation, Message
from tests.backends import sqlite_only
from tests.fakeupstream import FakeUpstream
from tests.processes import run
from tests.test_cli import SIDECHAT
from tests.workload import busy, command_while_chatting, sidechat

# `sidechat export` reads a SQLite file (the CLI is to refuse postgresql://, issue 15).
pytestmark = [pytest.mark.anyio, sqlite_only]


async def test_json_is_what_the_api_answers_for_the_conversation(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    async with busy(upstream, tmp_path) as workload:
        client = workload.client
        made = await client.post("/api/conversations", json={"title": "Shared notes", "system": "Be brief."})
        conversation_id = made.json()["conversation"]["id"]
        for text in ("first", "second"):
            body = {"message": text, "conversation_id": conversation_id, "provider": "demo", "wait": True}
            assert (await client.post("/api/chat", json=body)).status_code == 200
        await client.post(f"/api/conversations/{conversation_id}/members", json={"user": "bob"})

        result, _ = await command_while_chatting(workload, "export", "--conversation", str(conversation_id))

        assert result.returncode == 0, result.stderr
        exported = json.loads(result.stdout)
        shown = (await client.get(f"/api/conversations/{conversation_id}")).json()
        assert exported["conversation"] == shown["conversation"]
        assert exported["messages"] == shown["messages"] and len(shown["messages"]) == 4
        assert (exported["owner"], exported["members"]) == ("local", ["bob"])


async def test_a_reply_still_streaming_is_exported_as_it_stands(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    async with busy(upstream, tmp_path) as workload:
        held = str(workload.conversation_id)
        as_json = await sidechat(workload.db, "export", "--conversation", held, "--format", "json")
        reply = json.loads(as_json.stdout)["messages"][-1]
        assert (reply["id"], reply["role"], reply["status"]) == (
            workload.message_id,
            "assistant",
            "streaming",
        )
        as_markdown = await run(
            [SIDECHAT, "export", "--conversation", held, "--format", "markdown", "--db", str(workload.db)]
        )
        assert as_markdown.returncode == 0, as_markdown.stderr
        text = as_markdown.stdout
        assert text.startswith("# hold this\n")  # titled by its first message
        assert "\n## local · " in text and "\nhold this\n" in text
        assert "## assistant (openai/gpt-4o-mini) · " in text
        assert "*still being written when exported: the text so far*" in text


async def test_an_unknown_conversation_is_a_clear_error(tmp_path: Path, upstream: FakeUpstream) -> None:
    async with busy(upstream, tmp_path) as workload:
        result = await sidechat(workload.db, "export", "--conversation", "999")
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.splitlines() == [f"sidechat export: there is no conversation 999 in {workload.db}"]


@pytest.mark.parametrize(
    "arguments", [["--conversation", "1", "--format", "pdf"], ["--conversation", "seven"], []]
)
async def test_bad_arguments_are_refused_before_anything_is_read(
    tmp_path: Path, arguments: list[str]
) -> None:
    result = await sidechat(tmp_path / "chat.db", "export", *arguments)
    assert result.returncode == 2 and result.stderr.startswith("usage: python -m chat export")
    assert not (tmp_path / "chat.db").exists()


def message(id: int, role: str, content: str, status: str = "completed", **metadata: object) -> Message:
    return Message(
        id,
        7,
        role,
        content,
        status,
        dict(metadata),
        0,
        "2026-01-01T00:00:00.000Z",
        "2026-01-01T00:00:01.000Z",
        "bob" if role == "user" else None,
    )


def test_markdown_reads_as_a_conversation() -> None:
    conversation = Conversation(
        7,
        "alice",
        "Plans",
        "Answer in French.\nBriefly.",
        "openai",
        "gpt-4o-mini",
        "2026-01-01T00:00:00.000Z",
        "2026-01-02T00:00:00.000Z",
    )
    messages = [
        message(1, "user", "What now?"),
        message(
            2, "assistant", "## Rien\n\nNothing.", provider="openai", model="gpt-4o-mini", superseded_by=4
        ),
        message(3, "user", "Again?", superseded_by=5),
        message(
            4, "assistant", "", "failed", provider="openai", error={"message": "the provider answered 500"}
        ),
    ]
    text = as_markdown(conversation, ["bob"], messages)
    assert text.splitlines()[:6] == [
        "# Plans",
        "",
        "- conversation 7, owned by alice",
        "- shared with bob",
        "- created 2026-01-01T00:00:00.000Z, last activity 2026-01-02T00:00:00.000Z",
        "- provider openai, model gpt-4o-mini",
    ]
    assert "## System prompt\n\n> Answer in French.\n> Briefly.\n" in text
    assert "## bob · 2026-01-01T00:00:01.000Z\n\nWhat now?\n" in text
    assert (
        "## assistant (openai/gpt-4o-mini) · 2026-01-01T00:00:01.000Z\n\n*replaced by message 4*\n\n## Rien\n\nNothing."
        in text
    )
    assert "*failed: the provider answered 500; the text it had by then*\n\n*(no text)*" in text


@pytest.mark.parametrize(
    ("status", "note"),
    [
        ("completed", ""),
        ("cancelled", "cancelled; the text it had by then"),
        ("interrupted", "interrupted; the text it had by then"),
        ("streaming", "still being written when exported: the text so far"),
    ],
)
def test_each_way_a_reply_ends_has_its_note(status: str, note: str) -> None:
    assert status_note(message(1, "assistant", "partial", status)) == note
