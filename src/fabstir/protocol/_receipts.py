"""EIP-712 payment receipts: what a client signs for the cumulative amount it owes in a session.

Typed data (docs/CONTRACTS.md)::

    domain  = {name: "FabstirPaymentSessions", version: "1", chainId, verifyingContract}
    Receipt = {sessionId: bytes32, amount: uint256}

Signing is pure computation (eth-account); the ledger and the contracts verify the same digest.
"""

from __future__ import annotations

from typing import Any

from eth_abi.exceptions import EncodingError
from eth_account import Account
from eth_account.messages import encode_typed_data
from eth_account.signers.local import LocalAccount

__all__ = [
    "RECEIPT_DOMAIN_NAME",
    "RECEIPT_DOMAIN_VERSION",
    "receipt_typed_data",
    "recover_receipt_signer",
    "sign_receipt",
]

RECEIPT_DOMAIN_NAME = "FabstirPaymentSessions"
RECEIPT_DOMAIN_VERSION = "1"


def _session_bytes(session_id: str) -> bytes:
    raw = bytes.fromhex(session_id.removeprefix("0x"))
    # eth-abi would right-pad a shorter value into a bytes32: a receipt for another session id
    if len(raw) != 32:
        raise ValueError(f"a session id is 32 bytes, got {len(raw)}")
    return raw


def receipt_typed_data(
    chain_id: int, verifying_contract: str, session_id: str, amount: int
) -> dict[str, Any]:
    """The EIP-712 typed data of a receipt (``eth_signTypedData_v4`` form). ``session_id`` is 32 bytes in
    hex, with or without ``0x``; anything else raises :class:`ValueError`."""
    return {
        "types": {
            "EIP712Domain": [
                {"name": "name", "type": "string"},
                {"name": "version", "type": "string"},
                {"name": "chainId", "type": "uint256"},
                {"name": "verifyingContract", "type": "address"},
            ],
            "Receipt": [
                {"name": "sessionId", "type": "bytes32"},
                {"name": "amount", "type": "uint256"},
            ],
        },
        "primaryType": "Receipt",
        "domain": {
            "name": RECEIPT_DOMAIN_NAME,
            "version": RECEIPT_DOMAIN_VERSION,
            "chainId": chain_id,
            "verifyingContract": verifying_contract,
        },
        "message": {"sessionId": _session_bytes(session_id), "amount": amount},
    }


def sign_receipt(
    account: LocalAccount, *, chain_id: int, verifying_contract: str, session_id: str, amount: int
) -> bytes:
    """The 65-byte signature (r, s, v) of ``account`` over the receipt's EIP-712 digest. Raises
    :class:`ValueError` for a malformed session id, contract address or amount."""
    try:
        message = encode_typed_data(
            full_message=receipt_typed_data(chain_id, verifying_contract, session_id, amount)
        )
    except EncodingError as exc:  # eth-abi's own tree, not a ValueError
        raise ValueError(f"cannot sign this receipt: {exc}") from exc
    return bytes(account.sign_message(message).signature)


def recover_receipt_signer(
    signature: bytes, *, chain_id: int, verifying_contract: str, session_id: str, amount: int
) -> str | None:
    """The (checksummed) address that signed this receipt, or ``None`` if the signature or the receipt is
    malformed. A valid signature over *other* terms recovers to another address: compare with the payer."""
    try:
        message = encode_typed_data(
            full_message=receipt_typed_data(chain_id, verifying_contract, session_id, amount)
        )
        return str(Account.recover_message(message, signature=signature))
    except Exception:  # eth-account raises ValueError, BadSignature, ... for garbage
        return None
