"""The Solidity contracts themselves, called with raw transactions below the Web3Ledger, on the embedded
chain and on anvil: every custom error, forged and replayed receipts, fee rounding on the cumulative
amount, events and their arguments, and reentrancy through a malicious token or an ETH-refusing host.

What the ledger conformance suite already shows through the Python ledger (happy paths, typed errors) is
not repeated; here each refusal is checked by its exact error and arguments, and "nothing moves" means
every ETH/ERC-20 balance of every party and the contract, the session and the client's nonce are as
before (the sender's ETH less the gas of its failed transaction).

One deployment per node and module; each test runs inside an ``evm_snapshot`` that is reverted after it.
Each test lists the errors it reaches (``@reaches``) and fails if it does not observe them; the last test
fails if an error the ABIs declare is neither reached by some test nor listed as unreachable with a reason.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, ParamSpec

import pytest
from eth_abi import abi
from eth_account.signers.local import LocalAccount
from eth_utils.crypto import keccak
from web3 import Web3
from web3.contract import Contract
from web3.types import TxReceipt

from fabstir.chain._artifacts import load_artifact
from fabstir.protocol import sign_receipt

from ._nodes import Node, anvil_node, embedded_node
from ._sync import ZERO, Chain, Refusal, selector

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

FEE_BPS = 333  # odd on purpose: rounding shows on small amounts
MIN_STAKE = 10**15
UNBONDING = 3600
TTL = 3600
DEPOSIT = 1_000_000
PRICE = 7
TREASURY = Web3.to_checksum_address("0x" + "7e" * 20)
#: The order of secp256k1's group: s and n - s are both valid signatures of one message (malleability).
SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141

P = ParamSpec("P")
#: Every error some test declares it reaches (filled at import by @reaches), e.g. "PaymentSessions.NotHost".
DECLARED: set[str] = set()
#: The errors observed while the current test runs.
_observed: set[str] = set()
#: Errors the ABIs declare that no test can reach with the deployed and test contracts, and why.
UNREACHABLE = {
    "PaymentSessions.InvalidShortString": "OpenZeppelin ShortStrings (EIP712's name/version): raised only "
    "for a short string over 31 bytes, which the constructor's fallback storage never produces",
    "PaymentSessions.StringTooLong": "OpenZeppelin ShortStrings: toShortString is only called on strings "
    "under 32 bytes (longer names go to the fallback storage)",
    "HostRegistry.ReentrancyGuardReentrantCall": "withdrawStake is the only guarded function and pays ETH to "
    "the caller; re-entering needs a contract host with a receive function that calls back, and the test "
    "contracts have none (ReentrantToken has no receive/fallback)",
}


def reaches(*errors: str) -> Callable[[Callable[P, None]], Callable[P, None]]:
    """Declares the errors a test reaches; the test fails unless it observed each of them."""

    def decorate(test: Callable[P, None]) -> Callable[P, None]:
        DECLARED.update(errors)

        @functools.wraps(test)
        def checked(*args: P.args, **kwargs: P.kwargs) -> None:
            _observed.clear()
            test(*args, **kwargs)
            missing = set(errors) - _observed
            assert not missing, f"declared but not reached: {sorted(missing)}"

        return checked

    return decorate


@pytest.fixture(scope="module", params=["embedded", "anvil"])
def node(request: pytest.FixtureRequest) -> Iterator[Node]:
    started = embedded_node() if request.param == "embedded" else anvil_node()
    with started as running:
        yield running


@dataclass
class Env:
    """The deployment on one node and the operations the tests compose."""

    name: str
    chain: Chain
    deployer: LocalAccount
    client: LocalAccount
    host: LocalAccount
    stranger: LocalAccount
    sessions: Contract
    other_sessions: Contract
    registry: Contract
    usdc: Contract
    evil: Contract

    def open(
        self,
        token: Contract | None = None,
        *,
        deposit: int = DEPOSIT,
        host: str | None = None,
        ttl: int = TTL,
        sessions: Contract | None = None,
    ) -> bytes:
        """Opens a session from the client (ETH unless ``token``); returns its id."""
        contract = sessions or self.sessions
        receipt = self.chain.transact(
            self.client,
            contract,
            "openSession",
            host or self.host.address,
            ZERO if token is None else token.address,
            deposit,
            PRICE,
            self.chain.now() + ttl,
            value=deposit if token is None else 0,
        )
        return bytes(self.chain.events(receipt, contract, "SessionOpened")[0]["sessionId"])

    def sign(
        self,
        session_id: bytes,
        amount: int,
        *,
        signer: LocalAccount | None = None,
        chain_id: int | None = None,
        contract: str | None = None,
    ) -> bytes:
        """The client's receipt (or ``signer``'s, under another domain if asked)."""
        return sign_receipt(
            signer or self.client,
            chain_id=self.chain.chain_id if chain_id is None else chain_id,
            verifying_contract=contract or self.sessions.address,
            session_id=session_id.hex(),
            amount=amount,
        )

    def settle(self, session_id: bytes, amount: int) -> TxReceipt:
        return self.chain.transact(
            self.host, self.sessions, "settle", session_id, amount, self.sign(session_id, amount)
        )

    def session(self, session_id: bytes) -> tuple[Any, ...]:
        return tuple(self.sessions.functions.getSession(session_id).call())

    def state(self, *session_ids: bytes) -> dict[str, Any]:
        """Every balance that could move, the sessions and the client's nonce."""
        parties = {
            "client": self.client.address,
            "host": self.host.address,
            "stranger": self.stranger.address,
            "treasury": TREASURY,
            "sessions": self.sessions.address,
            "evil": self.evil.address,
        }
        queries: list[tuple[str, Contract | None, str, tuple[Any, ...]]] = []
        for who, address in parties.items():
            queries.append((f"ETH:{who}", None, address, ()))
            queries.append((f"USDC:{who}", self.usdc, "balanceOf", (address,)))
            queries.append((f"EVIL:{who}", self.evil, "balanceOf", (address,)))
        for session_id in session_ids:
            queries.append((f"session:{session_id.hex()}", self.sessions, "getSession", (session_id,)))
        queries.append(("nonce", self.sessions, "nonces", (self.client.address,)))
        return dict(zip((q[0] for q in queries), self.chain.read(queries), strict=True))

    def refused(
        self,
        account: LocalAccount,
        function: str,
        *args: Any,
        value: int = 0,
        contract: Contract | None = None,
        sessions: tuple[bytes, ...] = (),
        error: str | None = None,
    ) -> Refusal:
        """Sends a call that must revert; checks nothing but the sender's gas moved and records the
        error (qualified by the called contract unless ``error`` names where it comes from)."""
        before = self.state(*sessions)
        refusal = self.chain.fails(account, contract or self.sessions, function, *args, value=value)
        after = self.state(*sessions)
        who = next((k for k, v in self.accounts().items() if v == account.address), None)
        if who is not None:
            before[f"ETH:{who}"] -= refusal.gas_cost
        assert after == before, "a refused call moved something"
        name = error or refusal.name
        assert name.endswith("." + refusal.name.split(".")[-1])
        _observed.add(name)
        return refusal

    def accounts(self) -> dict[str, str]:
        return {"client": self.client.address, "host": self.host.address, "stranger": self.stranger.address}


@pytest.fixture(scope="module")
def deployed(node: Node) -> Env:
    chain = Chain(node.url)
    deployer, client, host, stranger = node.accounts
    env = Env(
        name=node.name,
        chain=chain,
        deployer=deployer,
        client=client,
        host=host,
        stranger=stranger,
        sessions=chain.deploy(deployer, "PaymentSessions", TREASURY, FEE_BPS),
        other_sessions=chain.deploy(deployer, "PaymentSessions", TREASURY, FEE_BPS),
        registry=chain.deploy(deployer, "HostRegistry", MIN_STAKE, UNBONDING),
        usdc=chain.contract("TestToken", node.token),
        evil=chain.deploy(deployer, "test/ReentrantToken"),
    )
    chain.transact(deployer, env.evil, "mint", client.address, 10**12)
    for token in (env.usdc, env.evil):
        chain.transact(client, token, "approve", env.sessions.address, 2**256 - 1)
    return env


@pytest.fixture
def env(deployed: Env) -> Iterator[Env]:
    snapshot = deployed.chain.snapshot()
    try:
        yield deployed
    finally:
        deployed.chain.revert(snapshot)


def fee(cumulative: int) -> int:
    return cumulative * FEE_BPS // 10_000


# ------------------------------------------------------------------------------------------ constructor


@reaches("PaymentSessions.FeeTooHigh", "PaymentSessions.ZeroTreasury")
def test_constructor_refuses_a_fee_above_100_percent_and_a_zero_treasury(env: Env) -> None:
    """A fee over 10000 bps and a zero treasury (which would block every ERC-20 fee transfer) are
    refused at deployment; exactly 10000 bps deploys."""
    for args, expected in (((TREASURY, 10_001), "FeeTooHigh"), ((ZERO, 100), "ZeroTreasury")):
        name, _ = env.chain.deploy_refused(env.deployer, "PaymentSessions", *args)
        assert name == expected
        _observed.add(f"PaymentSessions.{name}")
    full = env.chain.deploy(env.deployer, "PaymentSessions", TREASURY, 10_000)
    assert full.functions.feeFor(12345).call() == 12345


# ------------------------------------------------------------------------------------------ opening


def test_open_eth_session_emits_its_terms_and_derives_the_id(env: Env) -> None:
    """openSession locks msg.value, emits SessionOpened with every term, and the id is
    keccak256(abi.encode(chainid, contract, client, nonce)) with the client's nonce incremented."""
    nonce = env.sessions.functions.nonces(env.client.address).call()
    expiry = env.chain.now() + TTL
    before = env.chain.balance(env.sessions.address)
    receipt = env.chain.transact(
        env.client, env.sessions, "openSession", env.host.address, ZERO, DEPOSIT, PRICE, expiry, value=DEPOSIT
    )
    expected_id = keccak(
        abi.encode(
            ["uint256", "address", "address", "uint256"],
            [env.chain.chain_id, env.sessions.address, env.client.address, nonce],
        )
    )
    [event] = env.chain.events(receipt, env.sessions, "SessionOpened")
    assert event == {
        "sessionId": expected_id,
        "client": env.client.address,
        "host": env.host.address,
        "token": ZERO,
        "deposit": DEPOSIT,
        "pricePerToken": PRICE,
        "expiry": expiry,
    }
    assert env.session(expected_id) == (
        env.client.address, env.host.address, ZERO, DEPOSIT, PRICE, expiry, 0, 0, False
    )  # fmt: skip
    assert env.sessions.functions.nonces(env.client.address).call() == nonce + 1
    assert env.chain.balance(env.sessions.address) - before == DEPOSIT


def test_open_erc20_session_pulls_the_deposit(env: Env) -> None:
    """An ERC-20 session pulls exactly the deposit from the client with transferFrom (msg.value 0) and
    emits SessionOpened naming the token."""
    before = env.state()
    receipt = env.chain.transact(
        env.client, env.sessions, "openSession", env.host.address, env.usdc.address, DEPOSIT, PRICE,
        env.chain.now() + TTL,
    )  # fmt: skip
    [event] = env.chain.events(receipt, env.sessions, "SessionOpened")
    assert event["token"] == env.usdc.address
    assert event["deposit"] == DEPOSIT
    after = env.state()
    assert after["USDC:client"] == before["USDC:client"] - DEPOSIT
    assert after["USDC:sessions"] == before["USDC:sessions"] + DEPOSIT


OPEN_CASES = {
    # name: (host, token is USDC, deposit, price, expiry offset, value, error)
    "zero host": (ZERO, False, DEPOSIT, PRICE, TTL, DEPOSIT, "ZeroHost"),
    "zero deposit": ("host", False, 0, PRICE, TTL, 0, "ZeroDeposit"),
    "zero price": ("host", False, DEPOSIT, 0, TTL, DEPOSIT, "ZeroPrice"),
    "expiry now": ("host", False, DEPOSIT, PRICE, 0, DEPOSIT, "AlreadyExpired"),
    "expiry past": ("host", False, DEPOSIT, PRICE, -100, DEPOSIT, "AlreadyExpired"),
    "self host": ("client", False, DEPOSIT, PRICE, TTL, DEPOSIT, "SelfHost"),
    "eth value short": ("host", False, DEPOSIT, PRICE, TTL, DEPOSIT - 1, "WrongValue"),
    "eth value over": ("host", False, DEPOSIT, PRICE, TTL, DEPOSIT + 1, "WrongValue"),
    "erc20 with value": ("host", True, DEPOSIT, PRICE, TTL, 1, "WrongValue"),
}


@reaches(*{f"PaymentSessions.{case[-1]}" for case in OPEN_CASES.values()})
def test_open_refuses_bad_terms(env: Env) -> None:
    """openSession refuses a zero host, zero deposit or price, an expiry not after the block, the client
    as its own host and a msg.value other than the deposit (ETH) or other than 0 (ERC-20): each with its
    own error, and nothing moves (no deposit, no nonce)."""
    now = env.chain.now()
    for label, (host, erc20, deposit, price, offset, value, expected) in OPEN_CASES.items():
        address = {"host": env.host.address, "client": env.client.address}.get(host, host)
        token = env.usdc.address if erc20 else ZERO
        refusal = env.refused(
            env.client, "openSession", address, token, deposit, price, now + offset, value=value
        )
        assert refusal.name == f"PaymentSessions.{expected}", label


@reaches("PaymentSessions.SafeERC20FailedOperation")
def test_open_with_a_token_address_without_code_is_refused(env: Env) -> None:
    """An ERC-20 'token' that is an account without code cannot fake a deposit: SafeERC20 refuses the
    empty return (SafeERC20FailedOperation naming it) and nothing moves."""
    fake = env.stranger.address
    refusal = env.refused(
        env.client, "openSession", env.host.address, fake, DEPOSIT, PRICE, env.chain.now() + TTL
    )
    assert (refusal.name, refusal.args) == ("PaymentSessions.SafeERC20FailedOperation", (fake,))


def test_open_without_allowance_bubbles_the_token_error(env: Env) -> None:
    """Without an allowance the token's own ERC20InsufficientAllowance comes back through SafeERC20
    (spender, allowance 0, needed) and nothing moves."""
    expiry = env.chain.now() + TTL
    refusal = env.refused(
        env.stranger, "openSession", env.host.address, env.usdc.address, DEPOSIT, PRICE, expiry,
        error="TestToken.ERC20InsufficientAllowance",
    )  # fmt: skip
    assert refusal.args == (env.sessions.address, 0, DEPOSIT)


# ------------------------------------------------------------------------------------------ signatures


def _high_s(signature: bytes) -> bytes:
    r, s, v = signature[:32], int.from_bytes(signature[32:64], "big"), signature[64]
    return r + (SECP256K1_N - s).to_bytes(32, "big") + bytes([55 - v])  # 27 <-> 28


def _compact(signature: bytes) -> bytes:
    """EIP-2098: r and (v parity << 255 | s) in 64 bytes."""
    s = int.from_bytes(signature[32:64], "big") | ((signature[64] - 27) << 255)
    return signature[:32] + s.to_bytes(32, "big")


FORGERIES: dict[str, Callable[[Env, bytes, int], bytes]] = {
    "other signer": lambda e, sid, amount: e.sign(sid, amount, signer=e.stranger),
    "host signs for itself": lambda e, sid, amount: e.sign(sid, amount, signer=e.host),
    "signed for another amount": lambda e, sid, amount: e.sign(sid, amount - 1),
    "empty": lambda e, sid, amount: b"",
    "64 bytes (truncated)": lambda e, sid, amount: e.sign(sid, amount)[:64],
    "64 bytes (EIP-2098 compact)": lambda e, sid, amount: _compact(e.sign(sid, amount)),
    "66 bytes": lambda e, sid, amount: e.sign(sid, amount) + b"\x00",
    "high s (malleated)": lambda e, sid, amount: _high_s(e.sign(sid, amount)),
    "v = 0": lambda e, sid, amount: e.sign(sid, amount)[:64] + bytes([e.sign(sid, amount)[64] - 27]),
    "v = 29": lambda e, sid, amount: e.sign(sid, amount)[:64] + b"\x1d",
    "all zero": lambda e, sid, amount: bytes(65),
}


@reaches("PaymentSessions.InvalidSignature")
@pytest.mark.parametrize("token", ["ETH", "USDC"])
def test_forged_signatures_are_refused_with_invalid_signature(env: Env, token: str) -> None:
    """settle and close refuse receipts signed by anyone but the client, for another amount, of the wrong
    length (including EIP-2098 compact form), malleated to high s, with v not 27/28 or all zero: always
    InvalidSignature (the contract uses ECDSA.tryRecoverCalldata, so OZ's own ECDSA errors never
    surface) and nothing moves; the genuine receipt then settles."""
    sid = env.open(env.usdc if token == "USDC" else None)
    amount = 1000
    for label, forge in FORGERIES.items():
        for function in ("settle", "close"):
            signature = forge(env, sid, amount)
            if function == "close" and not signature:
                continue  # an empty signature means "no receipt" to close (MissingReceipt, tested below)
            refusal = env.refused(env.host, function, sid, amount, signature, sessions=(sid,))
            assert refusal.name == "PaymentSessions.InvalidSignature", f"{label} / {function}"
    env.settle(sid, amount)
    assert env.session(sid)[6] == amount


# ------------------------------------------------------------------------------------------ replay


@reaches("PaymentSessions.AmountNotIncreasing", "PaymentSessions.InvalidSignature")
def test_replayed_receipts_are_refused(env: Env) -> None:
    """A settled receipt cannot be cashed again (AmountNotIncreasing with the settled amount), nor an
    older smaller one; a receipt of session A is no good on session B of the same client and host;
    receipts signed for another chain id or another PaymentSessions deployment are InvalidSignature.
    None of them moves anything."""
    a = env.open()
    b = env.open()
    env.settle(a, 500)
    for amount in (500, 400):
        refusal = env.refused(env.host, "settle", a, amount, env.sign(a, amount), sessions=(a, b))
        assert (refusal.name, refusal.args) == ("PaymentSessions.AmountNotIncreasing", (500,))
    forged = {
        "session A's receipt on B": env.sign(a, 600),
        "another chain id": env.sign(b, 600, chain_id=env.chain.chain_id + 1),
        "another deployment": env.sign(b, 600, contract=env.other_sessions.address),
    }
    for label, signature in forged.items():
        refusal = env.refused(env.host, "settle", b, 600, signature, sessions=(a, b))
        assert refusal.name == "PaymentSessions.InvalidSignature", label
    # the other deployment's own session cannot be fed a receipt from this one either
    c = env.open(sessions=env.other_sessions)
    refusal = env.refused(
        env.host, "settle", c, 600, env.sign(c, 600), contract=env.other_sessions, sessions=(a, b)
    )
    assert refusal.name == "PaymentSessions.InvalidSignature"


# ------------------------------------------------------------------------------------------ amounts, time


@reaches("PaymentSessions.AmountAboveDeposit")
def test_claims_beyond_the_deposit_are_refused(env: Env) -> None:
    """A receipt validly signed for more than the deposit is refused by settle and close with
    AmountAboveDeposit(deposit), and nothing moves; the whole deposit itself settles."""
    sid = env.open(env.usdc)
    for function in ("settle", "close"):
        over = env.sign(sid, DEPOSIT + 1)
        refusal = env.refused(env.host, function, sid, DEPOSIT + 1, over, sessions=(sid,))
        assert (refusal.name, refusal.args) == ("PaymentSessions.AmountAboveDeposit", (DEPOSIT,))
    env.settle(sid, DEPOSIT)


@reaches("PaymentSessions.MissingReceipt", "PaymentSessions.AmountBelowSettled")
def test_close_needs_a_receipt_for_an_amount_and_never_goes_below_settled(env: Env) -> None:
    """close with an amount but no signature is MissingReceipt; a final receipt below what was settled is
    AmountBelowSettled(settled); both change nothing."""
    sid = env.open()
    env.settle(sid, 300)
    refusal = env.refused(env.host, "close", sid, 301, b"", sessions=(sid,))
    assert refusal.name == "PaymentSessions.MissingReceipt"
    refusal = env.refused(env.host, "close", sid, 200, env.sign(sid, 200), sessions=(sid,))
    assert (refusal.name, refusal.args) == ("PaymentSessions.AmountBelowSettled", (300,))


@reaches("PaymentSessions.Expired", "PaymentSessions.NotExpired")
def test_expiry_closes_the_host_window_and_opens_the_client_one(env: Env) -> None:
    """Before the expiry the client cannot reclaim (NotExpired(expiry)); after it the host can neither
    settle nor close, even with a valid receipt (Expired(expiry)); nothing moves either way."""
    sid = env.open(ttl=600)
    expiry = env.session(sid)[5]
    refusal = env.refused(env.client, "reclaim", sid, sessions=(sid,))
    assert (refusal.name, refusal.args) == ("PaymentSessions.NotExpired", (expiry,))
    env.chain.advance(601)
    for function, args in (("settle", (100, env.sign(sid, 100))), ("close", (100, env.sign(sid, 100)))):
        refusal = env.refused(env.host, function, sid, *args, sessions=(sid,))
        assert (refusal.name, refusal.args) == ("PaymentSessions.Expired", (expiry,))
    refusal = env.refused(env.host, "close", sid, 0, b"", sessions=(sid,))
    assert refusal.name == "PaymentSessions.Expired"


@reaches("PaymentSessions.NotHost", "PaymentSessions.NotClient")
def test_only_the_host_settles_or_closes_and_only_the_client_reclaims(env: Env) -> None:
    """settle/close from the client or a stranger are NotHost (even with the client's valid receipt);
    reclaim from the host or a stranger after the expiry is NotClient; nothing moves."""
    sid = env.open(ttl=600)
    receipt = env.sign(sid, 100)
    for caller in (env.client, env.stranger):
        for function, args in (("settle", (100, receipt)), ("close", (100, receipt)), ("close", (0, b""))):
            assert (
                env.refused(caller, function, sid, *args, sessions=(sid,)).name == "PaymentSessions.NotHost"
            )
    env.chain.advance(601)
    for caller in (env.host, env.stranger):
        assert env.refused(caller, "reclaim", sid, sessions=(sid,)).name == "PaymentSessions.NotClient"


@reaches("PaymentSessions.SessionClosedAlready", "PaymentSessions.UnknownSession")
def test_closed_and_unknown_sessions_cannot_be_used(env: Env) -> None:
    """After close (or reclaim) every settle, close and reclaim is SessionClosedAlready, even with a
    valid higher receipt and after the expiry; an id that was never opened is UnknownSession."""
    closed = env.open(ttl=600)
    env.chain.transact(env.host, env.sessions, "close", closed, 100, env.sign(closed, 100))
    reclaimed = env.open(ttl=600)
    env.chain.advance(601)
    env.chain.transact(env.client, env.sessions, "reclaim", reclaimed)
    for sid in (closed, reclaimed):
        higher = env.sign(sid, 200)
        for caller, function, args in (
            (env.host, "settle", (200, higher)),
            (env.host, "close", (200, higher)),
            (env.host, "close", (0, b"")),
            (env.client, "reclaim", ()),
        ):
            refusal = env.refused(caller, function, sid, *args, sessions=(closed, reclaimed))
            assert refusal.name == "PaymentSessions.SessionClosedAlready", function
    unknown = keccak(b"never opened")
    for caller, function, args in (
        (env.host, "settle", (1, env.sign(unknown, 1))),
        (env.host, "close", (0, b"")),
        (env.client, "reclaim", ()),
    ):
        assert env.refused(caller, function, unknown, *args).name == "PaymentSessions.UnknownSession"
    assert env.session(unknown)[0] == ZERO


# ------------------------------------------------------------------------------------------ fees, events


def test_fees_round_down_on_the_cumulative_amount(env: Env) -> None:
    """Settling in small steps, where each increment alone would round its fee to 0, pays exactly
    feeFor(total) to the treasury in total; each Settled event carries the increment, the host's part,
    fee = feeFor(cumulative) - feeFor(previous) and the new cumulative amount."""
    sid = env.open(env.usdc, deposit=10_000)
    before = env.state(sid)
    previous = 0
    for cumulative in (29, 59, 61, 90, 120, 151, 1000, 1001, 9999):
        [event] = env.chain.events(env.settle(sid, cumulative), env.sessions, "Settled")
        increment, part = cumulative - previous, fee(cumulative) - fee(previous)
        assert event == {
            "sessionId": sid,
            "amount": increment,
            "hostAmount": increment - part,
            "fee": part,
            "settled": cumulative,
        }
        previous = cumulative
    after = env.state(sid)
    assert env.sessions.functions.feeFor(9999).call() == fee(9999) == 332
    assert after["USDC:treasury"] - before["USDC:treasury"] == 332
    assert after["USDC:host"] - before["USDC:host"] == 9999 - 332
    assert after["USDC:sessions"] - before["USDC:sessions"] == -9999
    # per-increment rounding would have paid less: the cumulative rule is what is being checked
    steps = (29, 30, 2, 29, 30, 31, 849, 1, 8998)
    assert sum(fee(step) for step in steps) < 332


def test_close_with_a_final_receipt_emits_settled_then_session_closed(env: Env) -> None:
    """close with a higher final receipt emits Settled (increment, host part, fee, cumulative) and then
    SessionClosed(settled, refunded), and pays host, treasury and client exactly that in ETH."""
    sid = env.open()
    env.settle(sid, 1000)
    before = env.state(sid)
    receipt = env.chain.transact(env.host, env.sessions, "close", sid, 4000, env.sign(sid, 4000))
    [settled] = env.chain.events(receipt, env.sessions, "Settled")
    [closed] = env.chain.events(receipt, env.sessions, "SessionClosed")
    part = fee(4000) - fee(1000)
    assert settled == {
        "sessionId": sid,
        "amount": 3000,
        "hostAmount": 3000 - part,
        "fee": part,
        "settled": 4000,
    }
    assert closed == {"sessionId": sid, "settled": 4000, "refunded": DEPOSIT - 4000}
    topics = [bytes(log["topics"][0]) for log in receipt["logs"]]
    assert topics == [
        keccak(text="Settled(bytes32,uint256,uint256,uint256,uint256)"),
        keccak(text="SessionClosed(bytes32,uint256,uint256)"),
    ]
    after = env.state(sid)
    assert after["ETH:host"] - before["ETH:host"] == 3000 - part - env.chain.gas_cost(receipt)
    assert after["ETH:treasury"] - before["ETH:treasury"] == part
    assert after["ETH:client"] - before["ETH:client"] == DEPOSIT - 4000
    assert after[f"session:{sid.hex()}"][6:] == (4000, DEPOSIT - 4000, True)


def test_close_without_receipt_and_reclaim_emit_their_refunds(env: Env) -> None:
    """close(0, "") emits only SessionClosed(settled, refund); reclaim after the expiry emits
    Reclaimed(refund) with what was never settled; refunds go to the client."""
    first = env.open(env.usdc)
    env.settle(first, 10)
    receipt = env.chain.transact(env.host, env.sessions, "close", first, 0, b"")
    assert env.chain.events(receipt, env.sessions, "Settled") == []
    assert env.chain.events(receipt, env.sessions, "SessionClosed") == [
        {"sessionId": first, "settled": 10, "refunded": DEPOSIT - 10}
    ]
    second = env.open(env.usdc, ttl=600)
    env.settle(second, 25)
    env.chain.advance(601)
    before = env.state(second)
    receipt = env.chain.transact(env.client, env.sessions, "reclaim", second)
    assert env.chain.events(receipt, env.sessions, "Reclaimed") == [
        {"sessionId": second, "refunded": DEPOSIT - 25}
    ]
    after = env.state(second)
    assert after["USDC:client"] - before["USDC:client"] == DEPOSIT - 25
    assert after[f"session:{second.hex()}"][6:] == (25, DEPOSIT - 25, True)


# ------------------------------------------------------------------------------------------ reentrancy


def _payload(env: Env, function: str, *args: Any) -> bytes:
    return bytes.fromhex(str(env.sessions.encode_abi(function, args=list(args))).removeprefix("0x"))


@reaches("PaymentSessions.ReentrancyGuardReentrantCall")
@pytest.mark.parametrize("outer", ["openSession", "settle", "close", "reclaim"])
def test_a_reentrant_token_is_refused_by_the_guard(env: Env, outer: str) -> None:
    """A malicious ERC-20 that calls back into PaymentSessions from inside its transfer/transferFrom
    (settle, close, reclaim or openSession of a session it has a receipt for) makes the outer call revert
    with ReentrancyGuardReentrantCall (the guard runs before any other check) and moves nothing."""
    sid = env.open(env.evil, ttl=600)
    env.settle(sid, 100)
    inner = {
        "openSession": _payload(env, "settle", sid, 300, env.sign(sid, 300)),
        "settle": _payload(env, "settle", sid, 300, env.sign(sid, 300)),
        "close": _payload(env, "reclaim", sid),
        "reclaim": _payload(env, "close", sid, 0, b""),
    }[outer]
    env.chain.transact(env.stranger, env.evil, "arm", env.sessions.address, inner, True)
    args: tuple[Any, ...]
    if outer == "openSession":
        caller, args = env.client, (env.host.address, env.evil.address, DEPOSIT, PRICE, env.chain.now() + TTL)
    elif outer in ("settle", "close"):
        caller, args = env.host, (sid, 200, env.sign(sid, 200))
    else:
        env.chain.advance(601)
        caller, args = env.client, (sid,)
    refusal = env.refused(caller, outer, *args, sessions=(sid,))
    assert refusal.name == "PaymentSessions.ReentrancyGuardReentrantCall"


def test_a_swallowed_reentrant_call_does_not_pay_twice(env: Env) -> None:
    """When the malicious token swallows the refused callback, the outer settle completes once: the
    token records ReentrancyGuardReentrantCall as the callback's revert and the host is paid only the
    outer increment."""
    sid = env.open(env.evil)
    inner = _payload(env, "settle", sid, 900, env.sign(sid, 900))
    env.chain.transact(env.stranger, env.evil, "arm", env.sessions.address, inner, False)
    before = env.state(sid)
    env.settle(sid, 500)
    after = env.state(sid)
    assert env.evil.functions.reentered().call() is False
    assert bytes(env.evil.functions.lastRevertData().call()) == selector("ReentrancyGuardReentrantCall()")
    assert after["EVIL:host"] - before["EVIL:host"] == 500 - fee(500)
    assert after["EVIL:treasury"] - before["EVIL:treasury"] == fee(500)
    assert after[f"session:{sid.hex()}"][6] == 500


@reaches("PaymentSessions.TransferFailed")
def test_a_host_contract_refusing_eth_cannot_be_paid_nor_lock_the_deposit(env: Env) -> None:
    """A host that is a contract without a receive function (the ReentrantToken, acting as host through
    its armed callback) makes settle and close with a receipt revert with TransferFailed, nothing moves;
    it can still close without a receipt (the refund goes to the client), and an unclosed session is
    reclaimed by the client after the expiry."""
    sid = env.open(host=env.evil.address, ttl=600)
    for function, args in (("settle", (100, env.sign(sid, 100))), ("close", (100, env.sign(sid, 100)))):
        env.chain.transact(
            env.stranger, env.evil, "arm", env.sessions.address, _payload(env, function, sid, *args), True
        )
        refusal = env.refused(
            env.stranger, "transfer", env.stranger.address, 0, contract=env.evil, sessions=(sid,),
            error="PaymentSessions.TransferFailed",
        )  # fmt: skip
        assert refusal.name == "ReentrantToken.TransferFailed"
    # without a receipt nothing goes to the host: the close succeeds and refunds the client
    env.chain.transact(
        env.stranger, env.evil, "arm", env.sessions.address, _payload(env, "close", sid, 0, b""), True
    )
    before = env.state(sid)
    env.chain.transact(env.stranger, env.evil, "transfer", env.stranger.address, 0)
    after = env.state(sid)
    assert after["ETH:client"] - before["ETH:client"] == DEPOSIT
    assert after[f"session:{sid.hex()}"][8] is True
    # an unclosed session with that host: the client reclaims after the expiry
    other = env.open(host=env.evil.address, ttl=600)
    env.chain.advance(601)
    before = env.state(other)
    receipt = env.chain.transact(env.client, env.sessions, "reclaim", other)
    after = env.state(other)
    assert after["ETH:client"] - before["ETH:client"] == DEPOSIT - env.chain.gas_cost(receipt)


# ------------------------------------------------------------------------------------------ host registry

MODELS = ["tiny-llm", "other/model:q4"]
PRICES = [5, 0]


def _host(env: Env, address: str) -> tuple[Any, ...]:
    return tuple(env.registry.functions.getHost(address).call())


def test_register_update_deregister_withdraw_emit_their_events(env: Env) -> None:
    """The registry's life cycle with its events: HostRegistered(peerId, models, prices, stake) locks
    msg.value; HostUpdated replaces the metadata, keeps the stake; HostDeregistered(until = block time +
    delay) deactivates; StakeWithdrawn(stake) after the delay returns the stake and deletes the entry."""
    registry, host = env.registry, env.host
    stake = MIN_STAKE + 5
    receipt = env.chain.transact(host, registry, "register", "12D3KooWpeer", MODELS, PRICES, value=stake)
    assert env.chain.events(receipt, registry, "HostRegistered") == [
        {"host": host.address, "peerId": "12D3KooWpeer", "models": MODELS, "prices": PRICES, "stake": stake}
    ]
    assert _host(env, host.address) == ("12D3KooWpeer", MODELS, PRICES, stake, True, 0)
    assert env.chain.balance(registry.address) == stake
    receipt = env.chain.transact(host, registry, "update", "12D3KooWnew", ["m"], [9])
    assert env.chain.events(receipt, registry, "HostUpdated") == [
        {"host": host.address, "peerId": "12D3KooWnew", "models": ["m"], "prices": [9]}
    ]
    assert _host(env, host.address) == ("12D3KooWnew", ["m"], [9], stake, True, 0)
    receipt = env.chain.transact(host, registry, "deregister")
    timestamp = int(env.chain.w3.eth.get_block(receipt["blockNumber"])["timestamp"])
    assert env.chain.events(receipt, registry, "HostDeregistered") == [
        {"host": host.address, "unbondingUntil": timestamp + UNBONDING}
    ]
    assert _host(env, host.address)[4:] == (False, timestamp + UNBONDING)
    env.chain.advance(UNBONDING + 1)
    before = env.chain.balance(host.address)
    receipt = env.chain.transact(host, registry, "withdrawStake")
    assert env.chain.events(receipt, registry, "StakeWithdrawn") == [{"host": host.address, "stake": stake}]
    assert env.chain.balance(host.address) - before == stake - env.chain.gas_cost(receipt)
    assert _host(env, host.address) == ("", [], [], 0, False, 0)
    assert env.chain.balance(registry.address) == 0


@reaches(
    "HostRegistry.EmptyPeerId",
    "HostRegistry.NoModels",
    "HostRegistry.EmptyModel",
    "HostRegistry.PricesMismatch",
    "HostRegistry.StakeTooLow",
)
def test_register_and_update_refuse_bad_metadata_and_low_stake(env: Env) -> None:
    """register and update refuse an empty peer id, no models, an empty model name and prices not one per
    model; register refuses a stake under minStake (StakeTooLow(minStake)); the stake stays with the
    sender."""
    bad = {
        "EmptyPeerId": ("", MODELS, PRICES),
        "NoModels": ("peer", [], []),
        "EmptyModel": ("peer", ["m", ""], [1, 2]),
        "PricesMismatch": ("peer", MODELS, [1]),
    }
    for expected, args in bad.items():
        refusal = env.refused(env.host, "register", *args, value=MIN_STAKE, contract=env.registry)
        assert refusal.name == f"HostRegistry.{expected}"
    refusal = env.refused(
        env.host, "register", "peer", MODELS, PRICES, value=MIN_STAKE - 1, contract=env.registry
    )
    assert (refusal.name, refusal.args) == ("HostRegistry.StakeTooLow", (MIN_STAKE,))
    env.chain.transact(env.host, env.registry, "register", "peer", MODELS, PRICES, value=MIN_STAKE)
    for expected, args in bad.items():
        refusal = env.refused(env.host, "update", *args, contract=env.registry)
        assert refusal.name == f"HostRegistry.{expected}"
    assert _host(env, env.host.address)[0] == "peer"


@reaches(
    "HostRegistry.AlreadyRegistered",
    "HostRegistry.NotRegistered",
    "HostRegistry.NotDeregistered",
    "HostRegistry.StillUnbonding",
)
def test_registry_state_machine_refusals(env: Env) -> None:
    """An unregistered address cannot update, deregister or withdraw (NotRegistered); a registered one
    cannot register again (AlreadyRegistered) nor withdraw while active (NotDeregistered); while
    unbonding it cannot register (StillUnbonding(until)), update or deregister again (NotRegistered) nor
    withdraw before the delay (StillUnbonding(until)); nothing moves."""
    registry, host = env.registry, env.host
    for function in ("update", "deregister", "withdrawStake"):
        args = ("p", MODELS, PRICES) if function == "update" else ()
        assert env.refused(host, function, *args, contract=registry).name == "HostRegistry.NotRegistered"
    env.chain.transact(host, registry, "register", "peer", MODELS, PRICES, value=MIN_STAKE)
    refusal = env.refused(host, "register", "peer", MODELS, PRICES, value=MIN_STAKE, contract=registry)
    assert refusal.name == "HostRegistry.AlreadyRegistered"
    assert env.refused(host, "withdrawStake", contract=registry).name == "HostRegistry.NotDeregistered"
    env.chain.transact(host, registry, "deregister")
    until = _host(env, host.address)[5]
    refusal = env.refused(host, "register", "peer", MODELS, PRICES, value=MIN_STAKE, contract=registry)
    assert (refusal.name, refusal.args) == ("HostRegistry.StillUnbonding", (until,))
    refusal = env.refused(host, "withdrawStake", contract=registry)
    assert (refusal.name, refusal.args) == ("HostRegistry.StillUnbonding", (until,))
    for function, args in (("update", ("p", MODELS, PRICES)), ("deregister", ())):
        assert env.refused(host, function, *args, contract=registry).name == "HostRegistry.NotRegistered"
    assert env.chain.balance(registry.address) == MIN_STAKE


@pytest.mark.parametrize("node", ["anvil"], indirect=True)  # the embedded chain has no anvil_* methods
@reaches("HostRegistry.TransferFailed")
def test_withdraw_to_a_host_refusing_eth_fails_and_keeps_the_stake(env: Env) -> None:
    """If the host's address refuses ETH, withdrawStake reverts with TransferFailed and the entry and its
    stake stay. Anvil only: the host must be a contract that paid a stake, which no test contract can
    do, so anvil_setCode gives a registered host the ReentrantToken's code (no receive function) and
    anvil_impersonateAccount sends from it; the embedded chain has neither method."""
    registry, host, chain = env.registry, env.host, env.chain
    chain.transact(host, registry, "register", "peer", MODELS, PRICES, value=MIN_STAKE)
    chain.transact(host, registry, "deregister")
    chain.advance(UNBONDING + 1)
    chain.rpc("anvil_setCode", [host.address, chain.w3.eth.get_code(env.evil.address).to_0x_hex()])
    chain.rpc("anvil_impersonateAccount", [host.address])
    try:
        name, _ = chain.refusal_of(host, registry, "withdrawStake")
        assert name == "HostRegistry.TransferFailed"
        tx_hash = chain.rpc(
            "eth_sendTransaction",
            [{"from": host.address, "to": registry.address, "data": registry.encode_abi("withdrawStake"),
              "gas": hex(200_000)}],
        )  # fmt: skip
        receipt = chain.w3.eth.wait_for_transaction_receipt(tx_hash, timeout=10, poll_latency=0.01)
        assert receipt["status"] == 0
        _observed.add(name)
    finally:
        chain.rpc("anvil_stopImpersonatingAccount", [host.address])
    assert _host(env, host.address)[:4] == ("peer", MODELS, PRICES, MIN_STAKE)
    assert chain.balance(registry.address) == MIN_STAKE


# ------------------------------------------------------------------------------------------ coverage


def test_every_error_the_contracts_declare_is_reached_by_a_test() -> None:
    """Each custom error in the PaymentSessions and HostRegistry ABIs is declared (@reaches) by a test
    that observes it, or listed in UNREACHABLE with a reason: adding an error without a test fails."""
    declared = {
        f"{name}.{entry['name']}"
        for name in ("PaymentSessions", "HostRegistry")
        for entry in load_artifact(name).abi
        if entry["type"] == "error"
    }
    assert set(UNREACHABLE) <= declared, "UNREACHABLE lists errors the contracts no longer declare"
    assert not set(UNREACHABLE) & DECLARED, "an error listed as unreachable is reached by a test"
    missing = declared - DECLARED - set(UNREACHABLE)
    assert not missing, f"errors without a test: {sorted(missing)}"
