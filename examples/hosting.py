"""Running a host from Python: the same host as ``fabstir host run``, started in this process, joined to
a devnet's network, serving one job to a client, then stopped.

``HostService(HostServiceOptions(...))`` takes the options of ``fabstir host run`` (docs/HOSTING.md) and
owns everything a host needs: the backend, a libp2p node serving the DHT, the ledger, the host node.
Here it serves the simulated backend (generated text, no model needed) under a model id of its own,
``example-model``, so the client's job can only go to this host. It joins the network through the
devnet's bootstrap peer; the other devnet hosts keep running beside it.

It serves **without payment** (``escrow=False``, like ``fabstir host run --no-escrow``): a paid host
needs a funded wallet to register and to pay for its settlements, and the devnet keeps its funded test
keys for its own hosts. Receipts are still signed and checked; nothing settles. The client opts in too
(``chain={"escrow": False}``). For a paid host give ``rpc_url``, ``contracts`` and ``private_key``.

Start a devnet first (any backend; the simulated one starts in seconds)::

    fabstir devnet up --hosts 1 --backend simulated
    python examples/hosting.py                  # or: python examples/hosting.py DEVNET_DIR
    fabstir devnet down

The devnet directory is the first argument, else $FABSTIR_DEVNET_DIR, else ~/.fabstir/devnet.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from fabstir import FabstirSDK, NodeInfo
from fabstir.devnet import default_devnet_dir, read_devnet_file
from fabstir.host import HostService, HostServiceOptions

MODEL = "example-model"


async def wait_until_discovered(sdk: FabstirSDK, peer_id: str, timeout: float = 20.0) -> NodeInfo:
    """A new host is found once its records have reached the DHT: that takes a moment after it starts."""
    async with asyncio.timeout(timeout):
        while True:
            nodes = await sdk.discover_nodes(model=MODEL, force_refresh=True)
            found = [n for n in nodes if n.peer_id == peer_id]
            if found:
                return found[0]
            await asyncio.sleep(0.5)


async def main(devnet_dir: Path) -> None:
    devnet = read_devnet_file(devnet_dir)  # where the devnet's bootstrap peer listens
    options = HostServiceOptions(
        bootstrap=devnet.bootstrap_nodes,  # --bootstrap
        listen_addrs=("/ip4/127.0.0.1/tcp/0",),  # --listen (loopback, a random port: this machine only)
        backend="simulated",  # --backend simulated (or "builtin", or "openai" with backend_url)
        model_map={MODEL: MODEL},  # --model ID=SERVER_NAME
        token_delay=0.01,  # --token-delay: seconds per simulated token
        prices={MODEL: 500_000_000},  # --price example-model=500000000 (wei per token)
        max_concurrent_jobs=2,  # --max-concurrent-jobs
        escrow=False,  # --no-escrow
    )

    # `async with` starts the backend, then libp2p, then the node (which announces itself on the DHT),
    # and on leaving stops them in the reverse order: jobs in flight end first.
    async with HostService(options) as service:
        assert service.node is not None
        print("host running:")
        for key, value in service.describe().items():
            print(f"  {key:<16} {value}")

        # A client on the same network, without payment as the host.
        client = FabstirSDK(
            mode="production",
            p2p={"bootstrap_nodes": list(devnet.bootstrap_nodes)},
            chain={"escrow": False},
        )
        async with client:
            node = await wait_until_discovered(client, service.peer_id)
            print(
                f"\nthe client found the host through the DHT: {node.capabilities.models}, "
                f"{node.capabilities.price_for(MODEL)} wei/token"
            )
            handle = await client.submit_job(prompt="Hello, host!", model=MODEL, max_tokens=24, stream=True)
            assert handle.stream is not None
            print("streaming from our host: ", end="")
            async with handle.stream as stream:
                async for token in stream:
                    print(token.text, end="", flush=True)
            print()
            served_by = await client.get_job_host(handle.job_id)
            print(f"served by this host: {served_by == service.peer_id}")

        # What the host saw: its health and counters (`fabstir host run` prints these as status lines).
        health = service.node.health()
        metrics = service.node.metrics()
        print(
            f"\nhost health: {health['status']}, load {health['active_jobs']}/"
            f"{health['max_concurrent_jobs']}, up {health['uptime']:.1f} s"
        )
        print(
            f"host metrics: {metrics.jobs_completed} job completed, {metrics.tokens_served} tokens served, "
            f"{metrics.jobs_failed} failed, {metrics.bad_clients} bad clients"
        )
    print("host stopped")


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1]) if len(sys.argv) > 1 else default_devnet_dir()))
