"""Discovery for a cold client: how long a new SDK takes to connect and to find the hosts of a DHT.

A bootstrap peer and N hosts run as separate processes (``fabstir host run``, simulated backend: the model
plays no part here), each host its own DHT server, announcing itself under the service key and in a
signed capability record. The DHT first grows to 10 hosts, then to 30. At each size, once the network has
settled (a probe client finds every host), 5 (``--quick``: 2) cold clients are measured one after another,
each a new :class:`FabstirSDK` with a new peer identity and empty caches:

* **connect**: ``connect()`` — starting the libp2p node (DHT client) and dialing the bootstrap peer;
* **discover**: ``discover_nodes()`` — ``find_providers`` on the service key, then each host's capability
  record (``get_value``) and a liveness ping, 16 at a time.

Memory was measured first: one host process holds ~110 MiB resident, so 31 processes need ~3.4 GiB, well
within this machine's 24 GiB; every host therefore runs in its own process (the real deployment shape),
and the results file records the total resident memory measured.

Run:  .venv/bin/python bench/bench_discovery.py  [--quick]
Writes bench/results/discovery.json (not with --quick) and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

from _procs import Child, ProcessGroup, machine_info, percentile, quiet_libp2p, rss_mb

from fabstir import FabstirSDK

SIZES = (10, 30)
#: A discovery may return at most this many hosts (the SDK's default is 20): above the largest size.
MAX_NODES = 64
#: How long the network may take to let a cold client see every host before measuring anyway.
SETTLE_TIMEOUT = 30.0


def _sdk(bootstrap: list[str]) -> FabstirSDK:
    return FabstirSDK(
        mode="production",
        p2p={"bootstrap_nodes": bootstrap},
        chain={"escrow": False},
        discovery={"max_nodes": MAX_NODES, "timeout": 60.0},
    )


async def cold_client(bootstrap: list[str]) -> dict[str, Any]:
    """One new SDK: connect, discover, disconnect. Times in milliseconds."""
    sdk = _sdk(bootstrap)
    started = time.perf_counter()
    await sdk.connect()
    connected = time.perf_counter()
    quiet_libp2p()
    try:
        nodes = await sdk.discover_nodes()
        discovered = time.perf_counter()
    finally:
        await sdk.disconnect()
    return {
        "connect_ms": (connected - started) * 1000,
        "discover_ms": (discovered - connected) * 1000,
        "found": len(nodes),
    }


async def settle(bootstrap: list[str], hosts: int) -> tuple[float, int]:
    """Probes with cold clients until one finds every host (or the timeout); returns the seconds it took
    and how many the last probe found."""
    started = time.perf_counter()
    found = 0
    while time.perf_counter() - started < SETTLE_TIMEOUT:
        found = (await cold_client(bootstrap))["found"]
        if found >= hosts:
            break
        await asyncio.sleep(1.0)
    return time.perf_counter() - started, found


def _host_args(index: int, bootstrap: str) -> list[str]:
    return [
        "host",
        "run",
        "--no-escrow",
        "--backend",
        "simulated",
        "--price",
        str(1_000_000_000 * (index + 1)),
        "--bootstrap",
        bootstrap,
        "--status-interval",
        "0",
    ]


async def bench(clients: int) -> dict[str, Any]:
    sizes: dict[str, Any] = {}
    async with ProcessGroup(start_timeout=180.0) as group:
        boot = await group.start("bootstrap", ["bootstrap"])
        hosts: list[Child] = []
        for size in SIZES:
            began = time.perf_counter()
            hosts += await group.start_many(
                [(f"host-{i + 1}", _host_args(i, boot.addrs[0])) for i in range(len(hosts), size)]
            )
            start_seconds = time.perf_counter() - began
            settle_seconds, settle_found = await settle(boot.addrs, size)
            runs = [await cold_client(boot.addrs) for _ in range(clients)]
            connect = [r["connect_ms"] for r in runs]
            discover = [r["discover_ms"] for r in runs]
            found = [r["found"] for r in runs]
            rss = [rss_mb(h.process.pid) for h in hosts]
            sizes[str(size)] = {
                "hosts": size,
                "cold_clients": clients,
                "connect_p50_ms": percentile(connect, 0.5),
                "connect_max_ms": max(connect),
                "discover_p50_ms": percentile(discover, 0.5),
                "discover_max_ms": max(discover),
                "connect_plus_discover_p50_ms": percentile([c + d for c, d in runs_pairs(runs)], 0.5),
                "found_min": min(found),
                "found_median": statistics.median(found),
                "found_per_client": found,
                "hosts_start_seconds": start_seconds,
                "settle_seconds": settle_seconds,
                "settle_found": settle_found,
                "host_rss_mb_mean": statistics.fmean(rss),
                "host_rss_mb_total": sum(rss),
                "load_average_1m": os.getloadavg()[0],
            }
    return sizes


def runs_pairs(runs: list[dict[str, Any]]) -> list[tuple[float, float]]:
    return [(float(r["connect_ms"]), float(r["discover_ms"])) for r in runs]


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="2 cold clients per size; writes no results")
    args = parser.parse_args()
    started = time.perf_counter()
    machine = machine_info()
    sizes = await bench(clients=2 if args.quick else 5)
    small, large = sizes[str(SIZES[0])], sizes[str(SIZES[-1])]
    result: dict[str, Any] = {
        "machine": machine,
        "setup": {
            "processes": "one bootstrap peer and one process per host (fabstir host run, simulated backend)",
            "hosts_per_process": 1,
            "discovery_max_nodes": MAX_NODES,
            "liveness_check": True,
        },
        "sizes": sizes,
        "ratios_30_over_10": {
            "connect_p50": large["connect_p50_ms"] / small["connect_p50_ms"],
            "discover_p50": large["discover_p50_ms"] / small["discover_p50_ms"],
        },
        "seconds": time.perf_counter() - started,
        "command": "python bench/bench_discovery.py",
    }
    if not args.quick:
        out = Path(__file__).parent / "results" / "discovery.json"
        out.write_text(json.dumps(result, indent=2) + "\n")
    print("| DHT hosts | connect p50 | discover p50 (max) | found (min / of) | host RSS total |")
    print("|---|---|---|---|---|")
    for s in sizes.values():
        print(
            f"| {s['hosts']} | {s['connect_p50_ms']:.0f} ms | {s['discover_p50_ms']:.0f} ms "
            f"({s['discover_max_ms']:.0f} ms) | {s['found_min']} / {s['hosts']} | "
            f"{s['host_rss_mb_total']:.0f} MiB |"
        )
    r = result["ratios_30_over_10"]
    print(f"30 / 10 hosts: connect {r['connect_p50']:.2f}×, discover {r['discover_p50']:.2f}×")


if __name__ == "__main__":
    asyncio.run(main())
