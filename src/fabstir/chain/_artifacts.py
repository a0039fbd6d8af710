"""The compiled contracts shipped with the package, and what their reverts mean.

The artifacts (``fabstir/chain/artifacts/<Name>.json``, written by ``contracts/build.mjs``) carry the ABI
and the creation bytecode. Reverts are decoded here by their 4-byte selector against every error the
artifacts declare, so a revert means the same :mod:`fabstir` error whichever node reported it (eth-tester
and anvil wrap revert data differently; the data itself is the same).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

from eth_abi import abi
from eth_abi.exceptions import DecodingError
from eth_utils.crypto import keccak

from .._exceptions import InsufficientFundsError, InvalidReceiptError, PaymentError

__all__ = ["CONTRACTS", "Artifact", "RevertDecoder", "load_artifact"]

#: The contracts a deployment consists of (the token only on test chains).
CONTRACTS = ("HostRegistry", "PaymentSessions", "TestToken")


@dataclass(frozen=True, slots=True)
class Artifact:
    name: str
    abi: tuple[dict[str, Any], ...]
    bytecode: bytes


@cache
def load_artifact(name: str) -> Artifact:
    """The artifact ``name`` (``"PaymentSessions"``, or ``"test/ReentrantToken"`` for test contracts)."""
    path = resources.files("fabstir.chain").joinpath("artifacts", *f"{name}.json".split("/"))
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:  # pragma: no cover - a broken installation
        raise PaymentError(f"no compiled contract {name!r} in fabstir/chain/artifacts") from exc
    bytecode = bytes.fromhex(str(data["bytecode"]).removeprefix("0x"))
    return Artifact(str(data["contractName"]), tuple(data["abi"]), bytecode)


def _signature(entry: dict[str, Any]) -> str:
    return f"{entry['name']}({','.join(_type(i) for i in entry.get('inputs', []))})"


def _type(item: dict[str, Any]) -> str:
    """The canonical ABI type of an input (tuples spelt out)."""
    kind = str(item["type"])
    if kind.startswith("tuple"):
        return "(" + ",".join(_type(c) for c in item["components"]) + ")" + kind[len("tuple") :]
    return kind


# Errors a caller can fix by adding funds, and errors that say the receipt is wrong; the rest are
# plain PaymentErrors. Messages keep the phrases callers and the conformance suite match on.
_INSUFFICIENT = {"ERC20InsufficientBalance", "ERC20InsufficientAllowance", "SafeERC20FailedOperation"}
_RECEIPT = {
    "InvalidSignature",
    "AmountAboveDeposit",
    "AmountNotIncreasing",
    "AmountBelowSettled",
    "MissingReceipt",
}
_MESSAGES = {
    "UnknownSession": "unknown session",
    "SessionClosedAlready": "the session is closed",
    "NotHost": "only the session's host can settle or close it",
    "NotClient": "only the session's client can reclaim it",
    "Expired": "the session expired at {0}",
    "NotExpired": "session not expired yet: it expires at {0}",
    "ZeroDeposit": "the deposit must be positive",
    "ZeroPrice": "the price per token must be positive",
    "ZeroHost": "the host must not be the zero address",
    "AlreadyExpired": "the session would already be expired at opening (expiry not in the future)",
    "SelfHost": "a client cannot open a session with itself as the host",
    "WrongValue": "the value sent does not match the deposit (ETH) or is not zero (ERC-20)",
    "InvalidSignature": "the receipt is not signed by the session's client for this session and contract",
    "AmountAboveDeposit": "the receipt claims more than the deposit ({0})",
    "AmountNotIncreasing": "the receipt's amount does not exceed what was settled ({0})",
    "AmountBelowSettled": "the receipt's amount is below what was settled ({0})",
    "MissingReceipt": "an amount without a receipt signature",
    "TransferFailed": "a payout transfer failed",
    "ReentrancyGuardReentrantCall": "reentrant call refused",
    "FeeTooHigh": "the fee must be at most 10000 basis points",
    "ZeroTreasury": "the treasury must not be the zero address",
    "AlreadyRegistered": "host already registered",
    "StillUnbonding": "host is unbonding until {0}: withdraw the stake before registering again",
    "NotRegistered": "host is not registered",
    "StakeTooLow": "the stake must be at least {0}",
    "EmptyPeerId": "a host registration needs a peer id",
    "NoModels": "a host registration needs at least one model",
    "EmptyModel": "a host registration needs model names that are not empty",
    "PricesMismatch": "a host registration needs one price per model",
    "NotDeregistered": "deregister the host before withdrawing its stake",
    "ERC20InsufficientBalance": "{0} holds {1} of the token, needs {2}",
    "ERC20InsufficientAllowance": "the allowance of {0} is {1}, needs {2}",
    "SafeERC20FailedOperation": "the token {0} refused the transfer",
}
_ERROR_STRING = keccak(b"Error(string)")[:4]
_PANIC = keccak(b"Panic(uint256)")[:4]


class RevertDecoder:
    """Maps revert data to the :mod:`fabstir` error it means (by selector, over the artifacts' errors)."""

    def __init__(self, names: tuple[str, ...] = CONTRACTS) -> None:
        self._errors: dict[bytes, tuple[str, list[str]]] = {}
        for name in names:
            for entry in load_artifact(name).abi:
                if entry.get("type") == "error":
                    selector = keccak(_signature(entry).encode())[:4]
                    self._errors[selector] = (str(entry["name"]), [_type(i) for i in entry["inputs"]])

    def decode(self, data: bytes) -> tuple[str, tuple[Any, ...]] | None:
        """The error's name and arguments, or ``None`` if the data is no error the contracts declare."""
        selector, payload = data[:4], data[4:]
        if selector == _ERROR_STRING:
            return self._decoded("Error", ["string"], payload)
        if selector == _PANIC:
            return self._decoded("Panic", ["uint256"], payload)
        known = self._errors.get(selector)
        return None if known is None else self._decoded(known[0], known[1], payload)

    @staticmethod
    def _decoded(name: str, types: list[str], payload: bytes) -> tuple[str, tuple[Any, ...]] | None:
        try:
            return name, tuple(abi.decode(types, payload))
        except (DecodingError, ValueError, TypeError):
            return None

    def error(self, data: bytes) -> PaymentError:
        """The typed error for revert ``data`` (a plain PaymentError naming the data if unknown)."""
        decoded = self.decode(data)
        if decoded is None:
            return PaymentError(f"the contract reverted with unknown data 0x{data.hex()}")
        name, args = decoded
        template = _MESSAGES.get(name)
        message = template.format(*args) if template else f"the contract reverted: {name}{args!r}"
        context = {"revert": name}
        if name in _INSUFFICIENT:
            return InsufficientFundsError(message, context=context)
        if name in _RECEIPT:
            return InvalidReceiptError(message, context=context)
        return PaymentError(message, context=context)
