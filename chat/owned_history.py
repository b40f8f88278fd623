"""A history the client owns: the `messages` of a native chat body or of a `/v1` call, checked
and made the turns that are sent upstream as they are.

Both front doors take `[{"role", "content"}, ...]` with roles `system`, `user` and `assistant`,
each content within SIDECHAT_MAX_MESSAGE_CHARS, ending with a user message. OpenAI's door
(`openai=True`) also takes what its clients send: `developer` (OpenAI's newer name for
`system`, sent on as `system`), content as a list of text parts (joined by newlines; other
parts are refused for now), assistant messages with `tool_calls` (and then content that may
be null), and `tool` messages with the `tool_call_id` they answer, which may end the history
(a client continuing after running its tools).

Every problem is named by where it is (`messages[2].content`), at most `MAX_PROBLEMS` of
them, so a long history of bad messages gets a short answer.
"""

from __future__ import annotations

from typing import Any

from .providers.base import Role, ToolCall, Turn

MAX_PROBLEMS = 10
ROLES: dict[str, Role] = {"system": "system", "user": "user", "assistant": "assistant"}
OPENAI_ROLES: dict[str, Role] = {**ROLES, "developer": "system", "tool": "tool"}


def text_problem(value: object, max_chars: int, *, blank: bool = False) -> str | None:
    """What is wrong with `value` as text we store and send on; None when nothing is."""
    if not isinstance(value, str):
        return "must be a string"
    if not blank and not value.strip():
        return "must not be empty"
    if len(value) > max_chars:
        return f"must be at most {max_chars} characters"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return "must be valid Unicode (it holds a lone surrogate)"
    if "\x00" in value:
        return "must not contain NUL characters"
    return None


class History:
    """The turns of `messages` as they are read, and the problems found on the way."""

    def __init__(self, name: str, max_chars: int, *, openai: bool) -> None:
        self.name = name
        self.max_chars = max_chars
        self.openai = openai
        self.roles = OPENAI_ROLES if openai else ROLES
        self.problems: dict[str, str] = {}
        self.turns: list[Turn] = []

    def problem(self, where: str, what: str) -> None:
        if len(self.problems) < MAX_PROBLEMS:
            self.problems[where] = what

    def read(self, raw: object) -> None:
        if not isinstance(raw, list) or not raw:
            self.problem(self.name, "must be a non-empty array of messages")
            return
        for index, item in enumerate(raw):
            turn = self.message(f"{self.name}[{index}]", item)
            if turn is not None:
                self.turns.append(turn)
        last = raw[-1]
        role = last.get("role") if isinstance(last, dict) else None
        if role != "user" and not (self.openai and role == "tool"):
            ends = "a user message or tool results" if self.openai else "a user message"
            self.problem(f"{self.name}[{len(raw) - 1}].role", f"the last message must be {ends}")

    def message(self, at: str, item: object) -> Turn | None:
        if not isinstance(item, dict):
            self.problem(at, "must be an object with role and content")
            return None
        raw_role = item.get("role")
        role = self.roles.get(raw_role) if isinstance(raw_role, str) else None
        if role is None:
            self.problem(f"{at}.role", f"must be one of {', '.join(self.roles)}")
            return None
        calls = self.calls(f"{at}.tool_calls", item.get("tool_calls"), role)
        content = self.content(f"{at}.content", item.get("content"), role, bool(calls))
        call_id = item.get("tool_call_id")
        if call_id is not None and not isinstance(call_id, str):
            self.problem(f"{at}.tool_call_id", "must be a string")
            return None
        if role == "tool":
            if not call_id:
                self.problem(f"{at}.tool_call_id", "required: the id of the call this is the result of")
                return None
            return None if content is None else Turn("tool", content, tool_call_id=call_id)
        if content is None or calls is None:
            return None
        return Turn(role, content, tool_calls=calls)

    def content(self, at: str, value: object, role: Role, calling: bool) -> str | None:
        if value is None and calling:  # an assistant message that only called tools
            return ""
        if self.openai and isinstance(value, list):
            value = self.parts(at, value)
            if value is None:
                return None
        problem = text_problem(value, self.max_chars, blank=role != "user")
        if problem is not None:
            self.problem(at, problem)
            return None
        assert isinstance(value, str)
        return value

    def parts(self, at: str, parts: list[Any]) -> str | None:
        texts = []
        for index, part in enumerate(parts):
            if (
                not isinstance(part, dict)
                or part.get("type") != "text"
                or not isinstance(part.get("text"), str)
            ):
                kind = part.get("type") if isinstance(part, dict) else None
                what = f"{kind!r} parts are" if isinstance(kind, str) else "this part is"
                self.problem(f"{at}[{index}]", f"{what} not supported: only text parts, for now")
                return None
            texts.append(part["text"])
        return "\n".join(texts)

    def calls(self, at: str, value: object, role: Role) -> tuple[ToolCall, ...] | None:
        if value is None:
            return ()
        if not self.openai or role != "assistant" or not isinstance(value, list):
            what = (
                "must be an array of calls"
                if role == "assistant"
                else "only an assistant message makes calls"
            )
            self.problem(at, what if self.openai else "not taken here: tools are for /v1")
            return None
        calls = []
        for index, call in enumerate(value):
            function = call.get("function") if isinstance(call, dict) else None
            if not (
                isinstance(function, dict)
                and isinstance(call.get("id"), str)
                and isinstance(function.get("name"), str)
                and isinstance(function.get("arguments"), str)
            ):
                self.problem(f"{at}[{index}]", "must be {id, type: function, function: {name, arguments}}")
                return None
            calls.append(ToolCall(call["id"], function["name"], function["arguments"]))
        return tuple(calls)


def parse_messages(
    raw: object, max_chars: int, *, name: str = "messages", openai: bool = False
) -> tuple[tuple[Turn, ...], dict[str, str]]:
    """The turns `raw` asks to be sent, and the problems with it (none: the turns are good)."""
    history = History(name, max_chars, openai=openai)
    history.read(raw)
    return tuple(history.turns), history.problems


def new_message(turns: tuple[Turn, ...]) -> str:
    """What is stored as the user's message: the last one, or the tool results that end it."""
    results: list[str] = []
    for turn in reversed(turns):
        if turn.role != "tool":
            break
        results.insert(0, turn.content)
    if results:
        return "\n\n".join(results) or "(tool results)"
    return turns[-1].content
