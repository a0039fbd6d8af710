"""Production mode on a devnet: real libp2p, a DHT, real host processes — discovery, negotiation and a
streamed job.

The client joins the network through the devnet's bootstrap peer, looks the hosts up in the private
Kademlia DHT (each publishes a signed capability record: models, prices, load), asks several of them
for offers, then runs a job on the best one and streams the tokens back over libp2p, paying through
the devnet's escrow contract.

Start a devnet first (``--backend simulated`` starts in seconds; without it the hosts serve the
built-in model, SmolLM2-135M)::

    fabstir devnet up --hosts 2 --backend simulated
    python examples/production_devnet.py        # or: python examples/production_devnet.py DEVNET_DIR
    fabstir devnet down

The devnet directory is the first argument, else $FABSTIR_DEVNET_DIR, else ~/.fabstir/devnet.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from fabstir import FabstirSDK
from fabstir.devnet import default_devnet_dir


def gwei(wei: int | None) -> str:
    return f"{(wei or 0) / 1e9:g} gwei"


async def main(devnet_dir: Path) -> None:
    # from_devnet = FabstirSDK(mode="production", p2p={"bootstrap_nodes": [...]}, chain={...}) with the
    # devnet's values; on another network, give those yourself.
    async with FabstirSDK.from_devnet(devnet_dir) as sdk:
        status = sdk.get_p2p_status()
        print(f"client peer {status['peer_id']}")
        print(f"connected to {status['connected_peers']} peer(s) (the bootstrap peer)")

        # Discovery: DHT lookups of the service key, then each host's capability record. Liveness is
        # checked (a ping), so the latency is measured, not advertised.
        nodes = await sdk.discover_nodes()
        if not nodes:
            raise SystemExit("no host found: is the devnet running? (fabstir devnet status)")
        print(f"\n{len(nodes)} hosts found through the DHT:")
        for node in nodes:
            caps = node.capabilities
            model = caps.models[0]
            print(f"  {node.peer_id}")
            print(
                f"    {', '.join(caps.models)} at {gwei(caps.price_for(model))}/token, "
                f"load {caps.current_load}/{caps.max_concurrent_jobs}, "
                f"latency {node.latency_ms or 0:.1f} ms, reliability {node.reliability:.2f}"
            )
        model = nodes[0].capabilities.models[0]

        # select_best_node ranks with a strategy of your choice: reliability, price, latency or random.
        cheapest = await sdk.select_best_node(model=model, strategy="price")
        lowest = cheapest.capabilities.price_for(model)
        print(f"cheapest host: {cheapest.peer_id[:20]}… at {gwei(lowest)}/token")

        # Negotiation: the request goes to the top hosts in parallel; each answers with an offer (price,
        # estimated time) or a reject with a reason. With a price limit of the cheapest host's price,
        # every dearer host rejects with insufficient_payment. negotiate_with_nodes only compares
        # offers: it declines them all.
        print(f"\noffers for 40 tokens of {model} at {gwei(lowest)}/token at most:")
        answers = await sdk.negotiate_with_nodes(
            prompt="Say hello.", model=model, max_tokens=40, max_price_per_token=lowest
        )
        for answer in answers:
            if answer["accepted"]:
                print(
                    f"  {answer['node_id'][:20]}… offers {gwei(answer['price_per_token'])}/token, "
                    f"~{answer['estimated_time_ms']} ms"
                )
            else:
                print(f"  {answer['node_id'][:20]}… rejects ({answer['reason']}): {answer['message']}")

        # The job: negotiate → escrow → stream over libp2p (→ the host settles after it).
        handle = await sdk.submit_job(
            prompt="Tell me about peer-to-peer networks.", model=model, max_tokens=40, stream=True
        )
        assert handle.stream is not None
        print("\nstreaming: ", end="")
        async with handle.stream as stream:
            async for token in stream:
                print(token.text, end="", flush=True)
            print()
            summary = stream.get_final_summary()
            metrics = stream.get_metrics()
        ttft = metrics.time_to_first_token or 0.0
        print(
            f"\n{summary.total_tokens} tokens ({summary.finish_reason}) from "
            f"{(await sdk.get_job_host(handle.job_id) or '')[:20]}…; first token after {ttft * 1000:.0f} ms, "
            f"{metrics.tokens_per_second:.0f} tokens/s"
        )
        cost = await sdk.calculate_actual_cost(handle.job_id)
        print(f"cost: {cost.tokens} tokens × {gwei(cost.price_per_token)} = {gwei(cost.total)}")
        print(f"health: {sdk.get_system_health_report()['status']}")


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1]) if len(sys.argv) > 1 else default_devnet_dir()))
