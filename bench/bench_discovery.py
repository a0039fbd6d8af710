"""Discovery for a cold client: how long a new SDK takes to connect and to find the hosts of a DHT.

A bootstrap peer and N hosts run as separate processes (``bench/_hosts.py``: the host of ``fabstir host
run``, simulated backend — the model plays no part here), each host its own DHT server, announcing itself
under the service key and in a signed capability record. The DHT grows to 10 hosts, then 30, then 100
(``--sizes``). At each size, once the network has settled (a probe client finds every host, or 60 s
passed) and the hosts' CPU use was measured while idle, 5 (``--quick``: 2) cold clients are measured one
after another, each a new :class:`FabstirSDK` with a new peer identity and empty caches:

* **connect**: ``connect()`` — starting the libp2p node (DHT client) and dialing the bootstrap peer;
* **discover**: ``discover_nodes()`` — ``find_providers`` on the service key, then each host's capability
  record (asked of the host itself, the DHT as fallback) and a liveness ping, 16 at a time.

Every host runs on this one machine, so the background work of all of them (liveness pings on every
connection, record refreshes — each a DHT walk) shares its 2 cores, where a real host has a machine of its
own. With the hosts' defaults (pings every 10 s, the record put in the DHT every 60 s, provider records
every 10 min) 30 idle hosts take ~0.6 of a core, and 100 would crowd the 2 cores so that the clients
measured the queue, not discovery; the hosts here therefore ping every 60 s and re-publish every 15 min
(``HOST_SETTINGS``, the same at every size), and start 10 at a time, each batch
once the previous one has calmed down. One host process holds ~110 MiB, so 100 need ~11 GiB of the 24.

Run:  .venv/bin/python bench/bench_discovery.py  [--quick] [--sizes 10,30,100] [--host-defaults]
          [--idle-window S]
Writes bench/results/discovery.json (not with --quick or --host-defaults) and prints the Markdown table
(``render``). ``--host-defaults`` runs the hosts with their default settings: what idle hosts cost as
shipped (docs/BENCHMARKS.md quotes ``--sizes 30 --host-defaults --idle-window 180``).
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

from _procs import Child, ProcessGroup, machine_info, percentile, process_cpu_seconds, quiet_libp2p, rss_mb

from fabstir import FabstirSDK
from fabstir import TimeoutError as FabstirTimeoutError

SIZES = (10, 30, 100)
#: A discovery may return at most this many hosts (the SDK's default is 20): above the largest size.
MAX_NODES = 128
#: How long the network may take to let a cold client see every host before measuring anyway.
SETTLE_TIMEOUT = 60.0
#: Hosts started at once; the next batch waits until the hosts use less than CALM_CORES (or CALM_TIMEOUT).
BATCH = 10
CALM_CORES = 0.6
CALM_TIMEOUT = 60.0
#: Seconds over which the idle hosts' CPU use is measured.
IDLE_WINDOW = 10.0
HOST_SETTINGS = {
    "ping_interval": 60.0,
    "record_refresh": 900.0,
    "provider_refresh": 900.0,
    "record_ttl": 1800.0,
}
HOSTS_SCRIPT = Path(__file__).parent / "_hosts.py"


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
    except FabstirTimeoutError:  # discovery.timeout: counted as a client that found nothing in time
        nodes = []
    finally:
        discovered = time.perf_counter()
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


async def cores_used(children: list[Child], seconds: float) -> float:
    """CPU the processes used over ``seconds``, in cores."""
    pids = [c.process.pid for c in children]
    before = sum(process_cpu_seconds(p) for p in pids)
    await asyncio.sleep(seconds)
    return (sum(process_cpu_seconds(p) for p in pids) - before) / seconds


async def calm_down(children: list[Child]) -> float:
    """Waits until the processes use less than CALM_CORES (measured over 2 s) or CALM_TIMEOUT passed."""
    started = time.perf_counter()
    while time.perf_counter() - started < CALM_TIMEOUT:
        if await cores_used(children, 2.0) < CALM_CORES:
            break
    return time.perf_counter() - started


def _host_args(index: int, bootstrap: str, settings: dict[str, float]) -> list[str]:
    return [
        "--count",
        "1",
        "--first-index",
        str(index),
        "--bootstrap",
        bootstrap,
        *(arg for name, value in settings.items() for arg in (f"--{name.replace('_', '-')}", str(value))),
    ]


async def bench(
    sizes: tuple[int, ...], clients: int, settings: dict[str, float], idle_window: float
) -> dict[str, Any]:
    results: dict[str, Any] = {}
    async with ProcessGroup(start_timeout=300.0) as group:
        boot = await group.start("bootstrap", ["bootstrap"])
        hosts: list[Child] = []
        for size in sizes:
            began = time.perf_counter()
            while len(hosts) < size:
                batch = range(len(hosts), min(size, len(hosts) + BATCH))
                hosts += await group.start_many(
                    [(f"host-{i + 1}", _host_args(i, boot.addrs[0], settings)) for i in batch],
                    script=HOSTS_SCRIPT,
                )
                await calm_down([boot, *hosts])
            start_seconds = time.perf_counter() - began
            settle_seconds, settle_found = await settle(boot.addrs, size)
            idle_cores = await cores_used([boot, *hosts], idle_window)
            runs = [await cold_client(boot.addrs) for _ in range(clients)]
            connect = [r["connect_ms"] for r in runs]
            discover = [r["discover_ms"] for r in runs]
            found = [r["found"] for r in runs]
            rss = [rss_mb(h.process.pid) for h in hosts]
            results[str(size)] = {
                "hosts": size,
                "cold_clients": clients,
                "connect_p50_ms": percentile(connect, 0.5),
                "connect_max_ms": max(connect),
                "discover_p50_ms": percentile(discover, 0.5),
                "discover_max_ms": max(discover),
                "found_min": min(found),
                "found_median": statistics.median(found),
                "found_per_client": found,
                "hosts_start_seconds": start_seconds,
                "settle_seconds": settle_seconds,
                "settle_found": settle_found,
                "idle_cores": idle_cores,
                "host_rss_mb_mean": statistics.fmean(rss),
                "host_rss_mb_total": sum(rss),
                "load_average_1m": os.getloadavg()[0],
            }
            print(render_size(results[str(size)]), flush=True)
    return results


def render_size(s: dict[str, Any]) -> str:
    found = ", ".join(str(f) for f in s["found_per_client"])
    return (
        f"| {s['hosts']} | {s['connect_p50_ms']:.0f} ms ({s['connect_max_ms']:.0f} ms) | "
        f"{_ms(s['discover_p50_ms'])} ({_ms(s['discover_max_ms'])}) | {found} of {s['hosts']} | "
        f"{s['idle_cores'] * 100 / s['hosts']:.1f} % | {s['host_rss_mb_total'] / 1024:.1f} GiB |"
    )


def _ms(value: float) -> str:
    return f"{value / 1000:.2f} s" if value >= 1000 else f"{value:.0f} ms"


def render(result: dict[str, Any]) -> str:
    """The Markdown table of a results file (docs/BENCHMARKS.md is regenerated from it by bench/report.py)."""
    sizes = list(result["sizes"].values())
    lines = [
        "| DHT hosts | connect p50 (max) | discover p50 (max) | hosts found per client | "
        "idle CPU per host | host RSS total |",
        "|---|---|---|---|---|---|",
        *(render_size(s) for s in sizes),
    ]
    smallest = sizes[0]
    for s in sizes[1:]:
        lines.append("")
        lines.append(
            f"{s['hosts']} / {smallest['hosts']} hosts: discover p50 "
            f"{s['discover_p50_ms'] / smallest['discover_p50_ms']:.2f}× for "
            f"{s['hosts'] / smallest['hosts']:.0f}× the hosts."
        )
    return "\n".join(lines)


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="2 cold clients per size; writes no results")
    parser.add_argument("--sizes", default=",".join(str(s) for s in SIZES), help="comma-separated DHT sizes")
    parser.add_argument(
        "--host-defaults",
        action="store_true",
        help="hosts keep their default settings (not HOST_SETTINGS); writes no results",
    )
    parser.add_argument(
        "--idle-window", type=float, default=IDLE_WINDOW, help="seconds over which idle CPU is measured"
    )
    args = parser.parse_args()
    sizes = tuple(sorted(int(s) for s in args.sizes.split(",")))
    settings = {} if args.host_defaults else HOST_SETTINGS
    started = time.perf_counter()
    machine = machine_info()
    measured = await bench(sizes, 2 if args.quick else 5, settings, args.idle_window)
    result: dict[str, Any] = {
        "machine": machine,
        "setup": {
            "processes": "one bootstrap peer and one process per host (bench/_hosts.py, simulated backend)",
            "hosts_per_process": 1,
            "host_settings": settings,
            "start_batch": BATCH,
            "discovery_max_nodes": MAX_NODES,
            "liveness_check": True,
        },
        "sizes": measured,
        "seconds": time.perf_counter() - started,
        "command": "python bench/bench_discovery.py" + ("" if sizes == SIZES else f" --sizes {args.sizes}"),
    }
    if not (args.quick or args.host_defaults):
        out = Path(__file__).parent / "results" / "discovery.json"
        out.write_text(json.dumps(result, indent=2) + "\n")
    print(render(result))


if __name__ == "__main__":
    asyncio.run(main())
