"""The in-memory ledger against a model, under random sequences of calls (Hypothesis stateful testing).

Rules open sessions, sign receipts for random cumulative amounts — genuine, beyond the deposit, going
backwards, forged (another key, another chain, another session) — settle, close, advance the clock and
reclaim, sometimes as the wrong caller. Each rule predicts from the model whether the call must succeed,
what it must pay, and which error it must raise otherwise. The invariants check the money after every
step: each session's deposit is host share + fee + refunded + locked, the host never gets more than the
largest genuine receipt, every balance is what the model says (none negative), and the total supply of
each token never changes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pytest
from eth_account import Account
from eth_account.signers.local import LocalAccount
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, initialize, invariant, multiple, rule

from fabstir import InsufficientFundsError, InvalidReceiptError, PaymentError
from fabstir.chain import InMemoryLedger, Settlement
from fabstir.protocol import sign_receipt

T = TypeVar("T")

# Signing costs a fraction of a millisecond: a few fixed accounts keep key generation out of the loop.
CLIENTS: tuple[LocalAccount, ...] = tuple(Account.from_key(bytes([0x10 + i]) * 32) for i in range(3))
HOSTS: tuple[LocalAccount, ...] = tuple(Account.from_key(bytes([0x20 + i]) * 32) for i in range(2))
STRANGER: LocalAccount = Account.from_key(bytes([0x30]) * 32)
EVERYONE = (*CLIENTS, *HOSTS, STRANGER)
TOKENS = ("ETH", "USDC")
#: Small enough that some deposits do not fit in a balance.
FUNDS = 1_000_000
START = 1_000_000.0

FORGERIES = ("genuine", "another-key", "another-chain", "another-session")
#: Mostly genuine receipts from the right caller, so that sessions live long enough to be paid into.
forgeries = st.one_of(st.just("genuine"), st.sampled_from(FORGERIES))
wrong_callers = st.sampled_from((False, False, False, True))


@dataclass(slots=True)
class Expected:
    """What the model says a session holds."""

    client: LocalAccount
    host: LocalAccount
    token: str
    deposit: int
    expiry: float
    settled: int = 0
    host_share: int = 0
    fees: int = 0
    refunded: int = 0
    closed: bool = False
    largest_genuine_receipt: int = 0
    #: Genuine receipts the client signed, for the host (or an attacker) to submit again later.
    receipts: list[tuple[int, bytes]] = field(default_factory=list)


class LedgerMachine(RuleBasedStateMachine):
    sessions = Bundle("sessions")

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.now = START
        self.ledger = InMemoryLedger(clock=lambda: self.now)
        self.expected: dict[str, Expected] = {}
        self.balances: dict[tuple[str, str], int] = {}

    def teardown(self) -> None:
        self.loop.close()

    def run(self, call: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(call)

    def credit(self, address: str, token: str, amount: int) -> None:
        self.balances[(address, token)] = self.balances.get((address, token), 0) + amount

    def fee(self, cumulative: int) -> int:
        return cumulative * self.ledger.fee_basis_points // 10_000

    # setup -------------------------------------------------------------------------------------------

    # 333 bps most of the time: an odd fee makes every wrong rounding show. The first session is opened
    # here, so that steps are not spent waiting for one to exist.
    @initialize(
        target=sessions,
        fee_basis_points=st.one_of(st.just(333), st.sampled_from([0, 1, 100, 10_000])),
        client=st.sampled_from(CLIENTS),
        host=st.sampled_from(HOSTS),
    )
    def fund(self, fee_basis_points: int, client: LocalAccount, host: LocalAccount) -> str:
        self.ledger = InMemoryLedger(clock=lambda: self.now, fee_basis_points=fee_basis_points)
        for account in EVERYONE:
            for token in TOKENS:
                self.ledger.mint(account.address, FUNDS, token)
                self.credit(account.address, token, FUNDS)
        session_id = self.open_session(client, host, "ETH", FUNDS // 4, 1_000)
        assert isinstance(session_id, str)  # the deposit fits in a fresh balance
        return session_id

    # rules -------------------------------------------------------------------------------------------

    @rule(
        target=sessions,
        client=st.sampled_from(CLIENTS),
        host=st.sampled_from(HOSTS),
        token=st.sampled_from(TOKENS),
        deposit=st.integers(1, FUNDS // 2),
        ttl=st.integers(1, 1_000),
    )
    def open_session(
        self, client: LocalAccount, host: LocalAccount, token: str, deposit: int, ttl: int
    ) -> Any:
        available = self.balances.get((client.address, token), 0)
        call = self.ledger.open_session(
            client, host=host.address, token=token, deposit=deposit, price_per_token=1, expiry=self.now + ttl
        )
        if deposit > available:
            with pytest.raises(InsufficientFundsError):
                self.run(call)
            return multiple()
        session = self.run(call)
        self.credit(client.address, token, -deposit)
        self.expected[session.session_id] = Expected(client, host, token, deposit, self.now + ttl)
        return session.session_id

    def sign(self, session_id: str, amount: int, forgery: str) -> bytes:
        model = self.expected[session_id]
        signature = sign_receipt(
            STRANGER if forgery == "another-key" else model.client,
            chain_id=self.ledger.chain_id + (forgery == "another-chain"),
            verifying_contract=self.ledger.verifying_contract,
            session_id="0x" + "ee" * 32 if forgery == "another-session" else session_id,
            amount=amount,
        )
        if forgery == "genuine":
            model.largest_genuine_receipt = max(model.largest_genuine_receipt, amount)
            model.receipts.append((amount, signature))
        return signature

    def draw_amount(self, data: st.DataObject, session_id: str) -> int:
        """Around what is settled: backwards, equal, forwards, up to a fifth beyond the deposit."""
        model = self.expected[session_id]
        return data.draw(
            st.one_of(
                st.integers(0, model.deposit + model.deposit // 5 + 1),
                st.integers(max(0, model.settled - 3), model.settled + 3),
                st.just(model.deposit),
            ),
            label="amount",
        )

    def refusal(
        self, session_id: str, caller: LocalAccount, *, by_host: bool = True
    ) -> type[PaymentError] | None:
        """The error a call on this session must raise for a reason other than the receipt, if any."""
        model = self.expected[session_id]
        if model.closed:
            return PaymentError
        if caller.address != (model.host if by_host else model.client).address:
            return PaymentError
        expired = self.now >= model.expiry
        if expired if by_host else not expired:
            return PaymentError
        return None

    def check_refused(
        self, what: str, call: Coroutine[Any, Any, Settlement], error: type[PaymentError]
    ) -> None:
        event(f"{what} refused: {error.__name__}")
        with pytest.raises(PaymentError) as caught:
            self.run(call)
        # A plain PaymentError must not be a receipt or funds problem, and a receipt problem must say so.
        assert type(caught.value) is error

    def pay(self, session_id: str, amount: int, settlement: Settlement) -> None:
        model = self.expected[session_id]
        increment, fee = amount - model.settled, self.fee(amount) - self.fee(model.settled)
        assert (settlement.amount, settlement.fee, settlement.host_amount) == (
            increment,
            fee,
            increment - fee,
        )
        model.settled = amount
        model.host_share += increment - fee
        model.fees += fee
        self.credit(model.host.address, model.token, increment - fee)
        self.credit(self.ledger.treasury, model.token, fee)

    @rule(
        session_id=sessions,
        data=st.data(),
        forgery=forgeries,
        wrong_caller=wrong_callers,
    )
    def settle(self, session_id: str, data: st.DataObject, forgery: str, wrong_caller: bool) -> None:
        model = self.expected[session_id]
        amount = self.draw_amount(data, session_id)
        caller = STRANGER if wrong_caller else model.host
        call = self.ledger.settle(caller, session_id, amount, self.sign(session_id, amount, forgery))
        error = self.refusal(session_id, caller)
        if error is None and (forgery != "genuine" or not model.settled < amount <= model.deposit):
            error = InvalidReceiptError
        if error is not None:
            self.check_refused("settle", call, error)
            return
        settlement = self.run(call)
        event("settle paid")
        self.pay(session_id, amount, settlement)
        assert settlement.refunded == 0

    @rule(session_id=sessions, steps=st.lists(st.integers(1, 50_000), min_size=2, max_size=4))
    def settle_jobs(self, session_id: str, steps: list[int]) -> None:
        """The common case, weighted in: the session carries several jobs and the host settles a genuine
        receipt after each, for more than before."""
        model = self.expected[session_id]
        for step in steps:
            amount = model.settled + step
            call = self.ledger.settle(
                model.host, session_id, amount, self.sign(session_id, amount, "genuine")
            )
            error = self.refusal(session_id, model.host)
            if error is None and amount > model.deposit:
                error = InvalidReceiptError
            if error is not None:
                self.check_refused("settle", call, error)
                return
            event("settle paid" if model.settled == 0 else "settle paid again")
            self.pay(session_id, amount, self.run(call))

    @rule(session_id=sessions, data=st.data(), wrong_caller=wrong_callers)
    def replay_receipt(self, session_id: str, data: st.DataObject, wrong_caller: bool) -> None:
        """Submits a genuine receipt signed earlier: valid only while it is above what was settled."""
        model = self.expected[session_id]
        if not model.receipts:
            return
        amount, signature = data.draw(st.sampled_from(model.receipts), label="receipt")
        caller = STRANGER if wrong_caller else model.host
        call = self.ledger.settle(caller, session_id, amount, signature)
        error = self.refusal(session_id, caller)
        if error is None and not model.settled < amount <= model.deposit:
            error = InvalidReceiptError
        if error is not None:
            self.check_refused("replay", call, error)
            return
        event("replay paid (never settled before)")
        self.pay(session_id, amount, self.run(call))

    @rule(
        session_id=sessions,
        data=st.data(),
        with_receipt=st.booleans(),
        forgery=forgeries,
        wrong_caller=wrong_callers,
    )
    def close(
        self, session_id: str, data: st.DataObject, with_receipt: bool, forgery: str, wrong_caller: bool
    ) -> None:
        model = self.expected[session_id]
        caller = STRANGER if wrong_caller else model.host
        amount = self.draw_amount(data, session_id) if with_receipt else None
        signature = self.sign(session_id, amount, forgery) if amount is not None else None
        call = self.ledger.close(caller, session_id, amount, signature)
        error = self.refusal(session_id, caller)
        if (
            error is None
            and amount is not None
            and (forgery != "genuine" or not model.settled <= amount <= model.deposit)
        ):
            error = InvalidReceiptError
        if error is not None:
            self.check_refused("close", call, error)
            return
        settlement = self.run(call)
        event("close with receipt" if amount is not None else "close without receipt")
        if amount is not None and amount > model.settled:
            self.pay(session_id, amount, settlement)
        else:
            assert (settlement.amount, settlement.fee, settlement.host_amount) == (0, 0, 0)
        self.refund(session_id, settlement)

    def refund(self, session_id: str, settlement: Settlement) -> None:
        model = self.expected[session_id]
        remainder = model.deposit - model.settled - model.refunded
        assert settlement.refunded == remainder
        model.refunded += remainder
        model.closed = True
        self.credit(model.client.address, model.token, remainder)

    @rule(session_id=sessions, wrong_caller=wrong_callers, other=st.sampled_from((*CLIENTS, *HOSTS)))
    def reclaim(self, session_id: str, wrong_caller: bool, other: LocalAccount) -> None:
        model = self.expected[session_id]
        caller = other if wrong_caller else model.client
        call = self.ledger.reclaim(caller, session_id)
        error = self.refusal(session_id, caller, by_host=False)
        if error is not None:
            self.check_refused("reclaim", call, error)
            return
        settlement = self.run(call)
        event("reclaim refunded")
        assert (settlement.amount, settlement.fee, settlement.host_amount) == (0, 0, 0)
        self.refund(session_id, settlement)

    @rule(seconds=st.integers(0, 120))
    def advance_clock(self, seconds: int) -> None:
        self.now += seconds

    @rule(session_id=sessions)
    def advance_to_expiry(self, session_id: str) -> None:
        """Lands on the expiry instant exactly: the last moment of settling is just before it."""
        self.now = max(self.now, self.expected[session_id].expiry)

    # invariants --------------------------------------------------------------------------------------

    @invariant()
    def sessions_match_the_model_and_conserve_their_deposit(self) -> None:
        for session_id, model in self.expected.items():
            session = self.run(self.ledger.get_session(session_id))
            assert session.deposit == model.host_share + model.fees + session.refunded + session.locked
            assert (session.settled, session.refunded, session.closed) == (
                model.settled,
                model.refunded,
                model.closed,
            )
            assert session.locked >= 0
            assert session.locked == 0 or not session.closed
            assert session.settled <= model.largest_genuine_receipt

    @invariant()
    def balances_match_the_model_and_none_is_negative(self) -> None:
        for address in {*(a.address for a in EVERYONE), self.ledger.treasury}:
            for token in TOKENS:
                balance = self.run(self.ledger.balance_of(address, token))
                assert balance == self.balances.get((address, token), 0)
                assert balance >= 0

    @invariant()
    def total_supply_never_changes(self) -> None:
        for token in TOKENS:
            locked = sum(
                m.deposit - m.settled - m.refunded for m in self.expected.values() if m.token == token
            )
            held = sum(amount for (_, t), amount in self.balances.items() if t == token)
            assert self.ledger.total_supply(token) == len(EVERYONE) * FUNDS == held + locked


LedgerMachine.TestCase.settings = settings(
    max_examples=50,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestLedgerStateMachine = LedgerMachine.TestCase
TestLedgerStateMachine.__doc__ = (
    "Random sequences of opens, genuine and forged receipts, settlements, closes, clock moves and "
    "reclaims keep every session, balance and total as the model predicts."
)
