"""A small synchronous driver for the contract tests: raw transactions and calls with web3.py's sync
``Web3(HTTPProvider)``, below the Web3Ledger.

Why synchronous: the contract tests and the Hypothesis state machine run plain functions; a sync client
needs no event loop, so nothing competes with the loops pytest-asyncio hands to other tests.

Every transaction carries an explicit gas limit, so a call that reverts is still mined (status 0) on both
nodes instead of failing in gas estimation; :meth:`Chain.fails` first learns the revert with ``eth_call``
(the same data on both nodes: geth-style code 3 with the revert bytes), then sends the transaction and
checks it failed on chain, returning what the sender paid for gas so callers can prove nothing else moved.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from eth_account.signers.local import LocalAccount
from eth_utils.crypto import keccak
from web3 import HTTPProvider, Web3
from web3.contract import Contract
from web3.logs import DISCARD
from web3.types import TxReceipt

from fabstir.chain._artifacts import RevertDecoder, load_artifact

ZERO = "0x0000000000000000000000000000000000000000"
GAS = 1_000_000
#: Enough for any of the contracts' creation; unused gas is not charged.
DEPLOY_GAS = 4_000_000
ARTIFACTS = ("HostRegistry", "PaymentSessions", "TestToken", "test/ReentrantToken")
DECODER = RevertDecoder(ARTIFACTS)


def selector(signature: str) -> bytes:
    """The 4-byte selector of an error or function signature such as ``"TransferFailed()"``."""
    return keccak(signature.encode())[:4]


def _canonical(output: dict[str, Any]) -> str:
    kind = str(output["type"])
    if kind.startswith("tuple"):
        return "(" + ",".join(_canonical(c) for c in output["components"]) + ")" + kind[len("tuple") :]
    return kind


@dataclass(frozen=True, slots=True)
class Refusal:
    """A reverted transaction: the error's name and arguments and the gas its sender paid (wei)."""

    name: str
    args: tuple[Any, ...]
    gas_cost: int


@dataclass
class Chain:
    """One node reached synchronously; remembers which contract lives at which address (by artifact
    name) so that a revert can be named ``"PaymentSessions.NotHost"``."""

    url: str
    w3: Web3 = field(init=False)
    chain_id: int = field(init=False)
    names: dict[str, str] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        self.w3 = Web3(HTTPProvider(self.url, request_kwargs={"timeout": 10}))
        self.chain_id = int(self.w3.eth.chain_id)

    # ------------------------------------------------------------------------------ node control
    def rpc(self, method: str, params: list[Any]) -> Any:
        """A raw JSON-RPC call; raises AssertionError with the node's error if it answers one."""
        reply: Any = self.w3.provider.make_request(method, params)  # type: ignore[arg-type]
        if "error" in reply:
            raise AssertionError(f"{method}: {reply['error']}")
        return reply["result"]

    def snapshot(self) -> str:
        return str(self.rpc("evm_snapshot", []))

    def revert(self, snapshot: str) -> None:
        assert self.rpc("evm_revert", [snapshot]) is True

    def now(self) -> int:
        """Mines a block and returns its timestamp: the chain's present, whatever a revert left behind
        (anvil keeps its clock offset across ``evm_revert``)."""
        self.rpc("evm_mine", [])
        return int(self.w3.eth.get_block("latest")["timestamp"])

    def advance(self, seconds: int) -> None:
        """Moves the chain clock forward and mines a block at the new time."""
        self.rpc("evm_increaseTime", [seconds])
        self.rpc("evm_mine", [])

    # ------------------------------------------------------------------------------ contracts
    def contract(self, name: str, address: str) -> Contract:
        self.names[Web3.to_checksum_address(address)] = name.split("/")[-1]
        return self.w3.eth.contract(address=Web3.to_checksum_address(address), abi=load_artifact(name).abi)

    def creation(self, name: str, *args: Any) -> bytes:
        artifact = load_artifact(name)
        factory = self.w3.eth.contract(abi=artifact.abi, bytecode=artifact.bytecode)
        return bytes.fromhex(str(factory.constructor(*args).data_in_transaction).removeprefix("0x"))

    def deploy(self, account: LocalAccount, name: str, *args: Any) -> Contract:
        receipt = self._send(account, None, self.creation(name, *args), 0, DEPLOY_GAS)
        assert receipt["status"] == 1, f"deploying {name} failed"
        address = receipt["contractAddress"]
        assert address is not None
        return self.contract(name, address)

    def deploy_refused(self, account: LocalAccount, name: str, *args: Any) -> tuple[str, tuple[Any, ...]]:
        """The error a constructor reverts with (learnt by ``eth_call``; nothing is deployed)."""
        data = self.creation(name, *args)
        return self._revert_of({"from": account.address, "data": "0x" + data.hex()})

    # ------------------------------------------------------------------------------ transactions
    def transact(
        self, account: LocalAccount, contract: Contract, function: str, *args: Any, value: int = 0
    ) -> TxReceipt:
        """Sends a call that must succeed; returns its receipt."""
        receipt = self._send(account, contract.address, self._data(contract, function, args), value, GAS)
        if receipt["status"] != 1:
            name, reason = self.refusal_of(account, contract, function, *args, value=value)
            raise AssertionError(f"{function} reverted on chain: {name}{reason}")
        return receipt

    def refusal_of(
        self, account: LocalAccount, contract: Contract, function: str, *args: Any, value: int = 0
    ) -> tuple[str, tuple[Any, ...]]:
        """The qualified error (``Contract.Error``) a call would revert with now, by ``eth_call``."""
        call = {
            "from": account.address,
            "to": contract.address,
            "data": "0x" + self._data(contract, function, args).hex(),
            "value": hex(value),
        }
        name, reason = self._revert_of(call)
        return f"{self.names.get(contract.address, '?')}.{name}", reason

    def fails(
        self, account: LocalAccount, contract: Contract, function: str, *args: Any, value: int = 0
    ) -> Refusal:
        """Learns the revert by ``eth_call``, then sends the transaction and checks it failed on chain."""
        name, reason = self.refusal_of(account, contract, function, *args, value=value)
        receipt = self._send(account, contract.address, self._data(contract, function, args), value, GAS)
        assert receipt["status"] == 0, f"{function} was expected to revert with {name} but succeeded"
        return Refusal(name, reason, self.gas_cost(receipt))

    def read(self, queries: list[tuple[str, Contract | None, str, tuple[Any, ...]]]) -> list[Any]:
        """Many reads in one JSON-RPC batch (one round trip): ``(label, None, address, ())`` is an ETH
        balance, ``(label, contract, function, args)`` a view call whose single output is returned."""
        requests: list[tuple[Any, Any]] = []
        for _, contract, function, args in queries:
            if contract is None:
                requests.append(("eth_getBalance", [function, "latest"]))
            else:
                data = "0x" + self._data(contract, function, args).hex()
                requests.append(("eth_call", [{"to": contract.address, "data": data}, "latest"]))
        replies: Any = self.w3.provider.make_batch_request(requests)  # type: ignore[attr-defined]
        assert isinstance(replies, list), f"the batch failed: {replies}"
        results: list[Any] = []
        for (_, contract, function, _args), reply in zip(
            queries, sorted(replies, key=lambda r: r["id"]), strict=True
        ):
            assert "error" not in reply, f"{function}: {reply['error']}"
            if contract is None:
                results.append(int(str(reply["result"]), 16))
            else:
                raw = bytes.fromhex(str(reply["result"]).removeprefix("0x"))
                [output] = contract.get_function_by_name(function).abi["outputs"]
                results.append(self.w3.codec.decode([_canonical(output)], raw)[0])
        return results

    def gas_cost(self, receipt: TxReceipt) -> int:
        return int(receipt["gasUsed"]) * int(receipt["effectiveGasPrice"])

    def events(self, receipt: TxReceipt, contract: Contract, event: str) -> list[dict[str, Any]]:
        """The arguments of every ``event`` that ``contract`` emitted in the transaction."""
        logs = contract.events[event]().process_receipt(receipt, errors=DISCARD)
        return [dict(log["args"]) for log in logs if log["address"] == contract.address]

    def balance(self, address: str, token: Contract | None = None) -> int:
        """ETH (``token`` None) or an ERC-20 balance."""
        if token is None:
            return int(self.w3.eth.get_balance(Web3.to_checksum_address(address)))
        return int(token.functions.balanceOf(Web3.to_checksum_address(address)).call())

    @staticmethod
    def _data(contract: Contract, function: str, args: tuple[Any, ...]) -> bytes:
        return bytes.fromhex(str(contract.encode_abi(function, args=list(args))).removeprefix("0x"))

    def _revert_of(self, call: dict[str, Any]) -> tuple[str, tuple[Any, ...]]:
        reply: Any = self.w3.provider.make_request("eth_call", [call, "latest"])  # type: ignore[arg-type]
        error = reply.get("error")
        assert error is not None, f"the call was expected to revert but returned {reply.get('result')}"
        data = error.get("data")
        if isinstance(data, dict):  # some nodes nest the revert bytes
            data = data.get("data")
        assert isinstance(data, str), f"no revert data in {error}"
        raw = bytes.fromhex(data.removeprefix("0x"))
        decoded = DECODER.decode(raw)
        assert decoded is not None, f"undeclared revert data 0x{raw.hex()}"
        name, args = decoded
        # eth-abi decodes addresses in lower case; compare them as web3 returns them (checksummed)
        return name, tuple(
            Web3.to_checksum_address(a) if isinstance(a, str) and Web3.is_address(a) else a for a in args
        )

    def _send(self, account: LocalAccount, to: str | None, data: bytes, value: int, gas: int) -> TxReceipt:
        tx: dict[str, Any] = {
            "chainId": self.chain_id,
            "nonce": self.w3.eth.get_transaction_count(account.address, "pending"),
            "gas": gas,
            "gasPrice": self.w3.eth.gas_price,
            "data": data,
            "value": value,
        }
        if to is not None:
            tx["to"] = to
        signed = account.sign_transaction(tx)
        tx_hash = self.w3.eth.send_raw_transaction(signed.raw_transaction)
        return self.w3.eth.wait_for_transaction_receipt(tx_hash, timeout=10, poll_latency=0.01)
