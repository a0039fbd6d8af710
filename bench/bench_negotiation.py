"""Negotiation round trip over libp2p: how long a client takes to get offers from K hosts.

Setup: a bootstrap peer and 5 host processes (simulated backend, no escrow) on loopback. One client
(production mode) discovers them once (cached afterwards, as for any client past its first job), then
calls ``negotiate_with_nodes`` repeatedly with ``negotiation_fanout`` K = 1, 3 and 5, interleaved: each
call opens a job stream to each of the K hosts in parallel, sends ``Hello`` + ``Request``, waits for every
``Offer`` and declines it. Reported per K: p50 / p90 / max of the whole call, and offers received.

The connections to the hosts already exist after discovery (its liveness pings), so a call costs stream
set-up (multistream-select on yamux), one request/answer, and the decline — not a dial.

Run:  .venv/bin/python bench/bench_negotiation.py  [--rounds N]
Writes bench/results/negotiation.json and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path
from typing import Any

from _procs import ProcessGroup, machine_info, percentile, quiet_libp2p

from fabstir import FabstirSDK

RESULTS = Path(__file__).parent / "results" / "negotiation.json"
HOSTS = 5
FANOUTS = (1, 3, 5)
MODEL = "simulated-model"


def render(result: dict[str, Any]) -> str:
    """The Markdown table(s) of a results file (docs/BENCHMARKS.md is regenerated from it by
    bench/report.py)."""
    lines = [
        "| hosts asked (K) | calls | round trip p50 | p90 | max | offers per call |",
        "|---|---|---|---|---|---|",
    ]
    # keys are ints in the running script and strings once the file went through JSON
    for k, row in sorted(result["summary"].items(), key=lambda item: int(item[0])):
        lines.append(
            f"| {k} | {row['calls']} | {row['p50_ms']:.1f} ms | {row['p90_ms']:.1f} ms | "
            f"{row['max_ms']:.1f} ms | {row['offers_min']} |"
        )
    return "\n".join(lines)


async def main(rounds: int) -> None:
    started = time.monotonic()
    async with ProcessGroup() as group:
        boot = (await group.start("bootstrap", ["bootstrap"])).addrs
        specs = [
            (
                f"host-{i}",
                [
                    "host",
                    "run",
                    "--no-escrow",
                    "--backend",
                    "simulated",
                    "--price",
                    str(i + 1),
                    "--bootstrap",
                    boot[0],
                    "--status-interval",
                    "0",
                ],
            )
            for i in range(HOSTS)
        ]
        await group.start_many(specs)
        clients = {
            k: FabstirSDK(
                mode="production",
                p2p={"bootstrap_nodes": boot},
                chain={"escrow": False},
                negotiation_fanout=k,
            )
            for k in FANOUTS
        }
        samples: dict[int, list[float]] = {k: [] for k in FANOUTS}
        offers: dict[int, list[int]] = {k: [] for k in FANOUTS}
        for sdk in clients.values():
            await sdk.connect()
        try:
            quiet_libp2p()
            for k, sdk in clients.items():  # discovery (cached from here on) and one warm-up call
                deadline = time.monotonic() + 30
                while len(await sdk.discover_nodes(model=MODEL, force_refresh=True)) < HOSTS:
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"client K={k} did not find {HOSTS} hosts")
                    await asyncio.sleep(0.5)
                await sdk.negotiate_with_nodes(prompt="warm-up", model=MODEL)
            for _ in range(rounds):
                for k, sdk in clients.items():
                    t0 = time.perf_counter()
                    results = await sdk.negotiate_with_nodes(prompt="how much for this?", model=MODEL)
                    samples[k].append(time.perf_counter() - t0)
                    offers[k].append(sum(bool(r["accepted"]) for r in results))
        finally:
            for sdk in clients.values():
                await sdk.disconnect()
    table = {
        k: {
            "calls": len(samples[k]),
            "p50_ms": percentile(samples[k], 0.5) * 1000,
            "p90_ms": percentile(samples[k], 0.9) * 1000,
            "max_ms": max(samples[k]) * 1000,
            "offers_min": min(offers[k]),
        }
        for k in FANOUTS
    }
    output = {
        "machine": machine_info(),
        "command": f"python bench/bench_negotiation.py --rounds {rounds}",
        "hosts": HOSTS,
        "summary": table,
        "seconds": time.monotonic() - started,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(output, indent=2, sort_keys=True) + "\n")
    print(render(output))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=100, help="calls per fanout (default 100)")
    asyncio.run(main(parser.parse_args().rounds))
