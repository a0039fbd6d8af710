"""The ledger of jobs without escrow: session ids that carry the client's address, no money moving, the
terms a host assumes for a promise, and the registry that does not exist without a chain."""

from __future__ import annotations

import asyncio
import re

import pytest
from eth_account import Account
from eth_account.signers.local import LocalAccount
from hypothesis import given, settings
from hypothesis import strategies as st

from fabstir import PaymentError, ValidationError
from fabstir.chain import PaymentLedger, SessionInfo, UnescrowedLedger, client_of_session, promised_session
from fabstir.chain._unescrowed import PROMISE_TTL, UNESCROWED_CHAIN_ID, UNESCROWED_CONTRACT

CLIENT: LocalAccount = Account.from_key("0x" + "c1" * 32)
HOST: LocalAccount = Account.from_key("0x" + "a5" * 32)
PRICE = 1_000
NOW = 1_700_000_000.0
#: The order of the secp256k1 group: valid private keys are 1 .. N-1.
SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
_SESSION_ID = re.compile(r"0x[0-9a-f]{64}")


async def _open(
    ledger: UnescrowedLedger, client: LocalAccount = CLIENT, deposit: int = 10 * PRICE
) -> SessionInfo:
    return await ledger.open_session(
        client, host=HOST.address, token="ETH", deposit=deposit, price_per_token=PRICE, expiry=NOW + 3600
    )


def test_is_a_payment_ledger_without_escrow() -> None:
    """It satisfies the PaymentLedger protocol, says it does not escrow, and binds receipts to the
    unescrowed chain id (or the one given) and the zero contract, with no fee and no treasury."""
    ledger = UnescrowedLedger()
    assert isinstance(ledger, PaymentLedger)
    assert ledger.escrowed is False
    assert ledger.chain_id == UNESCROWED_CHAIN_ID == 31337
    assert ledger.verifying_contract == UNESCROWED_CONTRACT == "0x" + "00" * 20
    assert ledger.fee_basis_points == 0
    assert ledger.treasury == UNESCROWED_CONTRACT
    assert UnescrowedLedger(chain_id=8453).chain_id == 8453


async def test_session_id_encodes_the_client_and_is_unique() -> None:
    """Each session id is 32 bytes of lowercase hex ending in the client's address; two sessions of the
    same client on the same terms still get different ids."""
    ledger = UnescrowedLedger()
    sessions = [await _open(ledger) for _ in range(20)]
    ids = {s.session_id for s in sessions}
    assert len(ids) == len(sessions)
    for session in sessions:
        assert _SESSION_ID.fullmatch(session.session_id)
        assert session.session_id.endswith(CLIENT.address[2:].lower())
        assert client_of_session(session.session_id) == CLIENT.address


async def test_open_session_records_the_promise_and_moves_nothing() -> None:
    """open_session records the terms as given (host checksummed), nothing settled or refunded; every
    balance stays 0 before and after, whatever the deposit."""
    ledger = UnescrowedLedger()
    assert await ledger.balance_of(CLIENT.address) == 0
    session = await ledger.open_session(
        CLIENT,
        host=HOST.address.lower(),
        token="USDC",
        deposit=10**30,
        price_per_token=PRICE,
        expiry=NOW + 60,
    )
    assert (session.client, session.host, session.token) == (CLIENT.address, HOST.address, "USDC")
    assert (session.deposit, session.price_per_token, session.expiry) == (10**30, PRICE, NOW + 60)
    assert (session.settled, session.refunded, session.closed) == (0, 0, False)
    assert await ledger.get_session(session.session_id) == session
    assert await ledger.get_session(session.session_id.upper().replace("0X", "0x")) == session
    for address in (CLIENT.address, HOST.address, ledger.treasury):
        for token in ("ETH", "USDC"):
            assert await ledger.balance_of(address, token) == 0


@pytest.mark.parametrize(("deposit", "price"), [(-1, PRICE), (PRICE, -1)])
async def test_negative_terms_are_refused(deposit: int, price: int) -> None:
    """A negative deposit or price is a ValidationError, and no session is recorded."""
    ledger = UnescrowedLedger()
    with pytest.raises(ValidationError, match="negative"):
        await ledger.open_session(
            CLIENT, host=HOST.address, token="ETH", deposit=deposit, price_per_token=price, expiry=NOW
        )
    assert ledger._sessions == {}


async def test_unknown_session_is_a_payment_error() -> None:
    """A session this process never opened is unknown (sessions without escrow are local)."""
    with pytest.raises(PaymentError, match="local"):
        await UnescrowedLedger().get_session("0x" + "99" * 32)


@pytest.mark.parametrize(
    "session_id",
    [
        "",
        "0x",
        "99" * 32,  # no 0x
        "0x" + "99" * 31,  # 31 bytes
        "0x" + "99" * 33,  # 33 bytes
        "0x" + "zz" * 32,  # not hex
        "0x" + "9" * 63,  # odd length
        "0x" + "99" * 31 + " 9",
        "0x" + "99" * 30 + " 99 ",  # 64 characters that bytes.fromhex would accept
        "0x" + " 99" * 20 + "9999",
        "0x" + "99" * 30 + "\t99\n",
        "0X" + "99" * 32,
    ],
)
def test_bad_session_ids_are_validation_errors(session_id: str) -> None:
    """Anything that is not 0x + 64 hex digits is not a session id: ValidationError, for
    client_of_session and for promised_session alike — whitespace included (a host turns only a
    ValidationError into a payment refusal; anything else would be an internal error)."""
    with pytest.raises(ValidationError, match="not a session id"):
        client_of_session(session_id)
    with pytest.raises(ValidationError):
        promised_session(
            session_id, host=HOST.address, token="ETH", price_per_token=PRICE, max_tokens=10, now=NOW
        )


def test_non_string_session_id_is_a_validation_error() -> None:
    """A session id of the wrong type (from a malformed frame) is a ValidationError, not a TypeError."""
    with pytest.raises(ValidationError):
        client_of_session(b"\x00" * 32)  # type: ignore[arg-type]


async def test_promised_session_takes_the_host_offer_and_the_id_client() -> None:
    """The session a host assumes: its own price and token, a deposit of max_tokens × price, the client
    from the id, the id lowercased, open, nothing settled, lasting PROMISE_TTL (or the ttl given)."""
    session = await _open(UnescrowedLedger())
    shouted = "0x" + session.session_id[2:].upper()
    promise = promised_session(
        shouted, host=HOST.address, token="ETH", price_per_token=7, max_tokens=100, now=NOW
    )
    assert promise.session_id == session.session_id
    assert promise.client == CLIENT.address
    assert (promise.host, promise.token) == (HOST.address, "ETH")
    assert (promise.price_per_token, promise.deposit) == (7, 700)
    assert promise.expiry == NOW + PROMISE_TTL
    assert (promise.settled, promise.refunded, promise.closed, promise.locked) == (0, 0, False, 700)
    longer = promised_session(
        shouted, host=HOST.address, token="ETH", price_per_token=7, max_tokens=100, now=NOW, ttl=10.0
    )
    assert longer.expiry == NOW + 10.0


async def test_settle_close_and_reclaim_move_nothing() -> None:
    """settle, close and reclaim pay nothing and refund nothing (no tx, no gas); they mark a known
    session closed, and an unknown one is no error (there is nothing to lose)."""
    ledger = UnescrowedLedger()
    session = await _open(ledger)
    settlements = [
        await ledger.settle(HOST, session.session_id, 5 * PRICE, b"\x01" * 65),
        await ledger.close(HOST, session.session_id, 5 * PRICE, b"\x01" * 65),
        await ledger.close(HOST, session.session_id),
        await ledger.reclaim(CLIENT, session.session_id),
        await ledger.reclaim(CLIENT, "0x" + "42" * 32),
    ]
    for settlement in settlements:
        assert (settlement.amount, settlement.host_amount, settlement.fee, settlement.refunded) == (
            0,
            0,
            0,
            0,
        )
        assert (settlement.tx_hash, settlement.gas_used) == ("", 0)
    closed = await ledger.get_session(session.session_id)
    assert closed.closed
    assert (closed.settled, closed.refunded) == (0, 0)
    for address in (CLIENT.address, HOST.address):
        assert await ledger.balance_of(address) == 0


async def test_there_is_no_host_registry() -> None:
    """Registering a host is a PaymentError (no chain, no registry); looking one up finds nothing."""
    ledger = UnescrowedLedger()
    with pytest.raises(PaymentError, match="registry"):
        await ledger.register_host(HOST, peer_id="12D3KooWtest", models=("m",), stake=0)
    assert await ledger.get_host(HOST.address) is None


@settings(max_examples=50, deadline=None)
@given(key=st.integers(min_value=1, max_value=SECP256K1_N - 1), deposit=st.integers(0, 10**30))
def test_client_of_session_recovers_the_opener(key: int, deposit: int) -> None:
    """For any client key and deposit, the id open_session returns names exactly that client."""
    client: LocalAccount = Account.from_key(key.to_bytes(32, "big"))
    session = asyncio.run(_open(UnescrowedLedger(), client, deposit))
    assert client_of_session(session.session_id) == client.address
