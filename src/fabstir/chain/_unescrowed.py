"""Jobs without escrow: the chain seam for production mode until the contracts land (issue 4).

Chosen explicitly (``ChainConfig(escrow=False)`` for the SDK, ``fabstir host run --no-escrow`` for a
host), never by default. Nothing is deposited and nothing is paid, but everything else is as with
escrow: the client "opens" a session (a promise kept in its own process), confirms it to the host, signs
EIP-712 receipts for the cumulative amount it received, and the host checks each receipt and streams only
as far ahead of the latest one as the credit allows. So metering, flow control and the protocol are
exercised exactly as they will be with payments; only the money is missing.

A session id made here says who promised: ``12 random bytes ‖ the client's 20-byte address``. A host
cannot look such a session up on any chain, so it builds the session's terms from its own offer
(:func:`promised_session`) and checks every receipt against the client address inside the id.
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Callable
from dataclasses import replace

from eth_account.signers.local import LocalAccount
from eth_utils.address import to_checksum_address

from .._exceptions import PaymentError, ValidationError
from ._base import HostRegistration, SessionInfo, Settlement

__all__ = [
    "UNESCROWED_CHAIN_ID",
    "UNESCROWED_CONTRACT",
    "UnescrowedLedger",
    "client_of_session",
    "promised_session",
]

#: The chain id both sides announce without a chain (the id local EVM devnets use, anvil's default).
UNESCROWED_CHAIN_ID = 31337
#: Receipts are bound to this ``verifyingContract``: no contract, so the zero address.
UNESCROWED_CONTRACT = "0x" + "00" * 20
#: How long a promised session lasts, seen from the host (there is no deposit to run out).
PROMISE_TTL = 3600.0

_NONCE_BYTES = 12
_SESSION_ID = re.compile(r"0x[0-9a-fA-F]{64}")


def _session_id(client: str) -> str:
    return "0x" + secrets.token_hex(_NONCE_BYTES) + client[2:].lower()


def client_of_session(session_id: str) -> str:
    """The client address inside an unescrowed session id; :class:`ValidationError` if it is not one."""
    # A regex, not bytes.fromhex: fromhex skips whitespace, which would let "0x…99 99 " through.
    if not isinstance(session_id, str) or not _SESSION_ID.fullmatch(session_id):
        raise ValidationError(f"not a session id: {session_id!r}")
    raw = session_id[2:]
    return to_checksum_address("0x" + raw[2 * _NONCE_BYTES :])


def promised_session(
    session_id: str,
    *,
    host: str,
    token: str,
    price_per_token: int,
    max_tokens: int,
    now: float,
    ttl: float = PROMISE_TTL,
) -> SessionInfo:
    """The session a host assumes for an unescrowed job: its own offer's terms, the id's client."""
    return SessionInfo(
        session_id=session_id.lower(),
        client=client_of_session(session_id),
        host=host,
        token=token,
        deposit=max_tokens * price_per_token,
        price_per_token=price_per_token,
        expiry=now + ttl,
        settled=0,
        refunded=0,
        closed=False,
    )


class UnescrowedLedger:
    """A :class:`~fabstir.chain.PaymentLedger` that moves no money (see the module docstring).

    ``escrowed`` is ``False``: the SDK and the host read it and skip what only escrow needs (checking a
    deposit, settling, watching for settlement). Balances are always 0; the registry is empty.
    """

    escrowed = False

    def __init__(
        self, *, chain_id: int = UNESCROWED_CHAIN_ID, clock: Callable[[], float] = time.time
    ) -> None:
        self._chain_id = chain_id
        self._clock = clock
        self._sessions: dict[str, SessionInfo] = {}

    @property
    def chain_id(self) -> int:
        return self._chain_id

    @property
    def verifying_contract(self) -> str:
        return UNESCROWED_CONTRACT

    @property
    def fee_basis_points(self) -> int:
        return 0

    @property
    def treasury(self) -> str:
        return UNESCROWED_CONTRACT

    async def timestamp(self) -> float:
        """The promise clock (the host's and client's own)."""
        return self._clock()

    async def balance_of(self, address: str, token: str = "ETH") -> int:
        return 0

    async def open_session(
        self,
        client: LocalAccount,
        *,
        host: str,
        token: str,
        deposit: int,
        price_per_token: int,
        expiry: float,
    ) -> SessionInfo:
        """Records the promise locally; nothing leaves the client's balance."""
        if deposit < 0 or price_per_token < 0:
            raise ValidationError("deposit and price per token must not be negative")
        session = SessionInfo(
            session_id=_session_id(client.address),
            client=client.address,
            host=to_checksum_address(host),
            token=token,
            deposit=deposit,
            price_per_token=price_per_token,
            expiry=expiry,
            settled=0,
            refunded=0,
            closed=False,
        )
        self._sessions[session.session_id] = session
        return session

    async def get_session(self, session_id: str) -> SessionInfo:
        session = self._sessions.get(session_id.lower())
        if session is None:
            raise PaymentError(f"unknown payment session {session_id} (sessions without escrow are local)")
        return session

    def _end(self, session_id: str) -> Settlement:
        session = self._sessions.get(session_id.lower())
        if session is not None:
            self._sessions[session.session_id] = replace(session, closed=True)
        return Settlement(
            session_id=session_id, amount=0, host_amount=0, fee=0, refunded=0, tx_hash="", gas_used=0
        )

    async def settle(self, host: LocalAccount, session_id: str, amount: int, signature: bytes) -> Settlement:
        return self._end(session_id)

    async def close(
        self, host: LocalAccount, session_id: str, amount: int | None = None, signature: bytes | None = None
    ) -> Settlement:
        return self._end(session_id)

    async def reclaim(self, client: LocalAccount, session_id: str) -> Settlement:
        return self._end(session_id)

    async def register_host(
        self, host: LocalAccount, *, peer_id: str, models: tuple[str, ...], stake: int
    ) -> HostRegistration:
        raise PaymentError("there is no host registry without a chain")

    async def get_host(self, address: str) -> HostRegistration | None:
        return None
