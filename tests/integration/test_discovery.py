"""Discovery over the real DHT: hosts in separate processes announce themselves (provider records and
signed capability records), a client SDK in this process finds them, filters them, and sees a host that
appeared after its first lookup when it asks for a refresh; a host whose bootstrap peer was down at its
start, or restarted, is found again once the bootstrap peer is back."""

from __future__ import annotations

import asyncio
import signal
import socket
from pathlib import Path

import pytest

from fabstir import NodeInfo
from fabstir.host._service import load_identity

from ._processes import HostSpec, MarketProcess, ProcessPool, production_sdk

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

LIMIT = 60.0
#: Bound on a host reaching its bootstrap peer again (it retries after 5 s, 10 s, 20 s ...: seconds here).
REDIAL_LIMIT = 45.0

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


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def wait_until_found(bootstrap: MarketProcess, host: MarketProcess) -> None:
    """A new client at a time (fresh caches, a new connection to the bootstrap peer) until one finds
    ``host``; the caller bounds the wait."""
    while True:
        async with production_sdk(bootstrap) as sdk:
            if host.peer_id in ids(await sdk.discover_nodes(force_refresh=True)):
                return
        await asyncio.sleep(0.5)


@pytest.mark.timeout(150)
async def test_a_host_is_found_after_its_bootstrap_peer_comes_up_late_and_after_it_restarts(
    pool: ProcessPool, tmp_path: Path
) -> None:
    """A host started while its bootstrap peer is down serves anyway; once the bootstrap peer is up, the
    host dials it again and announces itself, and a client starting from the bootstrap peer finds it.
    The bootstrap peer is then killed and restarted (same identity and port, an empty DHT): the host
    notices, dials it again, re-announces, and a new client finds it again. Without the redial it stays
    unfindable until its next re-announcement (5 minutes here): nobody else knows it."""
    key = tmp_path / "bootstrap.key"
    peer_id = load_identity(key).peer_id
    listen = f"/ip4/127.0.0.1/tcp/{free_port()}"
    # Records re-put only every 5 minutes: a re-put walk would also reach the bootstrap peer again, so
    # this way only the host's redial can bring it back within the test's bound.
    early = HostSpec(name="early", extra=("--record-refresh", "300", "--record-ttl", "900"))
    (host,) = pool.start_hosts([early], [f"{listen}/p2p/{peer_id}"])
    boot = pool.start_bootstrap("--identity", str(key), "--listen", listen)
    assert boot.peer_id == peer_id
    async with asyncio.timeout(REDIAL_LIMIT):
        await wait_until_found(boot, host)

    boot.send_signal(signal.SIGKILL)
    await asyncio.to_thread(boot.process.wait, 10.0)
    restarted = pool.start_bootstrap("--identity", str(key), "--listen", listen)
    async with asyncio.timeout(REDIAL_LIMIT):
        await wait_until_found(restarted, host)
