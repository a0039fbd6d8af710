"""Kademlia for fabstir: the private protocol id, the capability-record validator, and lookups that
work around three traps of py-libp2p 0.8.1's DHT (all measured, see FINDINGS.md):

* ``KadDHT(protocol_prefix=...)`` is ignored: the modules speak the ``PROTOCOL_ID`` they imported;
* ``find_providers`` answers from the local cache when it holds *any* provider for the key (so a client
  that looked once never sees a new host), and returns duplicates that count toward ``count``;
* ``get_value`` likewise returns the local copy without asking the network or checking its expiry;
* every peer that sends a query is put in the routing table unchecked, so clients (which query but do
  not serve) would be handed out to others as DHT peers.

Runs in the trio thread.
"""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable
from typing import Literal

import trio
from libp2p.abc import IHost
from libp2p.custom_types import TProtocol
from libp2p.kad_dht import common, kad_dht, peer_routing, provider_store, routing_table, value_store
from libp2p.kad_dht.kad_dht import DHTMode, KadDHT
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo
from libp2p.records.validator import NamespacedValidator, Validator

from ..._exceptions import RemoteProtocolError
from ...protocol import select_capability_record, validate_capability_record
from ...protocol._records import CAPABILITY_NAMESPACE

__all__ = [
    "KAD_PROTOCOL_ID",
    "CapabilityValidator",
    "admit_servers_only",
    "build_dht",
    "find_providers",
    "get_value",
    "provider_key",
    "use_private_kad_protocol",
]

#: Our DHT is private: it must not answer, or be polluted by, the public IPFS DHT (``/ipfs/kad/1.0.0``).
KAD_PROTOCOL_ID = "/fabstir/kad/1.0.0"

_patch_lock = threading.Lock()


def use_private_kad_protocol() -> None:
    """Makes every py-libp2p DHT in this process speak :data:`KAD_PROTOCOL_ID`. Idempotent.

    ``KadDHT(protocol_prefix=...)`` is ignored by libp2p 0.8.1: each module below uses the ``PROTOCOL_ID``
    constant it imported from ``kad_dht.common`` (``routing_table`` re-imports it from ``common`` inside a
    function). Rebinding the constant in all of them, once and before any DHT exists, is the one switch;
    verified to interoperate with js-libp2p configured with ``/fabstir/kad/1.0.0``. It is process-wide:
    a process cannot also join the public IPFS DHT through py-libp2p.
    """
    with _patch_lock:
        for module in (common, kad_dht, peer_routing, provider_store, value_store, routing_table):
            setattr(module, "PROTOCOL_ID", TProtocol(KAD_PROTOCOL_ID))  # noqa: B010


class CapabilityValidator(Validator):
    """DHT validator of the ``fcap`` namespace: signature, key ↔ peer id and expiry; highest seq wins."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock

    def validate(self, key: str, value: bytes) -> None:
        try:
            validate_capability_record(key.encode(), value, self._clock())
        except RemoteProtocolError as exc:  # libp2p discards a record whose validator raises
            raise ValueError(str(exc)) from exc

    def select(self, key: str, values: list[bytes]) -> int:
        best = select_capability_record(key.encode(), values, self._clock())
        return 0 if best is None else best


def build_dht(host: IHost, mode: Literal["server", "client"], clock: Callable[[], float]) -> KadDHT:
    """A DHT accepting only ``/fcap/`` records (strict: other namespaces, even ``/pk/``, are refused)."""
    use_private_kad_protocol()
    validator = NamespacedValidator(
        {CAPABILITY_NAMESPACE: CapabilityValidator(clock)}, strict_validation=True
    )
    return KadDHT(
        host,
        DHTMode.SERVER if mode == "server" else DHTMode.CLIENT,
        validator=validator,
        validator_changed=True,
        strict_validation=True,
    )


#: How long an inbound querier's identify exchange may take before it is judged without it.
_IDENTIFY_WAIT = 2.0


def admit_servers_only(
    dht: KadDHT, host: IHost, spawn: Callable[[Callable[[], Awaitable[None]]], object]
) -> None:
    """Makes the routing table admit a peer that queried us only once identify shows it serves the DHT.

    py-libp2p adds the sender of every inbound query with its server-mode check skipped. The check
    needs the peer's protocols, which identify learns a few milliseconds after the connection opens,
    often after the first query: so the admission waits for them (bounded) in the background."""
    checked_add = dht.add_peer

    async def add_peer(peer_id: ID, *, skip_server_mode_check: bool = False) -> bool:
        if not skip_server_mode_check:
            return await checked_add(peer_id)

        async def admit_once_identified() -> None:
            with trio.move_on_after(_IDENTIFY_WAIT):
                while not _protocols_known(host, peer_id):  # noqa: ASYNC110 (identify sets no event)
                    await trio.sleep(0.02)
            await checked_add(peer_id)

        spawn(admit_once_identified)
        return True

    setattr(dht, "add_peer", add_peer)  # noqa: B010 (instance override of a method)


def _protocols_known(host: IHost, peer_id: ID) -> bool:
    try:
        return bool(host.get_peerstore().get_protocols(peer_id))
    except Exception:  # the peerstore raises for a peer it has no record of yet
        return False


def provider_key(key: bytes) -> bytes:
    """The DHT key under which providers of ``key`` are announced.

    Provider records are keyed by multihash (what js-libp2p's ``provide(cid)`` sends), so a CIDv1 —
    ``<version 1><codec varint><multihash>``, like :func:`fabstir.protocol.service_key` — loses its
    prefix; any other key is used as it is."""
    if len(key) > 2 and key[0] == 0x01:
        index = 1
        while index < len(key) and key[index] & 0x80:  # the codec is a varint
            index += 1
        multihash = key[index + 1 :]
        if len(multihash) >= 2 and multihash[1] == len(multihash) - 2:
            return multihash
    return key


async def find_providers(dht: KadDHT, key: bytes, count: int) -> list[PeerInfo]:
    """Up to ``count`` distinct providers of ``key``, from the network and then the local store.

    While the lookup runs, this node answers others' queries for the key without its local records:
    a short gap that costs them little (they ask the k closest peers, not only us)."""
    if count < 1:
        return []
    mh = provider_key(key)
    store = dht.provider_store
    # Hide the local records for the lookup, or libp2p answers from them and never asks the network.
    hidden = store.providers.pop(mh, None)
    try:
        # duplicates count toward libp2p's count: ask for more, then de-duplicate
        found = await store.find_providers(mh, max(4 * count, 20))
    finally:
        if hidden:
            merged = store.providers.setdefault(mh, {})
            for peer, record in hidden.items():
                merged.setdefault(peer, record)
    distinct: dict[str, PeerInfo] = {}
    for provider in [*found, *store.get_providers(mh)]:
        distinct.setdefault(str(provider.peer_id), provider)
    return list(distinct.values())[:count]


async def get_value(dht: KadDHT, key: bytes, clock: Callable[[], float]) -> bytes | None:
    """The best valid value of ``key`` (highest seq) among the network's and the local copy (which
    others' queries do not see while the lookup runs, as in :func:`find_providers`)."""
    store = dht.value_store.store
    # Hide the local copy for the lookup, or libp2p returns it unchecked (even expired) forever.
    hidden = store.pop(key, None)
    try:
        await dht.get_value(key.decode())
    finally:
        current = store.get(key)  # what the lookup cached (or a PUT that arrived meanwhile)
        if hidden is not None and (
            current is None
            or select_capability_record(key, [current[0].value, hidden[0].value], clock()) == 1
        ):
            store[key] = hidden
    kept = store.get(key)
    if kept is None:
        return None
    value = kept[0].value
    return value if select_capability_record(key, [value], clock()) == 0 else None
