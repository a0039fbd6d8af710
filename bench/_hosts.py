"""Host processes for the discovery benchmark: ``--count`` hosts in one process, host ``i`` priced
``(i + 1) × PRICE_STEP`` wei per token.

Each host is a whole :class:`fabstir.host.HostService` — its own identity, libp2p node (own trio thread,
own port, own DHT server), simulated backend and announcements — exactly what ``fabstir host run
--backend simulated --no-escrow`` starts with the same ping and announcement options. ``--count`` > 1
runs several in one process, sharing only the interpreter (~100 MiB); measured on 2 cores, ten hosts per
process cost more CPU than ten processes (their trio threads contend for one GIL), so the discovery
benchmark runs one host per process, the real deployment shape.

Run (by the benchmarks, through :meth:`_procs.ProcessGroup.start_many` with ``script=``)::

    python bench/_hosts.py --count 1 --first-index 0 --bootstrap ADDR [--ping-interval S]
        [--record-refresh S] [--record-ttl S] [--provider-refresh S] --ready-file F

The ready file (written once every host serves) holds ``{"hosts": [describe(), ...], "addrs": [...]}``
(``addrs`` are the first host's, for the ``Child`` record). SIGTERM or SIGINT stops every host.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
from pathlib import Path

from fabstir.host import HostService, HostServiceOptions

#: What the options not given on the command line default to.
_DEFAULTS = HostServiceOptions(backend="simulated", escrow=False)
#: The price of host ``i`` (wei per token): every host a distinct price.
PRICE_STEP = 1_000_000_000


def _write_ready(path: Path, data: dict[str, object]) -> None:
    """Atomically (the benchmark polls for the file and must never read half of it)."""
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(data))
    os.replace(partial, path)


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--first-index", type=int, default=0)
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--ping-interval", type=float, default=_DEFAULTS.ping_interval)
    parser.add_argument("--record-refresh", type=float, default=_DEFAULTS.record_refresh)
    parser.add_argument("--record-ttl", type=float, default=_DEFAULTS.record_ttl)
    parser.add_argument("--provider-refresh", type=float, default=_DEFAULTS.provider_refresh)
    parser.add_argument("--ready-file", type=Path, required=True)
    args = parser.parse_args()

    services = [
        HostService(
            HostServiceOptions(
                bootstrap=(args.bootstrap,),
                backend="simulated",
                escrow=False,
                default_price=PRICE_STEP * (args.first_index + i + 1),
                ping_interval=args.ping_interval,
                record_refresh=args.record_refresh,
                record_ttl=args.record_ttl,
                provider_refresh=args.provider_refresh,
            )
        )
        for i in range(args.count)
    ]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with contextlib.AsyncExitStack() as stack:
        for service in services:
            await stack.enter_async_context(service)
        described = [service.describe() for service in services]
        _write_ready(args.ready_file, {"hosts": described, "addrs": described[0]["addrs"]})
        await stop.wait()


if __name__ == "__main__":
    asyncio.run(main())
