"""EIP-712 payment receipts: signing, recovery, and what a signature is bound to."""

from __future__ import annotations

from typing import Any

import pytest
from eth_abi.abi import encode as abi_encode
from eth_account import Account
from eth_utils.crypto import keccak

from fabstir.protocol import receipt_typed_data, recover_receipt_signer, sign_receipt

CLIENT = Account.from_key("0x" + "4c" * 32)
STRANGER = Account.from_key("0x" + "5d" * 32)
CHAIN_ID = 84532
CONTRACT = "0x" + "c0ffee" * 6 + "c0ff"
SESSION = "0x" + "ab" * 32
AMOUNT = 123_456_789 * 10**9

TERMS: dict[str, Any] = {
    "chain_id": CHAIN_ID,
    "verifying_contract": CONTRACT,
    "session_id": SESSION,
    "amount": AMOUNT,
}


def test_sign_then_recover_gives_the_signer() -> None:
    """A receipt signed by an account recovers to that account's address."""
    signature = sign_receipt(CLIENT, **TERMS)
    assert recover_receipt_signer(signature, **TERMS) == CLIENT.address


def test_the_signature_is_65_bytes_r_s_v() -> None:
    """Signatures are r (32) || s (32) || v (1), v being 27 or 28, as Solidity's ecrecover expects."""
    signature = sign_receipt(CLIENT, **TERMS)
    assert len(signature) == 65
    assert signature[64] in (27, 28)


def test_the_digest_is_the_specified_eip712_digest() -> None:
    """sign_receipt signs keccak256(0x1901 || domainSeparator || hashStruct(Receipt)) computed here from
    the specification, so a contract or another implementation verifies the same bytes."""
    domain_type = keccak(
        b"EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)"
    )
    domain_separator = keccak(
        abi_encode(
            ["bytes32", "bytes32", "bytes32", "uint256", "address"],
            [domain_type, keccak(b"FabstirPaymentSessions"), keccak(b"1"), CHAIN_ID, CONTRACT],
        )
    )
    receipt_type = keccak(b"Receipt(bytes32 sessionId,uint256 amount)")
    struct_hash = keccak(
        abi_encode(["bytes32", "bytes32", "uint256"], [receipt_type, bytes.fromhex(SESSION[2:]), AMOUNT])
    )
    digest = keccak(b"\x19\x01" + domain_separator + struct_hash)
    expected = Account.unsafe_sign_hash(digest, CLIENT.key).signature
    assert sign_receipt(CLIENT, **TERMS) == bytes(expected)


def test_the_typed_data_names_the_domain_and_the_message() -> None:
    """receipt_typed_data is eth_signTypedData_v4 input a wallet can sign directly."""
    data = receipt_typed_data(CHAIN_ID, CONTRACT, SESSION, AMOUNT)
    assert data["primaryType"] == "Receipt"
    assert data["domain"] == {
        "name": "FabstirPaymentSessions",
        "version": "1",
        "chainId": CHAIN_ID,
        "verifyingContract": CONTRACT,
    }
    assert data["types"]["Receipt"] == [
        {"name": "sessionId", "type": "bytes32"},
        {"name": "amount", "type": "uint256"},
    ]
    assert data["message"] == {"sessionId": bytes.fromhex(SESSION[2:]), "amount": AMOUNT}


@pytest.mark.parametrize(
    ("name", "other"),
    [
        ("amount", AMOUNT + 1),
        ("amount", AMOUNT * 2),
        ("session_id", "0x" + "ac" * 32),
        ("chain_id", 8453),
        ("verifying_contract", "0x" + "11" * 20),
    ],
)
def test_a_receipt_does_not_verify_for_other_terms(name: str, other: object) -> None:
    """The signature binds amount, session, chain id and contract: checked against any other value it
    recovers to some unrelated address, never to the signer (no replay across sessions, chains or
    deployments, and no inflated amount)."""
    signature = sign_receipt(CLIENT, **TERMS)
    recovered = recover_receipt_signer(signature, **{**TERMS, name: other})
    assert recovered != CLIENT.address


def test_another_signer_is_recovered_as_such() -> None:
    """A receipt signed by someone else recovers to them, not to the session's client."""
    signature = sign_receipt(STRANGER, **TERMS)
    assert recover_receipt_signer(signature, **TERMS) == STRANGER.address


def test_the_session_id_may_omit_0x() -> None:
    """The session id is hex with or without the 0x prefix; both sign the same bytes32."""
    assert sign_receipt(CLIENT, **{**TERMS, "session_id": SESSION[2:]}) == sign_receipt(CLIENT, **TERMS)


@pytest.mark.parametrize(
    "signature",
    [
        b"",
        b"junk",
        bytes(65),
        b"\x01" * 64 + b"\x1d",
        b"\x01" * 32 + b"\xff" * 32 + b"\x1b",
        sign_receipt(CLIENT, **TERMS)[:64],
    ],
    ids=["empty", "short", "zeros", "v=29", "s-above-n", "no-v"],
)
def test_a_garbage_signature_recovers_nothing(signature: bytes) -> None:
    """Malformed signatures give None instead of raising."""
    assert recover_receipt_signer(signature, **TERMS) is None


@pytest.mark.parametrize(
    ("name", "bad", "match"),
    [
        ("session_id", "0xab", "32 bytes"),  # would be right-padded into another bytes32
        ("session_id", "0x" + "ab" * 33, "32 bytes"),
        ("session_id", "0xnot-hex", "hexadecimal"),
        ("amount", -1, "cannot sign"),
        ("amount", 2**256, "cannot sign"),
        ("verifying_contract", "0x1234", "cannot sign"),
    ],
)
def test_malformed_terms_are_refused(name: str, bad: object, match: str) -> None:
    """A receipt with a malformed term cannot be signed (ValueError, no eth-abi error leaks) and
    recovers nothing."""
    signature = sign_receipt(CLIENT, **TERMS)
    with pytest.raises(ValueError, match=match):
        sign_receipt(CLIENT, **{**TERMS, name: bad})
    assert recover_receipt_signer(signature, **{**TERMS, name: bad}) is None
