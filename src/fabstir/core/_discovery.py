"""Host discovery over the transport's DHT: providers → signed capability records → liveness → filters.

DHT provider records outlive dead hosts (libp2p keeps them 48 h and cannot withdraw them), so every
candidate is re-validated (signature, expiry, key) and probed before it is offered to the caller.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace

from .._exceptions import FabstirError, RemoteProtocolError
from .._models import NATIVE_TOKEN, NodeCapabilities, NodeInfo
from ..protocol import (
    MAX_RECORD_SIZE,
    RECORD_PROTOCOL_ID,
    CapabilityRecord,
    capability_key,
    model_key,
    service_key,
    validate_capability_record,
)
from ..transport import PeerInfo, Transport
from ._reliability import ReliabilityTracker

__all__ = ["DiscoveryFilter", "NodeDiscovery"]

_log = logging.getLogger("fabstir.discovery")

#: Records and probes are fetched concurrently, but a client should not open hundreds of streams at once.
_CONCURRENCY = 16

LatencyProbe = Callable[[PeerInfo], Awaitable[float]]


@dataclass(frozen=True, slots=True)
class DiscoveryFilter:
    model: str | None = None
    payment_token: str = NATIVE_TOKEN
    max_price: int | None = None
    max_latency_ms: float | None = None
    min_reputation: float | None = None
    exclude: frozenset[str] = frozenset()


class NodeDiscovery:
    def __init__(
        self,
        transport: Transport,
        reliability: ReliabilityTracker,
        *,
        cache_ttl: float,
        max_nodes: int,
        liveness_check: bool = True,
        probe: LatencyProbe | None = None,
        record_timeout: float = 5.0,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._transport = transport
        self._reliability = reliability
        self._cache_ttl = cache_ttl
        self._max_nodes = max_nodes
        self._liveness_check = liveness_check
        self._probe = probe or transport.ping
        self._record_timeout = record_timeout
        self._clock = clock
        self._monotonic = monotonic
        self._cache: dict[str | None, tuple[float, list[NodeInfo]]] = {}
        self._inflight: dict[str | None, asyncio.Future[list[NodeInfo]]] = {}

    def invalidate(self, peer_id: str | None = None) -> None:
        """Forgets cached results: all of them (the next lookup asks the network), or only ``peer_id``
        (a host that just failed) — the other cached hosts stay, so a failover does not wait on a network
        lookup that may itself be slowed by the failed host (a frozen DHT server stalls queries routed
        through it). A result left empty is dropped."""
        if peer_id is None:
            self._cache.clear()
            return
        for key, (when, nodes) in list(self._cache.items()):
            kept = [n for n in nodes if n.peer_id != peer_id]
            if not kept:
                del self._cache[key]
            elif len(kept) != len(nodes):
                self._cache[key] = (when, kept)

    async def discover(self, flt: DiscoveryFilter, *, force_refresh: bool = False) -> list[NodeInfo]:
        """Live nodes matching ``flt`` (unordered); cached per model for ``cache_ttl`` seconds."""
        cached = self._cache.get(flt.model)
        if cached is not None and not force_refresh and self._monotonic() - cached[0] < self._cache_ttl:
            nodes = cached[1]
        else:
            # One lookup per model at a time: jobs submitted together share it instead of each walking
            # the DHT and pinging every host (20 at once overloaded both, and some found no host at all).
            lookup = self._inflight.get(flt.model)
            if lookup is None:
                lookup = asyncio.ensure_future(self._lookup_and_cache(flt.model))
                self._inflight[flt.model] = lookup
                lookup.add_done_callback(functools.partial(self._lookup_done, flt.model))
            nodes = await asyncio.shield(lookup)
        now = self._clock()
        fresh = [n for n in nodes if n.record_expires > now]
        scored = [self._with_reliability(n) for n in fresh]
        return [n for n in scored if self._matches(n, flt)]

    def _lookup_done(self, model: str | None, lookup: asyncio.Future[list[NodeInfo]]) -> None:
        self._inflight.pop(model, None)
        # Its waiters may all have given up (their deadline, a cancelled job): the outcome is then
        # nobody's, and an unretrieved exception would be logged as "never retrieved" at shutdown.
        if not lookup.cancelled() and (error := lookup.exception()) is not None:
            _log.debug("a discovery lookup failed: %r", error)

    async def _lookup_and_cache(self, model: str | None) -> list[NodeInfo]:
        nodes = await self._lookup(model)
        self._cache[model] = (self._monotonic(), nodes)
        return nodes

    def _with_reliability(self, node: NodeInfo) -> NodeInfo:
        return replace(node, reliability=self._reliability.reliability(node.peer_id))

    def _matches(self, node: NodeInfo, flt: DiscoveryFilter) -> bool:
        caps = node.capabilities
        if node.peer_id in flt.exclude or self._reliability.is_blacklisted(node.peer_id):
            return False
        if flt.model is not None:
            if flt.model not in caps.models:
                return False
            price = caps.price_for(flt.model, flt.payment_token)
            if price is None or (flt.max_price is not None and price > flt.max_price):
                return False
        if flt.max_latency_ms is not None and (
            node.latency_ms is None or node.latency_ms > flt.max_latency_ms
        ):
            return False
        return flt.min_reputation is None or node.reliability >= flt.min_reputation

    async def _lookup(self, model: str | None) -> list[NodeInfo]:
        key = model_key(model) if model is not None else service_key()
        # find_providers may return stale and duplicate entries: ask for more than we keep.
        providers = await self._transport.find_providers(key, self._max_nodes * 2)
        unique = list({p.peer_id: p for p in providers}.values())
        semaphore = asyncio.Semaphore(_CONCURRENCY)

        async def resolve(provider: PeerInfo) -> NodeInfo | None:
            async with semaphore:
                return await self._resolve(provider)

        results = await asyncio.gather(*(resolve(p) for p in unique))
        nodes = [n for n in results if n is not None]
        return nodes[: self._max_nodes]

    async def _resolve(self, provider: PeerInfo) -> NodeInfo | None:
        record = None
        if self._liveness_check:
            # we contact the host anyway: ask it for its record (one round trip, the freshest one)
            record = await self._ask_host(provider)
        if record is None:
            record = await self._fetch_record(provider.peer_id)
        if record is None:
            return None
        peer = PeerInfo(provider.peer_id, record.addrs or provider.addrs)
        latency_ms: float | None = None
        if self._liveness_check:
            try:
                latency_ms = await self._probe(peer) * 1000.0
            except FabstirError as exc:
                _log.info("host %s did not answer the liveness probe: %s", provider.peer_id, exc)
                return None
        return node_from_record(record, latency_ms, self._reliability.reliability(record.peer_id))

    async def _ask_host(self, provider: PeerInfo) -> CapabilityRecord | None:
        """The record the host itself hands out (``RECORD_PROTOCOL_ID``), validated like a DHT value;
        ``None`` if it does not answer in time, does not speak the protocol, or sends a bad record."""
        key = capability_key(provider.peer_id)
        stream = None
        try:
            async with asyncio.timeout(self._record_timeout):
                stream = await self._transport.open_stream(provider, RECORD_PROTOCOL_ID)
                value = b""
                while chunk := await stream.read(MAX_RECORD_SIZE + 1 - len(value)):
                    value += chunk
                    if len(value) > MAX_RECORD_SIZE:
                        raise RemoteProtocolError(f"record larger than {MAX_RECORD_SIZE} bytes")
            return validate_capability_record(key, value, self._clock())
        except (FabstirError, TimeoutError) as exc:
            _log.debug("host %s did not hand out its record: %s", provider.peer_id, exc)
            if stream is not None:
                with contextlib.suppress(FabstirError):
                    await stream.reset()
            return None
        finally:
            if stream is not None:
                with contextlib.suppress(FabstirError):
                    await stream.close()

    async def _fetch_record(self, peer_id: str) -> CapabilityRecord | None:
        key = capability_key(peer_id)
        try:
            value = await self._transport.get_value(key)
        except FabstirError as exc:
            _log.info("no capability record for %s: %s", peer_id, exc)
            return None
        if value is None:
            return None
        try:
            # The DHT validates too, but a client trusts no one: check signature, key and expiry again.
            return validate_capability_record(key, value, self._clock())
        except RemoteProtocolError as exc:
            _log.warning("ignoring capability record of %s: %s", peer_id, exc)
            return None


def node_from_record(record: CapabilityRecord, latency_ms: float | None, reliability: float) -> NodeInfo:
    return NodeInfo(
        peer_id=record.peer_id,
        addresses=record.addrs,
        capabilities=NodeCapabilities(
            models=record.models,
            prices=record.prices,
            max_tokens=record.max_tokens,
            max_concurrent_jobs=record.max_concurrent_jobs,
            current_load=record.current_load,
            payment_address=record.payment_address,
            chain_id=record.chain_id,
            protocol_versions=record.protocol_versions,
        ),
        latency_ms=latency_ms,
        reliability=reliability,
        record_seq=record.seq,
        record_expires=record.expires,
    )
