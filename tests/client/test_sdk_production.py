"""FabstirSDK in production mode, up to the network: the explicit choice of no escrow, bootstrap dialling
with retries and its events (against a closed port and against a real bootstrap peer on loopback), the
lifecycle, and an SDK built from a devnet file."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest

from fabstir import ConfigurationError, FabstirSDK
from fabstir._events import Event
from fabstir.devnet import BootstrapPeer, DevnetFile, DevnetProcess
from fabstir.devnet._file import write_devnet_file
from fabstir.protocol import PeerIdentity

pytestmark = [pytest.mark.timeout(60)]

#: Bounds each networked test (they take well under a second; this only stops a hang).
LIMIT = 20.0


@pytest.fixture
def dead_bootstrap() -> str:
    """A bootstrap multiaddr nobody listens on: a port on 127.0.0.1 just freed, a valid random peer id."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"/ip4/127.0.0.1/tcp/{port}/p2p/{PeerIdentity().peer_id}"


def record(sdk: FabstirSDK) -> list[Event]:
    events: list[Event] = []
    sdk.on("*", events.append)
    return events


def names(events: list[Event]) -> list[str]:
    return [str(e.name) for e in events]


async def test_production_needs_escrow_off_explicitly(dead_bootstrap: str) -> None:
    """With the default chain settings (escrow on) connect raises a ConfigurationError that names
    escrow=False, and nothing was started."""
    sdk = FabstirSDK(mode="production", p2p={"bootstrap_nodes": [dead_bootstrap]})
    with pytest.raises(ConfigurationError, match=r"'escrow': False"):
        await sdk.connect()
    assert not sdk.is_connected
    assert sdk.get_p2p_status()["peer_id"] is None


@pytest.mark.integration
async def test_unreachable_bootstrap_retries_then_fails_without_raising(dead_bootstrap: str) -> None:
    """A bootstrap peer that refuses connections: connect() still returns, after p2p:started, two
    p2p:connection:retry events (attempt 1, 2, doubling delays) and one p2p:connection:failed (3 attempts);
    the SDK is connected but not to any peer; disconnect emits p2p:stopped once and is idempotent."""
    sdk = FabstirSDK(
        mode="production",
        p2p={"bootstrap_nodes": [dead_bootstrap], "max_retries": 2, "retry_delay": 0.01},
        chain={"escrow": False},
    )
    events = record(sdk)
    async with asyncio.timeout(LIMIT):
        await sdk.connect()
        assert sdk.get_p2p_status()["connected"]
        assert sdk.is_p2p_enabled()
        assert not sdk.is_p2p_connected()
        assert sdk.get_p2p_metrics()["connected_peers"] == 0
        peer_id = dead_bootstrap.rpartition("/p2p/")[2]
        retries = [e for e in events if e.name == "p2p:connection:retry"]
        assert [e.data["attempt"] for e in retries] == [1, 2]
        assert [e.data["delay"] for e in retries] == [0.01, 0.02]
        assert all(e.node_id == peer_id for e in retries)
        failed = [e for e in events if e.name == "p2p:connection:failed"]
        assert len(failed) == 1
        assert failed[0].data["attempts"] == 3
        assert failed[0].node_id == peer_id
        started = names(events).index("p2p:started")
        assert (
            started
            < names(events).index("p2p:connection:retry")
            < names(events).index("p2p:connection:failed")
        )
        assert names(events)[-1] == "connected"

        await sdk.disconnect()
        await sdk.disconnect()
    assert not sdk.is_connected
    assert names(events).count("p2p:stopped") == 1
    assert names(events).count("disconnected") == 1


@pytest.mark.integration
async def test_a_real_bootstrap_peer_connects(tmp_path: Path) -> None:
    """Against an in-process bootstrap peer on loopback: no retry, is_p2p_connected() is true and the
    metrics and status report the connected peer; connect twice and disconnect twice are harmless, and a
    second SDK can connect and leave again."""
    async with asyncio.timeout(LIMIT), BootstrapPeer() as boot:
        for _ in range(2):
            sdk = FabstirSDK(
                mode="production", p2p={"bootstrap_nodes": boot.addrs()}, chain={"escrow": False}
            )
            events = record(sdk)
            await sdk.connect()
            await sdk.connect()
            assert sdk.is_p2p_connected()
            assert sdk.get_p2p_metrics()["connected_peers"] >= 1
            status = sdk.get_p2p_status()
            assert status["connected_peers"] >= 1
            assert status["peer_id"] != boot.peer_id
            assert all(a.startswith("/ip4/127.0.0.1/") for a in status["listen_addrs"])
            assert sdk.get_chain_id() == 31337
            assert sdk.get_address() is not None
            assert "p2p:connection:retry" not in names(events)
            assert "p2p:connection:failed" not in names(events)
            assert names(events).count("connected") == 1
            await sdk.disconnect()
            await sdk.disconnect()
            assert not sdk.is_p2p_connected()
            assert names(events).count("p2p:stopped") == 1


def _devnet(directory: Path) -> DevnetFile:
    boot_id = PeerIdentity().peer_id
    boot = DevnetProcess(
        role="bootstrap",
        name="bootstrap",
        pid=1,
        started=0.0,
        peer_id=boot_id,
        addrs=(f"/ip4/127.0.0.1/tcp/4001/p2p/{boot_id}",),
        log=str(directory / "bootstrap.log"),
    )
    return DevnetFile(directory=directory, created=0.0, escrow=False, chain_id=31337, processes=(boot,))


def test_from_devnet_builds_a_production_config(tmp_path: Path) -> None:
    """from_devnet(dir) gives production mode with the devnet's bootstrap nodes, escrow off and its chain
    id; mapping overrides merge into the devnet's settings and other overrides replace them."""
    devnet = _devnet(tmp_path)
    write_devnet_file(devnet)
    sdk = FabstirSDK.from_devnet(tmp_path)
    assert sdk.config.mode == "production"
    assert sdk.config.p2p is not None
    assert sdk.config.p2p.bootstrap_nodes == devnet.bootstrap_nodes
    assert sdk.config.chain.escrow is False
    assert sdk.config.chain.chain_id == 31337

    tuned = FabstirSDK.from_devnet(
        str(tmp_path), p2p={"max_retries": 1}, chain={"session_expiry": 60.0}, timeouts={"connect": 3.0}
    )
    assert tuned.config.p2p is not None
    assert tuned.config.p2p.bootstrap_nodes == devnet.bootstrap_nodes
    assert tuned.config.p2p.max_retries == 1
    assert (tuned.config.chain.escrow, tuned.config.chain.session_expiry) == (False, 60.0)
    assert tuned.config.timeouts.connect == 3.0


def test_from_devnet_without_a_devnet(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No devnet file (in the directory given, or in FABSTIR_DEVNET_DIR): ConfigurationError saying to run
    'fabstir devnet up'."""
    with pytest.raises(ConfigurationError, match="fabstir devnet up"):
        FabstirSDK.from_devnet(tmp_path)
    monkeypatch.setenv("FABSTIR_DEVNET_DIR", str(tmp_path / "none"))
    with pytest.raises(ConfigurationError, match="fabstir devnet up"):
        FabstirSDK.from_devnet()
