"""Fixtures of the integration tests: a bootstrap peer per test module (each module is its own network,
so what one module's hosts announce cannot leak into another module's lookups), process pools that kill
what they started at teardown, and the test network's SDK options.

Process fixtures are synchronous: starting a process and polling its ready file needs no event loop,
and module-scoped synchronous fixtures do not tie the tests to one loop.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from fabstir.protocol import PeerIdentity
from fabstir.transport._libp2p import Libp2pTransport

from ._processes import MarketProcess, ProcessPool


@pytest.fixture(scope="module")
def module_pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProcessPool]:
    """Processes shared by the tests of one module; all killed when the module is done."""
    pool = ProcessPool(tmp_path_factory.mktemp("market"))
    try:
        yield pool
    finally:
        pool.close()


@pytest.fixture
def pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProcessPool]:
    """Processes of one test (those it kills, stops or starts late); all killed when the test ends."""
    pool = ProcessPool(tmp_path_factory.mktemp("market"))
    try:
        yield pool
    finally:
        pool.close()


@pytest.fixture(scope="module")
def bootstrap(module_pool: ProcessPool) -> MarketProcess:
    """The module's bootstrap peer: ``python -m fabstir bootstrap``."""
    return module_pool.start_bootstrap()


@pytest.fixture
async def raw_client() -> AsyncIterator[Libp2pTransport]:
    """A bare libp2p node in this process (no SDK): for frames the SDK would never send."""
    transport = Libp2pTransport(PeerIdentity(), dht_mode="client", dial_timeout=3.0, stream_timeout=5.0)
    await transport.start()
    try:
        yield transport
    finally:
        await transport.aclose()
