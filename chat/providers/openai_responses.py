"""OpenAI's Responses API streaming, the API OpenAI recommends for its newer models.

`POST {base_url}/responses` with `stream: true` answers named Server-Sent Events
whose JSON `type` repeats the event name, each with a `sequence_number`:
`response.created`, `response.in_progress`, then for each output item
`response.output_item.added`, `response.content_part.added`,
`response.output_text.delta`…, `response.output_text.done`,
`response.content_part.done`, `response.output_item.done`, and at the end one
of `response.completed`, `response.incomplete` or `response.failed`, each holding
the whole response (its `usage`, `incomplete_details`, `error`). There is no
`[DONE]`: the terminal event is the end marker. `error` may come at any time.

Deliberate choices:

- We dispatch on the JSON `type` and ignore the types we do not know: OpenAI adds
  events as it adds tools and modalities. Only `response.output_text.delta` and
  `response.refusal.delta` are text (a refusal is the answer's text, as with Chat
  Completions); reasoning (`response.reasoning_summary_text.delta`,
  `response.reasoning_text.delta`, reasoning items) never is, and the `.done`
  events and the terminal response repeat text already sent, so they are not.
- `store: false`: sidechat stores the conversation itself. OpenAI's default keeps
  every response on its side for later retrieval; that second copy is a privacy
  choice the operator did not make. So no `previous_response_id` either: each
  turn sends the history, as with every provider.
- The system prompt is `instructions`, the field the API gives it, rather than a
  `system` message in `input`; a client's own system turns stay where it put them.
- Tools and stop sequences are refused with a 400 before anyone is called (see
  `build_body`): dropping them would answer a different question.
- `response.incomplete` ends the reply: `max_output_tokens` is `length`,
  `content_filter` is `content_filter`, and a reason we do not know is `length`
  too (the reply was cut short, whatever cut it).
- `response.failed` carries an `error` with a code and no HTTP status, so its code
  picks the error type (`invalid_prompt` is a blocked prompt, not a retryable
  failure). It may say what was counted: the error carries that `usage`, and
  `stream` tells it before raising, so the reply is billed what the provider
  billed.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from .base import ChatRequest, Finish, ProviderError, Usage, close_stream, refuse_tools
from .errors import error_from_event, truncated_error
from .http import HTTPProvider
from .openai import OpenAIProvider

_INCOMPLETE_REASONS = {"max_output_tokens": "length", "content_filter": "content_filter"}
# `response.failed` error codes whose type the code alone cannot tell `error_from_event`.
_FAILED_CODES: dict[str, tuple[str, bool]] = {
    "server_error": ("upstream_error", True),
    "vector_store_timeout": ("timeout", True),
    "invalid_prompt": ("prompt_blocked", False),
    "bio_policy": ("prompt_blocked", False),
    "image_content_policy_violation": ("prompt_blocked", False),
    "data_residency_mismatch": ("upstream_error", False),
}
_NONE: dict[str, Any] = {}


def build_body(request: ChatRequest) -> dict[str, Any]:
    """System turns a client put in its history go where it put them (the API takes `system`
    messages in `input`). Tools are refused (a 400, `base.refuse_tools`): the Responses API's
    are items of a shape of their own, not translated yet; and so are stop sequences, which
    the API does not take at all."""
    refuse_tools(request, "openai-responses")
    if request.stop:
        raise ProviderError(
            "upstream_error",
            "openai-responses cannot be sent stop sequences: the Responses API takes none "
            "(the openai provider, Chat Completions, does)",
            status=400,
        )
    body: dict[str, Any] = {"model": request.model}
    if request.system:
        body["instructions"] = request.system
    body["input"] = [{"role": turn.role, "content": turn.content} for turn in request.turns]
    body["stream"] = True
    body["store"] = False  # see the module's docstring
    if request.temperature is not None:
        body["temperature"] = request.temperature
    if request.max_tokens is not None:
        body["max_output_tokens"] = request.max_tokens
    return body


class ResponseFailed(ProviderError):
    """`response.failed`: the error, with what the provider had counted by then."""

    usage: Usage = Usage()


def _usage(counted: dict[str, Any]) -> Usage:
    details = counted.get("input_tokens_details") or _NONE
    return Usage(
        counted.get("input_tokens"),
        counted.get("output_tokens"),
        details.get("cached_tokens"),
        details.get("cache_write_tokens"),
    )


def _failure(response: dict[str, Any], usage: Usage, provider: str) -> ResponseFailed:
    error = response.get("error")
    if not error:
        failed = ResponseFailed(
            "upstream_error", f"{provider}: the response failed and said no more", retryable=True
        )
    else:
        said = error_from_event({"error": error}, provider)  # its message, redacted, and its code
        type, retryable = _FAILED_CODES.get(said.provider_code or "", (said.type, said.retryable))
        failed = ResponseFailed(
            type,
            said.message,
            retryable=retryable,
            provider_type=said.provider_type,
            provider_code=said.provider_code,
        )
    failed.usage = usage
    return failed


class ResponsesReading:
    """Text deltas go out as they come; the terminal event brings the count and the end."""

    __slots__ = ("provider", "usage")

    def __init__(self, provider: str = "openai-responses") -> None:
        self.provider = provider
        self.usage = Usage()

    def feed(self, payload: Any) -> tuple[str, Finish | None]:
        kind = payload.get("type")
        if kind == "response.output_text.delta" or kind == "response.refusal.delta":
            text = payload["delta"]
            if text.__class__ is not str:
                raise TypeError("delta is not a string")
            return text, None
        if kind == "response.completed":
            self._count(payload["response"])
            return "", Finish("stop", self.usage)
        if kind == "response.incomplete":
            response = self._count(payload["response"])
            reason = (response.get("incomplete_details") or _NONE).get("reason") or ""
            return "", Finish(_INCOMPLETE_REASONS.get(reason, "length"), self.usage)
        if kind == "response.failed":
            response = self._count(payload["response"])
            raise _failure(response, self.usage, self.provider)
        if kind == "error":  # an `error` event without its `event:` name (http.py reads one with it)
            raise error_from_event(payload, self.provider)
        return "", None  # created, in_progress, items and parts, reasoning, .done, and types added later

    def _count(self, response: dict[str, Any]) -> dict[str, Any]:
        counted = response.get("usage")
        if counted:
            usage = _usage(counted)
            if usage != self.usage:  # replaced only when it changes: each change is told once
                self.usage = usage
        return response

    def end(self) -> Finish:
        raise truncated_error(self.provider, "response.completed, response.incomplete or response.failed")


class OpenAIResponsesProvider(HTTPProvider):
    name = "openai-responses"
    default_base_url = OpenAIProvider.default_base_url
    # Small, quick and cheap, as gpt-4o-mini is for Chat Completions, and in the price table,
    # so the first reply has a cost; newer models are a SIDECHAT_MODEL away.
    default_model = "gpt-5-mini"
    path = "/responses"
    key_header = ("authorization", "Bearer {}")
    request_id_header = OpenAIProvider.request_id_header
    build_body = staticmethod(build_body)

    def reading(self) -> ResponsesReading:
        return ResponsesReading(self.name)

    async def stream(self, request: ChatRequest) -> AsyncIterator[str | Finish | Usage]:
        """The shared loop's stream, and the count a `response.failed` brought, told before
        its error (the loop tells a count only after an event that did not raise)."""
        told = Usage()
        items = super().stream(request)
        try:
            async for item in items:
                if isinstance(item, Usage):
                    told = item
                yield item
        except ResponseFailed as exc:
            if exc.usage.reported and exc.usage != told:
                yield exc.usage
            raise
        finally:
            await close_stream(items)  # left early: the connection goes now
