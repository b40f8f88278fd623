"""The contract every provider adapter keeps.

An adapter is a small class with a `name`, a `default_model` and one method,
`stream(request)`: an async iterator that yields each text delta as a plain
`str`, then exactly one `Finish` record, then stops. Whenever the provider tells
how many tokens it has counted so far, the adapter also yields a `Usage` (the
counts so far, not an increment), so that a reply cancelled or cut off before
its `Finish` still knows what it cost. Anything that goes wrong
upstream is raised as a `ProviderError`; adapters translate httpx's exceptions
themselves so nothing above them needs to know about HTTP.

Deltas are bare strings rather than records on purpose: the per-token path is
the hot path, and a string is all it needs. The other record is `Answerer`:
a wrapper that hands the request to a fallback provider yields it once, before
that provider's first delta, so the stream can say who really answered.

Tools: a request may carry `tools` (OpenAI's function definitions, as the client
sent them) and a history with `tool` turns and assistant turns that made
`tool_calls`. The OpenAI-compatible adapter passes them on and returns the calls
the model made, whole, in its `Finish`: sidechat runs no tool, and a call is of use
to a client only once its arguments are complete. An adapter whose API it does
not speak refuses such a request before calling anyone (`refuse_tools`), as a
400 that says where tools work.

    ProviderError              type, message, status, retry_after, retryable
    ├── error types (`type`):  auth, rate_limited, overloaded, upstream_error,
    │                          timeout, truncated, protocol, prompt_blocked

Around this contract:

- `http.py`: `HTTPProvider`, what the HTTP adapters share: opening the stream,
  and the loop that reads, decodes and parses it, so an adapter is its wire
  format only (`build_body` and a `Reading`);
- `deadlines.py`: every upstream timeout, and the one timer per stream that
  enforces the first-token and idle limits;
- `errors.py`: turning what upstream sent (statuses, error bodies, mid-stream
  error events, httpx exceptions) into `ProviderError`s, keys redacted;
- `retry.py`, `fallback.py`: wrappers that are providers themselves, retrying
  or handing over to another provider, but only before the first delta (a
  `Usage` is not one: it passes through and a failure after it is still retried).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

# A stored conversation sends user and assistant turns; a client that owns its history may
# also send system turns anywhere, and (OpenAI-compatible providers only) tool results.
Role = Literal["system", "user", "assistant", "tool"]

ERROR_TYPES = frozenset(
    {
        "auth",
        "rate_limited",
        "overloaded",
        "upstream_error",
        "timeout",
        "truncated",
        "protocol",
        "prompt_blocked",
    }
)


@dataclass(frozen=True, slots=True)
class ToolCall:
    """A call the model asked for: `arguments` is the JSON text it wrote, as it wrote it."""

    id: str
    name: str
    arguments: str

    def as_json(self) -> dict[str, Any]:
        """As OpenAI writes a call in a message's `tool_calls`."""
        return {
            "id": self.id,
            "type": "function",
            "function": {"name": self.name, "arguments": self.arguments},
        }


@dataclass(frozen=True, slots=True)
class Turn:
    role: Role
    content: str
    tool_calls: tuple[ToolCall, ...] = ()  # an assistant turn's calls
    tool_call_id: str | None = None  # a tool turn: the call whose result it is


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """What a provider is asked. From a stored conversation, turns alternate user/assistant
    and end with a user turn; a client that owns its history sends it as it likes (system
    turns anywhere, tool turns after the calls they answer)."""

    model: str
    turns: list[Turn]
    system: str | None = None
    temperature: float | None = None
    max_tokens: int | None = None
    stop: tuple[str, ...] = ()  # sequences that end the reply
    tools: tuple[dict[str, Any], ...] = ()  # OpenAI's `tools`, as the client sent them
    tool_choice: str | dict[str, Any] | None = None

    @property
    def uses_tools(self) -> bool:
        return bool(self.tools) or any(t.role == "tool" or t.tool_calls for t in self.turns)


@dataclass(frozen=True, slots=True)
class Usage:
    """Tokens as the provider counts them, None where it said nothing. `input_tokens` is the
    whole prompt: `cached_input_tokens` (read from the provider's prompt cache) and
    `cache_write_tokens` (written to it: Anthropic's cache creation) are parts of it, priced
    apart (`chat.prices`)."""

    input_tokens: int | None = None
    output_tokens: int | None = None
    cached_input_tokens: int | None = None
    cache_write_tokens: int | None = None

    @property
    def reported(self) -> bool:
        return self.input_tokens is not None or self.output_tokens is not None

    def as_dict(self) -> dict[str, int | None]:
        """The two counts always (null when unknown); the cache's only when reported."""
        out = {"input_tokens": self.input_tokens, "output_tokens": self.output_tokens}
        if self.cached_input_tokens is not None:
            out["cached_input_tokens"] = self.cached_input_tokens
        if self.cache_write_tokens is not None:
            out["cache_write_tokens"] = self.cache_write_tokens
        return out


@dataclass(frozen=True, slots=True)
class Finish:
    reason: str  # stop, length, tool_calls or content_filter (a stop of ours: cancelled)
    usage: Usage = field(default_factory=Usage)
    tool_calls: tuple[ToolCall, ...] = ()  # the calls the model made, whole


@dataclass(frozen=True, slots=True)
class Answerer:
    """Who is answering, when it is not the provider and model that were asked."""

    provider: str
    model: str


class ProviderError(Exception):
    """An upstream failure, carrying what the `error` event reports."""

    def __init__(
        self,
        type: str,
        message: str,
        *,
        status: int | None = None,
        retry_after: float | None = None,
        retryable: bool = False,
        provider_type: str | None = None,
        provider_code: str | None = None,
    ) -> None:
        assert type in ERROR_TYPES, type
        super().__init__(message)
        self.type = type
        self.message = message
        self.status = status
        self.retry_after = retry_after
        self.retryable = retryable
        self.provider_type = provider_type
        self.provider_code = provider_code

    def scrub(self, secrets: tuple[str, ...], urls: tuple[tuple[str, str], ...] = ()) -> ProviderError:
        """The same error with each of `secrets` (the keys we hold) cut out of its message, and
        each of `urls` (ours, whose path may carry an account or a key) shown as its origin."""
        for secret in secrets:
            if secret and secret in self.message:
                self.message = self.message.replace(secret, "[redacted]")
        for url, origin in urls:
            self.message = self.message.replace(url, origin)
        self.args = (self.message,)
        return self

    def as_dict(self) -> dict[str, object]:
        out: dict[str, object] = {"type": self.type, "message": self.message}
        for key in ("status", "retry_after", "provider_type", "provider_code"):
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        return out


Item = str | Finish | Usage | Answerer  # what a provider's stream yields


class Provider(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def default_model(self) -> str: ...

    def stream(self, request: ChatRequest) -> AsyncIterator[Item]: ...


TOOLS_WHERE = "tools are supported on openai-compatible providers (the openai provider)"


def refuse_tools(request: ChatRequest, provider: str) -> None:
    """A 400 before anyone is called, for a request with tools or tool turns: `provider`'s
    adapter does not speak them, and dropping them would answer a different question."""
    if request.uses_tools:
        raise ProviderError("upstream_error", f"{provider} cannot be sent tools: {TOOLS_WHERE}", status=400)


def system_apart(request: ChatRequest, provider: str) -> tuple[str | None, list[Turn]]:
    """The system prompt and the user/assistant turns, for an API that takes the prompt apart
    from the turns (Anthropic, Gemini): a client's leading system turns join the prompt, in
    order; one after the conversation began is refused (400), as is anything of tools."""
    refuse_tools(request, provider)
    turns = request.turns
    start = 0
    while start < len(turns) and turns[start].role == "system":
        start += 1
    parts = [request.system] if request.system else []
    parts += [turn.content for turn in turns[:start]]
    rest = turns[start:] if start else turns
    if any(turn.role == "system" for turn in rest):
        raise ProviderError(
            "upstream_error",
            f"{provider} takes system messages only at the start of the conversation",
            status=400,
        )
    return "\n\n".join(parts) if parts else None, list(rest)


async def close_stream(stream: AsyncIterator[object]) -> None:
    """Close a provider's stream that is left before its end, releasing its connection now."""
    aclose = getattr(stream, "aclose", None)
    if aclose is not None:
        await aclose()
