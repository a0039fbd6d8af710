"""The scripts in examples/ run as users run them (``python examples/<name>.py``) and print what they
promise: each is a subprocess that must exit 0 with its key lines in its output.

The mock-mode examples need nothing. The devnet examples run against one devnet of real processes (a
chain with the contracts, a bootstrap peer and two simulated-backend hosts) that this module starts in
a temporary directory and stops at the end.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from fabstir.devnet import Devnet, DevnetFile, DevnetOptions

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
#: Bounds one example run; each takes a few seconds (the devnet ones start libp2p and a chain client).
RUN_TIMEOUT = 60.0
#: Bounds the devnet's start (four Python processes importing libp2p and web3 on 2 cores).
START_TIMEOUT = 45.0


def run_example(name: str, *args: str) -> str:
    """Runs ``examples/<name>`` with this interpreter; returns its stdout after checking it exited 0."""
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        cwd=EXAMPLES.parent,
        check=False,
    )
    assert result.returncode == 0, f"{name} exited {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result.stdout


# ---------------------------------------------------------------------------------------------- mock mode
@pytest.mark.timeout(90)
def test_mock_quickstart() -> None:
    """mock_quickstart.py discovers the three mock hosts, streams a completed 48-token job whose result
    equals the streamed text, and prints its cost split between host and treasury."""
    out = run_example("mock_quickstart.py")
    assert "3 hosts serve llama-3.2-1b-instruct" in out
    assert "status: COMPLETED" in out
    assert "tokens: 48  result equals the streamed text: True" in out
    assert "payment: released" in out
    assert "cost: 48 tokens × 2 gwei = 96 gwei (host 95.04 gwei, treasury 0.96 gwei)" in out


@pytest.mark.timeout(90)
def test_streaming_metrics() -> None:
    """streaming_metrics.py prints live metrics, the final summary (60 tokens, finish reason length),
    the job's status timeline and one stream:token event per token."""
    out = run_example("streaming_metrics.py")
    assert "paused at token 30" in out
    assert "summary: 60 tokens in" in out
    assert "finish reason length" in out
    assert "job statuses: POSTED → CLAIMED → PROCESSING → COMPLETED" in out
    assert "stream:token events: 60 (one per token)" in out


@pytest.mark.timeout(90)
def test_recovery() -> None:
    """recovery.py goes through three scripted failures (error, drop, hang) to a completed job with
    contiguous token indices, one payment leg per host, and finds the job again in its journal."""
    out = run_example("recovery.py")
    assert out.count("[job:failover]") == 3
    assert "erring failed (host_error)" in out
    assert "flaky failed (transport)" in out
    assert "frozen failed (timeout)" in out
    assert "status COMPLETED, finished by steady" in out
    assert "token indices contiguous (0..39): True" in out
    assert "recovery report: 3 failovers, 0 failed jobs" in out
    assert "steady  25 tokens × 4 gwei: settled 100 gwei" in out
    assert "from the journal: job 1 COMPLETED, 40 tokens, can resume: False, read from journal: True" in out
    assert "same text as streamed: True" in out


# ---------------------------------------------------------------------------------------------- devnet
@pytest.fixture(scope="module")
def devnet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevnetFile]:
    """One devnet for the module's examples: a chain, a bootstrap peer and two simulated-backend hosts
    (1 and 2 gwei per token); stopped, and its processes reaped, at the end. Synchronous, so that it is
    tied to no test's event loop."""
    runner = Devnet(
        tmp_path_factory.mktemp("devnet"),
        DevnetOptions(hosts=2, backend="simulated", start_timeout=START_TIMEOUT),
    )
    try:
        yield asyncio.run(runner.up())
    finally:
        asyncio.run(runner.down())


@pytest.mark.integration
@pytest.mark.timeout(150)
def test_payments(devnet: DevnetFile) -> None:
    """payments.py runs a paid job on the devnet: the host's settlement is observed, host + treasury add
    up to the cost, and the transactions (the client's open, the host's settlement) carry their gas."""
    out = run_example("payments.py", str(devnet.directory))
    assert "COMPLETED: 32 tokens" in out
    assert "[payment:escrowed]" in out
    assert "payment released" in out
    assert "cost 32 gwei" in out
    assert "client opening a session: gas" in out
    assert "host settling a receipt" in out


@pytest.mark.integration
@pytest.mark.timeout(90)
def test_production_devnet(devnet: DevnetFile) -> None:
    """production_devnet.py finds both hosts through the DHT, gets one offer and one insufficient_payment
    reject under a price limit, and streams a whole job over libp2p."""
    out = run_example("production_devnet.py", str(devnet.directory))
    assert "2 hosts found through the DHT" in out
    assert "offers 1 gwei/token" in out
    assert "rejects (insufficient_payment)" in out
    assert "40 tokens (length)" in out
    assert "health: healthy" in out


@pytest.mark.integration
@pytest.mark.timeout(90)
def test_hosting(devnet: DevnetFile) -> None:
    """hosting.py starts a host in-process on the devnet's network, a client finds it through the DHT and
    gets a job from it, and the host reports the job in its metrics before it stops."""
    out = run_example("hosting.py", str(devnet.directory))
    assert "escrow           False" in out
    assert "the client found the host through the DHT" in out
    assert "served by this host: True" in out
    assert "host metrics: 1 job completed, 24 tokens served, 0 failed" in out
    assert out.rstrip().endswith("host stopped")
