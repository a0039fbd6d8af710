"""Announcing the host in the DHT: provider records (service and models) and the signed, expiring
capability record, re-published every ``record_refresh`` seconds and soon after the load changes."""

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

#: A burst of jobs starting or ending publishes one record, not one per job.
_LOAD_DEBOUNCE = 0.1


class RecordPublisher:
    """Publishes what the host offers. :meth:`publish` once, then :meth:`run` as a background task."""

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
        self._load_changed = asyncio.Event()
        self._published = asyncio.Condition()
        self.record: CapabilityRecord | None = None  # the latest record published
        self.encoded: bytes | None = None  # the latest record signed, as bytes

    def load_changed(self) -> None:
        """Asks for a re-publication soon (debounced)."""
        self._load_changed.set()

    async def provide(self) -> None:
        """Provider records for the service and each model; failures are logged (retried at the refresh)."""
        keys = [service_key(), *(model_key(m) for m in self._config.models)]
        for key in keys:
            try:
                async with asyncio.timeout(self._config.record_refresh):
                    await self._transport.provide(key)
            except (FabstirError, builtins.TimeoutError) as exc:
                _log.warning("could not announce provider record: %s", exc)

    async def publish(self) -> CapabilityRecord:
        """Signs and stores a fresh capability record (higher ``seq``, current load, new expiry)."""
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
        value = encode_capability_record(record, self._transport.sign)
        self.encoded = value  # what the host hands out directly (RECORD_PROTOCOL_ID), DHT or not
        try:
            async with asyncio.timeout(self._config.record_refresh):
                await self._transport.put_value(capability_key(record.peer_id), value)
        except (FabstirError, builtins.TimeoutError) as exc:
            _log.warning("could not publish the capability record: %s", exc)
            return record
        async with self._published:
            self.record = record
            self._published.notify_all()
        return record

    async def wait_for(self, predicate: Callable[[CapabilityRecord], bool]) -> CapabilityRecord:
        """Returns the first published record (possibly the current one) satisfying ``predicate``."""
        async with self._published:
            await self._published.wait_for(lambda: self.record is not None and predicate(self.record))
            assert self.record is not None
            return self.record

    async def run(self) -> None:
        """Re-publishes forever: every ``record_refresh`` (with provider records) and after load changes."""
        while True:
            periodic = False
            try:
                async with asyncio.timeout(self._config.record_refresh):
                    await self._load_changed.wait()
                await asyncio.sleep(_LOAD_DEBOUNCE)
            except builtins.TimeoutError:
                periodic = True
            self._load_changed.clear()
            if periodic:
                await self.provide()
            await self.publish()
