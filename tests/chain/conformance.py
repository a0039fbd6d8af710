"""The ledger conformance suite: what the SDK and the host node rely on from any
:class:`fabstir.chain.PaymentLedger`.

Not collected by itself (the class name does not start with ``Test``). An implementation's test module
subclasses :class:`LedgerConformance` and provides the ``harness`` fixture::

    class TestMyLedger(LedgerConformance):
        @pytest.fixture
        async def harness(self) -> AsyncIterator[LedgerHarness]:
            ledger = ...  # fresh per test
            yield LedgerHarness(ledger=ledger, client=..., host=..., stranger=..., erc20="USDC",
                                now=..., advance=...)

What the harness must guarantee: ``client``, ``host`` and ``stranger`` are three distinct accounts, each
holding at least :data:`FUNDS` of the native token and of ``erc20`` (a 6-decimals ERC-20-like token) when
the test starts; ``now()`` is the ledger's time (a block timestamp on a chain) and ``advance(s)`` moves it
forward by ``s`` seconds. Tests measure balances as differences, so accounts may hold more. On a chain the
native balance also pays gas: pass ``balance`` returning the balance with the account's gas spending added
back (or run with a zero gas price).

Errors are checked by class and by a short phrase of the message (``closed``, ``expired``, ``not expired``,
``host``, ``client``), which an implementation mapping contract reverts must keep.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest
from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_utils.address import is_checksum_address

from fabstir import InsufficientFundsError, InvalidReceiptError, PaymentError
from fabstir.chain import PaymentLedger, SessionInfo, Settlement
from fabstir.protocol import sign_receipt

__all__ = ["DEPOSIT", "FUNDS", "PRICE", "LedgerConformance", "LedgerHarness"]

#: What each harness account holds at least, of each token.
FUNDS = 10**18
#: A deposit with digits everywhere, so that a fee rounded the wrong way shows.
DEPOSIT = 987_654_321
PRICE = 1_000
#: How long sessions opened by the suite last, in ledger seconds.
TTL = 3600.0

_SESSION_ID = re.compile(r"0x[0-9a-fA-F]{64}")
_TX_HASH = re.compile(r"0x[0-9a-fA-F]{64}")


@dataclass(frozen=True, slots=True)
class LedgerHarness:
    """A ledger under test and what the suite needs around it (see the module docstring)."""

    ledger: PaymentLedger
    client: LocalAccount
    host: LocalAccount
    stranger: LocalAccount
    erc20: str
    now: Callable[[], Awaitable[float]]
    advance: Callable[[float], Awaitable[None]]
    balance: Callable[[str, str], Awaitable[int]] | None = None
    #: What a host registration must stake at least.
    min_stake: int = 0
    native: str = "ETH"

    async def balance_of(self, address: str, token: str) -> int:
        if self.balance is not None:
            return await self.balance(address, token)
        return await self.ledger.balance_of(address, token)

    async def balances(self, token: str) -> dict[str, int]:
        """Balances of the client, the host, the stranger and the treasury, by role."""
        accounts = {
            "client": self.client.address,
            "host": self.host.address,
            "stranger": self.stranger.address,
            "treasury": self.ledger.treasury,
        }
        return {role: await self.balance_of(address, token) for role, address in accounts.items()}

    async def changes(self, before: dict[str, int], token: str) -> dict[str, int]:
        """What each role's balance gained (negative: lost) since ``before``."""
        after = await self.balances(token)
        return {role: after[role] - before[role] for role in after}

    async def open(
        self,
        *,
        token: str | None = None,
        deposit: int = DEPOSIT,
        price_per_token: int = PRICE,
        ttl: float = TTL,
        client: LocalAccount | None = None,
        host: str | None = None,
    ) -> SessionInfo:
        return await self.ledger.open_session(
            client or self.client,
            host=self.host.address if host is None else host,
            token=self.native if token is None else token,
            deposit=deposit,
            price_per_token=price_per_token,
            expiry=await self.now() + ttl,
        )

    def receipt(
        self,
        session_id: str,
        amount: int,
        *,
        signer: LocalAccount | None = None,
        chain_id: int | None = None,
        verifying_contract: str | None = None,
    ) -> bytes:
        """The client's signature over ``amount`` for ``session_id`` on this ledger, unless told otherwise."""
        return sign_receipt(
            signer or self.client,
            chain_id=self.ledger.chain_id if chain_id is None else chain_id,
            verifying_contract=verifying_contract or self.ledger.verifying_contract,
            session_id=session_id,
            amount=amount,
        )

    def fee(self, cumulative: int) -> int:
        """The treasury's share of a session that settled ``cumulative`` in total (rounded down)."""
        return cumulative * self.ledger.fee_basis_points // 10_000


def _unchanged(changes: dict[str, int]) -> bool:
    return all(change == 0 for change in changes.values())


class LedgerConformance:
    """Behaviour every ledger must show; see the module docstring for how to subclass."""

    @pytest.fixture
    def harness(self) -> LedgerHarness:
        raise NotImplementedError("a LedgerConformance subclass must provide the harness fixture")

    # ledger identity ---------------------------------------------------------------------------------

    async def test_identity(self, harness: LedgerHarness) -> None:
        """The ledger names its chain, the checksummed address receipts are bound to, its fee in basis
        points (0..10000) and a checksummed treasury."""
        ledger = harness.ledger
        assert isinstance(ledger, PaymentLedger)
        assert isinstance(ledger.chain_id, int)
        assert ledger.chain_id > 0
        assert is_checksum_address(ledger.verifying_contract)
        assert is_checksum_address(ledger.treasury)
        assert 0 <= ledger.fee_basis_points <= 10_000

    # open_session ------------------------------------------------------------------------------------

    async def test_open_session_locks_the_deposit(self, harness: LedgerHarness) -> None:
        """Opening a session moves the deposit out of the client's balance into the session, which
        records its terms, nothing settled, nothing refunded, open; get_session returns the same."""
        before = await harness.balances(harness.native)
        expiry_floor = await harness.now()
        session = await harness.open()
        assert _SESSION_ID.fullmatch(session.session_id)
        assert (session.client, session.host, session.token) == (
            harness.client.address,
            harness.host.address,
            harness.native,
        )
        assert (session.deposit, session.price_per_token) == (DEPOSIT, PRICE)
        assert session.expiry >= expiry_floor + TTL - 1  # a chain may store whole seconds
        assert (session.settled, session.refunded, session.closed, session.locked) == (0, 0, False, DEPOSIT)
        assert await harness.ledger.get_session(session.session_id) == session
        assert await harness.changes(before, harness.native) == {
            "client": -DEPOSIT,
            "host": 0,
            "stranger": 0,
            "treasury": 0,
        }

    async def test_each_session_gets_its_own_id(self, harness: LedgerHarness) -> None:
        """Two sessions with the same terms have different ids, and each keeps its own deposit."""
        first = await harness.open()
        second = await harness.open(deposit=DEPOSIT + 1)
        assert first.session_id != second.session_id
        assert (await harness.ledger.get_session(first.session_id)).deposit == DEPOSIT
        assert (await harness.ledger.get_session(second.session_id)).deposit == DEPOSIT + 1

    @pytest.mark.parametrize(
        ("terms", "message"),
        [
            pytest.param({"token": "NOT-A-TOKEN"}, "token", id="unknown-token"),
            pytest.param({"deposit": 0}, "deposit", id="zero-deposit"),
            pytest.param({"deposit": -5}, "deposit", id="negative-deposit"),
            pytest.param({"price_per_token": 0}, "price", id="zero-price"),
            pytest.param({"price_per_token": -1}, "price", id="negative-price"),
            pytest.param({"ttl": -60.0}, "expir", id="expiry-in-the-past"),
            pytest.param({"host": "client"}, "itself", id="host-is-the-client"),
        ],
    )
    async def test_open_session_refuses_bad_terms(
        self, harness: LedgerHarness, terms: dict[str, Any], message: str
    ) -> None:
        """Unknown token, a deposit or price that is not positive, an expiry in the past, or the client as
        its own host: PaymentError (not a funds problem), and no money moves."""
        if terms.get("host") == "client":
            terms = {**terms, "host": harness.client.address}
        before = await harness.balances(harness.native)
        with pytest.raises(PaymentError, match=message) as caught:
            await harness.open(**terms)
        assert not isinstance(caught.value, InsufficientFundsError | InvalidReceiptError)
        assert _unchanged(await harness.changes(before, harness.native))

    async def test_open_session_beyond_the_balance_is_insufficient_funds(
        self, harness: LedgerHarness
    ) -> None:
        """A deposit larger than the client's balance raises InsufficientFundsError and moves nothing."""
        before = await harness.balances(harness.erc20)
        with pytest.raises(InsufficientFundsError):
            await harness.open(token=harness.erc20, deposit=before["client"] + 1)
        assert _unchanged(await harness.changes(before, harness.erc20))

    async def test_unknown_session_is_a_payment_error(self, harness: LedgerHarness) -> None:
        """get_session, settle, close and reclaim of a session that was never opened raise PaymentError."""
        unknown = "0x" + "42" * 32
        signature = harness.receipt(unknown, 1)
        with pytest.raises(PaymentError):
            await harness.ledger.get_session(unknown)
        with pytest.raises(PaymentError):
            await harness.ledger.settle(harness.host, unknown, 1, signature)
        with pytest.raises(PaymentError):
            await harness.ledger.close(harness.host, unknown)
        with pytest.raises(PaymentError):
            await harness.ledger.reclaim(harness.client, unknown)

    # settle ------------------------------------------------------------------------------------------

    async def test_settle_pays_host_and_treasury_exactly(self, harness: LedgerHarness) -> None:
        """Settling a receipt pays its amount out of the session: the treasury gets
        amount × fee_bps // 10000 (integer, rounded down), the host the rest, to the unit."""
        session = await harness.open()
        amount = 123_456_789
        fee = harness.fee(amount)
        before = await harness.balances(harness.native)
        settlement = await harness.ledger.settle(
            harness.host, session.session_id, amount, harness.receipt(session.session_id, amount)
        )
        assert settlement.session_id == session.session_id
        assert (settlement.amount, settlement.fee, settlement.host_amount, settlement.refunded) == (
            amount,
            fee,
            amount - fee,
            0,
        )
        assert _TX_HASH.fullmatch(settlement.tx_hash)
        assert settlement.gas_used >= 0
        assert await harness.changes(before, harness.native) == {
            "client": 0,
            "host": amount - fee,
            "stranger": 0,
            "treasury": fee,
        }
        after = await harness.ledger.get_session(session.session_id)
        assert (after.settled, after.refunded, after.locked, after.closed) == (
            amount,
            0,
            DEPOSIT - amount,
            False,
        )

    async def test_several_settlements_pay_each_increment(self, harness: LedgerHarness) -> None:
        """A session carrying several jobs settles cumulative receipts one after the other: each pays only
        the increment since the last, and the fees of the session are the fee of its total (rounding on
        the cumulative amount, so splitting settlements cannot dodge the fee)."""
        session = await harness.open()
        before = await harness.balances(harness.native)
        cumulative = [150, 300, 450, 100_151]
        paid: list[tuple[int, int]] = []
        for amount in cumulative:
            settlement = await harness.ledger.settle(
                harness.host, session.session_id, amount, harness.receipt(session.session_id, amount)
            )
            paid.append((settlement.amount, settlement.fee))
        previous = [0, *cumulative[:-1]]
        assert paid == [
            (now - then, harness.fee(now) - harness.fee(then))
            for now, then in zip(cumulative, previous, strict=True)
        ]
        total = cumulative[-1]
        assert await harness.changes(before, harness.native) == {
            "client": 0,
            "host": total - harness.fee(total),
            "stranger": 0,
            "treasury": harness.fee(total),
        }
        assert (await harness.ledger.get_session(session.session_id)).settled == total

    async def test_settle_the_whole_deposit(self, harness: LedgerHarness) -> None:
        """A receipt for exactly the deposit is valid and leaves nothing locked."""
        session = await harness.open()
        await harness.ledger.settle(
            harness.host, session.session_id, DEPOSIT, harness.receipt(session.session_id, DEPOSIT)
        )
        assert (await harness.ledger.get_session(session.session_id)).locked == 0

    @pytest.mark.parametrize(
        "forgery",
        [
            "another-signer",
            "another-session",
            "another-chain",
            "another-contract",
            "another-amount",
            "garbage",
        ],
    )
    async def test_settle_refuses_a_receipt_not_for_these_terms(
        self, harness: LedgerHarness, forgery: str
    ) -> None:
        """A receipt signed by someone else than the client, or by the client for another session, chain,
        verifying contract or amount, or not a signature at all, raises InvalidReceiptError; no money
        moves and the session is untouched."""
        session = await harness.open()
        other = await harness.open()
        amount = 1_000_000
        signature = {
            "another-signer": lambda: harness.receipt(session.session_id, amount, signer=harness.stranger),
            "another-session": lambda: harness.receipt(other.session_id, amount),
            "another-chain": lambda: harness.receipt(
                session.session_id, amount, chain_id=harness.ledger.chain_id + 1
            ),
            "another-contract": lambda: harness.receipt(
                session.session_id, amount, verifying_contract=Account.create().address
            ),
            "another-amount": lambda: harness.receipt(session.session_id, amount + 1),
            "garbage": lambda: b"\x01" * 65,
        }[forgery]()
        before = await harness.balances(harness.native)
        with pytest.raises(InvalidReceiptError):
            await harness.ledger.settle(harness.host, session.session_id, amount, signature)
        assert _unchanged(await harness.changes(before, harness.native))
        assert await harness.ledger.get_session(session.session_id) == session

    async def test_settle_refuses_replays_and_going_backwards(self, harness: LedgerHarness) -> None:
        """Once a receipt is settled, settling it again, or settling an older smaller one, or a receipt for
        zero, raises InvalidReceiptError and pays nothing."""
        session = await harness.open()
        older, newer = harness.receipt(session.session_id, 100), harness.receipt(session.session_id, 200)
        await harness.ledger.settle(harness.host, session.session_id, 200, newer)
        before = await harness.balances(harness.native)
        with pytest.raises(InvalidReceiptError):
            await harness.ledger.settle(harness.host, session.session_id, 200, newer)
        with pytest.raises(InvalidReceiptError):
            await harness.ledger.settle(harness.host, session.session_id, 100, older)
        with pytest.raises(InvalidReceiptError):
            await harness.ledger.settle(
                harness.host, session.session_id, 0, harness.receipt(session.session_id, 0)
            )
        assert _unchanged(await harness.changes(before, harness.native))
        assert (await harness.ledger.get_session(session.session_id)).settled == 200

    async def test_settle_refuses_more_than_the_deposit(self, harness: LedgerHarness) -> None:
        """A genuine receipt for more than the deposit raises InvalidReceiptError: a session never pays
        more than was deposited."""
        session = await harness.open()
        before = await harness.balances(harness.native)
        with pytest.raises(InvalidReceiptError):
            await harness.ledger.settle(
                harness.host,
                session.session_id,
                DEPOSIT + 1,
                harness.receipt(session.session_id, DEPOSIT + 1),
            )
        assert _unchanged(await harness.changes(before, harness.native))

    async def test_settle_after_expiry_is_refused(self, harness: LedgerHarness) -> None:
        """Once the session expired the host can no longer settle, even a genuine receipt."""
        session = await harness.open(ttl=60.0)
        await harness.advance(61.0)
        with pytest.raises(PaymentError, match="expired") as caught:
            await harness.ledger.settle(
                harness.host, session.session_id, 10, harness.receipt(session.session_id, 10)
            )
        assert not isinstance(caught.value, InvalidReceiptError)
        assert (await harness.ledger.get_session(session.session_id)).settled == 0

    @pytest.mark.parametrize("caller", ["client", "stranger"])
    async def test_only_the_host_settles(self, harness: LedgerHarness, caller: str) -> None:
        """Anyone but the session's host — even the client itself — holding a genuine receipt gets a
        PaymentError and nothing is paid."""
        account = harness.client if caller == "client" else harness.stranger
        session = await harness.open()
        before = await harness.balances(harness.native)
        with pytest.raises(PaymentError, match="host") as caught:
            await harness.ledger.settle(
                account, session.session_id, 10, harness.receipt(session.session_id, 10)
            )
        assert not isinstance(caught.value, InvalidReceiptError)
        assert _unchanged(await harness.changes(before, harness.native))

    async def test_concurrent_settlements_of_one_receipt_pay_once(self, harness: LedgerHarness) -> None:
        """The same receipt settled twice at the same time pays once: one call succeeds, the other raises
        InvalidReceiptError."""
        session = await harness.open()
        signature = harness.receipt(session.session_id, 5_000)
        before = await harness.balances(harness.native)
        results = await asyncio.gather(
            *(harness.ledger.settle(harness.host, session.session_id, 5_000, signature) for _ in range(2)),
            return_exceptions=True,
        )
        assert sorted(type(result).__name__ for result in results) == ["InvalidReceiptError", "Settlement"]
        assert (await harness.changes(before, harness.native))["host"] == 5_000 - harness.fee(5_000)

    # close -------------------------------------------------------------------------------------------

    async def test_close_without_receipt_refunds_everything(self, harness: LedgerHarness) -> None:
        """Closing a session nothing was settled in gives the whole deposit back to the client."""
        session = await harness.open()
        before = await harness.balances(harness.native)
        settlement = await harness.ledger.close(harness.host, session.session_id)
        assert (settlement.amount, settlement.host_amount, settlement.fee, settlement.refunded) == (
            0,
            0,
            0,
            DEPOSIT,
        )
        assert await harness.changes(before, harness.native) == {
            "client": DEPOSIT,
            "host": 0,
            "stranger": 0,
            "treasury": 0,
        }
        closed = await harness.ledger.get_session(session.session_id)
        assert (closed.closed, closed.settled, closed.refunded, closed.locked) == (True, 0, DEPOSIT, 0)

    async def test_close_with_final_receipt_settles_then_refunds(self, harness: LedgerHarness) -> None:
        """Closing with a last receipt pays its increment (host and fee) and refunds the rest:
        deposit == host + fee + refund, to the unit."""
        session = await harness.open()
        first = 40_000
        await harness.ledger.settle(
            harness.host, session.session_id, first, harness.receipt(session.session_id, first)
        )
        before = await harness.balances(harness.native)
        final = 654_321
        settlement = await harness.ledger.close(
            harness.host, session.session_id, final, harness.receipt(session.session_id, final)
        )
        fee = harness.fee(final) - harness.fee(first)
        assert (settlement.amount, settlement.fee, settlement.host_amount, settlement.refunded) == (
            final - first,
            fee,
            final - first - fee,
            DEPOSIT - final,
        )
        assert await harness.changes(before, harness.native) == {
            "client": DEPOSIT - final,
            "host": final - first - fee,
            "stranger": 0,
            "treasury": fee,
        }
        closed = await harness.ledger.get_session(session.session_id)
        assert (closed.closed, closed.settled, closed.refunded, closed.locked) == (
            True,
            final,
            DEPOSIT - final,
            0,
        )

    async def test_close_with_the_already_settled_receipt_only_refunds(self, harness: LedgerHarness) -> None:
        """A final receipt for exactly what was settled is allowed: nothing more is paid, the rest is
        refunded and the session closes."""
        session = await harness.open()
        signature = harness.receipt(session.session_id, 7_777)
        await harness.ledger.settle(harness.host, session.session_id, 7_777, signature)
        before = await harness.balances(harness.native)
        settlement = await harness.ledger.close(harness.host, session.session_id, 7_777, signature)
        assert (settlement.amount, settlement.fee, settlement.refunded) == (0, 0, DEPOSIT - 7_777)
        assert await harness.changes(before, harness.native) == {
            "client": DEPOSIT - 7_777,
            "host": 0,
            "stranger": 0,
            "treasury": 0,
        }

    @pytest.mark.parametrize("problem", ["below-settled", "forged", "beyond-deposit", "another-session"])
    async def test_close_with_a_bad_final_receipt_changes_nothing(
        self, harness: LedgerHarness, problem: str
    ) -> None:
        """A final receipt below what was settled, forged, beyond the deposit or for another session raises
        InvalidReceiptError, and the session stays open with its deposit locked (no partial close)."""
        session = await harness.open()
        other = await harness.open()
        await harness.ledger.settle(
            harness.host, session.session_id, 500, harness.receipt(session.session_id, 500)
        )
        amount, signature = {
            "below-settled": (499, harness.receipt(session.session_id, 499)),
            "forged": (600, harness.receipt(session.session_id, 600, signer=harness.stranger)),
            "beyond-deposit": (DEPOSIT + 1, harness.receipt(session.session_id, DEPOSIT + 1)),
            "another-session": (600, harness.receipt(other.session_id, 600)),
        }[problem]
        before = await harness.balances(harness.native)
        kept = await harness.ledger.get_session(session.session_id)
        with pytest.raises(InvalidReceiptError):
            await harness.ledger.close(harness.host, session.session_id, amount, signature)
        assert _unchanged(await harness.changes(before, harness.native))
        assert await harness.ledger.get_session(session.session_id) == kept

    @pytest.mark.parametrize("caller", ["client", "stranger"])
    async def test_only_the_host_closes(self, harness: LedgerHarness, caller: str) -> None:
        """Anyone but the host closing the session gets a PaymentError; the session stays open."""
        account = harness.client if caller == "client" else harness.stranger
        session = await harness.open()
        with pytest.raises(PaymentError, match="host"):
            await harness.ledger.close(account, session.session_id)
        assert not (await harness.ledger.get_session(session.session_id)).closed

    async def test_close_after_expiry_is_refused(self, harness: LedgerHarness) -> None:
        """After expiry the host can no longer close (with or without a receipt): the client reclaims."""
        session = await harness.open(ttl=60.0)
        await harness.advance(61.0)
        with pytest.raises(PaymentError, match="expired"):
            await harness.ledger.close(
                harness.host, session.session_id, 10, harness.receipt(session.session_id, 10)
            )
        with pytest.raises(PaymentError, match="expired"):
            await harness.ledger.close(harness.host, session.session_id)
        assert not (await harness.ledger.get_session(session.session_id)).closed

    # reclaim -----------------------------------------------------------------------------------------

    async def test_reclaim_after_expiry_refunds_what_was_never_settled(self, harness: LedgerHarness) -> None:
        """After expiry the client gets back deposit minus what was settled, and the session closes."""
        session = await harness.open(ttl=60.0)
        await harness.ledger.settle(
            harness.host, session.session_id, 1_234, harness.receipt(session.session_id, 1_234)
        )
        await harness.advance(61.0)
        before = await harness.balances(harness.native)
        settlement = await harness.ledger.reclaim(harness.client, session.session_id)
        assert (settlement.amount, settlement.fee, settlement.host_amount, settlement.refunded) == (
            0,
            0,
            0,
            DEPOSIT - 1_234,
        )
        assert await harness.changes(before, harness.native) == {
            "client": DEPOSIT - 1_234,
            "host": 0,
            "stranger": 0,
            "treasury": 0,
        }
        closed = await harness.ledger.get_session(session.session_id)
        assert (closed.closed, closed.settled, closed.refunded, closed.locked) == (
            True,
            1_234,
            DEPOSIT - 1_234,
            0,
        )

    async def test_reclaim_before_expiry_is_refused(self, harness: LedgerHarness) -> None:
        """Before expiry the deposit is the host's to settle against: reclaim raises PaymentError."""
        session = await harness.open(ttl=60.0)
        await harness.advance(30.0)
        before = await harness.balances(harness.native)
        with pytest.raises(PaymentError, match="not expired"):
            await harness.ledger.reclaim(harness.client, session.session_id)
        assert _unchanged(await harness.changes(before, harness.native))
        assert not (await harness.ledger.get_session(session.session_id)).closed

    @pytest.mark.parametrize("caller", ["host", "stranger"])
    async def test_only_the_client_reclaims(self, harness: LedgerHarness, caller: str) -> None:
        """Anyone but the client reclaiming an expired session gets a PaymentError; nothing moves."""
        account = harness.host if caller == "host" else harness.stranger
        session = await harness.open(ttl=60.0)
        await harness.advance(61.0)
        before = await harness.balances(harness.native)
        with pytest.raises(PaymentError, match="client"):
            await harness.ledger.reclaim(account, session.session_id)
        assert _unchanged(await harness.changes(before, harness.native))
        assert not (await harness.ledger.get_session(session.session_id)).closed

    # closed sessions ---------------------------------------------------------------------------------

    @pytest.mark.parametrize("ended_by", ["close", "reclaim"])
    @pytest.mark.parametrize("then", ["settle", "close", "close-with-receipt", "reclaim"])
    async def test_a_closed_session_cannot_be_used_again(
        self, harness: LedgerHarness, ended_by: str, then: str
    ) -> None:
        """After close or reclaim, settling, closing or reclaiming again raises PaymentError ("closed")
        and moves no money — even with a genuine receipt and even after expiry."""
        session = await harness.open(ttl=60.0)
        signature = harness.receipt(session.session_id, 100)
        if ended_by == "close":
            await harness.ledger.close(harness.host, session.session_id)
        else:
            await harness.advance(61.0)
            await harness.ledger.reclaim(harness.client, session.session_id)
        if then == "reclaim" and ended_by == "close":
            await harness.advance(61.0)  # so that only "closed" stands in the way
        before = await harness.balances(harness.native)
        attempts: dict[str, Callable[[], Awaitable[Settlement]]] = {
            "settle": lambda: harness.ledger.settle(harness.host, session.session_id, 100, signature),
            "close": lambda: harness.ledger.close(harness.host, session.session_id),
            "close-with-receipt": lambda: harness.ledger.close(
                harness.host, session.session_id, 100, signature
            ),
            "reclaim": lambda: harness.ledger.reclaim(harness.client, session.session_id),
        }
        with pytest.raises(PaymentError, match="closed"):
            await attempts[then]()
        assert _unchanged(await harness.changes(before, harness.native))

    # ERC-20 ------------------------------------------------------------------------------------------

    async def test_an_erc20_session_pays_in_that_token_only(self, harness: LedgerHarness) -> None:
        """A session in the ERC-20 locks, pays, charges the fee and refunds in that token; the native
        balances of client, host and treasury are not touched."""
        native_before = await harness.balances(harness.native)
        before = await harness.balances(harness.erc20)
        deposit = 5_000_000  # 5 USDC at 6 decimals
        session = await harness.open(token=harness.erc20, deposit=deposit, price_per_token=3)
        assert session.token == harness.erc20
        await harness.ledger.settle(
            harness.host, session.session_id, 1_234_567, harness.receipt(session.session_id, 1_234_567)
        )
        await harness.ledger.close(
            harness.host, session.session_id, 2_000_001, harness.receipt(session.session_id, 2_000_001)
        )
        fee = harness.fee(2_000_001)
        assert await harness.changes(before, harness.erc20) == {
            "client": -2_000_001,
            "host": 2_000_001 - fee,
            "stranger": 0,
            "treasury": fee,
        }
        assert _unchanged(await harness.changes(native_before, harness.native))

    # host registry -----------------------------------------------------------------------------------

    async def test_register_host_locks_the_stake(self, harness: LedgerHarness) -> None:
        """A registration is readable with get_host (active, with its metadata) and its stake leaves the
        host's native balance."""
        stake = max(harness.min_stake, 1_000)
        before = await harness.balances(harness.native)
        registration = await harness.ledger.register_host(
            harness.host, peer_id="12D3KooWconformance", models=("model-a", "model-b"), stake=stake
        )
        assert registration.address == harness.host.address
        assert (registration.peer_id, registration.models, registration.stake, registration.active) == (
            "12D3KooWconformance",
            ("model-a", "model-b"),
            stake,
            True,
        )
        assert await harness.ledger.get_host(harness.host.address) == registration
        assert (await harness.changes(before, harness.native))["host"] == -stake

    async def test_get_host_of_an_unregistered_address_is_none(self, harness: LedgerHarness) -> None:
        """An address that never registered has no registration."""
        assert await harness.ledger.get_host(harness.stranger.address) is None

    async def test_register_host_refuses_a_stake_below_the_minimum(self, harness: LedgerHarness) -> None:
        """A stake below the minimum (or negative) raises PaymentError and nothing is registered."""
        with pytest.raises(PaymentError, match="stake"):
            await harness.ledger.register_host(
                harness.host, peer_id="12D3KooWconformance", models=("m",), stake=harness.min_stake - 1
            )
        assert await harness.ledger.get_host(harness.host.address) is None

    async def test_register_host_twice_is_refused(self, harness: LedgerHarness) -> None:
        """A second registration of the same host raises PaymentError and keeps the first."""
        stake = max(harness.min_stake, 1)
        first = await harness.ledger.register_host(
            harness.host, peer_id="12D3KooWfirst", models=("m",), stake=stake
        )
        with pytest.raises(PaymentError, match="registered"):
            await harness.ledger.register_host(
                harness.host, peer_id="12D3KooWsecond", models=("m",), stake=stake
            )
        assert await harness.ledger.get_host(harness.host.address) == first

    async def test_register_host_beyond_the_balance_is_insufficient_funds(
        self, harness: LedgerHarness
    ) -> None:
        """A stake the host cannot pay raises InsufficientFundsError and nothing is registered."""
        balance = await harness.balance_of(harness.stranger.address, harness.native)
        with pytest.raises(InsufficientFundsError):
            await harness.ledger.register_host(
                harness.stranger,
                peer_id="12D3KooWpoor",
                models=("m",),
                stake=max(balance + 1, harness.min_stake),
            )
        assert await harness.ledger.get_host(harness.stranger.address) is None
