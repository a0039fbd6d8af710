"""The devnet's chain: the embedded EVM behind a local JSON-RPC server, with the contracts deployed and
the test accounts funded (ETH by the chain, test USDC minted here).

Run by ``fabstir chain serve`` as a process of the devnet; its ready file tells the devnet where the
chain is, where the contracts are and which (well-known, test-only) keys hold the money.
"""

from __future__ import annotations

from typing import Any

from ..chain._embedded import EmbeddedChain

__all__ = ["DEVNET_USDC", "start_devnet_chain"]

#: Test USDC minted to every funded account (6 decimals: one million dollars).
DEVNET_USDC = 1_000_000 * 10**6
#: Fees go to an address nobody holds the key of (the in-memory ledger's default treasury).
_TREASURY = "0x" + "fe" * 20


async def start_devnet_chain(
    *, port: int = 0, fee_basis_points: int = 100
) -> tuple[EmbeddedChain, dict[str, Any]]:
    """Starts the chain, deploys HostRegistry, PaymentSessions and the test token from the first account,
    mints test USDC to the others; returns the chain and its description (url, chain id, contracts,
    the funded accounts' keys — the first is the deployer's and is not listed)."""
    from ..chain._deploy import Deployer

    chain = EmbeddedChain(port=port).start()
    try:
        deployer, *funded = chain.accounts
        async with Deployer(chain.url, deployer) as d:
            deployment = await d.deploy_all(treasury=_TREASURY, fee_basis_points=fee_basis_points)
            assert deployment.token is not None
            for account in funded:
                await d.mint(deployment.token, account.address, DEVNET_USDC)
    except BaseException:
        chain.stop()
        raise
    info = {
        "rpc_url": chain.url,
        "chain_id": chain.chain_id,
        "contracts": deployment.contracts,
        "keys": ["0x" + bytes(account.key).hex() for account in funded],
        "treasury": _TREASURY,
        "fee_basis_points": fee_basis_points,
    }
    return chain, info
