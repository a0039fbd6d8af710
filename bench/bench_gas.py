"""Gas of the payment contracts on the embedded EVM: each session operation, and the gas per job when
one session carries 1, 10 or 100 jobs, beside the 215,034 gas of a plain per-job escrow (post + claim +
complete, measured before the project started: FINDINGS.md).

Two ways a host can settle a session of N jobs: **per job** (a `settle` after each job, `close` after
the last) or **batched** (one `close` with the latest receipt after the last job). Each job is 100
tokens at 1 gwei; the deposit covers all N jobs. Gas is exact (deterministic), so one run suffices.

Run:  .venv/bin/python bench/bench_gas.py
Writes bench/results/gas.json and prints a Markdown table (pasted into docs/BENCHMARKS.md).
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

from _procs import machine_info
from eth_account.signers.local import LocalAccount

from fabstir.chain._deploy import deploy_contracts
from fabstir.chain._embedded import EmbeddedChain
from fabstir.chain._web3 import Web3Ledger
from fabstir.protocol import sign_receipt

RESULTS = Path(__file__).parent / "results" / "gas.json"
PLAIN_ESCROW_PER_JOB = 215_034
PRICE = 1_000_000_000
TOKENS_PER_JOB = 100
SIZES = (1, 10, 100)


async def _last_gas_used(ledger: Web3Ledger, sender: str) -> int:
    """Gas used by the latest transaction of ``sender`` (the embedded chain mines one per block)."""
    w3 = ledger._tx.w3
    block = await w3.eth.get_block("latest", full_transactions=True)
    for tx in block["transactions"]:
        if not isinstance(tx, bytes) and str(tx["from"]).lower() == sender.lower():
            receipt = await w3.eth.get_transaction_receipt(tx["hash"])
            return int(receipt["gasUsed"])
    raise RuntimeError(f"no transaction from {sender} in the latest block")


async def _session(
    ledger: Web3Ledger, client: LocalAccount, host: LocalAccount, jobs: int, *, batched: bool, token: str
) -> dict[str, Any]:
    job_amount = TOKENS_PER_JOB * PRICE
    session = await ledger.open_session(
        client,
        host=host.address,
        token=token,
        deposit=jobs * job_amount,
        price_per_token=PRICE,
        expiry=await ledger.timestamp() + 3600,
    )
    open_gas = await _last_gas_used(ledger, client.address)
    settle_gas = 0
    settles = 0

    def receipt(amount: int) -> bytes:
        return sign_receipt(
            client,
            chain_id=ledger.chain_id,
            verifying_contract=ledger.verifying_contract,
            session_id=session.session_id,
            amount=amount,
        )

    if not batched:
        for job in range(1, jobs):
            settlement = await ledger.settle(
                host, session.session_id, job * job_amount, receipt(job * job_amount)
            )
            settle_gas += settlement.gas_used
            settles += 1
    final = jobs * job_amount
    closing = await ledger.close(host, session.session_id, final, receipt(final))
    total = open_gas + settle_gas + closing.gas_used
    return {
        "jobs": jobs,
        "open": open_gas,
        "settles": settles,
        "settle_total": settle_gas,
        "close": closing.gas_used,
        "total": total,
        "per_job": total / jobs,
        "vs_plain_escrow": total / jobs / PLAIN_ESCROW_PER_JOB,
    }


async def main() -> None:
    started = time.monotonic()
    with EmbeddedChain() as chain:
        deployer, client, host, *_ = chain.accounts
        deployment = await deploy_contracts(chain.url, deployer, treasury="0x" + "fe" * 20)
        ledger = await Web3Ledger.connect(
            chain.url,
            payment_sessions=deployment.payment_sessions,
            host_registry=deployment.host_registry,
            tokens=deployment.tokens,
        )
        try:
            rows: dict[str, Any] = {}
            for token in ("ETH",):
                for batched in (False, True):
                    key = f"{token} {'batched' if batched else 'per job'}"
                    rows[key] = [
                        await _session(ledger, client, host, n, batched=batched, token=token) for n in SIZES
                    ]
        finally:
            await ledger.aclose()
    results = {
        "machine": machine_info(),
        "plain_escrow_per_job": PLAIN_ESCROW_PER_JOB,
        "tokens_per_job": TOKENS_PER_JOB,
        "sessions": rows,
        "seconds": time.monotonic() - started,
        "command": "python bench/bench_gas.py",
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    print(
        "| settlement | jobs per session | open | settles | close | total | gas per job | vs plain escrow |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for key, sessions in rows.items():
        for s in sessions:
            print(
                f"| {key} | {s['jobs']} | {s['open']:,} | {s['settle_total']:,} ({s['settles']}) | "
                f"{s['close']:,} | {s['total']:,} | {s['per_job']:,.0f} | {s['vs_plain_escrow']:.2f}× |"
            )


if __name__ == "__main__":
    asyncio.run(main())
