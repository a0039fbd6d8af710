"""The in-memory ledger: the conformance suite on a fake clock, then what only it offers — its
configuration, the faucet and total supply, deterministic ids, the expiry boundary, the event log and
the rest of the host registry (update, deregister, unbonding, withdraw)."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import pytest
from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_utils.address import is_checksum_address

from fabstir import ConfigurationError, InvalidReceiptError, PaymentError, ValidationError
from fabstir.chain import DEFAULT_TREASURY, InMemoryLedger, LedgerEvent, PaymentLedger
from fabstir.protocol import sign_receipt

from .conformance import DEPOSIT, FUNDS, PRICE, LedgerConformance, LedgerHarness

CLIENT: LocalAccount = Account.from_key("0x" + "c1" * 32)
HOST: LocalAccount = Account.from_key("0x" + "a5" * 32)
STRANGER: LocalAccount = Account.from_key("0x" + "5e" * 32)
START = 1_700_000_000.0


class FakeClock:
    """Epoch seconds that move only when a test says so."""

    def __init__(self, now: float = START) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    async def advance(self, seconds: float) -> None:
        self.now += seconds


def funded_ledger(clock: FakeClock | None = None, **options: Any) -> InMemoryLedger:
    ledger = InMemoryLedger(clock=clock or FakeClock(), **options)
    for account in (CLIENT, HOST, STRANGER):
        for token in ledger.tokens:
            ledger.mint(account.address, FUNDS, token)
    return ledger


class TestInMemoryLedgerConformance(LedgerConformance):
    @pytest.fixture
    def harness(self) -> LedgerHarness:
        clock = FakeClock()

        async def now() -> float:
            return clock.now

        return LedgerHarness(
            ledger=funded_ledger(clock),
            client=CLIENT,
            host=HOST,
            stranger=STRANGER,
            erc20="USDC",
            now=now,
            advance=clock.advance,
        )


class TestInMemoryLedgerConformanceWithMinimumStakeAndFee(TestInMemoryLedgerConformance):
    """The same contract with a minimum stake and another fee (rounding shows differently)."""

    @pytest.fixture
    def harness(self) -> LedgerHarness:
        clock = FakeClock()

        async def now() -> float:
            return clock.now

        return LedgerHarness(
            ledger=funded_ledger(clock, fee_basis_points=333, min_stake=10**15, chain_id=8453),
            client=CLIENT,
            host=HOST,
            stranger=STRANGER,
            erc20="USDC",
            now=now,
            advance=clock.advance,
            min_stake=10**15,
        )


# ---------------------------------------------------------------------------------------------- helpers


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def ledger(clock: FakeClock) -> InMemoryLedger:
    return funded_ledger(clock)


async def open_session(
    ledger: InMemoryLedger, clock: FakeClock, *, token: str = "ETH", ttl: float = 3600.0
) -> str:
    session = await ledger.open_session(
        CLIENT, host=HOST.address, token=token, deposit=DEPOSIT, price_per_token=PRICE, expiry=clock.now + ttl
    )
    return session.session_id


def receipt(ledger: InMemoryLedger, session_id: str, amount: int) -> bytes:
    return sign_receipt(
        CLIENT,
        chain_id=ledger.chain_id,
        verifying_contract=ledger.verifying_contract,
        session_id=session_id,
        amount=amount,
    )


# ---------------------------------------------------------------------------------------------- configuration


def test_defaults() -> None:
    """By default: chain 31337, 1 % fee, the fixed default treasury, ETH (18) and USDC (6)."""
    ledger = InMemoryLedger()
    assert isinstance(ledger, PaymentLedger)
    assert (ledger.chain_id, ledger.fee_basis_points, ledger.treasury) == (31337, 100, DEFAULT_TREASURY)
    assert dict(ledger.tokens) == {"ETH": 18, "USDC": 6}
    assert ledger.min_stake == 0


@pytest.mark.parametrize(
    "options",
    [
        pytest.param({"fee_basis_points": -1}, id="negative-fee"),
        pytest.param({"fee_basis_points": 10_001}, id="fee-over-100-percent"),
        pytest.param({"chain_id": 0}, id="chain-id-zero"),
        pytest.param({"tokens": {"USDC": 6}}, id="no-native-token"),
        pytest.param({"tokens": {"ETH": -1}}, id="negative-decimals"),
        pytest.param({"min_stake": -1}, id="negative-min-stake"),
        pytest.param({"unbonding_delay": -1.0}, id="negative-unbonding"),
        pytest.param({"treasury": "not-an-address"}, id="bad-treasury"),
    ],
)
def test_bad_configuration_is_refused(options: dict[str, Any]) -> None:
    """Out-of-range or malformed constructor arguments raise ConfigurationError."""
    with pytest.raises(ConfigurationError):
        InMemoryLedger(**options)


def test_the_verifying_contract_is_derived_from_the_chain_id() -> None:
    """Two ledgers on one chain id share the verifying contract (a checksummed address); another chain
    id gives another one, so receipts do not carry over."""
    a, b, other = InMemoryLedger(chain_id=1), InMemoryLedger(chain_id=1), InMemoryLedger(chain_id=2)
    assert a.verifying_contract == b.verifying_contract != other.verifying_contract
    assert is_checksum_address(a.verifying_contract)


async def test_a_receipt_from_another_chain_ledger_is_refused(clock: FakeClock) -> None:
    """A receipt signed for the same session id on a ledger with another chain id does not verify."""
    here, there = funded_ledger(clock), funded_ledger(clock, chain_id=1)
    session_id = await open_session(here, clock)
    with pytest.raises(InvalidReceiptError):
        await here.settle(HOST, session_id, 10, receipt(there, session_id, 10))
    await here.settle(HOST, session_id, 10, receipt(here, session_id, 10))


async def test_custom_treasury_and_tokens(clock: FakeClock) -> None:
    """Fees go to the treasury given; only the tokens given are known (others: PaymentError)."""
    treasury = Account.create().address
    ledger = InMemoryLedger(clock=clock, treasury=treasury.lower(), tokens={"ETH": 18, "DAI": 18})
    assert ledger.treasury == treasury
    ledger.mint(CLIENT.address, FUNDS, "DAI")
    with pytest.raises(PaymentError, match="token"):
        ledger.mint(CLIENT.address, FUNDS, "USDC")
    with pytest.raises(PaymentError, match="token"):
        await ledger.balance_of(CLIENT.address, "USDC")
    session_id = await open_session(ledger, clock, token="DAI")
    await ledger.close(HOST, session_id, 10_000, receipt(ledger, session_id, 10_000))
    assert await ledger.balance_of(treasury, "DAI") == 100


@pytest.mark.parametrize("fee_basis_points", [0, 1, 250, 9_999, 10_000])
async def test_fee_split_over_the_whole_range(clock: FakeClock, fee_basis_points: int) -> None:
    """At any fee from 0 to 100 %, a settlement pays fee = amount × bps // 10000 to the treasury and
    the exact rest to the host."""
    ledger = funded_ledger(clock, fee_basis_points=fee_basis_points)
    session_id = await open_session(ledger, clock)
    amount = 98_765_431
    settlement = await ledger.settle(HOST, session_id, amount, receipt(ledger, session_id, amount))
    assert settlement.fee == amount * fee_basis_points // 10_000 == ledger.fee_for(amount)
    assert settlement.host_amount == amount - settlement.fee
    assert await ledger.balance_of(ledger.treasury) == settlement.fee
    assert await ledger.balance_of(HOST.address) == FUNDS + settlement.host_amount


# ------------------------------------------------------------------------------------ faucet, supply, ids


async def test_mint_and_balances(ledger: InMemoryLedger) -> None:
    """mint adds to a balance (any address spelling), an address never seen holds 0; a negative mint is
    a ValidationError and a malformed address a PaymentError."""
    fresh = Account.create().address
    assert await ledger.balance_of(fresh) == 0
    ledger.mint(fresh.lower(), 5)
    ledger.mint(fresh, 7)
    assert await ledger.balance_of(fresh) == 12
    assert await ledger.balance_of(fresh, "USDC") == 0
    with pytest.raises(ValidationError):
        ledger.mint(fresh, -1)
    with pytest.raises(PaymentError, match="address"):
        await ledger.balance_of("0x1234")


async def test_total_supply_counts_balances_sessions_and_stakes(
    ledger: InMemoryLedger, clock: FakeClock
) -> None:
    """total_supply is what was minted, wherever it sits — balances, open sessions, stakes — through a
    whole life of sessions and a registration; only mint changes it."""
    assert ledger.total_supply("ETH") == 3 * FUNDS
    await ledger.register_host(HOST, peer_id="12D3KooWhost", models=("m",), stake=10**9)
    session_id = await open_session(ledger, clock)
    await ledger.settle(HOST, session_id, 1_000, receipt(ledger, session_id, 1_000))
    assert ledger.total_supply("ETH") == 3 * FUNDS
    await ledger.close(HOST, session_id)
    await ledger.deregister_host(HOST)
    await clock.advance(ledger.unbonding_delay)
    await ledger.withdraw_stake(HOST)
    assert ledger.total_supply("ETH") == 3 * FUNDS
    assert ledger.total_supply("USDC") == 3 * FUNDS
    ledger.mint(STRANGER.address, 1)
    assert ledger.total_supply("ETH") == 3 * FUNDS + 1


async def test_session_ids_are_deterministic(clock: FakeClock) -> None:
    """Two ledgers on the same chain given the same calls hand out the same session ids; settlements
    carry a 32-byte transaction hash and no gas (nothing is mined)."""
    a, b = funded_ledger(clock), funded_ledger(clock)
    ids_a = [await open_session(a, clock) for _ in range(3)]
    ids_b = [await open_session(b, clock) for _ in range(3)]
    assert ids_a == ids_b
    assert len(set(ids_a)) == 3
    settlement = await a.settle(HOST, ids_a[0], 10, receipt(a, ids_a[0], 10))
    assert settlement.gas_used == 0
    assert len(bytes.fromhex(settlement.tx_hash.removeprefix("0x"))) == 32


async def test_session_ids_are_case_insensitive(ledger: InMemoryLedger, clock: FakeClock) -> None:
    """A session id spelt in upper case hex finds the same session."""
    session_id = await open_session(ledger, clock)
    assert (await ledger.get_session("0x" + session_id[2:].upper())).session_id == session_id


async def test_malformed_host_address_is_a_payment_error(ledger: InMemoryLedger, clock: FakeClock) -> None:
    """Opening a session for something that is not an address raises PaymentError; nothing moves."""
    with pytest.raises(PaymentError, match="address"):
        await ledger.open_session(
            CLIENT, host="bob", token="ETH", deposit=DEPOSIT, price_per_token=PRICE, expiry=clock.now + 60
        )
    assert await ledger.balance_of(CLIENT.address) == FUNDS


# ---------------------------------------------------------------------------------------------- time boundary


async def test_at_the_expiry_second_settling_stops_and_reclaiming_starts(
    ledger: InMemoryLedger, clock: FakeClock
) -> None:
    """Settling is allowed strictly before expiry; reclaiming from the expiry instant on — never both."""
    session_id = await open_session(ledger, clock, ttl=60.0)
    await clock.advance(59.999)
    await ledger.settle(HOST, session_id, 10, receipt(ledger, session_id, 10))
    with pytest.raises(PaymentError, match="not expired"):
        await ledger.reclaim(CLIENT, session_id)
    await clock.advance(0.001)
    with pytest.raises(PaymentError, match="expired"):
        await ledger.settle(HOST, session_id, 20, receipt(ledger, session_id, 20))
    settlement = await ledger.reclaim(CLIENT, session_id)
    assert settlement.refunded == DEPOSIT - 10


async def test_close_needs_amount_and_signature_together(ledger: InMemoryLedger, clock: FakeClock) -> None:
    """A final amount without a signature, or a signature without an amount, is refused as an invalid
    receipt; the session stays open."""
    session_id = await open_session(ledger, clock)
    with pytest.raises(InvalidReceiptError):
        await ledger.close(HOST, session_id, 10)
    with pytest.raises(InvalidReceiptError):
        await ledger.close(HOST, session_id, None, receipt(ledger, session_id, 10))
    assert not (await ledger.get_session(session_id)).closed


async def test_concurrent_callers_cannot_overdraw(ledger: InMemoryLedger, clock: FakeClock) -> None:
    """Many sessions opened at once against one balance: exactly as many succeed as the balance pays
    for (each call is atomic), the rest raise InsufficientFundsError, and the balance ends at zero."""
    poor = Account.create()
    ledger.mint(poor.address, 10 * DEPOSIT)
    results = await asyncio.gather(
        *(
            ledger.open_session(
                poor,
                host=HOST.address,
                token="ETH",
                deposit=DEPOSIT,
                price_per_token=PRICE,
                expiry=clock.now + 60,
            )
            for _ in range(15)
        ),
        return_exceptions=True,
    )
    assert sum(not isinstance(result, BaseException) for result in results) == 10
    assert await ledger.balance_of(poor.address) == 0


# ---------------------------------------------------------------------------------------------- events


async def test_events_record_every_state_change_in_order(ledger: InMemoryLedger, clock: FakeClock) -> None:
    """A session's life and a registration's life each append events, in order, with the subject (session
    id or host address), the amounts, the clock's time and their index."""
    await ledger.register_host(HOST, peer_id="12D3KooWhost", models=("m",), stake=500)
    session_id = await open_session(ledger, clock)
    await clock.advance(1.0)
    await ledger.settle(HOST, session_id, 10_000, receipt(ledger, session_id, 10_000))
    await clock.advance(1.0)
    await ledger.close(HOST, session_id, 30_000, receipt(ledger, session_id, 30_000))
    expired_id = await open_session(ledger, clock, ttl=1.0)
    await ledger.update_host(HOST, models=("m", "n"))
    await clock.advance(1.0)
    await ledger.reclaim(CLIENT, expired_id)
    await ledger.deregister_host(HOST)
    await clock.advance(ledger.unbonding_delay)
    await ledger.withdraw_stake(HOST)

    events = ledger.events()
    assert [(e.name, e.subject) for e in events] == [
        ("HostRegistered", HOST.address),
        ("SessionOpened", session_id),
        ("Settled", session_id),
        ("Settled", session_id),
        ("SessionClosed", session_id),
        ("SessionOpened", expired_id),
        ("HostUpdated", HOST.address),
        ("Reclaimed", expired_id),
        ("HostDeregistered", HOST.address),
        ("StakeWithdrawn", HOST.address),
    ]
    assert [e.index for e in events] == list(range(len(events)))
    assert [e.timestamp - START for e in events] == [0, 0, 1, 2, 2, 2, 2, 3, 3, 3 + ledger.unbonding_delay]
    assert dict(events[1].data) == {
        "client": CLIENT.address,
        "host": HOST.address,
        "token": "ETH",
        "deposit": DEPOSIT,
        "price_per_token": PRICE,
        "expiry": START + 3600.0,
    }
    fee = ledger.fee_for(30_000) - ledger.fee_for(10_000)
    assert dict(events[3].data) == {
        "amount": 20_000,
        "host_amount": 20_000 - fee,
        "fee": fee,
        "settled": 30_000,
    }
    assert dict(events[4].data) == {"settled": 30_000, "refunded": DEPOSIT - 30_000}
    assert dict(events[7].data) == {"refunded": DEPOSIT}
    assert dict(events[9].data) == {"stake": 500}
    assert ledger.events(since=8) == events[8:]
    assert ledger.events(since=len(events)) == []


async def test_failed_calls_leave_no_event(ledger: InMemoryLedger, clock: FakeClock) -> None:
    """A refused call changes nothing, so it records nothing."""
    session_id = await open_session(ledger, clock)
    count = len(ledger.events())
    with pytest.raises(InvalidReceiptError):
        await ledger.settle(HOST, session_id, DEPOSIT + 1, receipt(ledger, session_id, DEPOSIT + 1))
    with pytest.raises(PaymentError):
        await ledger.reclaim(CLIENT, session_id)
    with pytest.raises(PaymentError):
        await ledger.withdraw_stake(HOST)
    assert len(ledger.events()) == count


async def test_events_are_read_only(ledger: InMemoryLedger, clock: FakeClock) -> None:
    """An event is a frozen value and its data cannot be changed by a reader."""
    await open_session(ledger, clock)
    event = ledger.events()[0]
    assert isinstance(event, LedgerEvent)
    with pytest.raises(dataclasses.FrozenInstanceError):
        event.name = "Forged"  # type: ignore[misc]
    with pytest.raises(TypeError):
        event.data["deposit"] = 0  # type: ignore[index]
    ledger.events().clear()
    assert len(ledger.events()) == 1


# ---------------------------------------------------------------------------------------------- registry


async def test_update_host_replaces_the_metadata_given(ledger: InMemoryLedger) -> None:
    """update_host changes the peer id and/or the models of an active registration; what is not given
    is kept; the stake does not change."""
    await ledger.register_host(HOST, peer_id="12D3KooWold", models=("a",), stake=100)
    updated = await ledger.update_host(HOST, models=("a", "b"))
    assert (updated.peer_id, updated.models, updated.stake, updated.active) == (
        "12D3KooWold",
        ("a", "b"),
        100,
        True,
    )
    updated = await ledger.update_host(HOST, peer_id="12D3KooWnew")
    assert (updated.peer_id, updated.models) == ("12D3KooWnew", ("a", "b"))
    assert await ledger.get_host(HOST.address) == updated


@pytest.mark.parametrize(
    ("peer_id", "models"), [("", ("m",)), ("12D3KooWhost", ()), ("12D3KooWhost", ("m", ""))]
)
async def test_registration_needs_a_peer_id_and_models(
    ledger: InMemoryLedger, peer_id: str, models: tuple[str, ...]
) -> None:
    """Registering or updating with an empty peer id, no model or an empty model name raises
    PaymentError and changes nothing."""
    with pytest.raises(PaymentError):
        await ledger.register_host(HOST, peer_id=peer_id, models=models, stake=1)
    assert await ledger.get_host(HOST.address) is None
    registration = await ledger.register_host(HOST, peer_id="12D3KooWhost", models=("m",), stake=1)
    with pytest.raises(PaymentError):
        await ledger.update_host(HOST, peer_id=peer_id, models=models)
    assert await ledger.get_host(HOST.address) == registration


async def test_deregister_unbond_withdraw(ledger: InMemoryLedger, clock: FakeClock) -> None:
    """Deregistering deactivates the host and starts the unbonding delay; withdrawing before it ends is
    refused; after it the stake returns to the host and the registration is gone, so the host may
    register again."""
    await ledger.register_host(HOST, peer_id="12D3KooWhost", models=("m",), stake=10**9)
    until = await ledger.deregister_host(HOST)
    assert until == clock.now + ledger.unbonding_delay
    registration = await ledger.get_host(HOST.address)
    assert registration is not None
    assert (registration.active, registration.stake) == (False, 10**9)
    await clock.advance(ledger.unbonding_delay - 1)
    with pytest.raises(PaymentError, match="unbonding"):
        await ledger.withdraw_stake(HOST)
    with pytest.raises(PaymentError, match="unbonding"):
        await ledger.register_host(HOST, peer_id="12D3KooWhost", models=("m",), stake=1)
    await clock.advance(1)
    assert await ledger.withdraw_stake(HOST) == 10**9
    assert await ledger.balance_of(HOST.address) == FUNDS
    assert await ledger.get_host(HOST.address) is None
    again = await ledger.register_host(HOST, peer_id="12D3KooWhost", models=("m",), stake=1)
    assert again.active


async def test_registry_calls_in_the_wrong_state_are_refused(ledger: InMemoryLedger) -> None:
    """Updating or deregistering a host that is not (or no longer) registered, deregistering twice, and
    withdrawing without deregistering raise PaymentError."""
    with pytest.raises(PaymentError, match="not registered"):
        await ledger.update_host(HOST, peer_id="12D3KooWhost")
    with pytest.raises(PaymentError, match="not registered"):
        await ledger.deregister_host(HOST)
    with pytest.raises(PaymentError, match="not registered"):
        await ledger.withdraw_stake(HOST)
    await ledger.register_host(HOST, peer_id="12D3KooWhost", models=("m",), stake=1)
    with pytest.raises(PaymentError, match="deregister"):
        await ledger.withdraw_stake(HOST)
    await ledger.deregister_host(HOST)
    with pytest.raises(PaymentError, match="not registered"):
        await ledger.deregister_host(HOST)
    with pytest.raises(PaymentError, match="not registered"):
        await ledger.update_host(HOST, models=("x",))


async def test_a_deregistered_host_still_settles_its_sessions(
    ledger: InMemoryLedger, clock: FakeClock
) -> None:
    """Sessions do not depend on the registry: a host that deregistered is still paid for its receipts."""
    await ledger.register_host(HOST, peer_id="12D3KooWhost", models=("m",), stake=1)
    session_id = await open_session(ledger, clock)
    await ledger.deregister_host(HOST)
    settlement = await ledger.settle(HOST, session_id, 10_000, receipt(ledger, session_id, 10_000))
    assert settlement.amount == 10_000
