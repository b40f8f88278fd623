"""The body of `POST /v1/chat/completions`: OpenAI's, checked, and made the turn it asks for.

Taken: `model`, `messages` (`chat.owned_history`, with OpenAI's roles and parts), `stream`,
`stream_options.include_usage`, `temperature`, `max_completion_tokens` (or the older
`max_tokens`), `stop`, `user`, `tools`, `tool_choice`, and `n` when it is 1. Unknown fields
are ignored, as OpenAI's SDKs send new ones before every server knows them; a known field
of the wrong type is a 400 (`chat.v1_errors`) naming it.

`model` is `provider/model` when the part before the first `/` names a provider this server
can use; anything else is a model of the default provider, so `openai/Qwen/Qwen2.5-7B` asks
the openai provider for `Qwen/Qwen2.5-7B`, and a bare `meta-llama/Llama-3.1-8B` asks the
default provider for all of it. `provider/` alone asks for that provider's default model.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .bodies import Fields
from .config import Settings
from .owned_history import new_message, parse_messages
from .providers import ProviderInfo
from .providers.base import Turn
from .turns import TurnRequest

MAX_MODEL_CHARS = 241  # a provider's name, a slash, and a model name as the native API takes it
MAX_STOP = 4  # OpenAI's limit
MAX_TOOLS = 128  # OpenAI's limit
TOOL_CHOICES = ("none", "auto", "required")


@dataclass(frozen=True, slots=True)
class CompletionBody:
    model: str  # as sent
    provider: str | None  # split off `model`, when it names one
    bare_model: str | None  # what the provider is asked for; None: its default
    history: tuple[Turn, ...]
    stream: bool
    include_usage: bool
    temperature: float | None
    max_tokens: int | None
    stop: tuple[str, ...]
    tools: tuple[dict[str, Any], ...]
    tool_choice: str | dict[str, Any] | None

    def ask(self, user: str, conversation_id: int | None, idempotency_key: str | None) -> TurnRequest:
        return TurnRequest(
            user=user,
            message=new_message(self.history),
            conversation_id=conversation_id,
            provider=self.provider,
            model=self.bare_model,
            temperature=self.temperature,
            max_tokens=self.max_tokens,
            idempotency_key=idempotency_key,
            history=self.history,
            stop=self.stop,
            tools=self.tools,
            tool_choice=self.tool_choice,
            keep_history=True,  # a call is stored whole: what it was sent and the reply
        )


def split_model(model: str, providers: Mapping[str, ProviderInfo]) -> tuple[str | None, str | None]:
    """(provider, model) for `provider/model`, when the prefix names a usable provider;
    else (None, the whole of it): a model of the default provider."""
    prefix, slash, rest = model.partition("/")
    info = providers.get(prefix)
    if slash and info is not None and info.available:
        return prefix, rest or None
    return None, model


def parse_completion_body(
    data: dict[str, Any], settings: Settings, providers: Mapping[str, ProviderInfo]
) -> CompletionBody:
    fields = Fields(data)
    model = fields.text("model", required=True, max_chars=MAX_MODEL_CHARS, printable=True) or ""
    history: tuple[Turn, ...] = ()
    if data.get("messages") is None:
        fields.problems["messages"] = "required"
    else:
        history, problems = parse_messages(data["messages"], settings.max_message_chars, openai=True)
        fields.problems.update(problems)
    provider, bare_model = split_model(model, providers)
    limit = fields.integer("max_completion_tokens", high=1_000_000)
    older = fields.integer("max_tokens", high=1_000_000)
    options = fields.data.get("stream_options")
    if options is not None and not isinstance(options, dict):
        fields.problems["stream_options"] = "must be an object"
    body = CompletionBody(
        model=model,
        provider=provider,
        bare_model=bare_model,
        history=history,
        stream=_flag(fields, "stream", data.get("stream")),
        include_usage=isinstance(options, dict)
        and _flag(fields, "stream_options.include_usage", options.get("include_usage")),
        temperature=fields.number("temperature", low=0, high=2),
        max_tokens=limit if limit is not None else older,
        stop=_stop(fields),
        tools=_tools(fields),
        tool_choice=_tool_choice(fields),
    )
    n = data.get("n")
    if n is not None and (isinstance(n, bool) or n != 1):
        fields.problems["n"] = "must be 1: sidechat makes one choice per request"
    if data.get("user") is not None and not isinstance(data["user"], str):
        fields.problems["user"] = "must be a string"  # OpenAI's end-user id: checked, not used
    fields.check()
    return body


def _flag(fields: Fields, name: str, value: object) -> bool:
    """A boolean where null is the same as false, as OpenAI's SDKs may send it."""
    if value is None:
        return False
    if not isinstance(value, bool):
        fields.problems[name] = "must be true or false"
        return False
    return value


def _stop(fields: Fields) -> tuple[str, ...]:
    value = fields.data.get("stop")
    if value is None:
        return ()
    stops = [value] if isinstance(value, str) else value
    if (
        not isinstance(stops, list)
        or len(stops) > MAX_STOP
        or not all(isinstance(s, str) and s and "\x00" not in s for s in stops)
    ):
        fields.problems["stop"] = f"must be a string or an array of at most {MAX_STOP} non-empty strings"
        return ()
    return tuple(stops)


def _function(value: object) -> bool:
    """`{type: function, function: {name, ...}}`, as OpenAI writes a tool and a forced choice."""
    if not isinstance(value, dict) or value.get("type") != "function":
        return False
    function = value.get("function")
    return isinstance(function, dict) and isinstance(function.get("name"), str) and bool(function["name"])


def _tools(fields: Fields) -> tuple[dict[str, Any], ...]:
    value = fields.data.get("tools")
    if value is None:
        return ()
    if not isinstance(value, list) or len(value) > MAX_TOOLS:
        fields.problems["tools"] = f"must be an array of at most {MAX_TOOLS} tools"
        return ()
    for index, tool in enumerate(value):
        if not _function(tool):
            fields.problems[f"tools[{index}]"] = "must be {type: function, function: {name, ...}}"
            return ()
    return tuple(value)


def _tool_choice(fields: Fields) -> str | dict[str, Any] | None:
    value = fields.data.get("tool_choice")
    if value is None:
        return None
    if value in TOOL_CHOICES or _function(value):
        return value  # type: ignore[no-any-return]
    fields.problems["tool_choice"] = f"must be one of {', '.join(TOOL_CHOICES)}, or {{type: function, ...}}"
    return None
