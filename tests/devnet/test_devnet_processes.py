"""A devnet of real processes on loopback (a chain, a bootstrap peer and simulated-backend hosts): it starts,
reports itself, refuses a second one in the same directory, stops cleanly, and explains a failed start
with the log's tail, leaving nothing running."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from fabstir import ConfigurationError, FabstirError
from fabstir.devnet import Devnet, DevnetOptions, devnet_status, read_devnet_file, stop_devnet
from fabstir.devnet._file import DEVNET_FILE

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

#: Bounds one devnet start (three Python processes importing libp2p on 2 cores take a few seconds).
START_TIMEOUT = 45.0


def _running(pid: int) -> bool:
    """Whether a process with this pid exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


async def test_up_status_second_up_and_down(tmp_path: Path) -> None:
    """up starts a chain with the contracts, a bootstrap peer and 2 hosts (different prices), writes the
    devnet file (with the chain's URL, contracts and a client key) and every process runs; a second up in
    the same directory is a ConfigurationError while it runs; stop_devnet stops every process (none had
    to be killed) and removes the file."""
    devnet = Devnet(tmp_path, DevnetOptions(hosts=2, backend="simulated", start_timeout=START_TIMEOUT))
    try:
        info = await devnet.up()
        assert (tmp_path / DEVNET_FILE).exists()
        assert read_devnet_file(tmp_path) == info
        assert [p.role for p in info.processes] == ["chain", "bootstrap", "host", "host"]
        assert info.escrow is True
        assert info.rpc_url is not None
        assert info.rpc_url.startswith("http://127.0.0.1:")
        assert {"PaymentSessions", "HostRegistry", "USDC"} <= dict(info.contracts).keys()
        assert info.client_key is not None
        assert len(info.bootstrap_nodes) >= 1
        assert all("/p2p/" in a for p in info.processes if p.role != "chain" for a in p.addrs)
        assert [dict(h.prices)["simulated-model"] for h in info.hosts] == [1_000_000_000, 2_000_000_000]
        assert all(_running(p.pid) for p in info.processes)
        _, alive = devnet_status(tmp_path)
        assert alive == {"chain": True, "bootstrap": True, "host-1": True, "host-2": True}

        with pytest.raises(ConfigurationError, match="already runs"):
            await Devnet(tmp_path, DevnetOptions(hosts=1, backend="simulated")).up()

        stopped, killed = await stop_devnet(tmp_path)
        assert killed == []
        assert {p.name for p in stopped.processes} == {"chain", "bootstrap", "host-1", "host-2"}
        assert not (tmp_path / DEVNET_FILE).exists()
    finally:
        await devnet.down()  # reaps the children (and stops them if the test failed half-way)
    assert not any(_running(p.pid) for p in info.processes)


async def test_a_host_that_fails_to_start_is_explained(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A host that exits while starting (here: an invalid wallet key in FABSTIR_HOST_PRIVATE_KEY, which
    only ``host run`` reads and the devnet passes on to its processes) makes up raise FabstirError with
    the host's exit status and the tail of its log; the bootstrap peer is stopped and no devnet file is
    left."""
    monkeypatch.setenv("FABSTIR_HOST_PRIVATE_KEY", "0xnot-a-key")
    # without escrow: a devnet with payments hands each host a key of its own
    options = DevnetOptions(hosts=1, backend="simulated", start_timeout=START_TIMEOUT, escrow=False)
    devnet = Devnet(tmp_path, options)
    with pytest.raises(FabstirError) as caught:
        await devnet.up()
    message = caught.value.message
    assert "host-1 exited with status" in message
    assert "error:" in message  # the log's tail: the host's own one-line error
    assert "0xnot-a-key" not in message  # a key never appears in an error, even a wrong one
    assert not (tmp_path / DEVNET_FILE).exists()
    boot = json.loads((tmp_path / "bootstrap.ready.json").read_text())
    assert boot["pid"] != os.getpid()
    assert not _running(boot["pid"])
