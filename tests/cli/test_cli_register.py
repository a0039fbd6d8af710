"""`fabstir host register`: registers a host's wallet, peer id, models and prices in the HostRegistry on a
real (embedded) chain, updates an existing registration on a second run, and refuses to run without a
wallet key."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from fabstir.chain._deploy import Deployment, deploy_contracts
from fabstir.chain._embedded import EmbeddedChain
from fabstir.chain._web3 import Web3Ledger
from fabstir.cli import cli
from fabstir.host._service import load_identity

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def chain() -> Iterator[tuple[EmbeddedChain, Deployment]]:
    with EmbeddedChain() as node:
        deployment = asyncio.run(deploy_contracts(node.url, node.accounts[0], treasury="0x" + "fe" * 20))
        yield node, deployment


def _args(node: EmbeddedChain, deployment: Deployment, identity: Path, *extra: str) -> list[str]:
    return [
        "--json",
        "host",
        "register",
        "--rpc-url",
        node.url,
        "--contract",
        f"PaymentSessions={deployment.payment_sessions}",
        "--contract",
        f"HostRegistry={deployment.host_registry}",
        "--identity",
        str(identity),
        *extra,
    ]


async def _registration(node: EmbeddedChain, deployment: Deployment, address: str) -> tuple[object, ...]:
    async with await Web3Ledger.connect(
        node.url, payment_sessions=deployment.payment_sessions, host_registry=deployment.host_registry
    ) as ledger:
        found = await ledger.get_host(address)
    assert found is not None
    return found.peer_id, found.models, found.stake, found.active


def test_register_then_update(chain: tuple[EmbeddedChain, Deployment], tmp_path: Path) -> None:
    """The first run registers with the stake (the peer id from the identity file); the second run with
    other models updates the registration and keeps the stake."""
    node, deployment = chain
    account = node.accounts[3]
    key = "0x" + bytes(account.key).hex()
    identity = tmp_path / "host.key"
    runner = CliRunner(env={"FABSTIR_HOST_PRIVATE_KEY": key})
    first = runner.invoke(
        cli, _args(node, deployment, identity, "--model", "m1", "--price", "5", "--stake", "1000")
    )
    assert first.exit_code == 0, first.output
    assert json.loads(first.output)["action"] == "registered"
    peer_id = load_identity(identity).peer_id
    assert asyncio.run(_registration(node, deployment, account.address)) == (peer_id, ("m1",), 1000, True)
    second = runner.invoke(cli, _args(node, deployment, identity, "--model", "m1", "--model", "m2"))
    assert second.exit_code == 0, second.output
    assert json.loads(second.output)["action"] == "updated"
    assert asyncio.run(_registration(node, deployment, account.address)) == (
        peer_id,
        ("m1", "m2"),
        1000,
        True,
    )


def test_register_needs_a_wallet(
    chain: tuple[EmbeddedChain, Deployment], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without a wallet key the command exits 3 (configuration) with one error line naming what to set."""
    node, deployment = chain
    monkeypatch.delenv("FABSTIR_HOST_PRIVATE_KEY", raising=False)
    result = CliRunner().invoke(cli, _args(node, deployment, tmp_path / "k", "--model", "m1"))
    assert result.exit_code == 3
    assert "FABSTIR_HOST_PRIVATE_KEY" in result.output
