"""Tools and a client's own history, adapter by adapter: what each sends, reads and refuses."""

from __future__ import annotations

import json
from typing import Any

import pytest

from chat.providers import anthropic, gemini, ollama
from chat.providers.base import ChatRequest, ProviderError, ToolCall, Turn, system_apart
from chat.providers.openai import OpenAIReading, build_body

WEATHER = {
    "type": "function",
    "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {}}},
}
CALL = ToolCall("call_1", "get_weather", '{"city": "Paris"}')
AFTER_A_TOOL = [
    Turn("system", "Be brief."),
    Turn("user", "Weather in Paris?"),
    Turn("assistant", "", tool_calls=(CALL,)),
    Turn("tool", '{"temp": 21}', tool_call_id="call_1"),
]


def test_openai_is_sent_tools_and_the_history_as_the_client_wrote_it() -> None:
    request = ChatRequest(
        "gpt-4o-mini",
        AFTER_A_TOOL,
        tools=(WEATHER,),
        tool_choice="auto",
        stop=("\n\n",),
    )
    body = build_body(request)
    assert body["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [CALL.as_json()]},
        {"role": "tool", "tool_call_id": "call_1", "content": '{"temp": 21}'},
    ]
    assert (body["tools"], body["tool_choice"], body["stop"]) == ([WEATHER], "auto", ["\n\n"])


def test_openai_is_sent_no_tool_fields_when_there_are_none() -> None:
    body = build_body(ChatRequest("gpt-4o-mini", [Turn("user", "hi")]))
    assert not {"tools", "tool_choice", "stop"} & set(body)


def reading_of(*payloads: dict[str, Any]) -> OpenAIReading:
    reading = OpenAIReading()
    for payload in payloads:
        reading.feed(payload)
    return reading


def delta(**fields: Any) -> dict[str, Any]:
    return {"choices": [{"index": 0, "delta": fields, "finish_reason": None}]}


FINISHED = {"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]}


def test_parallel_calls_are_put_together_by_index_whatever_the_order_of_their_pieces() -> None:
    def piece(index: int, arguments: str, **first: str) -> dict[str, Any]:
        function = {"arguments": arguments, **({"name": first["name"]} if first else {})}
        return {"index": index, **({"id": first["id"]} if first else {}), "function": function}

    reading = reading_of(
        delta(tool_calls=[piece(0, "", id="call_a", name="one")]),
        delta(tool_calls=[piece(1, '{"b"', id="call_b", name="two")]),
        delta(tool_calls=[piece(0, '{"a": 1}')]),
        delta(tool_calls=[piece(1, ": 2}")]),
        FINISHED,
    )
    assert reading.end().tool_calls == (
        ToolCall("call_a", "one", '{"a": 1}'),
        ToolCall("call_b", "two", '{"b": 2}'),
    )


def test_a_call_sent_whole_with_arguments_as_an_object_and_no_id_is_read() -> None:
    reading = reading_of(
        delta(tool_calls=[{"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]), FINISHED
    )
    (call,) = reading.end().tool_calls
    assert (call.id, call.name, json.loads(call.arguments)) == ("call_0", "get_weather", {"city": "Paris"})


@pytest.mark.parametrize(
    "pieces",
    [
        [{"index": "0", "function": {"arguments": ""}}],
        [{"index": 0, "id": 7, "function": {"arguments": ""}}],
        ["not a call"],
    ],
)
def test_a_malformed_call_piece_is_a_malformed_event(pieces: list[Any]) -> None:
    with pytest.raises((TypeError, AttributeError)):  # the adapter's loop makes it a protocol error
        reading_of(delta(tool_calls=pieces))


@pytest.mark.parametrize("build", [anthropic.build_body, gemini.build_body, ollama.build_body])
@pytest.mark.parametrize(
    "request_",
    [
        ChatRequest("m", [Turn("user", "hi")], tools=(WEATHER,)),
        ChatRequest("m", AFTER_A_TOOL),
    ],
    ids=["tools", "tool turns"],
)
def test_other_adapters_refuse_tools_with_a_400_that_says_where_they_work(
    build: Any, request_: ChatRequest
) -> None:
    with pytest.raises(ProviderError) as info:
        build(request_)
    assert (info.value.type, info.value.status, info.value.retryable) == ("upstream_error", 400, False)
    assert "openai-compatible" in info.value.message


def test_leading_system_turns_join_the_system_prompt_and_a_later_one_is_refused() -> None:
    turns = [Turn("system", "One."), Turn("system", "Two."), Turn("user", "hi")]
    assert system_apart(ChatRequest("m", turns, system="Zero."), "anthropic") == (
        "Zero.\n\nOne.\n\nTwo.",
        [Turn("user", "hi")],
    )
    body = anthropic.build_body(ChatRequest("m", turns, stop=("END",)))
    assert (body["system"], body["messages"], body["stop_sequences"]) == (
        "One.\n\nTwo.",
        [{"role": "user", "content": "hi"}],
        ["END"],
    )
    late = [Turn("user", "hi"), Turn("assistant", "yo"), Turn("system", "Now French."), Turn("user", "ok")]
    with pytest.raises(ProviderError, match="only at the start"):
        gemini.build_body(ChatRequest("m", late))


def test_gemini_and_ollama_are_sent_stop_sequences_and_ollama_system_turns_where_they_are() -> None:
    assert gemini.build_body(ChatRequest("m", [Turn("user", "hi")], stop=("END",)))["generationConfig"] == {
        "stopSequences": ["END"]
    }
    late = [Turn("user", "hi"), Turn("system", "Now French."), Turn("user", "ok")]
    body = ollama.build_body(ChatRequest("m", late, stop=("END",)))
    assert [m["role"] for m in body["messages"]] == ["user", "system", "user"]
    assert body["options"] == {"stop": ["END"]}
