"""`fabstir demo` on a throwaway devnet, the README's main command, as a process: it pays through the
contracts and reports the transactions, their gas and the host / treasury / refund split."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


def test_the_devnet_demo_pays_and_reports_transactions_and_the_split() -> None:
    """`fabstir --json demo` runs a job on the built-in model through a devnet with escrow: the payment is
    released, host + treasury = total paid, total + refunded = the deposit, the fee is 1 %, and the
    transactions are the client's open and the host's settlement (each with its gas and cost)."""
    done = subprocess.run(
        [sys.executable, "-m", "fabstir", "--json", "demo", "--hosts", "1", "--max-tokens", "24"],
        capture_output=True,
        text=True,
        timeout=150,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)
    cost = report["cost"]
    assert report["mode"] == "devnet"
    assert report["escrow"] is True
    assert report["payment_status"] == "released"
    assert cost["tokens"] > 0
    assert cost["total"] == cost["tokens"] * cost["price_per_token"]
    assert cost["host"] + cost["treasury"] == cost["total"]
    assert cost["treasury"] == cost["total"] // 100
    assert cost["total"] + cost["refunded"] == 24 * cost["price_per_token"]  # the deposit: max_tokens × price
    opening, settlement = report["transactions"]
    assert opening["description"] == "opening a session"
    assert settlement["description"] == "settling a receipt and closing a session"
    assert opening["sender"] != settlement["sender"]
    for tx in (opening, settlement):
        assert tx["tx_hash"].startswith("0x")
        assert len(tx["tx_hash"]) == 66
        assert tx["gas_used"] > 21_000
        assert tx["gas_cost"] > 0
