"""Deploying the contracts shipped in ``fabstir/chain/artifacts`` to any JSON-RPC node.

For test chains, devnets and first deployments: the creation bytecode comes from the package's
artifacts (what ``contracts/build.mjs`` compiled), the deployer signs locally.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from eth_abi import abi
from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_utils.address import to_checksum_address
from eth_utils.crypto import keccak
from web3 import AsyncHTTPProvider, AsyncWeb3

from .._exceptions import ConfigurationError, PaymentError
from ._artifacts import RevertDecoder, load_artifact
from ._tx import Transactor

__all__ = ["Deployer", "Deployment", "deploy_contracts"]

#: The native token's symbol in a :class:`Deployment`'s token map (address(0) on the contracts).
NATIVE_TOKEN = "ETH"


@dataclass(frozen=True, slots=True)
class Deployment:
    """Where the contracts of one deployment live (checksummed addresses)."""

    chain_id: int
    payment_sessions: str
    host_registry: str
    #: The TestToken (symbol ``USDC``), if one was deployed.
    token: str | None = None

    @property
    def tokens(self) -> Mapping[str, str]:
        """Payment tokens by symbol, as :class:`~fabstir.chain.Web3Ledger` takes them."""
        return {"USDC": self.token} if self.token else {}

    @property
    def contracts(self) -> dict[str, str]:
        """The addresses by name, as ``ChainConfig.contracts`` holds them."""
        named = {"PaymentSessions": self.payment_sessions, "HostRegistry": self.host_registry}
        return {**named, **self.tokens}


def _constructor_types(name: str) -> list[str]:
    for entry in load_artifact(name).abi:
        if entry.get("type") == "constructor":
            return [str(i["type"]) for i in entry["inputs"]]
    return []


class Deployer:
    """Deploys artifacts from one account (an ``async with`` resource owning its RPC connection)."""

    def __init__(self, rpc_url: str, account: LocalAccount | str, *, chain_id: int | None = None) -> None:
        self.account: LocalAccount = Account.from_key(account) if isinstance(account, str) else account
        self._w3: AsyncWeb3[Any] = AsyncWeb3(AsyncHTTPProvider(rpc_url))
        self._chain_id = chain_id
        self._tx: Transactor | None = None

    async def __aenter__(self) -> Deployer:
        if self._tx is None:
            chain_id = self._chain_id
            if chain_id is None:
                try:
                    chain_id = int(await self._w3.eth.chain_id)
                except Exception as exc:
                    await self.aclose()
                    raise PaymentError(f"cannot reach the chain node: {exc}", retryable=True) from exc
            self._tx = Transactor(self._w3, chain_id=chain_id, decoder=RevertDecoder())
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Closes the RPC connection (idempotent)."""
        await self._w3.provider.disconnect()

    @property
    def _transactor(self) -> Transactor:
        if self._tx is None:
            raise ConfigurationError("use the Deployer with `async with`")
        return self._tx

    async def deploy(self, name: str, *args: Any, gas: int | None = None) -> str:
        """Deploys the artifact ``name`` with constructor ``args``; returns its checksummed address."""
        artifact = load_artifact(name)
        init = artifact.bytecode + abi.encode(_constructor_types(name), list(args))
        receipt = await self._transactor.transact(
            self.account, to=None, data=init, gas=gas, what=f"deploying {name}"
        )
        address = receipt.get("contractAddress")
        if not address:
            raise PaymentError(f"deploying {name}: the receipt names no contract address")
        return to_checksum_address(address)

    async def deploy_all(
        self,
        *,
        treasury: str,
        fee_basis_points: int = 100,
        min_stake: int = 0,
        unbonding_delay: int = 7 * 24 * 3600,
        token: bool = True,
    ) -> Deployment:
        """HostRegistry, PaymentSessions and (``token``) the TestToken."""
        if not 0 <= fee_basis_points <= 10_000:
            raise ConfigurationError(f"fee_basis_points must be within 0..10000, got {fee_basis_points}")
        registry = await self.deploy("HostRegistry", min_stake, unbonding_delay)
        sessions = await self.deploy("PaymentSessions", to_checksum_address(treasury), fee_basis_points)
        test_token = await self.deploy("TestToken") if token else None
        return Deployment(self._transactor.chain_id, sessions, registry, test_token)

    async def mint(self, token: str, to: str, amount: int) -> None:
        """Mints TestToken units (its faucet is open to anyone)."""
        selector = keccak(b"mint(address,uint256)")[:4]
        data = selector + abi.encode(["address", "uint256"], [to_checksum_address(to), amount])
        await self._transactor.transact(self.account, to=token, data=data, what="minting test tokens")


async def deploy_contracts(
    rpc_url: str,
    deployer: LocalAccount | str,
    *,
    treasury: str,
    fee_basis_points: int = 100,
    min_stake: int = 0,
    unbonding_delay: int = 7 * 24 * 3600,
    token: bool = True,
) -> Deployment:
    """Deploys the contracts to the node at ``rpc_url`` from ``deployer`` (an account or its key)."""
    async with Deployer(rpc_url, deployer) as d:
        return await d.deploy_all(
            treasury=treasury,
            fee_basis_points=fee_basis_points,
            min_stake=min_stake,
            unbonding_delay=unbonding_delay,
            token=token,
        )
