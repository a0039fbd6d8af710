"""Gas of the payment contracts on the embedded EVM: each session operation, and the gas per job when
one session carries 1, 10 or 100 jobs, beside the 215,034 gas of a plain per-job escrow (post + claim +
complete, measured before the project started: FINDINGS.md).

First, each operation alone, for ETH and for the USDC-like ERC-20 (whose open needs an ``approve``
first): open, settle, close, and reclaim after expiry by a client whose host never settled.

Two ways a host can settle a session of N jobs: **per job** (a `settle` after each job, `close` after
the last) or **batched** (one `close` with the latest receipt after the last job). Each job is 100
tokens at 1 gwei; the deposit covers all N jobs. Gas is exact (deterministic), so one run suffices.

Run:  .venv/bin/python bench/bench_gas.py
Writes bench/results/gas.json and prints its Markdown tables (``render``, used by bench/report.py).
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

from _procs import machine_info
from eth_account.signers.local import LocalAccount

from fabstir.chain._deploy import Deployer, deploy_contracts
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


def _last_gas(ledger: Web3Ledger, sender: str) -> int:
    """Gas used by the latest transaction this ledger sent from ``sender``."""
    return ledger.transactions(sender)[-1].gas_used


async def _operations(
    ledger: Web3Ledger, chain: EmbeddedChain, client: LocalAccount, host: LocalAccount, token: str
) -> dict[str, int]:
    """open, approve (ERC-20), settle and close one session; open another and reclaim it after expiry."""
    job_amount = TOKENS_PER_JOB * PRICE
    ops: dict[str, int] = {}
    before = len(ledger.transactions(client.address))
    session = await ledger.open_session(
        client,
        host=host.address,
        token=token,
        deposit=2 * job_amount,
        price_per_token=PRICE,
        expiry=await ledger.timestamp() + 3600,
    )
    sent = ledger.transactions(client.address)[before:]
    ops["approve"] = sum(t.gas_used for t in sent if "approv" in t.description)
    ops["open"] = _last_gas(ledger, client.address)

    def receipt(amount: int) -> bytes:
        return sign_receipt(
            client,
            chain_id=ledger.chain_id,
            verifying_contract=ledger.verifying_contract,
            session_id=session.session_id,
            amount=amount,
        )

    ops["settle"] = (await ledger.settle(host, session.session_id, job_amount, receipt(job_amount))).gas_used
    final = 2 * job_amount
    ops["close"] = (await ledger.close(host, session.session_id, final, receipt(final))).gas_used
    abandoned = await ledger.open_session(
        client,
        host=host.address,
        token=token,
        deposit=job_amount,
        price_per_token=PRICE,
        expiry=await ledger.timestamp() + 60,
    )
    chain.advance_time(120)
    ops["reclaim"] = (await ledger.reclaim(client, abandoned.session_id)).gas_used
    return ops


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


def render(result: dict[str, Any]) -> str:
    """The Markdown table(s) of a results file (docs/BENCHMARKS.md is regenerated from it by
    bench/report.py)."""
    lines = [
        "| token | approve | open | settle (first in a session) | close | reclaim (after expiry) |",
        "|---|---|---|---|---|---|",
    ]
    for token, label in (("ETH", "ETH"), ("USDC", "USDC (ERC-20)")):
        ops = result["operations"][token]
        approve = f"{ops['approve']:,}" if ops["approve"] else "—"
        lines.append(
            f"| {label} | {approve} | {ops['open']:,} | {ops['settle']:,} | {ops['close']:,} | "
            f"{ops['reclaim']:,} |"
        )
    lines += [
        "",
        "| settlement | jobs per session | open | settles (count) | close | total | gas per job "
        "| vs plain escrow |",
        "|---|---|---|---|---|---|---|---|",
    ]
    # the file's keys are sorted ("ETH batched" first): the table shows per job, then batched
    for settlement in ("per job", "batched"):
        for s in result["sessions"][f"ETH {settlement}"]:
            lines.append(
                f"| {settlement} | {s['jobs']} | {s['open']:,} | {s['settle_total']:,} ({s['settles']}) | "
                f"{s['close']:,} | {s['total']:,} | {s['per_job']:,.0f} | {s['vs_plain_escrow']:.2f}× |"
            )
    return "\n".join(lines)


async def main() -> None:
    started = time.monotonic()
    with EmbeddedChain() as chain:
        deployer, client, host, *_ = chain.accounts
        deployment = await deploy_contracts(chain.url, deployer, treasury="0x" + "fe" * 20)
        async with Deployer(chain.url, deployer) as faucet:
            assert deployment.token is not None
            await faucet.mint(deployment.token, client.address, 10**24)
        ledger = await Web3Ledger.connect(
            chain.url,
            payment_sessions=deployment.payment_sessions,
            host_registry=deployment.host_registry,
            tokens=deployment.tokens,
        )
        try:
            # Warm first (the client's nonce slot, the treasury's first payment), so that the table
            # shows each operation's steady cost.
            for token in ("ETH", "USDC"):
                await _operations(ledger, chain, client, host, token)
            operations = {
                token: await _operations(ledger, chain, client, host, token) for token in ("ETH", "USDC")
            }
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
        "operations": operations,
        "sessions": rows,
        "seconds": time.monotonic() - started,
        "command": "python bench/bench_gas.py",
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    print(render(results))


if __name__ == "__main__":
    asyncio.run(main())
