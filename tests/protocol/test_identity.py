"""Peer identities: Ed25519 keys, libp2p peer ids, and signatures checked from the peer id alone."""

from __future__ import annotations

import hashlib

import base58
import pytest

from fabstir.protocol import PeerIdentity, public_key_from_peer_id, verify_peer_signature

# RFC 8032, section 7.1, TEST 1: secret key, public key, and the signature of the empty message.
RFC_SEED = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
RFC_PUBLIC = bytes.fromhex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")
RFC_SIGNATURE = bytes.fromhex(
    "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"
)
#: identity multihash (0x00, length 36) of the protobuf PublicKey {Type: Ed25519, Data: <32 bytes>}
PEER_ID_PREFIX = bytes([0x00, 0x24, 0x08, 0x01, 0x12, 0x20])
BASE58_ALPHABET = set("123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz")


def test_peer_ids_are_libp2p_ed25519_peer_ids() -> None:
    """A peer id starts with 12D3KooW, is base58, and decodes to the identity multihash of the
    protobuf-encoded Ed25519 public key."""
    identity = PeerIdentity()
    assert identity.peer_id.startswith("12D3KooW")
    assert set(identity.peer_id) <= BASE58_ALPHABET
    raw = base58.b58decode(identity.peer_id)
    assert raw[:6] == PEER_ID_PREFIX
    assert len(raw) == 38


def test_the_rfc8032_vector() -> None:
    """The RFC 8032 test key gives its published public key and signature, and the peer id built from
    that public key."""
    identity = PeerIdentity(RFC_SEED)
    assert identity.sign(b"") == RFC_SIGNATURE
    assert public_key_from_peer_id(identity.peer_id) == RFC_PUBLIC
    assert identity.peer_id == base58.b58encode(PEER_ID_PREFIX + RFC_PUBLIC).decode()
    assert verify_peer_signature(identity.peer_id, b"", RFC_SIGNATURE)


def test_identities_are_deterministic_from_the_seed() -> None:
    """The same seed gives the same peer id and signatures; the seed round-trips; other seeds differ."""
    seed = hashlib.sha256(b"identity-test").digest()
    one, two = PeerIdentity(seed), PeerIdentity(seed)
    assert one.peer_id == two.peer_id
    assert one.seed == seed
    assert PeerIdentity(one.seed).peer_id == one.peer_id
    assert one.sign(b"data") == two.sign(b"data")
    assert PeerIdentity(hashlib.sha256(b"other").digest()).peer_id != one.peer_id
    assert PeerIdentity().peer_id != PeerIdentity().peer_id


@pytest.mark.parametrize("seed", [b"", b"\x00" * 31, b"\x00" * 33])
def test_a_seed_must_be_32_bytes(seed: bytes) -> None:
    """Any other seed length is refused."""
    with pytest.raises(ValueError, match="32 bytes"):
        PeerIdentity(seed)


def test_a_signature_verifies_against_the_peer_id() -> None:
    """A signature made with the identity verifies with nothing but its peer id."""
    identity = PeerIdentity()
    assert verify_peer_signature(identity.peer_id, b"payload", identity.sign(b"payload"))


def test_a_signature_does_not_verify_for_other_data() -> None:
    """Changing the data, or one bit of the signature, breaks verification."""
    identity = PeerIdentity()
    signature = identity.sign(b"payload")
    assert not verify_peer_signature(identity.peer_id, b"payloae", signature)
    flipped = bytes([signature[0] ^ 1]) + signature[1:]
    assert not verify_peer_signature(identity.peer_id, b"payload", flipped)


def test_a_signature_does_not_verify_for_another_peer() -> None:
    """A signature by one peer does not verify under another peer's id."""
    signer, other = PeerIdentity(), PeerIdentity()
    assert not verify_peer_signature(other.peer_id, b"payload", signer.sign(b"payload"))


@pytest.mark.parametrize("length", [0, 63, 65, 128])
def test_a_signature_of_the_wrong_length_does_not_verify(length: int) -> None:
    """Ed25519 signatures are 64 bytes; anything else is refused without raising."""
    identity = PeerIdentity()
    signature = (identity.sign(b"payload") * 2)[:length]
    assert not verify_peer_signature(identity.peer_id, b"payload", signature)


NOT_ED25519_PEER_IDS = {
    "rsa (sha256 multihash)": "QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N",
    "secp256k1": "16Uiu2HAkwKX9DuqTP6tFrmEEMhAkHhNASTM3uYLaE4q7UXJT6RqZ",
    "empty": "",
    "not base58": "0OIl+/",
    "non-ascii": "12D3KooWé",
    "truncated": PeerIdentity(RFC_SEED).peer_id[:-1],
    "extended": PeerIdentity(RFC_SEED).peer_id + "1",
    "very long": "1" * 100_000,
}


@pytest.mark.parametrize("peer_id", NOT_ED25519_PEER_IDS.values(), ids=NOT_ED25519_PEER_IDS.keys())
def test_peer_ids_without_an_ed25519_key_verify_nothing(peer_id: str) -> None:
    """A peer id that embeds no Ed25519 key (another key type, garbage, wrong length) yields no public
    key and verifies no signature, without raising."""
    assert public_key_from_peer_id(peer_id) is None
    assert not verify_peer_signature(peer_id, b"", RFC_SIGNATURE)
