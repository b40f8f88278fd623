"""What a provider is sent: the earlier completed turns and the new message.

A message that was replaced (a reply generated again, an edited question: `superseded_by`
in its metadata) is no longer part of the conversation, and is never sent. Only
completed, non-empty assistant replies go back (providers reject empty turns, and a
failed or interrupted fragment is not something the model said). Dropping those
leaves user messages with no answer; of consecutive user messages only the last is
kept, because it is usually the same question asked again, and every provider
accepts strict user/assistant alternation.

A history the client owns (`chat.owned_history`) is not built here: it is sent as it came.
Only its leading system prompt is read here, to be kept as a new conversation's `system`,
and (for `/v1`, whose calls are stored whole) the rows kept of what came before its last
message.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from .providers.base import Turn
from .records import Message


def build_turns(earlier: Iterable[Message], text: str, *, limit: int) -> list[Turn]:
    turns: list[Turn] = []
    for message in earlier:
        if "superseded_by" in message.metadata:
            continue
        if message.role == "user":
            turn = Turn("user", message.content)
        elif message.role == "assistant" and message.status == "completed" and message.content.strip():
            turn = Turn("assistant", message.content)
        else:
            continue
        if turns and turns[-1].role == turn.role:
            turns[-1] = turn
        elif turns or turn.role == "user":
            turns.append(turn)
    if turns and turns[-1].role == "user":
        turns.pop()
    turns.append(Turn("user", text))
    turns = turns[-limit:]
    if turns[0].role == "assistant":
        turns = turns[1:]
    return turns


def leading_system(turns: Sequence[Turn]) -> str | None:
    """The system prompt a client's own history opens with (its leading system turns, joined),
    kept as a new conversation's `system` so the stored record shows it."""
    parts = []
    for turn in turns:
        if turn.role != "system":
            break
        parts.append(turn.content)
    return "\n\n".join(parts) if parts else None


def sent_before(turns: Sequence[Turn]) -> list[tuple[str, str]]:
    """The (role, content) rows a new conversation keeps of the history a client sent, before
    its last message: the leading system turns are its `system` already; a tool's result and
    an assistant turn that only called tools have no row of their own (their text is kept
    where there is some)."""
    rows: list[tuple[str, str]] = []
    leading = True
    for turn in turns[:-1]:
        leading = leading and turn.role == "system"
        if leading or turn.role not in ("user", "assistant", "system") or not turn.content:
            continue
        rows.append((turn.role, turn.content))
    return rows
