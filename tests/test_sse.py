from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chat.sse import (
    PING,
    LineDecoder,
    ServerSentEvent,
    SSEDecoder,
    TooLong,
    encode_event,
    encode_text_event,
    retry_field,
)

Event = ServerSentEvent
BOM = "\ufeff".encode()


def decode(*chunks: bytes) -> list[ServerSentEvent]:
    decoder = SSEDecoder()
    events = [event for chunk in chunks for event in decoder.feed(chunk)]
    return events + decoder.close()


def split_at(payload: bytes, *positions: int) -> list[bytes]:
    bounds = [0, *positions, len(payload)]
    return [payload[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]


# Line ends


@pytest.mark.parametrize("eol", [b"\n", b"\r", b"\r\n"], ids=["lf", "cr", "crlf"])
def test_each_line_ending_ends_lines(eol: bytes) -> None:
    payload = b"event: a" + eol + b"data: 1" + eol + b"data: 2" + eol + eol
    assert decode(payload) == [Event(event="a", data="1\n2")]


def test_mixed_line_endings_in_one_stream() -> None:
    payload = b"data: a\rdata: b\r\ndata: c\n\r\ndata: d\r\r"
    assert decode(payload) == [Event(data="a\nb\nc"), Event(data="d")]


@pytest.mark.parametrize(
    "chunks",
    [
        [b"data: a\r", b"\ndata: b\r\n\r\n"],
        [b"data: a\r", b"\n", b"data: b\r\n\r\n"],
        [b"data: a\r", b"", b"\ndata: b\r\n\r\n"],
        [b"data: a\r\ndata: b\r", b"\n\r", b"\n"],
    ],
    ids=["cr|lf", "cr|lf|line", "cr|empty|lf", "cr|lf-cr|lf"],
)
def test_crlf_split_across_chunks_is_one_line_end(chunks: list[bytes]) -> None:
    assert decode(*chunks) == [Event(data="a\nb")]


def test_cr_at_end_of_chunk_dispatches_without_waiting_for_next_read() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\r\r") == [Event(data="a")]
    assert decoder.feed(b"\ndata: b\n\n") == [Event(data="b")]


@pytest.mark.parametrize("separator", ["\u2028", "\u2029", "\x85", "\x0b", "\x0c", "\x1c"])
def test_unicode_line_separators_are_not_line_ends(separator: str) -> None:
    payload = f"data: a{separator}b\n\n".encode()
    assert decode(payload) == [Event(data=f"a{separator}b")]


# Byte order mark


@pytest.mark.parametrize("split", [0, 1, 2, 3], ids=lambda n: f"bom-split-at-{n}")
def test_bom_at_start_of_stream_is_skipped(split: int) -> None:
    payload = BOM + b"data: x\n\n"
    assert decode(*split_at(payload, split)) == [Event(data="x")]


def test_bom_bytes_fed_one_at_a_time_are_skipped() -> None:
    payload = BOM + b"event: e\ndata: x\n\n"
    assert decode(*(payload[i : i + 1] for i in range(len(payload)))) == [Event(event="e", data="x")]


def test_only_the_first_bom_is_skipped() -> None:
    # A second BOM makes the field name "\ufeffdata", an unknown field.
    assert decode(BOM + BOM + b"data: x\n\ndata: y\n\n") == [Event(data="y")]


def test_bom_after_start_of_stream_is_kept() -> None:
    assert decode(b"data: x\n\n", b"data: " + BOM + b"y\n\n") == [
        Event(data="x"),
        Event(data="\ufeffy"),
    ]


def test_partial_bom_prefix_that_is_not_a_bom_is_kept() -> None:
    assert decode(b"\xef", b"\xbbX: 1\ndata: x\n\n") == [Event(data="x")]
    assert decode(b"\xef\xbb", b"data: x\n\n") == []  # "\ufffddata" is unknown


# Fields


def test_comments_are_ignored() -> None:
    payload = b": hello\n:\ndata: x\n: between\n\n" + PING + b"data: y\n\n"
    assert decode(payload) == [Event(data="x"), Event(data="y")]


def test_field_without_colon_has_empty_value() -> None:
    assert decode(b"data\ndata\n\n") == [Event(data="\n")]
    assert decode(b"event\ndata: x\n\n") == [Event(event="message", data="x")]


@pytest.mark.parametrize(
    ("line", "data"),
    [
        (b"data:x", "x"),
        (b"data: x", "x"),
        (b"data:  x", " x"),
        (b"data:\tx", "\tx"),
        (b"data: x ", "x "),
        (b"data: a: b", "a: b"),
    ],
)
def test_only_one_space_after_colon_is_removed(line: bytes, data: str) -> None:
    assert decode(line + b"\n\n") == [Event(data=data)]


def test_data_lines_are_joined_with_lf() -> None:
    assert decode(b"data: a\ndata:\ndata: b\n\n") == [Event(data="a\n\nb")]


def test_unknown_fields_are_ignored() -> None:
    assert decode(b"foo: bar\nData: no\ndata: x\n\n") == [Event(data="x")]


def test_event_type_resets_after_dispatch() -> None:
    assert decode(b"event: a\ndata: 1\n\ndata: 2\n\n") == [
        Event(event="a", data="1"),
        Event(event="message", data="2"),
    ]


def test_event_type_resets_after_block_without_data() -> None:
    assert decode(b"event: a\n\ndata: 2\n\n") == [Event(event="message", data="2")]


def test_empty_event_type_means_message() -> None:
    assert decode(b"event:\ndata: x\n\n") == [Event(event="message", data="x")]


def test_last_event_id_persists_across_events() -> None:
    payload = b"id: 1\ndata: a\n\ndata: b\n\nid: 2\n\ndata: c\n\nid\ndata: d\n\n"
    assert decode(payload) == [
        Event(data="a", id="1"),
        Event(data="b", id="1"),
        Event(data="c", id="2"),
        Event(data="d", id=""),
    ]


def test_id_containing_null_is_ignored() -> None:
    decoder = SSEDecoder()
    events = decoder.feed(b"id: 1\ndata: a\n\nid: 2\x003\ndata: b\n\n")
    assert events == [Event(data="a", id="1"), Event(data="b", id="1")]
    assert decoder.last_event_id == "1"


@pytest.mark.parametrize(
    ("value", "retry"),
    [
        (b"3000", 3000),
        (b"0", 0),
        (b"", None),
        (b"-1", None),
        (b"3.5", None),
        (b"3000ms", None),
        (b" 3000", None),  # the one space is stripped, the second is not a digit
        ("\u0663".encode(), None),  # ARABIC-INDIC DIGIT THREE is not ASCII
    ],
)
def test_retry_only_accepts_ascii_digits(value: bytes, retry: int | None) -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"retry: " + value + b"\ndata: x\n\n") == [Event(data="x", retry=retry)]
    assert decoder.retry == retry


def test_retry_belongs_only_to_its_own_event_block() -> None:
    decoder = SSEDecoder()
    events = decoder.feed(b"retry: 10\ndata: a\n\ndata: b\n\n" + retry_field(20))
    assert events == [Event(data="a", retry=10), Event(data="b")]
    assert decoder.retry == 20  # a block with no data is not dispatched


@pytest.mark.parametrize("payload", [b"\n", b"\n\n\n", b"event: a\n\n", b"id: 1\n\n", b": c\n\n"])
def test_blocks_without_data_do_not_dispatch(payload: bytes) -> None:
    assert decode(payload) == []


def test_invalid_utf8_is_replaced() -> None:
    assert decode(b"data: a\xffb\ndata: \xe2\x82\n\n") == [Event(data="a\ufffdb\n\ufffd")]


# End of stream


@pytest.mark.parametrize("payload", [b"data: x", b"data: x\n", b"data: x\r", b"data: x\r\n"])
def test_unterminated_event_at_eof_is_not_dispatched(payload: bytes) -> None:
    decoder = SSEDecoder()
    assert decoder.feed(payload) == []
    assert decoder.close() == []


def test_unterminated_line_at_eof_does_not_set_last_event_id() -> None:
    decoder = SSEDecoder()
    decoder.feed(b"id: 1\ndata: a\n\nid: 12")
    assert decoder.close() == []
    assert decoder.last_event_id == "1"


# Chunking


EMOJI_EVENT = "data: 🙂 ok\n\n".encode()


@pytest.mark.parametrize("split", range(1, len(EMOJI_EVENT)))
def test_utf8_char_split_across_chunks(split: int) -> None:
    assert decode(*split_at(EMOJI_EVENT, split)) == [Event(data="🙂 ok")]


def test_one_read_carries_many_events_and_one_event_spans_many_reads() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: 1\n\ndata: 2\n\ndata: 3") == [Event(data="1"), Event(data="2")]
    assert decoder.feed(b"4") == []
    assert decoder.feed(b"56") == []
    assert decoder.feed(b"\n") == []
    assert decoder.feed(b"\n") == [Event(data="3456")]


# Encoder


def test_encode_event_shape() -> None:
    assert encode_event("token", {"text": "hi"}, id=3) == (b'id: 3\nevent: token\ndata: {"text": "hi"}\n\n')
    assert encode_event("done", {"a": [1, 2]}) == b'event: done\ndata: {"a": [1, 2]}\n\n'


def test_encode_event_writes_utf8_not_ascii_escapes() -> None:
    expected = 'event: token\ndata: {"text": "é🙂"}\n\n'.encode()
    assert encode_event("token", {"text": "é🙂"}) == expected


def test_encode_event_escapes_lone_surrogate() -> None:
    encoded = encode_event("token", {"text": "a\ud83d"})
    assert encoded == b'event: token\ndata: {"text": "a\\ud83d"}\n\n'
    assert json.loads(decode(encoded)[0].data) == {"text": "a\ud83d"}


@pytest.mark.parametrize("name", ["tok\nen", "tok\ren"])
def test_encode_event_rejects_line_end_in_event_name(name: str) -> None:
    with pytest.raises(ValueError):
        encode_event(name, {})


def test_ping_and_retry_field_shape() -> None:
    assert PING == b": ping\n\n"
    assert retry_field(3000) == b"retry: 3000\n\n"
    with pytest.raises(ValueError):
        retry_field(-1)


@pytest.mark.parametrize(
    "text",
    [
        "\n\nevent: done\n\n",
        "\r\ndata: forged\r\n\r\n",
        "a\u2028b\u2029c\x85d",
        "id: 9\n\nretry: 1\n\n",
    ],
)
def test_token_text_cannot_forge_events(text: str) -> None:
    events = decode(encode_event("token", {"text": text}, id=7))
    assert [(e.event, e.id) for e in events] == [("token", "7")]
    assert json.loads(events[0].data) == {"text": text}


# Property: any chunking of any stream decodes to the events it was written from.


field_text = st.text(st.characters(blacklist_characters="\r\n", blacklist_categories=["Cs"]))


@dataclass
class Block:
    event: str
    data: list[str]
    id: str | None
    retry: int | None
    comment: str | None

    def lines(self) -> list[str]:
        lines = [] if self.comment is None else [":" + self.comment]
        if self.id is not None:
            lines.append("id: " + self.id)
        if self.retry is not None:
            lines.append(f"retry: {self.retry}")
        lines.append("event: " + self.event)
        lines.extend("data: " + line for line in self.data)
        return [*lines, ""]


blocks = st.lists(
    st.builds(
        Block,
        event=field_text,
        data=st.lists(field_text, min_size=1, max_size=4),
        id=st.none() | field_text.filter(lambda s: "\0" not in s),
        retry=st.none() | st.integers(0, 10**6),
        comment=st.none() | field_text,
    ),
    max_size=6,
)


def render(blocks: list[Block], choose_eol: Callable[[list[str]], str]) -> bytes:
    out: list[str] = []
    previous = ""
    for line in [line for block in blocks for line in block.lines()]:
        # After a bare CR, an empty line ended by LF would read as CRLF: one line end.
        eol = choose_eol(["\r", "\r\n"] if previous == "\r" and not line else ["\n", "\r", "\r\n"])
        out.append(line + eol)
        previous = eol
    return "".join(out).encode()


def expected_events(blocks: list[Block]) -> list[ServerSentEvent]:
    events = []
    last_id = None
    for block in blocks:
        last_id = last_id if block.id is None else block.id
        event = block.event or "message"
        data = "\n".join(block.data)
        events.append(Event(event=event, data=data, id=last_id, retry=block.retry))
    return events


@settings(max_examples=300, deadline=None)
@given(blocks=blocks, bom=st.booleans(), data=st.data())
def test_any_chunking_decodes_to_the_original_events(
    blocks: list[Block], bom: bool, data: st.DataObject
) -> None:
    payload = (BOM if bom else b"") + render(blocks, lambda eols: data.draw(st.sampled_from(eols)))
    splits = data.draw(st.lists(st.integers(0, len(payload)), max_size=20).map(sorted))

    whole = decode(payload)
    assert whole == expected_events(blocks)
    assert decode(*split_at(payload, *splits)) == whole
    assert decode(*(payload[i : i + 1] for i in range(len(payload)))) == whole


def test_a_line_that_grows_past_the_limit_without_an_end_is_refused() -> None:
    decoder = LineDecoder(max_bytes=10)
    assert decoder.feed(b"0123456789\n") == [b"0123456789"]  # at the limit, ended: fine
    decoder.feed(b"01234")
    with pytest.raises(TooLong):
        decoder.feed(b"567890")  # eleven bytes and still no end


def test_an_event_whose_data_lines_grow_past_the_limit_is_refused() -> None:
    decoder = SSEDecoder(max_bytes=20)
    assert [e.data for e in decoder.feed(b"data: short\n\n")] == ["short"]
    with pytest.raises(TooLong):
        decoder.feed(b"data: 0123456789\ndata: 0123456789\n")  # no blank line: one event, too big


@pytest.mark.parametrize(
    "text", ["w0 ", "", 'quote " back \\ slash', "line\nend\r\n", "é ✓ 🙂", "\x00\x1f", "lone \ud800"]
)
def test_a_text_event_is_the_same_bytes_as_its_dict_encoded(text: str) -> None:
    assert encode_text_event("token", text, 7) == encode_event("token", {"text": text}, 7)
