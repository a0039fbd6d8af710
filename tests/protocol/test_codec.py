"""The job protocol codec, bytes in / frames out: round trips, fragmentation, malformed input, limits."""

from __future__ import annotations

import math
import random
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fabstir import ErrorCode, LocalProtocolError, RemoteProtocolError
from fabstir.protocol import (
    FRAME_TYPES,
    MAX_BATCH_TOKENS,
    MAX_FIELD_CHARS,
    MAX_FRAME_SIZE,
    Cancel,
    Confirm,
    End,
    Error,
    Frame,
    FrameDecoder,
    Hello,
    Offer,
    Receipt,
    Reject,
    Request,
    Resume,
    TokenBatch,
    encode,
)

UINT256_MAX = 2**256 - 1
UINT64_MAX = 2**64 - 1
MAX_TOKEN_CHARS = 256
MAX_BYTES = 128
MAX_VERSIONS = 16


def uvarint(value: int) -> bytes:
    """An unsigned LEB128 varint, written independently of the codec under test."""
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def framed(body: Any) -> bytes:
    """A length-prefixed frame around the msgpack form of ``body`` (any value, valid or not)."""
    payload = msgpack.packb(body, use_bin_type=True)
    return uvarint(len(payload)) + payload


def decode_all(data: bytes) -> list[Frame]:
    return FrameDecoder().receive_data(data)


# -- strategies ---------------------------------------------------------------------------------------

# Unsigned integers up to uint256, with the 64-bit boundary (where the wire form changes) well covered.
uints = st.one_of(
    st.integers(0, 2**16),
    st.integers(UINT64_MAX - 2, UINT64_MAX + 2),
    st.integers(0, UINT256_MAX),
    st.sampled_from([0, UINT64_MAX, UINT64_MAX + 1, UINT256_MAX]),
)
ids = st.text(st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00"), max_size=80)
short_text = st.text(max_size=200)
long_text = st.text(max_size=3000)
signatures = st.binary(max_size=MAX_BYTES)
finite_floats = st.floats(allow_nan=False, allow_infinity=False)
versions = st.lists(st.text(max_size=20), max_size=MAX_VERSIONS).map(tuple)
tokens = st.lists(st.text(max_size=MAX_TOKEN_CHARS), max_size=64).map(tuple)

FRAME_STRATEGIES: dict[type[Frame], st.SearchStrategy[Any]] = {
    Hello: st.builds(Hello, versions=versions, agent=short_text),
    Request: st.builds(
        Request,
        job_id=ids,
        model=short_text,
        prompt=long_text,
        max_tokens=uints,
        client_address=short_text,
        payment_token=short_text,
        temperature=finite_floats,
        seed=st.none() | uints,
        system=st.none() | long_text,
        max_price_per_token=st.none() | uints,
        continuation=long_text,
        first_index=uints,
    ),
    Offer: st.builds(
        Offer,
        job_id=ids,
        price_per_token=uints,
        payment_token=short_text,
        payment_address=short_text,
        chain_id=uints,
        estimated_time_ms=uints,
        credit_tokens=uints,
        hold_ms=uints,
    ),
    Reject: st.builds(Reject, job_id=ids, reason=short_text, message=short_text),
    Confirm: st.builds(Confirm, job_id=ids, session_id=ids),
    TokenBatch: st.builds(TokenBatch, seq=uints, tokens=tokens, model=st.just("") | short_text),
    Receipt: st.builds(Receipt, session_id=ids, job_id=ids, tokens=uints, amount=uints, signature=signatures),
    End: st.builds(
        End,
        job_id=ids,
        finish_reason=short_text,
        prompt_tokens=uints,
        completion_tokens=uints,
        tokens_sent=uints,
        transcript_hash=signatures,
        signature=signatures,
    ),
    Error: st.builds(Error, code=short_text, message=short_text, retryable=st.booleans()),
    Cancel: st.builds(Cancel, job_id=ids, reason=short_text),
    Resume: st.builds(Resume, job_id=ids, from_seq=uints),
}
any_frame: st.SearchStrategy[Frame] = st.one_of(*FRAME_STRATEGIES.values())

SESSION = "0x" + "ab" * 32
#: One frame of each kind (two requests: a small one and one spanning many reads), fixed.
SAMPLE_FRAMES: list[Frame] = [
    Hello(("1.0", "1.1"), "py-test/1"),
    Request("job-1", "llama", "Hello there", 64, "0x" + "11" * 20, "ETH", 0.7, 42, "be brief", 10**30),
    Request("job-2", "llama", "é" * 150_000, 64, "0x" + "11" * 20, "USDC", continuation="ab", first_index=2),
    Offer("job-1", 2**70, "ETH", "0x" + "22" * 20, 31337, 1500, 64, 5000),
    Reject("job-3", "busy", "every slot is taken"),
    Confirm("job-1", SESSION),
    TokenBatch(0, ("Hel", "lo", " wor", "ld", "")),
    TokenBatch(5, tuple(f"tok{i}" for i in range(500))),
    TokenBatch(505, ("!",), "llama-3.2-1b-instruct"),
    Receipt(SESSION, "job-1", 505, 505 * 2**70, bytes(range(65))),
    End("job-1", "stop", 12, 505, 505, bytes(32), bytes(64)),
    Error("payment", "the session does not pay for the offer", True),
    Cancel("job-1", "declined"),
    Resume("job-1", 17),
]


def test_every_frame_kind_has_a_strategy_and_a_sample() -> None:
    """The round-trip strategies and the fixed samples cover every frame kind the codec knows."""
    assert set(FRAME_STRATEGIES) == set(FRAME_TYPES)
    assert {type(f) for f in SAMPLE_FRAMES} == set(FRAME_TYPES)


# -- round trips ---------------------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(any_frame)
def test_every_frame_round_trips(frame: Frame) -> None:
    """encode then FrameDecoder gives back an equal frame, and the decoder holds nothing afterwards."""
    decoder = FrameDecoder()
    assert decoder.receive_data(encode(frame)) == [frame]
    assert decoder.buffered == 0


@pytest.mark.parametrize("kind", FRAME_TYPES, ids=lambda cls: cls.KIND)
@settings(max_examples=30, deadline=None)
@given(data=st.data())
def test_each_frame_kind_round_trips(kind: type[Frame], data: st.DataObject) -> None:
    """Every frame kind, drawn on its own (so none is starved by the others), survives encode/decode."""
    frame = data.draw(FRAME_STRATEGIES[kind])
    assert decode_all(encode(frame)) == [frame]


def test_the_wire_form_is_a_uvarint_length_then_a_msgpack_map() -> None:
    """A frame is uvarint(len(payload)) + msgpack map with "type" = KIND and the fields by name; absent
    optional fields are left out, strings are msgpack str and bytes msgpack bin."""
    data = encode(Request("j", "m", "p", 5, "0xc", "ETH"))
    payload = msgpack.packb(
        {
            "type": "request",
            "job_id": "j",
            "model": "m",
            "prompt": "p",
            "max_tokens": 5,
            "client_address": "0xc",
            "payment_token": "ETH",
            "temperature": 0.0,
            "continuation": "",
            "first_index": 0,
        },
        use_bin_type=True,
    )
    assert data == uvarint(len(payload)) + payload
    receipt = encode(Receipt("s", "j", 1, 2, b"\x01\x02"))
    assert msgpack.unpackb(receipt[1:], raw=False)["signature"] == b"\x01\x02"
    assert receipt[1:].find(b"\xc4\x02\x01\x02") > 0  # bin 8, length 2


@pytest.mark.parametrize(
    ("value", "wire"),
    [
        (0, 0),
        (UINT64_MAX, UINT64_MAX),
        (UINT64_MAX + 1, b"\x01" + bytes(8)),
        (UINT256_MAX, b"\xff" * 32),
    ],
)
def test_integers_above_64_bits_travel_as_minimal_big_endian_bin(value: int, wire: int | bytes) -> None:
    """msgpack integers stop at 2**64 - 1; larger amounts are a bin of 9..32 bytes, big-endian."""
    data = encode(Receipt("s", "j", 0, value, b""))
    assert msgpack.unpackb(data[uvarint_size(data) :], raw=False)["amount"] == wire
    assert decode_all(data) == [Receipt("s", "j", 0, value, b"")]


def uvarint_size(data: bytes) -> int:
    return next(i for i, byte in enumerate(data) if not byte & 0x80) + 1


def test_unknown_extra_fields_are_ignored() -> None:
    """Fields a later minor version may add are skipped, whatever their type (forward compatibility)."""
    body = {"type": "confirm", "job_id": "j", "session_id": "s", "priority": 3, "hints": [1, {"a": b"x"}]}
    assert decode_all(framed(body)) == [Confirm("j", "s")]


def test_nil_for_an_optional_field_means_absent() -> None:
    """An explicit nil in an optional field decodes as ``None``; a missing defaulted field gets its
    default."""
    body = {
        "type": "request",
        "job_id": "j",
        "model": "m",
        "prompt": "p",
        "max_tokens": 1,
        "client_address": "c",
        "payment_token": "t",
        "seed": None,
    }
    assert decode_all(framed(body)) == [Request("j", "m", "p", 1, "c", "t")]


def test_an_integer_is_accepted_where_a_float_is_expected() -> None:
    """msgpack writers may store a whole temperature as an integer; it decodes as that float."""
    body = {
        "type": "request",
        "job_id": "j",
        "model": "m",
        "prompt": "p",
        "max_tokens": 1,
        "client_address": "c",
        "payment_token": "t",
        "temperature": 1,
    }
    [frame] = decode_all(framed(body))
    assert isinstance(frame, Request)
    assert frame.temperature == 1.0
    assert type(frame.temperature) is float


# -- fragmentation -------------------------------------------------------------------------------------


def feed(decoder: FrameDecoder, data: bytes, size: int | None) -> list[Frame]:
    """Feeds ``data`` in pieces of ``size`` bytes (all at once for ``None``), collecting the frames."""
    if size is None:
        return decoder.receive_data(data)
    frames: list[Frame] = []
    for start in range(0, len(data), size):
        frames += decoder.receive_data(data[start : start + size])
    return frames


@pytest.mark.parametrize("size", [1, 7, 13, 64 * 1024, None], ids=lambda s: f"pieces-of-{s}")
def test_fragmentation_does_not_change_the_frames(size: int | None) -> None:
    """The concatenated bytes of many frames decode to the same frames whether fed one byte at a time, in
    odd-sized pieces, in transport-sized reads or all at once."""
    stream = b"".join(encode(frame) for frame in SAMPLE_FRAMES)
    decoder = FrameDecoder()
    assert feed(decoder, stream, size) == SAMPLE_FRAMES
    assert decoder.buffered == 0


@settings(max_examples=100, deadline=None)
@given(frames=st.lists(any_frame, min_size=1, max_size=8), data=st.data())
def test_random_split_points_do_not_change_the_frames(frames: list[Frame], data: st.DataObject) -> None:
    """Splitting the byte stream at arbitrary points yields the same frames in the same order."""
    stream = b"".join(encode(frame) for frame in frames)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=12)))
    decoder = FrameDecoder()
    received: list[Frame] = []
    for start, stop in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        received += decoder.receive_data(stream[start:stop])
    assert received == frames
    assert decoder.buffered == 0


def test_a_truncated_frame_yields_nothing_until_it_is_complete() -> None:
    """A partial frame produces no frame; ``buffered`` shows the bytes held; the last byte completes it."""
    data = encode(Cancel("job-1", "declined"))
    decoder = FrameDecoder()
    assert decoder.receive_data(data[:-1]) == []
    assert decoder.buffered == len(data) - 1
    assert decoder.receive_data(data[-1:]) == [Cancel("job-1", "declined")]
    assert decoder.buffered == 0


def test_empty_data_is_harmless() -> None:
    """Feeding no bytes yields no frame and changes nothing."""
    decoder = FrameDecoder()
    assert decoder.receive_data(b"") == []
    assert decoder.buffered == 0


def test_many_large_frames_in_one_call_all_decode() -> None:
    """A single receive_data far larger than the frame limit (several near-limit frames) decodes them all."""
    frames = [Request(f"j{i}", "m", "x" * (MAX_FRAME_SIZE - 200), 1, "c", "t") for i in range(4)]
    decoder = FrameDecoder()
    assert decoder.receive_data(b"".join(encode(f) for f in frames)) == frames
    assert decoder.buffered == 0


# -- malformed input ------------------------------------------------------------------------------------

REQUEST_BODY: dict[str, Any] = {
    "type": "request",
    "job_id": "j",
    "model": "m",
    "prompt": "p",
    "max_tokens": 1,
    "client_address": "c",
    "payment_token": "t",
}


def with_fields(base: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {**base, **fields}


MALFORMED_PAYLOADS: dict[str, bytes] = {
    "not msgpack": b"\xc1",
    "truncated msgpack": msgpack.packb({"type": "hello", "versions": ["1.0"]})[:-2],
    "trailing bytes after the map": msgpack.packb({"type": "cancel", "job_id": "j"}) + b"\x00",
    "an array, not a map": msgpack.packb(["hello", ["1.0"]]),
    "a string, not a map": msgpack.packb("hello"),
    "no type": msgpack.packb({"versions": ["1.0"]}),
    "unknown type": msgpack.packb({"type": "teleport", "job_id": "j"}),
    "type not a string": msgpack.packb({"type": 1}),
    "type as bin": msgpack.packb({"type": b"hello", "versions": ["1.0"]}, use_bin_type=True),
    "integer map key": msgpack.packb({"type": "cancel", "job_id": "j", 1: 2}),
    "missing required field": msgpack.packb({"type": "confirm", "job_id": "j"}),
    "nil in a required field": msgpack.packb({"type": "confirm", "job_id": "j", "session_id": None}),
    "nil in a defaulted field": msgpack.packb({"type": "hello", "versions": ["1.0"], "agent": None}),
    "bool where int": msgpack.packb({"type": "resume", "job_id": "j", "from_seq": True}),
    "int where bool": msgpack.packb({"type": "error", "code": "c", "message": "m", "retryable": 1}),
    "int where str": msgpack.packb({"type": "confirm", "job_id": 5, "session_id": "s"}),
    "bin where str": msgpack.packb({"type": "confirm", "job_id": b"j", "session_id": "s"}, use_bin_type=True),
    "str where bin": msgpack.packb(
        {"type": "receipt", "session_id": "s", "job_id": "j", "tokens": 1, "amount": 1, "signature": "ab"}
    ),
    "str where list": msgpack.packb({"type": "hello", "versions": "1.0"}),
    "int inside a str list": msgpack.packb({"type": "tokens", "seq": 0, "tokens": ["a", 1]}),
    "float where int": msgpack.packb({"type": "resume", "job_id": "j", "from_seq": 1.0}),
    "str where float": msgpack.packb(with_fields(REQUEST_BODY, temperature="hot")),
    "negative int": msgpack.packb({"type": "tokens", "seq": -1, "tokens": []}),
    "float NaN": msgpack.packb(with_fields(REQUEST_BODY, temperature=math.nan)),
    "float infinity": msgpack.packb(with_fields(REQUEST_BODY, temperature=-math.inf)),
    "ext type in a known field": msgpack.packb(
        {"type": "cancel", "job_id": msgpack.ExtType(1, b"j")}, use_bin_type=True
    ),
    "ext type in an unknown field": msgpack.packb(
        {"type": "cancel", "job_id": "j", "x": [msgpack.ExtType(5, b"\x00" * 4)]}, use_bin_type=True
    ),
    # type -1 (timestamp) is decoded by msgpack itself rather than by an ext hook
    "timestamp in a known field": msgpack.packb(
        {"type": "cancel", "job_id": "j", "reason": msgpack.Timestamp(0)}, use_bin_type=True
    ),
    "timestamp in an unknown field": msgpack.packb(
        {"type": "cancel", "job_id": "j", "x": {"when": [msgpack.Timestamp(0)]}}, use_bin_type=True
    ),
    "over-long id": msgpack.packb(
        {"type": "confirm", "job_id": "x" * (MAX_FIELD_CHARS + 1), "session_id": "s"}
    ),
    "over-long message": msgpack.packb(
        {"type": "error", "code": "c", "message": "m" * (MAX_FIELD_CHARS + 1)}
    ),
    "over-long token": msgpack.packb({"type": "tokens", "seq": 0, "tokens": ["x" * (MAX_TOKEN_CHARS + 1)]}),
    "too many tokens in a batch": msgpack.packb(
        {"type": "tokens", "seq": 0, "tokens": ["a"] * (MAX_BATCH_TOKENS + 1)}
    ),
    "too many versions": msgpack.packb({"type": "hello", "versions": ["1.0"] * (MAX_VERSIONS + 1)}),
    "over-long signature": msgpack.packb(
        {
            "type": "receipt",
            "session_id": "s",
            "job_id": "j",
            "tokens": 1,
            "amount": 1,
            "signature": bytes(129),
        },
        use_bin_type=True,
    ),
    "NUL in a job id": msgpack.packb({"type": "cancel", "job_id": "a\x00b"}),
    "big integer with a leading zero byte": msgpack.packb(
        {"type": "resume", "job_id": "j", "from_seq": b"\x00" + b"\x01" * 9}, use_bin_type=True
    ),
    "big integer that fits 64 bits": msgpack.packb(
        {"type": "resume", "job_id": "j", "from_seq": b"\x01" * 8}, use_bin_type=True
    ),
    "big integer above 256 bits": msgpack.packb(
        {"type": "resume", "job_id": "j", "from_seq": b"\x01" * 33}, use_bin_type=True
    ),
    "deeply nested unknown field": b"\x83\xa4type\xa6cancel\xa6job_id\xa1j\xa1x"
    + b"\x91" * 100_000
    + b"\xc0",
}


@pytest.mark.parametrize("payload", MALFORMED_PAYLOADS.values(), ids=MALFORMED_PAYLOADS.keys())
def test_malformed_payloads_are_rejected(payload: bytes) -> None:
    """A well-framed payload that is not a valid frame raises RemoteProtocolError(malformed_frame)."""
    with pytest.raises(RemoteProtocolError) as info:
        decode_all(uvarint(len(payload)) + payload)
    assert info.value.code is ErrorCode.MALFORMED_FRAME


def test_the_malformed_payloads_are_otherwise_well_formed() -> None:
    """Control for the table above: each "field" case differs from a valid frame only in that field, so
    the decoder rejects the field and not something else."""
    valid = [
        {"type": "confirm", "job_id": "j", "session_id": "s"},
        {"type": "resume", "job_id": "j", "from_seq": 1},
        {"type": "tokens", "seq": 0, "tokens": ["x" * MAX_TOKEN_CHARS] * 3},
        {"type": "tokens", "seq": 0, "tokens": ["a"] * MAX_BATCH_TOKENS},
        {"type": "hello", "versions": ["1.0"] * MAX_VERSIONS},
        {"type": "error", "code": "c", "message": "m" * MAX_FIELD_CHARS},
        {"type": "resume", "job_id": "j", "from_seq": b"\x01" * 9},
        {"type": "resume", "job_id": "j", "from_seq": b"\xff" * 32},
        with_fields(REQUEST_BODY, temperature=1.5),
    ]
    for body in valid:
        assert len(decode_all(framed(body))) == 1


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (b"\x00", ErrorCode.MALFORMED_FRAME),  # zero-length frame
        (b"\x81\x00" + b"\xc0", ErrorCode.MALFORMED_FRAME),  # non-minimal varint for 1
        (b"\x80\x80\x00", ErrorCode.MALFORMED_FRAME),  # non-minimal varint for 0
        (uvarint(MAX_FRAME_SIZE + 1), ErrorCode.FRAME_TOO_LARGE),
        (uvarint(2**21 - 1), ErrorCode.FRAME_TOO_LARGE),  # largest 3-byte varint
        (b"\x80\x80\x80\x01", ErrorCode.FRAME_TOO_LARGE),  # 4-byte varint
        (b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01", ErrorCode.FRAME_TOO_LARGE),  # 10-byte varint
    ],
    ids=["zero-length", "non-minimal-1", "non-minimal-0", "max+1", "3-byte-max", "4-byte", "10-byte"],
)
def test_bad_length_prefixes_are_rejected(data: bytes, code: ErrorCode) -> None:
    """Bad framing raises RemoteProtocolError with the matching code."""
    with pytest.raises(RemoteProtocolError) as info:
        decode_all(data)
    assert info.value.code is code


def test_an_oversized_length_raises_on_the_header_without_buffering_the_payload() -> None:
    """A prefix announcing more than MAX_FRAME_SIZE raises as soon as the prefix is complete — the payload
    is never awaited — and the broken decoder keeps nothing, however much more arrives."""
    header = uvarint(MAX_FRAME_SIZE + 1)
    decoder = FrameDecoder()
    assert decoder.receive_data(header[:-1]) == []  # still possibly a valid length
    with pytest.raises(RemoteProtocolError) as info:
        decoder.receive_data(header[-1:])
    assert info.value.code is ErrorCode.FRAME_TOO_LARGE
    for _ in range(3):
        with pytest.raises(RemoteProtocolError):
            decoder.receive_data(b"\x00" * 64 * 1024)
        assert decoder.buffered == 0


def test_a_continuation_bit_that_implies_too_large_raises_at_once() -> None:
    """Three varint bytes with continuation bits can only announce >= 2**21 bytes: no 4th byte is awaited.
    With a smaller limit the first continuation bit already proves the frame too large."""
    with pytest.raises(RemoteProtocolError) as info:
        FrameDecoder().receive_data(b"\x80\x80\x80")
    assert info.value.code is ErrorCode.FRAME_TOO_LARGE
    small = FrameDecoder(max_frame_size=100)
    with pytest.raises(RemoteProtocolError) as info:
        small.receive_data(b"\x80")
    assert info.value.code is ErrorCode.FRAME_TOO_LARGE


def test_a_smaller_limit_is_enforced() -> None:
    """A decoder built with max_frame_size accepts frames up to it and rejects larger ones."""
    fits = encode(Cancel("j" * 70, ""))
    assert len(fits) - 1 == 100
    assert FrameDecoder(max_frame_size=100).receive_data(fits) == [Cancel("j" * 70, "")]
    too_big = encode(Cancel("j" * 71, ""))
    with pytest.raises(RemoteProtocolError) as info:
        FrameDecoder(max_frame_size=100).receive_data(too_big)
    assert info.value.code is ErrorCode.FRAME_TOO_LARGE


@pytest.mark.parametrize("limit", [0, -1, MAX_FRAME_SIZE + 1])
def test_the_limit_itself_is_bounded(limit: int) -> None:
    """A decoder cannot be configured beyond the protocol limit (nor with a non-positive one)."""
    with pytest.raises(ValueError, match="max_frame_size"):
        FrameDecoder(max_frame_size=limit)


def test_after_an_error_the_decoder_stays_broken() -> None:
    """Once framing is lost nothing more is decoded: valid frames afterwards raise the same error."""
    decoder = FrameDecoder()
    with pytest.raises(RemoteProtocolError) as first:
        decoder.receive_data(b"\x01\xc1")
    for _ in range(2):
        with pytest.raises(RemoteProtocolError) as again:
            decoder.receive_data(encode(Cancel("j")))
        assert again.value is first.value
    assert decoder.buffered == 0


def feed_until_error(decoder: FrameDecoder, data: bytes, chunk: int, limit: int) -> int:
    """Feeds ``data`` in reads of ``chunk`` bytes until the decoder raises RemoteProtocolError; checks
    after each read that it holds at most ``limit`` bytes. Returns how many bytes it had been fed."""
    fed = 0
    for start in range(0, len(data), chunk):
        try:
            decoder.receive_data(data[start : start + chunk])
        except RemoteProtocolError:
            return fed + chunk
        fed += chunk
        assert decoder.buffered <= limit
    raise AssertionError("the decoder accepted all the data")


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_garbage_is_rejected_early_with_bounded_memory(seed: int) -> None:
    """10 MiB of random bytes fed in 64 KiB reads: the decoder raises long before the end, and between
    reads it never holds more than MAX_FRAME_SIZE + 4 bytes."""
    garbage = random.Random(seed).randbytes(10 * 1024 * 1024)
    decoder = FrameDecoder()
    fed = feed_until_error(decoder, garbage, 64 * 1024, MAX_FRAME_SIZE + 4)
    assert fed <= MAX_FRAME_SIZE + 64 * 1024
    assert decoder.buffered == 0


def test_a_maximal_junk_frame_is_held_at_most_once() -> None:
    """The worst case for memory, a prefix announcing exactly MAX_FRAME_SIZE followed by junk, is held
    until complete (at most MAX_FRAME_SIZE + 3 bytes), then rejected and dropped."""
    data = uvarint(MAX_FRAME_SIZE) + b"\xc1" * (2 * MAX_FRAME_SIZE)
    decoder = FrameDecoder()
    fed = feed_until_error(decoder, data, 64 * 1024, MAX_FRAME_SIZE + 3)
    assert fed == MAX_FRAME_SIZE + 64 * 1024  # the read completing the frame
    assert decoder.buffered == 0


# -- encode-side limits ----------------------------------------------------------------------------------

OUT_OF_LIMITS: dict[str, Any] = {
    "300-char token": TokenBatch(0, ("x" * 300,)),
    "2 MiB prompt": Request("j", "m", "x" * (2 * 1024 * 1024), 1, "c", "t"),
    "too many tokens": TokenBatch(0, ("a",) * (MAX_BATCH_TOKENS + 1)),
    "over-long id": Confirm("x" * (MAX_FIELD_CHARS + 1), "s"),
    "too many versions": Hello(("1.0",) * (MAX_VERSIONS + 1)),
    "no versions tuple": Hello(None),  # type: ignore[arg-type]
    "129-byte signature": Receipt("s", "j", 1, 1, bytes(129)),
    "negative int": Resume("j", -1),
    "int above uint256": Receipt("s", "j", 1, 2**256, b""),
    "bool where int": Resume("j", True),
    "NaN temperature": Request("j", "m", "p", 1, "c", "t", temperature=math.nan),
    "str where bytes": Receipt("s", "j", 1, 1, "sig"),  # type: ignore[arg-type]
    "missing required value": Confirm("j", None),  # type: ignore[arg-type]
    "NUL in a job id": Cancel("a\x00b"),
    "lone surrogate": TokenBatch(0, ("\ud800",)),
}


@pytest.mark.parametrize("frame", OUT_OF_LIMITS.values(), ids=OUT_OF_LIMITS.keys())
def test_encode_refuses_what_the_peer_would_reject(frame: Frame) -> None:
    """encode raises LocalProtocolError for values outside the limits, instead of sending them."""
    with pytest.raises(LocalProtocolError):
        encode(frame)


def test_a_prompt_within_the_char_limit_but_over_the_byte_limit_is_too_large() -> None:
    """The frame limit is in bytes: a prompt of MAX_FRAME_SIZE characters does not fit, with its own code."""
    with pytest.raises(LocalProtocolError) as info:
        encode(Request("j", "m", "x" * MAX_FRAME_SIZE, 1, "c", "t"))
    assert info.value.code is ErrorCode.FRAME_TOO_LARGE


def test_encode_refuses_objects_that_are_not_frames() -> None:
    """Only the frame classes can be encoded."""
    with pytest.raises(LocalProtocolError):
        encode("hello")  # type: ignore[arg-type]


def test_the_largest_allowed_values_encode() -> None:
    """Values exactly at the limits are accepted (the limits are inclusive)."""
    frames: list[Frame] = [
        TokenBatch(UINT256_MAX, ("x" * MAX_TOKEN_CHARS,) * 8),
        TokenBatch(0, ("a",) * MAX_BATCH_TOKENS),
        Hello(("9.9",) * MAX_VERSIONS, "a" * MAX_FIELD_CHARS),
        Receipt("s", "j", UINT256_MAX, UINT256_MAX, bytes(MAX_BYTES)),
        Request("j", "m", "x" * (MAX_FRAME_SIZE - 200), 1, "c", "t"),
    ]
    for frame in frames:
        assert decode_all(encode(frame)) == [frame]


# -- TokenBatch.model (added after 1.0) ----------------------------------------------------------------


def test_token_batch_model_round_trips_and_is_on_the_wire() -> None:
    """A batch naming its model carries a ``model`` str field and decodes back with it."""
    frame = TokenBatch(0, ("Hi",), "sim-model")
    data = encode(frame)
    assert msgpack.unpackb(data[1:]) == {"type": "tokens", "seq": 0, "tokens": ["Hi"], "model": "sim-model"}
    assert decode_all(data) == [frame]


def test_token_batch_without_model_is_the_1_0_frame() -> None:
    """An empty model stays off the wire (the bytes of a 1.0 host), and a 1.0 frame without the field
    decodes with ``model == ""``."""
    data = encode(TokenBatch(3, ("a", "b")))
    assert msgpack.unpackb(data[1:]) == {"type": "tokens", "seq": 3, "tokens": ["a", "b"]}
    old = framed({"type": "tokens", "seq": 3, "tokens": ["a", "b"]})
    assert old == data
    assert decode_all(old) == [TokenBatch(3, ("a", "b"), "")]


@pytest.mark.parametrize(
    ("model", "problem"),
    [(7, "must be a string"), (None, "must be a string"), ("m" * (MAX_FIELD_CHARS + 1), "longer than")],
)
def test_token_batch_model_is_checked_like_other_strings(model: Any, problem: str) -> None:
    """``model`` must be a str of at most MAX_FIELD_CHARS (nil is not a string: absent means absent, as for
    the other non-optional fields with a default); anything else is a malformed frame."""
    data = framed({"type": "tokens", "seq": 0, "tokens": ["a"], "model": model})
    with pytest.raises(RemoteProtocolError, match=problem) as info:
        decode_all(data)
    assert info.value.code is ErrorCode.MALFORMED_FRAME


def test_encode_refuses_an_oversized_model() -> None:
    """The sender checks the same limit before a peer would disconnect it."""
    with pytest.raises(LocalProtocolError):
        encode(TokenBatch(0, ("a",), "m" * (MAX_FIELD_CHARS + 1)))


# -- the examples in docs/PROTOCOL.md --------------------------------------------------------------------

#: Byte-exact examples printed in docs/PROTOCOL.md; if the encoding changes, the document must too.
SPEC_EXAMPLES: dict[str, tuple[Frame, str]] = {
    "hello": (
        Hello(("1.0",), "fabstir-py/0.1.0"),
        "3183a474797065a568656c6c6fa876657273696f6e7391a3312e30a56167656e74b0666162737469722d70792f302e312e30",
    ),
    "tokens": (TokenBatch(0, ("Hi",)), "1d83a474797065a6746f6b656e73a373657100a6746f6b656e7391a24869"),
    "big amount": (
        Receipt("0x" + "5e" * 32, "job-7f3a", 7, 2**70, b""),
        "930186a474797065a772656365697074aa73657373696f6e5f6964d942307835653565356535653565356535653565356535"
        "653565356535653565356535653565356535653565356535653565356535653565356535653565356535653565a66a6f625f"
        "6964a86a6f622d37663361a6746f6b656e7307a6616d6f756e74c409400000000000000000a97369676e6174757265c400",
    ),
}


@pytest.mark.parametrize(("frame", "wire"), SPEC_EXAMPLES.values(), ids=SPEC_EXAMPLES.keys())
def test_the_specification_examples_are_exact(frame: Frame, wire: str) -> None:
    """The frames shown in docs/PROTOCOL.md encode to exactly the bytes shown there, and decode back."""
    assert encode(frame).hex() == wire
    assert decode_all(bytes.fromhex(wire)) == [frame]
