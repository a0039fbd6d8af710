"""Announcing the host: provider records (service and models) in the DHT, and the signed, expiring
capability record — handed out by the host itself and stored in the DHT.

Each DHT write is a walk of the network (a dozen peers dialled and asked), so the three kinds of work run
on three clocks:

* the record the host hands out directly (``RECORD_PROTOCOL_ID``) is re-signed soon after the load changes
  — local work, no network;
* its DHT copy is re-put every ``record_refresh`` (with the load of that moment), well before it expires;
* the provider records are re-announced every ``provider_refresh``: they do not change, and the DHT keeps
  them far longer (libp2p: 48 h); re-announcing only repairs what peers leaving the DHT took with them.
  A round that did not reach another DHT node (no peer yet, a failure) is retried after
  ``record_refresh``.
"""

from __future__ import annotations

import asyncio
import builtins
import logging
from collections.abc import Callable

from .._exceptions import FabstirError
from ..protocol import (
    SUPPORTED_VERSIONS,
    CapabilityRecord,
    capability_key,
    encode_capability_record,
    model_key,
    service_key,
)
from ..transport import Transport
from ._config import HostConfig

__all__ = ["RecordPublisher"]

_log = logging.getLogger("fabstir.host")

#: A burst of jobs starting or ending re-signs one record, not one per job.
_LOAD_DEBOUNCE = 0.1


class RecordPublisher:
    """Publishes what the host offers: :meth:`provide` and :meth:`publish` once, then :meth:`run` as a
    background task."""

    def __init__(
        self,
        config: HostConfig,
        *,
        transport: Transport,
        payment_address: str,
        chain_id: int,
        load: Callable[[], int],
        clock: Callable[[], float],
    ) -> None:
        self._config = config
        self._transport = transport
        self._payment_address = payment_address
        self._chain_id = chain_id
        self._load = load
        self._clock = clock
        self._seq = 0
        self._provided = False  # whether the last provide() reached the DHT with every key
        self._wake = asyncio.Event()  # set with either flag below, for run()
        self._load_changed = False
        self._reannounce = False
        self._published = asyncio.Condition()
        self.record: CapabilityRecord | None = None  # the record handed out now
        self.encoded: bytes | None = None  # the same, signed, as bytes

    def load_changed(self) -> None:
        """Asks for a record with the new load soon (debounced)."""
        self._load_changed = True
        self._wake.set()

    def reannounce(self) -> None:
        """Asks for the provider records and the record in the DHT now, whatever the clocks say (the
        host got its bootstrap peer back, which may have lost them)."""
        self._reannounce = True
        self._wake.set()

    async def provide(self) -> bool:
        """Provider records for the service and each model; ``True`` if another DHT node stored every one
        of them. Failures are logged, and :meth:`run` then tries again after ``record_refresh`` instead of
        ``provider_refresh`` (a host started before its bootstrap peer must not stay unfindable)."""
        keys = [service_key(), *(model_key(m) for m in self._config.models)]
        reached = True
        for key in keys:
            try:
                async with asyncio.timeout(self._config.record_refresh):
                    reached = await self._transport.provide(key) and reached
            except (FabstirError, builtins.TimeoutError) as exc:
                _log.warning("could not announce provider record: %s", exc)
                reached = False
        self._provided = reached
        return reached

    async def sign(self) -> CapabilityRecord:
        """A fresh record (higher ``seq``, current load, new expiry), handed out from now on; the DHT copy
        is left as it is."""
        now = self._clock()
        # Time-based seq: a restarted host must out-rank the records of its previous run (highest seq wins).
        self._seq = max(self._seq + 1, int(now * 1000))
        record = CapabilityRecord(
            peer_id=self._transport.peer_id,
            addrs=tuple(self._transport.listen_addrs),
            models=self._config.models,
            prices=self._config.prices,
            max_tokens=self._config.max_tokens,
            max_concurrent_jobs=self._config.max_concurrent_jobs,
            current_load=self._load(),
            payment_address=self._payment_address,
            chain_id=self._chain_id,
            protocol_versions=SUPPORTED_VERSIONS,
            seq=self._seq,
            expires=now + self._config.record_ttl,
        )
        encoded = encode_capability_record(record, self._transport.sign)
        async with self._published:
            self.record = record
            self.encoded = encoded
            self._published.notify_all()
        return record

    async def publish(self) -> CapabilityRecord:
        """Signs a fresh record and stores it in the DHT too (a failure is logged: the host still hands
        it out, and the next refresh tries again)."""
        record = await self.sign()
        assert self.encoded is not None
        try:
            async with asyncio.timeout(self._config.record_refresh):
                await self._transport.put_value(capability_key(record.peer_id), self.encoded)
        except (FabstirError, builtins.TimeoutError) as exc:
            _log.warning("could not publish the capability record: %s", exc)
        return record

    def _provide_interval(self) -> float:
        if self._provided:
            return self._config.provider_refresh
        return min(self._config.record_refresh, self._config.provider_refresh)

    async def wait_for(self, predicate: Callable[[CapabilityRecord], bool]) -> CapabilityRecord:
        """Returns the first record handed out (possibly the current one) satisfying ``predicate``."""
        async with self._published:
            await self._published.wait_for(lambda: self.record is not None and predicate(self.record))
            assert self.record is not None
            return self.record

    async def run(self) -> None:
        """Forever: re-signs after load changes, re-puts the record every ``record_refresh`` and
        re-announces the provider records every ``provider_refresh`` (started after the first
        :meth:`provide` and :meth:`publish`)."""
        loop = asyncio.get_running_loop()
        next_put = loop.time() + self._config.record_refresh
        next_provide = loop.time() + self._provide_interval()
        while True:
            due = min(next_put, next_provide)
            try:
                async with asyncio.timeout_at(due):
                    await self._wake.wait()
            except builtins.TimeoutError:
                pass
            changed = self._load_changed
            if changed:
                await asyncio.sleep(_LOAD_DEBOUNCE)
            self._wake.clear()
            self._load_changed = False
            if self._reannounce:
                self._reannounce = False
                next_provide = next_put = loop.time()
            now = loop.time()
            if now >= next_provide:
                await self.provide()
                next_provide = loop.time() + self._provide_interval()
            if now >= next_put:
                self._load_changed = False  # the record put now carries the current load
                await self.publish()
                next_put = loop.time() + self._config.record_refresh
            elif changed:
                await self.sign()
