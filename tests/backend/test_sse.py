"""The sans-IO Server-Sent Events decoder: bytes in (split anywhere), events out, every buffer bounded."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fabstir.backend._sse import ServerSentEvent, SSEDecoder, SSEError

# A stream exercising every rule at once: comments, a BOM, fields without a space, multi-line data,
# event names, ids carried over, retry, an event without data, mixed line ends, and non-ASCII text.
STREAM = (
    "\ufeff: a comment first\r\n"
    "data: first\r\n\r\n"
    "event: update\n"
    "id: 7\n"
    "data:no space\n"
    "data:  two spaces\n"
    "retry: 1500\n\n"
    ": keep-alive\n\n"
    "event: nothing\n\n"
    "data: after id\r\r"
    "data\n\n"
    "data: ünïcødé ✓ 🦙\n\n"
    "data: [DONE]\n\n"
).encode()

EXPECTED = [
    ServerSentEvent(data="first"),
    ServerSentEvent(data="no space\n two spaces", event="update", id="7", retry=1500),
    ServerSentEvent(data="after id", id="7"),
    ServerSentEvent(data="", id="7"),
    ServerSentEvent(data="ünïcødé ✓ 🦙", id="7"),
    ServerSentEvent(data="[DONE]", id="7"),
]


def feed_in_pieces(data: bytes, size: int, decoder: SSEDecoder | None = None) -> list[ServerSentEvent]:
    decoder = decoder or SSEDecoder()
    events: list[ServerSentEvent] = []
    for start in range(0, len(data), size):
        events += decoder.feed(data[start : start + size])
    return events


def test_whole_stream_at_once() -> None:
    """Fed in one piece, the stream yields the events the WHATWG rules define, in order."""
    assert SSEDecoder().feed(STREAM) == EXPECTED


@pytest.mark.parametrize("size", [1, 2, 3, 5, 7, 64, 1 << 20])
def test_fragment_sizes_do_not_matter(size: int) -> None:
    """Split into chunks of any size (splitting CRLF pairs and UTF-8 sequences), the events are the same."""
    assert feed_in_pieces(STREAM, size) == EXPECTED


@given(st.lists(st.integers(min_value=0, max_value=len(STREAM)), max_size=40))
def test_arbitrary_split_points(cuts: list[int]) -> None:
    """Whatever the split points (including empty chunks), the decoder yields the same events."""
    points = [0, *sorted(cuts), len(STREAM)]
    decoder = SSEDecoder()
    events: list[ServerSentEvent] = []
    for start, end in itertools.pairwise(points):
        events += decoder.feed(STREAM[start:end])
    assert events == EXPECTED


@pytest.mark.parametrize("line_end", [b"\n", b"\r\n", b"\r"])
def test_every_line_end_is_accepted(line_end: bytes) -> None:
    """LF, CRLF and a lone CR all end lines."""
    data = b"data: a" + line_end + b"data: b" + line_end + line_end
    assert SSEDecoder().feed(data) == [ServerSentEvent(data="a\nb")]


def test_crlf_split_across_chunks_is_one_line_end() -> None:
    """A CR ending one chunk and an LF starting the next are one line end, not an extra empty line."""
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\r") == []
    assert decoder.feed(b"\ndata: b\r\n") == []
    assert decoder.feed(b"\r") == [ServerSentEvent(data="a\nb")]
    assert decoder.feed(b"\n") == []  # the LF of that CRLF, not a second empty line


def test_comments_alone_dispatch_nothing() -> None:
    """Comment lines (keep-alives) and blocks without data produce no event."""
    assert SSEDecoder().feed(b": ping\n\n: ping\n\nevent: x\nid: 1\n\n") == []


def test_unknown_fields_and_bad_retry_are_ignored() -> None:
    """Unknown fields are ignored, as are a non-numeric retry and an id containing NUL."""
    events = SSEDecoder().feed(b"foo: bar\nretry: soon\nid: a\x00b\ndata: x\n\n")
    assert events == [ServerSentEvent(data="x")]


def test_bom_is_only_skipped_at_the_start() -> None:
    """A byte-order mark is dropped at the start of the stream, kept anywhere else."""
    events = SSEDecoder().feed("\ufeffdata: a\n\ndata: \ufeffb\n\n".encode())
    assert events == [ServerSentEvent(data="a"), ServerSentEvent(data="\ufeffb")]


def test_invalid_utf8_becomes_replacement_characters() -> None:
    """Bytes that are not UTF-8 decode to U+FFFD instead of failing the stream."""
    assert SSEDecoder().feed(b"data: a\xffb\n\n") == [ServerSentEvent(data="a\ufffdb")]


def test_an_unterminated_event_is_not_dispatched() -> None:
    """An event is dispatched by the empty line only: a stream cut before it yields nothing for it."""
    decoder = SSEDecoder()
    assert decoder.feed(b"data: [DONE]\n") == []
    assert decoder.feed(b"data: more") == []


def test_done_is_plain_data() -> None:
    """``[DONE]`` is ordinary data to the decoder; the chat-completions layer gives it meaning."""
    assert SSEDecoder().feed(b"data: [DONE]\n\n") == [ServerSentEvent(data="[DONE]")]


def test_overlong_line_in_one_chunk() -> None:
    """A complete line longer than the limit raises SSEError."""
    decoder = SSEDecoder(max_line_length=16)
    assert decoder.feed(b"data: 0123456789\n\n") == [ServerSentEvent(data="0123456789")]  # 16 bytes: fine
    with pytest.raises(SSEError, match="longer than 16 bytes"):
        decoder.feed(b"data: 0123456789X\n\n")


def test_overlong_line_without_end_is_refused_early() -> None:
    """A line that never ends raises as soon as the buffer passes the limit, bounding memory."""
    decoder = SSEDecoder(max_line_length=100)
    for _ in range(10):
        assert decoder.feed(b"data: " + b"x" * 4) == []  # 100 bytes pending: at the limit, still fine
    with pytest.raises(SSEError, match="longer than 100 bytes"):
        decoder.feed(b"x")


def test_default_line_limit_is_one_mebibyte() -> None:
    """By default a line of 1 MiB passes and one byte more does not."""
    body = b"data: " + b"x" * ((1 << 20) - 6)
    assert SSEDecoder().feed(body + b"\n\n") == [ServerSentEvent(data="x" * ((1 << 20) - 6))]
    with pytest.raises(SSEError):
        SSEDecoder().feed(body + b"x\n\n")


def test_overlarge_event_from_many_lines() -> None:
    """Many short data lines cannot build an event past the event size limit."""
    decoder = SSEDecoder(max_event_size=64)
    with pytest.raises(SSEError, match="larger than 64"):
        decoder.feed(b"data: 0123456789\n" * 10)


def test_limits_must_be_positive() -> None:
    """A decoder with a zero limit is a programming error."""
    with pytest.raises(ValueError, match="positive"):
        SSEDecoder(max_line_length=0)
