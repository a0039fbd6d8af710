"""Chain nodes for the on-chain ledger tests: the embedded chain and an anvil process, each prepared
with four funded accounts (deployer, client, host, stranger) and a TestToken minted to them.

Module-scoped (a node is started once per test module) and synchronous: the async preparation runs in
a thread of its own so that it does not touch the event loops pytest-asyncio gives the tests.
"""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import time
import urllib.request
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from eth_account import Account
from eth_account.signers.local import LocalAccount

from fabstir.chain._deploy import Deployer
from fabstir.chain._embedded import EmbeddedChain

from .conformance import FUNDS

T = TypeVar("T")

REPO = Path(__file__).resolve().parents[2]
ANVIL = REPO / "contracts" / "node_modules" / "@foundry-rs" / "anvil-linux-amd64" / "bin" / "anvil"
#: eth-tester's funded keys 0x…01 to 0x…04; anvil funds the same keys with anvil_setBalance.
ACCOUNTS: tuple[LocalAccount, ...] = tuple(Account.from_key(i.to_bytes(32, "big")) for i in range(1, 5))
STARTUP = 15.0


@dataclass(frozen=True, slots=True)
class Node:
    """A running chain: its URL, the deployer/client/host/stranger accounts, the TestToken and how to
    move its clock forward."""

    name: str
    url: str
    accounts: tuple[LocalAccount, ...]
    token: str
    advance: Callable[[float], Awaitable[None]]

    async def mine(self) -> None:
        """Mines one empty block (both nodes serve ``evm_mine``)."""
        await _rpc(self.url, "evm_mine", [])


def run_in_thread(coroutine: Coroutine[Any, Any, T]) -> T:
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coroutine).result(timeout=60)


async def _rpc(url: str, method: str, params: list[Any]) -> Any:
    async with httpx.AsyncClient(timeout=10.0) as client:
        reply = (
            await client.post(url, json={"jsonrpc": "2.0", "id": 1, "method": method, "params": params})
        ).json()
    if "error" in reply:
        raise RuntimeError(f"{method}: {reply['error']}")
    return reply["result"]


async def _mint_token(url: str) -> str:
    deployer, *holders = ACCOUNTS
    async with Deployer(url, deployer) as d:
        token = await d.deploy("TestToken")
        for holder in holders:
            await d.mint(token, holder.address, 10 * FUNDS)
    return token


@contextmanager
def embedded_node() -> Iterator[Node]:
    with EmbeddedChain() as chain:
        assert {a.address for a in ACCOUNTS} <= {a.address for a in chain.accounts}

        async def advance(seconds: float) -> None:
            chain.advance_time(seconds)

        yield Node("embedded", chain.url, ACCOUNTS, run_in_thread(_mint_token(chain.url)), advance)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _answers(url: str) -> bool:
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "eth_chainId", "params": []}).encode()
    request = urllib.request.Request(url, body, {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=1.0) as response:
            return "result" in json.loads(response.read())
    except OSError:
        return False


@contextmanager
def anvil_node() -> Iterator[Node]:
    """Starts anvil on a free loopback port, waits until it answers, funds the accounts; kills it after."""
    if not ANVIL.is_file():
        pytest.fail(
            f"anvil is not installed at {ANVIL}: run scripts/setup.sh (it installs contracts/node_modules)"
        )
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    process = subprocess.Popen(
        [str(ANVIL), "--host", "127.0.0.1", "--port", str(port), "--quiet"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + STARTUP
        while not _answers(url):
            if process.poll() is not None:
                stderr = process.stderr.read().decode(errors="replace") if process.stderr else ""
                pytest.fail(f"anvil exited with {process.returncode}: {stderr}")
            if time.monotonic() > deadline:
                pytest.fail(f"anvil did not answer on {url} within {STARTUP} s")
            time.sleep(0.05)

        async def prepare() -> str:
            for account in ACCOUNTS:
                await _rpc(url, "anvil_setBalance", [account.address, hex(10**24)])
            return await _mint_token(url)

        async def advance(seconds: float) -> None:
            await _rpc(url, "evm_increaseTime", [int(-(-seconds // 1))])
            await _rpc(url, "evm_mine", [])

        yield Node("anvil", url, ACCOUNTS, run_in_thread(prepare()), advance)
    finally:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)
        if process.stderr is not None:
            process.stderr.close()
