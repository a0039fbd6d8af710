"""Discovery over the real DHT: hosts in separate processes announce themselves (provider records and
signed capability records), a client SDK in this process finds them, filters them, and sees a host that
appeared after its first lookup when it asks for a refresh."""

from __future__ import annotations

import asyncio

import pytest

from fabstir import NodeInfo

from ._processes import HostSpec, MarketProcess, ProcessPool, production_sdk

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

LIMIT = 60.0

#: Five hosts with different models and prices (wei per token).
HOSTS = (
    HostSpec(name="alpha-100", models=("disc-alpha",), prices={"": 100}),
    HostSpec(name="alpha-beta-200", models=("disc-alpha", "disc-beta"), prices={"": 200}),
    HostSpec(name="alpha-300", models=("disc-alpha",), prices={"": 300}),
    HostSpec(name="beta-150", models=("disc-beta",), prices={"": 150}),
    HostSpec(name="gamma", models=("disc-gamma", "disc-beta"), prices={"disc-gamma": 500, "disc-beta": 450}),
)


@pytest.fixture(scope="module")
def hosts(module_pool: ProcessPool, bootstrap: MarketProcess) -> list[MarketProcess]:
    """The five hosts of :data:`HOSTS`, started in parallel, in that order."""
    return module_pool.start_hosts(HOSTS, bootstrap)


def ids(nodes: list[NodeInfo]) -> set[str]:
    return {n.peer_id for n in nodes}


async def test_discovery_finds_filters_and_refreshes(
    bootstrap: MarketProcess, hosts: list[MarketProcess], pool: ProcessPool
) -> None:
    """``discover_nodes`` finds all five host processes with the models and prices they announced;
    filtering by model, by maximum price and by exclusion returns exactly the matching hosts; a host
    started after a lookup is missing from the cached answer but found with ``force_refresh``."""
    alpha100, alpha_beta200, alpha300, beta150, gamma = hosts
    async with production_sdk(bootstrap) as sdk, asyncio.timeout(LIMIT):
        everyone = await sdk.discover_nodes()
        assert ids(everyone) == {h.peer_id for h in hosts}
        by_id = {n.peer_id: n for n in everyone}
        assert by_id[alpha100.peer_id].capabilities.price_for("disc-alpha", "ETH") == 100
        assert by_id[alpha_beta200.peer_id].capabilities.models == ("disc-alpha", "disc-beta")
        assert by_id[gamma.peer_id].capabilities.price_for("disc-gamma", "ETH") == 500
        assert by_id[gamma.peer_id].capabilities.price_for("disc-beta", "ETH") == 450
        assert all(n.latency_ms is not None for n in everyone)  # each one answered the liveness probe

        alpha = await sdk.discover_nodes(model="disc-alpha")
        assert ids(alpha) == {alpha100.peer_id, alpha_beta200.peer_id, alpha300.peer_id}
        beta = await sdk.discover_nodes(model="disc-beta")
        assert ids(beta) == {alpha_beta200.peer_id, beta150.peer_id, gamma.peer_id}
        assert ids(await sdk.discover_nodes(model="disc-gamma")) == {gamma.peer_id}
        assert await sdk.discover_nodes(model="disc-unknown") == []

        cheap = await sdk.discover_nodes(model="disc-alpha", max_price=200)
        assert ids(cheap) == {alpha100.peer_id, alpha_beta200.peer_id}
        cheap_beta = await sdk.discover_nodes(model="disc-beta", max_price=449)
        assert ids(cheap_beta) == {alpha_beta200.peer_id, beta150.peer_id}
        assert await sdk.discover_nodes(model="disc-alpha", max_price=99) == []

        excluded = await sdk.discover_nodes(model="disc-alpha", exclude=[alpha100.peer_id])
        assert ids(excluded) == {alpha_beta200.peer_id, alpha300.peer_id}

        late_spec = HostSpec(name="alpha-late", models=("disc-alpha",), prices={"": 50})
        (late,) = await asyncio.to_thread(pool.start_hosts, [late_spec], bootstrap)
        cached = await sdk.discover_nodes(model="disc-alpha")
        assert late.peer_id not in ids(cached)
        refreshed = await sdk.discover_nodes(model="disc-alpha", force_refresh=True)
        assert ids(refreshed) == {alpha100.peer_id, alpha_beta200.peer_id, alpha300.peer_id, late.peer_id}
        assert {n.peer_id: n for n in refreshed}[late.peer_id].capabilities.price_for(
            "disc-alpha", "ETH"
        ) == 50
