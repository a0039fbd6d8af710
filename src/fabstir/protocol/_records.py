"""The signed, expiring capability record a host publishes in the DHT.

Key: ``/fcap/<first 32 hex of sha256(peer id)>`` (38 bytes: py-libp2p ignores record keys over 50 bytes,
so the peer id itself goes inside the signed value). Value: msgpack ``[body, signature]`` where ``body``
is msgpack of the record's fields and ``signature`` is the host's Ed25519 peer-key signature over
``b"fabstir/capability/v1\\x00" + body``. Validation rejects bad signatures, a peer id that does not match
the key, expired records and malformed fields; among valid records the highest ``seq`` wins.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import msgpack

from .._exceptions import ErrorCode, RemoteProtocolError
from ._identity import verify_peer_signature

__all__ = [
    "CAPABILITY_NAMESPACE",
    "MAX_RECORD_SIZE",
    "RECORD_PROTOCOL_ID",
    "CapabilityRecord",
    "capability_key",
    "decode_capability_record",
    "encode_capability_record",
    "model_key",
    "select_capability_record",
    "service_key",
    "validate_capability_record",
]

CAPABILITY_NAMESPACE = "fcap"
#: A host answers a stream of this protocol with its current signed record (the bytes it puts in the
#: DHT) and closes it: a client that is about to contact the host anyway gets the record in one round
#: trip instead of a DHT walk, and the freshest one.
RECORD_PROTOCOL_ID = "/fabstir/record/1.0.0"
#: A record lists models and prices; 64 KiB holds hundreds of models and keeps DHT values small.
MAX_RECORD_SIZE = 64 * 1024
_SIGNING_PREFIX = b"fabstir/capability/v1\x00"
_MAX_ITEMS = 256
_MAX_STR = 256


def _cid_v1_raw_sha256(text: str) -> bytes:
    # CIDv1 = <version 0x01><codec raw 0x55><multihash sha2-256 0x12, length 0x20, digest>
    return b"\x01\x55\x12\x20" + hashlib.sha256(text.encode()).digest()


def service_key() -> bytes:
    """The DHT provider key every fabstir host provides."""
    return _cid_v1_raw_sha256("/fabstir/service/llm-inference")


def model_key(model_id: str) -> bytes:
    """The DHT provider key of hosts serving ``model_id``."""
    return _cid_v1_raw_sha256(f"/fabstir/model/{model_id}")


def capability_key(peer_id: str) -> bytes:
    return f"/{CAPABILITY_NAMESPACE}/{hashlib.sha256(peer_id.encode()).hexdigest()[:32]}".encode()


@dataclass(frozen=True, slots=True)
class CapabilityRecord:
    peer_id: str
    addrs: tuple[str, ...]
    models: tuple[str, ...]
    prices: Mapping[str, Mapping[str, int]]  # model -> payment token -> price per token
    max_tokens: int
    max_concurrent_jobs: int
    current_load: int
    payment_address: str
    chain_id: int
    protocol_versions: tuple[str, ...]
    seq: int
    expires: float


def encode_capability_record(record: CapabilityRecord, sign: Callable[[bytes], bytes]) -> bytes:
    body = msgpack.packb(
        {
            "peer_id": record.peer_id,
            "addrs": list(record.addrs),
            "models": list(record.models),
            "prices": {m: dict(p) for m, p in record.prices.items()},
            "max_tokens": record.max_tokens,
            "max_concurrent_jobs": record.max_concurrent_jobs,
            "current_load": record.current_load,
            "payment_address": record.payment_address,
            "chain_id": record.chain_id,
            "protocol_versions": list(record.protocol_versions),
            "seq": record.seq,
            "expires": float(record.expires),
        },
        use_bin_type=True,
    )
    return msgpack.packb([body, sign(_SIGNING_PREFIX + body)], use_bin_type=True)


def _bad(reason: str) -> RemoteProtocolError:
    return RemoteProtocolError(f"invalid capability record: {reason}", code=ErrorCode.MALFORMED_FRAME)


def _str_list(value: Any, name: str) -> tuple[str, ...]:
    if type(value) is not list or len(value) > _MAX_ITEMS:
        raise _bad(f"{name} must be a list of at most {_MAX_ITEMS} strings")
    if not all(_short_str(v) for v in value):
        raise _bad(f"{name} must hold non-empty strings")
    return tuple(value)


def _short_str(value: Any) -> bool:
    return type(value) is str and 0 < len(value) <= _MAX_STR


def _nonneg_int(value: Any, name: str) -> int:
    if type(value) is not int or value < 0 or value >= 1 << 256:
        raise _bad(f"{name} must be a non-negative integer")
    return value


def decode_capability_record(value: bytes) -> CapabilityRecord:
    """Decodes and checks the signature (but not expiry). Raises :class:`RemoteProtocolError`."""
    if len(value) > MAX_RECORD_SIZE:
        raise _bad("too large")
    try:
        outer = msgpack.unpackb(value, raw=False, strict_map_key=True, max_bin_len=MAX_RECORD_SIZE)
        if (
            type(outer) is not list
            or len(outer) != 2
            or type(outer[0]) is not bytes
            or type(outer[1]) is not bytes
        ):
            raise _bad("not [body, signature]")
        body_bytes, signature = outer
        body = msgpack.unpackb(body_bytes, raw=False, strict_map_key=True)
    except RemoteProtocolError:
        raise
    except Exception as exc:
        raise _bad(f"undecodable ({exc})") from exc
    if type(body) is not dict:
        raise _bad("body is not a map")
    peer_id = body.get("peer_id")
    if type(peer_id) is not str or not peer_id:
        raise _bad("no peer id")
    if not verify_peer_signature(peer_id, _SIGNING_PREFIX + body_bytes, signature):
        raise _bad("bad signature")
    prices_raw = body.get("prices")
    if type(prices_raw) is not dict or len(prices_raw) > _MAX_ITEMS:
        raise _bad("prices must be a map")
    prices: dict[str, Mapping[str, int]] = {}
    for model, per_token in prices_raw.items():
        if not _short_str(model) or type(per_token) is not dict or len(per_token) > _MAX_ITEMS:
            raise _bad("prices must map model -> token -> price")
        if not all(_short_str(t) for t in per_token):
            raise _bad("prices must map model -> token -> price")
        prices[model] = MappingProxyType({t: _nonneg_int(p, "price") for t, p in per_token.items()})
    expires = body.get("expires")
    chain_id = body.get("chain_id")
    payment_address = body.get("payment_address")
    # NaN would never compare as expired, and an infinite expiry makes a record immortal.
    if not isinstance(expires, int | float) or isinstance(expires, bool) or not math.isfinite(expires):
        raise _bad("expires must be a finite number")
    if type(payment_address) is not str or len(payment_address) > _MAX_STR:
        raise _bad("payment address must be a string")
    return CapabilityRecord(
        peer_id=peer_id,
        addrs=_str_list(body.get("addrs"), "addrs"),
        models=_str_list(body.get("models"), "models"),
        prices=MappingProxyType(prices),
        max_tokens=_nonneg_int(body.get("max_tokens"), "max_tokens"),
        max_concurrent_jobs=_nonneg_int(body.get("max_concurrent_jobs"), "max_concurrent_jobs"),
        current_load=_nonneg_int(body.get("current_load"), "current_load"),
        payment_address=payment_address,
        chain_id=_nonneg_int(chain_id, "chain_id"),
        protocol_versions=_str_list(body.get("protocol_versions"), "protocol_versions"),
        seq=_nonneg_int(body.get("seq"), "seq"),
        expires=float(expires),
    )


def validate_capability_record(key: bytes, value: bytes, now: float) -> CapabilityRecord:
    """Full DHT validation: signature, key ↔ peer id, expiry. Raises :class:`RemoteProtocolError`."""
    record = decode_capability_record(value)
    if capability_key(record.peer_id) != key:
        raise _bad("the key does not belong to the record's peer")
    if record.expires <= now:
        raise _bad("expired")
    return record


def select_capability_record(key: bytes, values: list[bytes], now: float) -> int | None:
    """Index of the best valid value (highest ``seq``), or ``None`` if none is valid."""
    best: tuple[int, int] | None = None
    for index, value in enumerate(values):
        try:
            record = validate_capability_record(key, value, now)
        except RemoteProtocolError:
            continue
        if best is None or record.seq > best[0]:
            best = (record.seq, index)
    return None if best is None else best[1]
