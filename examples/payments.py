"""A paid job on a devnet: escrow, receipts, settlement — and the bill, checked against the chain.

Against a devnet running on this machine (a chain with the contracts, a bootstrap peer, hosts):
the client deposits into a PaymentSessions escrow for the host it chose, signs an EIP-712 receipt for
every batch of tokens it receives, and the host settles with the latest receipt; the treasury takes
its fee and the rest of the deposit comes back. This script shows each of those amounts and the
transactions behind them, with their gas.

Start a devnet first (the simulated backend needs no model and starts in seconds)::

    fabstir devnet up --hosts 2 --backend simulated
    python examples/payments.py                 # or: python examples/payments.py DEVNET_DIR
    fabstir devnet down

The devnet directory is the first argument, else $FABSTIR_DEVNET_DIR, else ~/.fabstir/devnet.
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

from fabstir import ChainTransaction, Event, FabstirSDK
from fabstir.devnet import default_devnet_dir


def gwei(wei: int) -> str:
    return f"{wei / 1e9:g} gwei"


async def transactions_with_settlement(sdk: FabstirSDK, job_id: int) -> list[ChainTransaction]:
    """The job's transactions once the host's settlement is among them. The SDK learns of the host's
    transactions by polling the contract's logs (about once a second), so they may lag the payment."""
    client = (sdk.get_address() or "").lower()
    deadline = time.monotonic() + 10.0
    while True:
        transactions = await sdk.get_job_transactions(job_id)
        if any(tx.sender.lower() != client for tx in transactions) or time.monotonic() > deadline:
            return transactions
        await asyncio.sleep(0.2)


async def main(devnet_dir: Path) -> None:
    # from_devnet reads the devnet file: the bootstrap peers, the chain's URL and contract addresses,
    # and the key of a funded test account kept for clients.
    # selection_strategy="price": the cheapest host gets the job (the default ranks by reliability first,
    # with latency as a tie-breaker, so which of equally reliable hosts wins can vary from run to run).
    async with FabstirSDK.from_devnet(devnet_dir, selection_strategy="price") as sdk:
        print(f"client {sdk.get_address()} on chain {sdk.get_chain_id()}")

        def on_payment(event: Event) -> None:
            amount = event.data.get("deposit", event.data.get("amount", 0))
            print(f"  [{event.name}] {gwei(amount)}")

        # payment:escrowed when the deposit is on chain, payment:released when the host has settled,
        # payment:refunded when part of the deposit came back.
        sdk.on_payment_event(on_payment)

        model = (await sdk.get_models())[0].id  # whatever the devnet's hosts serve
        handle = await sdk.submit_job(prompt="What does escrow protect?", model=model, max_tokens=32)
        details = await sdk.wait_for_job_completion(handle.job_id, timeout=60)
        print(f"job {handle.job_id} {details.status}: {details.tokens_generated} tokens from {details.host}")

        # approve_job_payment waits until the host's settlement is seen on the chain.
        payment = await sdk.approve_job_payment(handle.job_id)
        print(f"\npayment {payment.status} · session {payment.session_id}")
        print(f"  host address     {payment.host_address}")
        print(f"  deposit          {gwei(payment.deposit)}")
        print(f"  receipted tokens {payment.acknowledged_tokens} × {gwei(payment.price_per_token)}")
        print(f"  settled          {gwei(payment.settled_amount)}")
        print(f"  refunded         {gwei(payment.refunded_amount)}")

        # The same money, split: tokens × price = host + treasury (its fee in basis points).
        cost = await sdk.calculate_actual_cost(handle.job_id)
        print(
            f"\ncost {gwei(cost.total)} = host {gwei(cost.host)} + treasury {gwei(cost.treasury)} "
            f"({cost.fee_basis_points / 100:g} %)"
        )
        assert cost.host + cost.treasury == cost.total
        assert payment.settled_amount + payment.refunded_amount == payment.deposit  # funds are conserved

        # What went on chain: the client's open (its deposit) and the host's settlement and close.
        client = (sdk.get_address() or "").lower()
        print("\ntransactions:")
        for tx in await transactions_with_settlement(sdk, handle.job_id):
            who = "client" if tx.sender.lower() == client else "host"
            print(
                f"  block {tx.block_number:>3}  {tx.tx_hash[:14]}…  {who} {tx.description}: "
                f"gas {tx.gas_used:,} ({gwei(tx.gas_cost)})"
            )
        print(f"gas this client paid: {gwei(sdk.get_gas_spent() or 0)}")


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1]) if len(sys.argv) > 1 else default_devnet_dir()))
