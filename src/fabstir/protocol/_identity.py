"""Peer identities: Ed25519 keys and libp2p peer ids, so that a signature can be checked from the
peer id alone (the peer id embeds the public key: identity multihash of the protobuf-encoded key)."""

from __future__ import annotations

import base58
import nacl.exceptions
import nacl.signing

__all__ = ["PeerIdentity", "public_key_from_peer_id", "verify_peer_signature"]

# protobuf PublicKey{Type: Ed25519 (1), Data: 32 bytes}
_ED25519_PREFIX = b"\x08\x01\x12\x20"
# multihash "identity" (0x00) of length 36
_IDENTITY_MH_PREFIX = b"\x00\x24"
#: An Ed25519 peer id is 52 base58 characters. Longer input is refused before decoding: base58 decoding
#: is quadratic, and peer ids arrive from the network (a 64 KiB one takes seconds).
_MAX_PEER_ID_CHARS = 64


class PeerIdentity:
    """An Ed25519 key pair and its peer id (``12D3KooW...``)."""

    def __init__(self, seed: bytes | None = None) -> None:
        if seed is not None and len(seed) != 32:
            raise ValueError("an Ed25519 seed is 32 bytes")
        self._key = nacl.signing.SigningKey(seed) if seed is not None else nacl.signing.SigningKey.generate()
        public = bytes(self._key.verify_key)
        self.peer_id: str = base58.b58encode(_IDENTITY_MH_PREFIX + _ED25519_PREFIX + public).decode()

    @property
    def seed(self) -> bytes:
        return bytes(self._key)

    def sign(self, data: bytes) -> bytes:
        return bytes(self._key.sign(data).signature)


def public_key_from_peer_id(peer_id: str) -> bytes | None:
    """The Ed25519 public key inside a peer id, or ``None`` if it embeds no Ed25519 key."""
    if len(peer_id) > _MAX_PEER_ID_CHARS:
        return None
    try:
        raw = base58.b58decode(peer_id)
    except ValueError:
        return None
    prefix = _IDENTITY_MH_PREFIX + _ED25519_PREFIX
    if len(raw) != len(prefix) + 32 or not raw.startswith(prefix):
        return None
    return raw[len(prefix) :]


def verify_peer_signature(peer_id: str, data: bytes, signature: bytes) -> bool:
    """Whether ``signature`` is the Ed25519 signature of ``data`` by the key inside ``peer_id``. ``False``
    for anything malformed (never raises for bad input)."""
    public = public_key_from_peer_id(peer_id)
    if public is None or len(signature) != 64:
        return False
    try:
        nacl.signing.VerifyKey(public).verify(data, signature)
    except nacl.exceptions.BadSignatureError:
        return False
    return True
