"""The host's pure parts: configuration, version choice, request and session checks, receipts, admission,
batching."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import pytest
from eth_account import Account

from fabstir import ConfigurationError, RejectReason
from fabstir.chain import SessionInfo
from fabstir.host import HostConfig, HostFaults
from fabstir.host._admission import Admission
from fabstir.host._batcher import MAX_BATCH_CHARS, MAX_BATCH_TOKENS, FlushPacer, split_token, take_batch
from fabstir.host._negotiation import choose_version, request_problem, session_problem
from fabstir.host._receipt_check import check_receipt
from fabstir.protocol import Receipt, Request, sign_receipt

MODEL = "m1"
PRICES = {MODEL: {"ETH": 10, "USDC": 1}}


def config(**overrides: Any) -> HostConfig:
    values: dict[str, Any] = {"models": (MODEL,), "prices": PRICES}
    values.update(overrides)
    return HostConfig(**values)


def request(**overrides: Any) -> Request:
    values: dict[str, Any] = {
        "job_id": "j1",
        "model": MODEL,
        "prompt": "hi",
        "max_tokens": 16,
        "client_address": "0x" + "11" * 20,
        "payment_token": "ETH",
    }
    values.update(overrides)
    return Request(**values)


# -- configuration -------------------------------------------------------------------------------------


def test_config_defaults_and_freezing() -> None:
    """Defaults follow SPEC §4's brief; models become a tuple and prices a read-only mapping."""
    cfg = config(models=[MODEL])
    assert cfg.models == (MODEL,)
    assert (cfg.max_tokens, cfg.max_concurrent_jobs, cfg.max_queue, cfg.credit_tokens) == (2048, 4, 8, 64)
    assert cfg.hold_ms == 10_000
    assert cfg.batch_interval == 0.025
    assert cfg.price(MODEL, "ETH") == 10
    assert cfg.price(MODEL, "DAI") is None
    with pytest.raises(TypeError):
        cfg.prices[MODEL]["ETH"] = 1  # type: ignore[index]
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.max_tokens = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"models": ()}, "models"),
        ({"models": "m1"}, "models"),
        ({"models": (MODEL, MODEL)}, "twice"),
        ({"prices": {}}, "no price"),
        ({"prices": {MODEL: {"ETH": -1}}}, "non-negative"),
        ({"prices": {MODEL: {"ETH": 1.5}}}, "integer"),
        ({"prices": {MODEL: {"ETH": 1}, "other": {"ETH": 1}}}, "not in models"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_concurrent_jobs": True}, "integer"),
        ({"max_queue": -1}, "max_queue"),
        ({"credit_tokens": 0}, "credit_tokens"),
        ({"receipt_timeout": 0}, "positive"),
        ({"batch_interval": -0.1}, "non-negative"),
        ({"record_refresh": 400.0}, "shorter"),
        ({"resume_ttl": float("nan")}, "finite"),
        ({"faults": "drop"}, "HostFaults"),
    ],
)
def test_config_validation(overrides: dict[str, Any], message: str) -> None:
    """Each invalid setting raises ConfigurationError naming the problem."""
    with pytest.raises(ConfigurationError, match=message):
        config(**overrides)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"reject": "nope"}, "reject"),
        ({"drop_at_token": -1}, "drop_at_token"),
        ({"error_at_token": 1.0}, "error_at_token"),
        ({"overclaim_tokens": -2}, "overclaim_tokens"),
        ({"first_token_delay": -1}, "first_token_delay"),
    ],
)
def test_faults_validation(overrides: dict[str, Any], message: str) -> None:
    """Invalid scripted faults raise ConfigurationError."""
    with pytest.raises(ConfigurationError, match=message):
        HostFaults(**overrides)


# -- negotiation ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("theirs", "ours", "chosen"),
    [
        (("1.0",), ("1.0",), "1.0"),
        (("1.3",), ("1.0",), "1.0"),
        (("1.0",), ("1.2",), "1.0"),
        (("2.0", "1.1"), ("1.4", "2.1"), "2.0"),
        (("2.0",), ("1.0",), None),
        (("garbage", "1"), ("1.0",), None),
    ],
)
def test_choose_version(theirs: tuple[str, ...], ours: tuple[str, ...], chosen: str | None) -> None:
    """The highest shared major wins, at the lower minor; no shared major gives None."""
    assert choose_version(theirs, ours) == chosen


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"model": "other"}, RejectReason.UNSUPPORTED_MODEL),
        ({"max_tokens": 4096}, RejectReason.ERROR),
        ({"max_tokens": 0}, RejectReason.ERROR),
        ({"payment_token": "DAI"}, RejectReason.INSUFFICIENT_PAYMENT),
        ({"max_price_per_token": 9}, RejectReason.INSUFFICIENT_PAYMENT),
        ({"model": "other", "max_price_per_token": 1}, RejectReason.UNSUPPORTED_MODEL),
    ],
)
def test_request_problem(overrides: dict[str, Any], reason: RejectReason) -> None:
    """Requests are checked in protocol order: model, token limit, payment token and price."""
    problem = request_problem(config(), request(**overrides))
    assert problem is not None
    assert problem[0] is reason


def test_request_problem_accepts_a_good_request() -> None:
    """A request for a served model, within limits, at or above the price, is acceptable."""
    assert request_problem(config(), request(max_price_per_token=10)) is None
    assert request_problem(config(), request(payment_token="USDC")) is None


HOST = Account.create()
CLIENT = Account.create()
SESSION = SessionInfo(
    session_id="0x" + "ab" * 32,
    client=CLIENT.address,
    host=HOST.address,
    token="ETH",
    deposit=1000,
    price_per_token=10,
    expiry=10_000.0,
    settled=0,
    refunded=0,
    closed=False,
)


@pytest.mark.parametrize(
    ("changes", "fragment"),
    [
        ({"closed": True}, "closed"),
        ({"host": CLIENT.address}, "another host"),
        ({"token": "USDC"}, "USDC"),
        ({"price_per_token": 9}, "price"),
        ({"expiry": 1030.0}, "expires"),
        ({"deposit": 9}, "one token"),
        ({"settled": 995}, "one token"),
    ],
)
def test_session_problem(changes: dict[str, Any], fragment: str) -> None:
    """A session must be open, pay this host in the offered token and price, last, and hold one token."""
    session = dataclasses.replace(SESSION, **changes)
    problem = session_problem(
        session,
        payment_address=HOST.address,
        payment_token="ETH",
        price_per_token=10,
        now=1000.0,
        min_session_ttl=60,
    )
    assert problem is not None
    assert fragment in problem


def test_session_problem_accepts_a_good_session() -> None:
    """A matching session passes (the host address compares case-insensitively)."""
    assert (
        session_problem(
            SESSION,
            payment_address=HOST.address.lower(),
            payment_token="ETH",
            price_per_token=10,
            now=1000.0,
            min_session_ttl=60,
        )
        is None
    )


# -- receipts ------------------------------------------------------------------------------------------

CHAIN_ID = 31337
CONTRACT = "0x" + "cc" * 20


def receipt(tokens: int, amount: int | None = None, *, signer: Any = CLIENT, **changes: Any) -> Receipt:
    amount = tokens * 10 if amount is None else amount
    signature = sign_receipt(
        signer, chain_id=CHAIN_ID, verifying_contract=CONTRACT, session_id=SESSION.session_id, amount=amount
    )
    values: dict[str, Any] = {
        "session_id": SESSION.session_id,
        "job_id": "j1",
        "tokens": tokens,
        "amount": amount,
        "signature": signature,
    }
    values.update(changes)
    return Receipt(**values)


def check(r: Receipt, *, previous: int = 0, sent: int = 10) -> str | None:
    return check_receipt(
        r,
        job_id="j1",
        session=SESSION,
        chain_id=CHAIN_ID,
        verifying_contract=CONTRACT,
        previous_amount=previous,
        tokens_sent=sent,
    )


def test_valid_receipt_passes() -> None:
    """A receipt signed by the session's client for tokens × price is accepted, also when repeated."""
    assert check(receipt(5)) is None
    assert check(receipt(5), previous=50) is None


@pytest.mark.parametrize(
    ("bad", "fragment"),
    [
        (lambda: receipt(5, signer=HOST), "signature"),
        (lambda: receipt(5, 49), "not 5 tokens"),
        (lambda: receipt(11), "only 10"),
        (lambda: receipt(5, job_id="j2"), "job"),
        (lambda: receipt(5, session_id="0x" + "cd" * 32), "session"),
        (lambda: receipt(5, signature=b"\x00" * 65), "signature"),
    ],
)
def test_invalid_receipts(bad: Any, fragment: str) -> None:
    """Wrong signer, wrong amount, too many tokens, another job or session, garbage signature: refused."""
    problem = check(bad())
    assert problem is not None
    assert fragment in problem


def test_receipt_must_not_go_backwards() -> None:
    """A receipt below the previous amount is refused."""
    problem = check(receipt(3), previous=40)
    assert problem is not None
    assert "below" in problem


# -- admission -----------------------------------------------------------------------------------------


async def test_admission_slots_then_queue_then_busy() -> None:
    """Tickets take free slots first, then queue places; beyond both, reserve() returns None."""
    admission = Admission(2, 1)
    a, b, c = admission.reserve(), admission.reserve(), admission.reserve()
    assert a is not None
    assert b is not None
    assert c is not None
    assert a.has_slot
    assert b.has_slot
    assert not c.has_slot
    assert admission.queued == 1
    assert admission.position(c) == 1
    assert admission.reserve() is None


async def test_admission_passes_slots_in_order_and_release_is_idempotent() -> None:
    """A released slot goes to the oldest queued ticket; releasing twice changes nothing."""
    admission = Admission(1, 2)
    a, b, c = admission.reserve(), admission.reserve(), admission.reserve()
    assert a is not None
    assert b is not None
    assert c is not None
    a.release()
    a.release()
    async with asyncio.timeout(1):
        await b.wait_slot()
    assert not c.has_slot
    assert admission.in_use == 1
    c.release()  # a queued ticket gives its place back
    assert admission.queued == 0
    b.release()
    assert admission.in_use == 0
    assert admission.reserve() is not None


async def test_admission_counts_active_and_reports_changes() -> None:
    """activate() counts the job as load; on_change fires on reserve, activate and release."""
    changes: list[int] = []
    admission = Admission(2, 0, on_change=lambda: changes.append(admission.active))
    ticket = admission.reserve()
    assert ticket is not None
    ticket.activate()
    assert admission.active == 1
    ticket.release()
    assert admission.active == 0
    assert changes == [0, 1, 0]


# -- batching ------------------------------------------------------------------------------------------


def test_take_batch_respects_limits() -> None:
    """A batch takes tokens up to stop, at most MAX_BATCH_TOKENS, and not beyond MAX_BATCH_CHARS of text."""
    tokens = ["a"] * (MAX_BATCH_TOKENS + 10)
    assert len(take_batch(tokens, 0, len(tokens))) == MAX_BATCH_TOKENS
    assert take_batch(tokens, 5, 8) == ("a", "a", "a")
    big = ["x" * 256] * 2000
    batch = take_batch(big, 0, len(big))
    assert sum(map(len, batch)) <= MAX_BATCH_CHARS
    assert batch
    assert take_batch(tokens, 3, 3) == ()


def test_split_token() -> None:
    """Long backend pieces are split into wire-sized tokens without losing text."""
    text = "y" * 600
    pieces = split_token(text)
    assert "".join(pieces) == text
    assert all(len(p) <= 256 for p in pieces)
    assert split_token("") == []
    assert split_token(" word") == [" word"]


def test_flush_pacer() -> None:
    """The first flush is immediate; later flushes wait until interval seconds after the previous one."""
    pacer = FlushPacer(0.025)
    assert pacer.delay(100.0) == 0.0
    pacer.flushed(100.0)
    assert pacer.delay(100.01) == pytest.approx(0.015)
    assert pacer.delay(100.03) == 0.0
    assert FlushPacer(0.0).delay(5.0) == 0.0
