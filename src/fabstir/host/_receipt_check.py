"""The host's check of a client's payment receipt: pure, so every rule is testable with plain data."""

from __future__ import annotations

from ..chain import SessionInfo
from ..protocol import Receipt, recover_receipt_signer

__all__ = ["check_receipt"]


def check_receipt(
    receipt: Receipt,
    *,
    job_id: str,
    session: SessionInfo,
    chain_id: int,
    verifying_contract: str,
    previous_amount: int,
    tokens_sent: int,
    base_amount: int = 0,
) -> str | None:
    """``None`` if the receipt is acceptable, else a sentence saying what is wrong with it.

    A receipt is acceptable when it is for this job and session, claims no more tokens than were sent,
    its amount is exactly ``base_amount + tokens × price_per_token`` (the session's cumulative amount:
    what the client signed for its earlier jobs on the session, plus this job's tokens), it does not go
    backwards, and the session's client signed it (EIP-712, bound to
    this chain and ledger).
    """
    if receipt.session_id.lower() != session.session_id.lower():
        return f"receipt for session {receipt.session_id}, expected {session.session_id}"
    if receipt.job_id != job_id:
        return f"receipt for job {receipt.job_id!r}, expected {job_id!r}"
    if receipt.tokens > tokens_sent:
        return f"receipt covers {receipt.tokens} tokens, only {tokens_sent} were sent"
    expected = base_amount + receipt.tokens * session.price_per_token
    if receipt.amount != expected:
        base = f"{base_amount} + " if base_amount else ""
        price = session.price_per_token
        return f"receipt amount {receipt.amount} is not {base}{receipt.tokens} tokens x {price}"
    if receipt.amount < previous_amount:
        return f"receipt amount {receipt.amount} is below the previous {previous_amount}"
    signer = recover_receipt_signer(
        receipt.signature,
        chain_id=chain_id,
        verifying_contract=verifying_contract,
        session_id=session.session_id,
        amount=receipt.amount,
    )
    if signer is None or signer.lower() != session.client.lower():
        return "receipt signature is not the session client's"
    return None
