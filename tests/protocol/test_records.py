"""Signed, expiring capability records and the DHT keys hosts publish under."""

from __future__ import annotations

import dataclasses
import hashlib
import math
from collections.abc import Callable
from typing import Any

import msgpack
import pytest

from fabstir import ErrorCode, RemoteProtocolError
from fabstir.protocol import (
    CapabilityRecord,
    PeerIdentity,
    capability_key,
    decode_capability_record,
    encode_capability_record,
    model_key,
    select_capability_record,
    service_key,
    validate_capability_record,
)

NOW = 1_700_000_000.0
#: The signing prefix, from the specification (docs/PROTOCOL.md), not from the code under test.
SIGNING_PREFIX = b"fabstir/capability/v1\x00"
HOST = PeerIdentity(hashlib.sha256(b"records-host").digest())
OTHER = PeerIdentity(hashlib.sha256(b"records-other").digest())


def record(identity: PeerIdentity = HOST, **overrides: Any) -> CapabilityRecord:
    base = CapabilityRecord(
        peer_id=identity.peer_id,
        addrs=(f"/ip4/127.0.0.1/tcp/4001/p2p/{identity.peer_id}",),
        models=("llama-3.2-1b-instruct", "smollm2-135m"),
        prices={"llama-3.2-1b-instruct": {"ETH": 10**9, "USDC": 2}, "smollm2-135m": {"ETH": 10**8}},
        max_tokens=4096,
        max_concurrent_jobs=4,
        current_load=1,
        payment_address="0x" + "22" * 20,
        chain_id=84532,
        protocol_versions=("1.0",),
        seq=7,
        expires=NOW + 600,
    )
    return dataclasses.replace(base, **overrides)


def body_of(rec: CapabilityRecord) -> dict[str, Any]:
    """The record's body as a plain map, in the wire's field names."""
    return {
        "peer_id": rec.peer_id,
        "addrs": list(rec.addrs),
        "models": list(rec.models),
        "prices": {m: dict(p) for m, p in rec.prices.items()},
        "max_tokens": rec.max_tokens,
        "max_concurrent_jobs": rec.max_concurrent_jobs,
        "current_load": rec.current_load,
        "payment_address": rec.payment_address,
        "chain_id": rec.chain_id,
        "protocol_versions": list(rec.protocol_versions),
        "seq": rec.seq,
        "expires": rec.expires,
    }


def signed(body: Any, sign: Callable[[bytes], bytes] = HOST.sign) -> bytes:
    """A DHT value built by hand, as docs/PROTOCOL.md describes it: msgpack [body, signature]."""
    body_bytes = msgpack.packb(body, use_bin_type=True)
    return msgpack.packb([body_bytes, sign(SIGNING_PREFIX + body_bytes)], use_bin_type=True)


def rejected(key: bytes, value: bytes, now: float = NOW) -> RemoteProtocolError:
    with pytest.raises(RemoteProtocolError) as info:
        validate_capability_record(key, value, now)
    assert info.value.code is ErrorCode.MALFORMED_FRAME
    return info.value


KEY = capability_key(HOST.peer_id)


def test_encode_then_validate_round_trips() -> None:
    """A record encoded and signed by its host validates under its key and decodes to the same values."""
    original = record()
    decoded = validate_capability_record(KEY, encode_capability_record(original, HOST.sign), NOW)
    assert body_of(decoded) == body_of(original)
    assert decoded.prices["llama-3.2-1b-instruct"]["USDC"] == 2


def test_the_encoding_is_the_specified_one() -> None:
    """encode_capability_record produces exactly msgpack [body, Ed25519(prefix + body)], so another
    implementation following the specification produces values we accept, and the reverse."""
    original = record()
    value = encode_capability_record(original, HOST.sign)
    assert value == signed(body_of(original))
    assert validate_capability_record(KEY, signed(body_of(original)), NOW) is not None


def test_a_decoded_record_is_read_only() -> None:
    """Prices come back as read-only mappings: a record from the DHT cannot be altered in place."""
    decoded = decode_capability_record(encode_capability_record(record(), HOST.sign))
    with pytest.raises(TypeError):
        decoded.prices["new-model"] = {"ETH": 1}  # type: ignore[index]
    with pytest.raises(TypeError):
        decoded.prices["smollm2-135m"]["ETH"] = 1  # type: ignore[index]


def test_a_tampered_body_fails_the_signature() -> None:
    """Changing any byte of the signed body (here: a lower price) makes the signature invalid."""
    body_bytes, signature = msgpack.unpackb(encode_capability_record(record(), HOST.sign))
    body = msgpack.unpackb(body_bytes)
    body["prices"]["smollm2-135m"]["ETH"] = 1
    tampered = msgpack.packb([msgpack.packb(body), signature], use_bin_type=True)
    assert "bad signature" in rejected(KEY, tampered).message


def test_a_signature_by_another_peer_is_rejected() -> None:
    """A record naming HOST but signed by OTHER is rejected: the signature must match the peer id inside."""
    assert "bad signature" in rejected(KEY, encode_capability_record(record(), OTHER.sign)).message


def test_a_signature_without_the_prefix_is_rejected() -> None:
    """The signature covers the domain prefix too: a bare signature of the body does not verify."""
    body_bytes = msgpack.packb(body_of(record()), use_bin_type=True)
    value = msgpack.packb([body_bytes, HOST.sign(body_bytes)], use_bin_type=True)
    assert "bad signature" in rejected(KEY, value).message


def test_a_record_under_another_peers_key_is_rejected() -> None:
    """A valid record of HOST stored under OTHER's key is rejected (no peer can squat another's key)."""
    value = encode_capability_record(record(), HOST.sign)
    error = rejected(capability_key(OTHER.peer_id), value)
    assert "key" in error.message


@pytest.mark.parametrize("expires", [NOW, NOW - 1, 0.0])
def test_an_expired_record_is_rejected(expires: float) -> None:
    """A record whose expiry is now or past is rejected by validation (decoding alone still reads it)."""
    value = encode_capability_record(record(expires=expires), HOST.sign)
    assert "expired" in rejected(KEY, value).message
    assert decode_capability_record(value).expires == expires


def test_an_integer_expiry_is_accepted() -> None:
    """expires may be a msgpack integer (seconds) as well as a float; it decodes as a float."""
    value = signed({**body_of(record()), "expires": int(NOW) + 60})
    decoded = validate_capability_record(KEY, value, NOW)
    assert decoded.expires == int(NOW) + 60
    assert type(decoded.expires) is float


def replaced(**fields: Any) -> dict[str, Any]:
    return {**body_of(record()), **fields}


def without(name: str) -> dict[str, Any]:
    body = body_of(record())
    del body[name]
    return body


MALFORMED_BODIES: dict[str, Any] = {
    "body not a map": ["not", "a", "map"],
    "no peer id": without("peer_id"),
    "peer id not a string": replaced(peer_id=b"12D3KooW"),
    "addrs not a list": replaced(addrs="/ip4/127.0.0.1/tcp/1"),
    "an addr not a string": replaced(addrs=[1]),
    "an empty model name": replaced(models=[""]),
    "a model name too long": replaced(models=["m" * 257]),
    "too many models": replaced(models=[f"m{i}" for i in range(257)]),
    "no models": without("models"),
    "prices not a map": replaced(prices=[["m", 1]]),
    "prices of a model not a map": replaced(prices={"m": 5}),
    "a negative price": replaced(prices={"m": {"ETH": -1}}),
    "a price as a string": replaced(prices={"m": {"ETH": "10"}}),
    "a price as a float": replaced(prices={"m": {"ETH": 1.5}}),
    "a price as a bool": replaced(prices={"m": {"ETH": True}}),
    "a payment token as bytes": replaced(prices={"m": {b"ETH": 1}}),
    "a payment token too long": replaced(prices={"m": {"T" * 257: 1}}),
    "a priced model name too long": replaced(prices={"m" * 257: {"ETH": 1}}),
    "max_tokens a bool": replaced(max_tokens=True),
    "max_tokens negative": replaced(max_tokens=-5),
    "max_tokens missing": without("max_tokens"),
    "current_load a float": replaced(current_load=1.0),
    "chain_id a string": replaced(chain_id="84532"),
    "payment address not a string": replaced(payment_address=0x22),
    "payment address too long": replaced(payment_address="0x" + "2" * 300),
    "no protocol versions": without("protocol_versions"),
    "seq missing": without("seq"),
    "seq negative": replaced(seq=-1),
    "expires a string": replaced(expires="tomorrow"),
    "expires a bool": replaced(expires=True),
    "expires NaN": replaced(expires=math.nan),
    "expires infinite": replaced(expires=math.inf),
}


@pytest.mark.parametrize("body", MALFORMED_BODIES.values(), ids=MALFORMED_BODIES.keys())
def test_malformed_fields_are_rejected_even_when_signed(body: Any) -> None:
    """A correctly signed body with a wrong-typed, missing or oversized field is still rejected."""
    rejected(KEY, signed(body))


MALFORMED_VALUES: dict[str, bytes] = {
    "not msgpack": b"\xc1\xc1",
    "not a list": msgpack.packb({"body": b"", "signature": b""}),
    "a list of three": msgpack.packb([b"a", b"b", b"c"], use_bin_type=True),
    "body as str": msgpack.packb(["body", b"sig"], use_bin_type=True),
    "body not msgpack": msgpack.packb([b"\xc1", HOST.sign(SIGNING_PREFIX + b"\xc1")], use_bin_type=True),
    "over 64 KiB": signed(
        replaced(addrs=["/ip4/1.2.3.4/tcp/1/" + "x" * 200] * 256, models=["m" * 256] * 256)
    ),
    "a peer id of 64 KiB": signed(replaced(peer_id="1" * 60_000)),
    "a peer id with no Ed25519 key": signed(
        replaced(peer_id="QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N")
    ),
}


@pytest.mark.parametrize("value", MALFORMED_VALUES.values(), ids=MALFORMED_VALUES.keys())
def test_malformed_values_are_rejected(value: bytes) -> None:
    """Values that are not a signed record of a valid peer are rejected with RemoteProtocolError."""
    rejected(KEY, value)


def test_the_malformed_bodies_differ_from_a_valid_one_only_in_their_field() -> None:
    """Control for the tables above: the unmodified body, signed the same way, is valid."""
    assert validate_capability_record(KEY, signed(body_of(record())), NOW).seq == 7
    small = replaced(models=["m" * 256] * 16, prices={"m" * 256: {"T" * 256: 2**64 - 1}})
    assert validate_capability_record(KEY, signed(small), NOW).models == ("m" * 256,) * 16


def test_unknown_body_fields_are_ignored() -> None:
    """A record from a later version with extra fields still validates (forward compatibility)."""
    value = signed({**body_of(record()), "gpu": "RTX 4090", "regions": ["eu"]})
    assert validate_capability_record(KEY, value, NOW).seq == 7


def value_with(seq: int, *, identity: PeerIdentity = HOST, **overrides: Any) -> bytes:
    return encode_capability_record(record(identity, seq=seq, **overrides), identity.sign)


def test_select_picks_the_highest_valid_seq() -> None:
    """Among candidate values, select returns the index of the valid one with the highest seq; forged,
    expired, foreign and garbage values are ignored however high their seq."""
    values = [
        value_with(3),
        value_with(9, expires=NOW - 1),  # expired
        value_with(5),
        encode_capability_record(record(seq=50), OTHER.sign),  # forged
        value_with(40, identity=OTHER),  # another peer's record
        b"garbage",
        value_with(4),
    ]
    assert select_capability_record(KEY, values, NOW) == 2


def test_select_keeps_the_first_of_equal_seqs() -> None:
    """Two valid values with the same seq: the first one stays (the DHT keeps what it has)."""
    values = [value_with(5, current_load=1), value_with(5, current_load=2)]
    assert select_capability_record(KEY, values, NOW) == 0


@pytest.mark.parametrize(
    "values", [[], [b"garbage", value_with(1, expires=NOW)]], ids=["none", "all-invalid"]
)
def test_select_returns_none_without_a_valid_value(values: list[bytes]) -> None:
    """With no valid value there is nothing to select."""
    assert select_capability_record(KEY, values, NOW) is None


def cid_v1_raw_sha256(text: str) -> bytes:
    """CIDv1 (version 1, codec raw 0x55, multihash sha2-256 0x12 of length 32), written from the spec."""
    return bytes([0x01, 0x55, 0x12, 0x20]) + hashlib.sha256(text.encode()).digest()


def test_service_and_model_keys_are_cidv1_raw_sha256() -> None:
    """service_key and model_key are 36-byte CIDv1 raw sha2-256 of their namespaced names."""
    assert service_key() == cid_v1_raw_sha256("/fabstir/service/llm-inference")
    assert model_key("smollm2-135m") == cid_v1_raw_sha256("/fabstir/model/smollm2-135m")
    assert len(service_key()) == len(model_key("x")) == 36
    assert model_key("a") != model_key("b") != service_key()


def test_capability_keys_are_short_and_per_peer() -> None:
    """capability_key is /fcap/ + 32 hex chars of sha256(peer id): at most 50 bytes (py-libp2p ignores
    longer record keys), deterministic, and distinct per peer."""
    key = capability_key(HOST.peer_id)
    assert key == b"/fcap/" + hashlib.sha256(HOST.peer_id.encode()).hexdigest()[:32].encode()
    assert len(key) <= 50
    assert capability_key(HOST.peer_id) == key
    assert capability_key(OTHER.peer_id) != key
