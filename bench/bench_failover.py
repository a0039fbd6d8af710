"""Failover time: from a host's death (or freeze) mid-stream to the next token from the host that takes
over, with the built-in model (SmolLM2-135M-Instruct on llama.cpp, one per host process).

Setup: a bootstrap peer, a standby host (5 wei per token, up for the whole run) and, for each run, a fresh
victim host (1 wei: the SDK selects by price, so the victim gets the job). The client streams a job of 96
tokens; at the 8th token the benchmark sends the victim SIGKILL (a crash: the kernel closes its sockets)
or SIGSTOP (a freeze: the connection stays up, nothing arrives), and measures the time from the signal to
the first token of the standby host. Between them the SDK notices the failure (the stream's EOF after a
crash; the health pings — ``ping_interval`` 2 s, ``ping_timeout`` 2 s, the SDK's defaults — or the
inter-token timeout after a freeze), tries to resume on the same host for at most ``timeouts.resume``
(2 s, the default: refused after a crash, unanswered after a freeze), and fails over: discovery
(cached), negotiation with the standby host, and its first token (a prefill of the prompt plus the
delivered text). Every run also checks the stream: indices contiguous, nothing lost or repeated.

No escrow (the chain's session open would add one transaction on the embedded chain; tests measure that).

Run:  .venv/bin/python bench/bench_failover.py  [--runs N]
Writes bench/results/failover.json and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import time
from pathlib import Path
from typing import Any

from _procs import ProcessGroup, machine_info, percentile, quiet_libp2p

from fabstir import EventName, FabstirSDK
from fabstir.backend import BUILTIN_MODEL_ID

RESULTS = Path(__file__).parent / "results" / "failover.json"
PROMPT = "Tell me a long story about a lighthouse keeper and a storm."
MAX_TOKENS = 96
FAULT_AT = 8


def _host_args(bootstrap: list[str], price: int) -> list[str]:
    return [
        "host",
        "run",
        "--no-escrow",
        "--backend",
        "builtin",
        "--price",
        str(price),
        "--bootstrap",
        bootstrap[0],
        "--status-interval",
        "0",
    ]


async def one_run(
    group: ProcessGroup, boot: list[str], standby: str, index: int, signum: int
) -> dict[str, Any]:
    victim = await group.start(f"victim-{index}", _host_args(boot, 1))
    sdk = FabstirSDK(
        mode="production",
        p2p={"bootstrap_nodes": boot},
        chain={"escrow": False},
        selection_strategy="price",
        timeouts={"first_token": 20.0, "inter_token": 10.0, "overall": 120.0},
    )
    failover: dict[str, Any] = {}
    first_from_standby: list[float] = []
    async with sdk:
        quiet_libp2p()
        sdk.on(EventName.JOB_FAILOVER, lambda e: failover.update(e.data, at=time.monotonic()))
        # tokens already in flight from the victim still arrive after the signal: what counts is the
        # first token the standby host sent
        sdk.on(
            EventName.STREAM_TOKEN,
            lambda e: first_from_standby.append(time.monotonic()) if e.node_id == standby else None,
        )
        handle = await sdk.submit_job(
            prompt=PROMPT, model=BUILTIN_MODEL_ID, max_tokens=MAX_TOKENS, seed=0, stream=True
        )
        assert handle.stream is not None
        indices: list[int] = []
        signalled = 0.0
        async for token in handle.stream:
            indices.append(token.index)
            if len(indices) == FAULT_AT:
                signalled = time.monotonic()
                victim.process.send_signal(signum)
        details = await sdk.wait_for_job_completion(handle.job_id)
        host = await sdk.get_job_host(handle.job_id)
    victim.process.kill()
    victim.process.wait()
    if indices != list(range(len(indices))) or details.result is None or host != standby:
        raise RuntimeError(f"run {index}: the stream was not seamless or the job did not move ({host})")
    return {
        "signal": signal.Signals(signum).name,
        "to_next_token": first_from_standby[0] - signalled,
        "to_failover_event": failover["at"] - signalled,
        "delivered_before": failover["delivered"],
        "tokens": len(indices),
    }


def render(result: dict[str, Any]) -> str:
    """The Markdown table(s) of a results file (docs/BENCHMARKS.md is regenerated from it by
    bench/report.py)."""
    lines = [
        "| host failure | runs | death → failover decided p50 | death → next token p50 | p95 | max |",
        "|---|---|---|---|---|---|",
    ]
    for name, what in (("SIGKILL", "killed (SIGKILL)"), ("SIGSTOP", "frozen (SIGSTOP)")):
        row = result["summary"][name]
        lines.append(
            f"| {what} | {row['runs']:.0f} | {row['failover_event_p50'] * 1000:.0f} ms | "
            f"{row['p50'] * 1000:.0f} ms | {row['p95'] * 1000:.0f} ms | {row['max'] * 1000:.0f} ms |"
        )
    return "\n".join(lines)


async def main(runs: int) -> None:
    started = time.monotonic()
    results: list[dict[str, Any]] = []
    async with ProcessGroup() as group:
        boot = (await group.start("bootstrap", ["bootstrap"])).addrs
        standby = await group.start("standby", _host_args(boot, 5))
        for _ in range(runs):
            for signum in (signal.SIGKILL, signal.SIGSTOP):
                result = await one_run(group, boot, str(standby.info["peer_id"]), len(results), signum)
                results.append(result)
                print(
                    f"{result['signal']}: next token after {result['to_next_token'] * 1000:.0f} ms",
                    flush=True,
                )
    table: dict[str, dict[str, float]] = {}
    for name in ("SIGKILL", "SIGSTOP"):
        times = [r["to_next_token"] for r in results if r["signal"] == name]
        detect = [r["to_failover_event"] for r in results if r["signal"] == name]
        table[name] = {
            "runs": len(times),
            "p50": percentile(times, 0.5),
            "p95": percentile(times, 0.95),
            "max": max(times),
            "failover_event_p50": percentile(detect, 0.5),
        }
    output = {
        "machine": machine_info(),
        "command": f"python bench/bench_failover.py --runs {runs}",
        "settings": {
            "max_tokens": MAX_TOKENS,
            "fault_at": FAULT_AT,
            "ping_interval": 2.0,
            "ping_timeout": 2.0,
        },
        "runs": results,
        "summary": table,
        "seconds": time.monotonic() - started,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(output, indent=2, sort_keys=True) + "\n")
    print(render(output))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10, help="runs per failure kind (default 10)")
    asyncio.run(main(parser.parse_args().runs))
