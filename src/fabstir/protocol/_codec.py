"""Length-prefixed msgpack framing, sans-IO: ``encode(frame) -> bytes``; ``FrameDecoder.receive_data(bytes)
-> list[Frame]``.

Wire format of one frame::

    uvarint(len(payload))  payload = msgpack map {"type": <KIND>, <field>: <value>, ...}

Integers are unsigned and up to 256 bits (amounts are uint256 on chain). msgpack integers stop at 64 bits,
so a value above ``2**64 - 1`` travels as a ``bin`` of 9 to 32 bytes, big-endian, without leading zero bytes;
smaller values are always plain msgpack integers (one encoding per value).

Decoding is strict: unknown ``type`` values, missing fields, wrong value types (a bool is not an int),
extension types and out-of-range numbers are rejected with :class:`RemoteProtocolError`; unknown *fields*
are ignored so that later minor versions can add optional fields. Every limit below is enforced before
memory is committed, so a hostile peer can make us hold at most ``MAX_FRAME_SIZE + 3`` bytes per stream.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable
from typing import Any

import msgpack

from .._exceptions import ErrorCode, LocalProtocolError, RemoteProtocolError
from ._frames import FRAME_TYPES, Frame

__all__ = [
    "MAX_BATCH_TOKENS",
    "MAX_FIELD_CHARS",
    "MAX_FRAME_SIZE",
    "MAX_SIGNATURE_BYTES",
    "MAX_TEXT_CHARS",
    "FrameDecoder",
    "encode",
]

#: Largest payload of one frame. A request carries the whole prompt: 1 MiB holds ~250k tokens of text,
#: beyond the context window of any model a host serves today, while bounding per-stream memory.
MAX_FRAME_SIZE = 1 << 20
#: A uvarint for MAX_FRAME_SIZE takes 3 bytes; a continuation bit on the 3rd can only mean "too large".
_MAX_VARINT_BYTES = 3
#: Prompts, system prompts and continuations (the only big strings) are capped by the frame size; every
#: other string field (ids, model names, addresses, messages) is short: 4 KiB is generous for all of them.
MAX_FIELD_CHARS = 4096
#: Text fields allowed to use the whole frame.
_TEXT_FIELDS = frozenset({"prompt", "system", "continuation"})
MAX_TEXT_CHARS = MAX_FRAME_SIZE
#: Hosts coalesce tokens every ~25 ms; even at 100k tokens/s a batch holds ~2.5k. 8192 leaves headroom.
MAX_BATCH_TOKENS = 8192
#: One token is a few bytes of text; 256 chars covers any tokenizer's longest piece.
_MAX_TOKEN_CHARS = 256
#: A secp256k1 signature is 65 bytes and an Ed25519 one 64; hashes are 32. 128 bytes covers both.
MAX_SIGNATURE_BYTES = 128
#: Version lists are tiny; a peer offering more than 16 versions is misbehaving.
_MAX_LIST_ITEMS = 16
#: Amounts are uint256 on chain.
_MAX_UINT = (1 << 256) - 1
#: Largest integer msgpack represents natively; larger ones travel as big-endian ``bin`` (module docstring).
_MAX_MSGPACK_UINT = (1 << 64) - 1
#: Fields naming a job or a session. NUL is refused in them so that the NUL-separated End signing payload
#: (:func:`~fabstir.protocol.end_signing_payload`) has exactly one reading.
_ID_FIELDS = frozenset({"job_id", "session_id"})
#: Optional fields added after 1.0 stay off the wire at their default, so a frame that does not use them
#: is byte-for-byte what a 1.0 peer sends (and costs nothing on every token batch).
_OMITTED_AT_DEFAULT = frozenset({("tokens", "model")})

_BY_KIND: dict[str, type[Frame]] = {cls.KIND: cls for cls in FRAME_TYPES}
_FIELD_NAMES: dict[type[Frame], frozenset[str]] = {
    cls: frozenset({"type", *(f.name for f in dataclasses.fields(cls))}) for cls in FRAME_TYPES
}


def _big_int(name: str, value: bytes) -> int:
    """An integer above 64 bits from its wire form: 9..32 bytes, big-endian, no leading zero byte."""
    if not 9 <= len(value) <= 32 or value[0] == 0:
        raise ValueError(f"field {name!r} is not a canonical big integer")
    return int.from_bytes(value, "big")


def _check_int(name: str, value: Any) -> int:
    if type(value) is not int:
        raise TypeError(f"field {name!r} must be an integer")
    if not 0 <= value <= _MAX_UINT:
        raise ValueError(f"field {name!r} out of range")
    return value


def _check_float(name: str, value: Any) -> float:
    if type(value) not in (int, float):
        raise TypeError(f"field {name!r} must be a number")
    result = float(value)
    if result != result or result in (float("inf"), float("-inf")):
        raise ValueError(f"field {name!r} must be finite")
    return result


def _check_str(name: str, value: Any) -> str:
    if type(value) is not str:
        raise TypeError(f"field {name!r} must be a string")
    limit = MAX_TEXT_CHARS if name in _TEXT_FIELDS else MAX_FIELD_CHARS
    if len(value) > limit:
        raise ValueError(f"field {name!r} longer than {limit} characters")
    if name in _ID_FIELDS and "\x00" in value:
        raise ValueError(f"field {name!r} contains NUL")
    return value


def _check_bool(name: str, value: Any) -> bool:
    if type(value) is not bool:
        raise TypeError(f"field {name!r} must be a boolean")
    return value


def _check_bytes(name: str, value: Any) -> bytes:
    if type(value) is not bytes:
        raise TypeError(f"field {name!r} must be bytes")
    if len(value) > MAX_SIGNATURE_BYTES:
        raise ValueError(f"field {name!r} longer than {MAX_SIGNATURE_BYTES} bytes")
    return value


def _check_str_tuple(name: str, value: Any) -> tuple[str, ...]:
    if type(value) is not list:
        raise TypeError(f"field {name!r} must be a list")
    if name == "tokens":
        if len(value) > MAX_BATCH_TOKENS:
            raise ValueError(f"more than {MAX_BATCH_TOKENS} tokens in one batch")
        limit = _MAX_TOKEN_CHARS
    else:
        if len(value) > _MAX_LIST_ITEMS:
            raise ValueError(f"field {name!r} has more than {_MAX_LIST_ITEMS} items")
        limit = MAX_FIELD_CHARS
    for item in value:
        if type(item) is not str:
            raise TypeError(f"field {name!r} must hold strings")
        if len(item) > limit:
            raise ValueError(f"an item of {name!r} is longer than {limit} characters")
    return tuple(value)


_Checker = Callable[[str, Any], Any]
_BASE_CHECKERS: dict[Any, _Checker] = {
    int: _check_int,
    float: _check_float,
    str: _check_str,
    bool: _check_bool,
    bytes: _check_bytes,
    tuple[str, ...]: _check_str_tuple,
}


def _checker_for(annotation: Any) -> tuple[_Checker, bool]:
    """Returns (checker, optional) for a field annotation."""
    if isinstance(annotation, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) != 1:
            raise AssertionError(f"unsupported annotation {annotation!r}")
        return _BASE_CHECKERS[args[0]], True
    return _BASE_CHECKERS[annotation], False


# Per frame kind: (field name, checker, optional, has default). Built once from the dataclasses, so the
# schema can never drift from the frame definitions.
_SCHEMAS: dict[type[Frame], tuple[tuple[str, _Checker, bool, bool], ...]] = {}
for _cls in FRAME_TYPES:
    _hints = typing.get_type_hints(_cls)
    _SCHEMAS[_cls] = tuple(
        (
            f.name,
            *_checker_for(_hints[f.name]),
            f.default is not dataclasses.MISSING,
        )
        for f in dataclasses.fields(_cls)
    )


_DEFAULTS: dict[type[Frame], dict[str, Any]] = {
    cls: {f.name: f.default for f in dataclasses.fields(cls) if f.default is not dataclasses.MISSING}
    for cls in FRAME_TYPES
}


def _ext_hook(code: int, data: bytes) -> Any:
    raise ValueError("msgpack extension types are not allowed")


def _holds_timestamp(value: Any) -> bool:
    """Whether a decoded value holds a msgpack timestamp: extension type -1, which msgpack decodes itself
    instead of passing it to the ext hook. Known fields are type-checked; this covers unknown ones."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, msgpack.Timestamp):
            return True
        if isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, dict):
            stack.extend(item.values())
    return False


def _wire_value(value: Any) -> Any:
    """The msgpack form of a checked field value."""
    if isinstance(value, tuple):
        return list(value)
    if type(value) is int and value > _MAX_MSGPACK_UINT:
        return value.to_bytes((value.bit_length() + 7) // 8, "big")
    return value


def encode(frame: Frame) -> bytes:
    """Serialises one frame with its length prefix. Raises :class:`LocalProtocolError` if it exceeds the
    limits the peer will enforce (better to fail here than to be disconnected)."""
    cls = type(frame)
    if cls not in _SCHEMAS:
        raise LocalProtocolError(f"not a frame: {frame!r}")
    body: dict[str, Any] = {"type": cls.KIND}
    for name, checker, optional, _ in _SCHEMAS[cls]:
        value = getattr(frame, name)
        if value is None and optional:
            continue
        if (cls.KIND, name) in _OMITTED_AT_DEFAULT and value == _DEFAULTS[cls][name]:
            continue
        try:
            checker(name, list(value) if isinstance(value, tuple) else value)
        except (TypeError, ValueError) as exc:
            raise LocalProtocolError(f"cannot send {cls.KIND} frame: {exc}") from exc
        body[name] = _wire_value(value)
    try:
        payload = msgpack.packb(body, use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as exc:  # e.g. a lone surrogate has no UTF-8 form
        raise LocalProtocolError(f"cannot send {cls.KIND} frame: {exc}") from exc
    if len(payload) > MAX_FRAME_SIZE:
        raise LocalProtocolError(
            f"{cls.KIND} frame of {len(payload)} bytes exceeds the {MAX_FRAME_SIZE}-byte limit",
            code=ErrorCode.FRAME_TOO_LARGE,
        )
    return _encode_uvarint(len(payload)) + payload


def _encode_uvarint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def decode_payload(payload: bytes) -> Frame:
    """Decodes one frame payload (without its length prefix)."""
    try:
        body = msgpack.unpackb(
            payload,
            raw=False,
            use_list=True,
            strict_map_key=True,
            ext_hook=_ext_hook,
            max_str_len=MAX_FRAME_SIZE,
            max_bin_len=MAX_SIGNATURE_BYTES,
            max_array_len=MAX_BATCH_TOKENS,
            max_map_len=64,
        )
    except (
        Exception
    ) as exc:  # msgpack raises a zoo: ExtraData, FormatError, ValueError, UnicodeDecodeError...
        raise RemoteProtocolError(f"malformed frame: {exc}", code=ErrorCode.MALFORMED_FRAME) from exc
    if type(body) is not dict:
        raise RemoteProtocolError("malformed frame: not a map", code=ErrorCode.MALFORMED_FRAME)
    kind = body.get("type")
    cls = _BY_KIND.get(kind) if type(kind) is str else None
    if cls is None:
        raise RemoteProtocolError(f"unknown frame type {kind!r}", code=ErrorCode.MALFORMED_FRAME)
    if any(_holds_timestamp(v) for k, v in body.items() if k not in _FIELD_NAMES[cls]):
        raise RemoteProtocolError(
            "malformed frame: msgpack extension types are not allowed", code=ErrorCode.MALFORMED_FRAME
        )
    values: dict[str, Any] = {}
    for name, checker, optional, has_default in _SCHEMAS[cls]:
        if name not in body or (body[name] is None and optional):
            if has_default or optional:
                continue
            raise RemoteProtocolError(f"{kind} frame lacks field {name!r}", code=ErrorCode.MALFORMED_FRAME)
        try:
            raw = body[name]
            if checker is _check_int and type(raw) is bytes:
                raw = _big_int(name, raw)
            values[name] = checker(name, raw)
        except (TypeError, ValueError) as exc:
            raise RemoteProtocolError(f"{kind} frame: {exc}", code=ErrorCode.MALFORMED_FRAME) from exc
    return cls(**values)


class FrameDecoder:
    """Incremental decoder: feed it bytes as they arrive, get complete frames back.

    After it raised :class:`RemoteProtocolError` the stream is unusable (framing is lost): the decoder
    stays broken and raises again on any further data.
    """

    def __init__(self, max_frame_size: int = MAX_FRAME_SIZE) -> None:
        if not 0 < max_frame_size <= MAX_FRAME_SIZE:
            raise ValueError(f"max_frame_size must be in 1..{MAX_FRAME_SIZE}")
        self._max = max_frame_size
        self._buffer = bytearray()
        self._broken: RemoteProtocolError | None = None

    @property
    def buffered(self) -> int:
        """Bytes held that do not yet form a whole frame."""
        return len(self._buffer)

    def receive_data(self, data: bytes) -> list[Frame]:
        """The frames completed by ``data`` (possibly none), in order. Raises :class:`RemoteProtocolError`
        for bytes that cannot be a valid frame; the decoder is then broken for good."""
        if self._broken is not None:
            raise self._broken
        frames: list[Frame] = []
        view = memoryview(data)
        try:
            while True:
                # Take no more than one whole frame can need, so that a large ``data`` is never copied
                # into the buffer at once: the buffer stays within max_frame_size + header bytes.
                room = self._max + _MAX_VARINT_BYTES - len(self._buffer)
                self._buffer += view[:room]
                view = view[room:]
                frames.extend(self._drain())
                if not view:
                    return frames
        except RemoteProtocolError as exc:
            self._broken = exc
            self._buffer.clear()
            raise

    def _drain(self) -> list[Frame]:
        """Decodes the whole frames at the start of the buffer. A full buffer always holds one."""
        frames: list[Frame] = []
        while True:
            header = self._parse_header()
            if header is None:
                return frames
            size, offset = header
            if len(self._buffer) < offset + size:
                return frames
            payload = bytes(self._buffer[offset : offset + size])
            del self._buffer[: offset + size]
            frames.append(decode_payload(payload))

    def _parse_header(self) -> tuple[int, int] | None:
        """(payload size, header size) once the length prefix is complete, ``None`` until then. Raises as
        soon as the prefix can only announce a frame above the limit: never waits for its payload."""
        value = 0
        for i in range(min(len(self._buffer), _MAX_VARINT_BYTES)):
            byte = self._buffer[i]
            value |= (byte & 0x7F) << (7 * i)
            if byte & 0x80:
                # another byte follows, so the length is at least 2**(7*(i+1))
                if 1 << (7 * (i + 1)) > self._max:
                    raise RemoteProtocolError(
                        f"frame length prefix announces more than {self._max} bytes",
                        code=ErrorCode.FRAME_TOO_LARGE,
                    )
                continue
            if i > 0 and byte == 0:
                raise RemoteProtocolError("non-minimal frame length", code=ErrorCode.MALFORMED_FRAME)
            if value > self._max:
                raise RemoteProtocolError(
                    f"frame of {value} bytes exceeds the {self._max}-byte limit",
                    code=ErrorCode.FRAME_TOO_LARGE,
                )
            if value == 0:
                raise RemoteProtocolError("empty frame", code=ErrorCode.MALFORMED_FRAME)
            return value, i + 1
        return None
