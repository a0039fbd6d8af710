"""Real marketplace processes for the integration tests: ``python -m fabstir bootstrap`` and
``python -m fabstir host run``, each a process of its own on 127.0.0.1, plus the SDK options and the raw
job-stream helper the tests share.

A :class:`ProcessPool` owns what it started and kills all of it in :meth:`ProcessPool.close`, whatever
state a process is in (a SIGSTOPped one is continued first), so a failing test leaves nothing running.
Start-up is bounded: each process must write its ready file within :data:`START_TIMEOUT` seconds, or the
failure carries the tail of its log.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fabstir import FabstirSDK, TransportError
from fabstir.protocol import PROTOCOL_ID, Frame, FrameDecoder
from fabstir.transport import PeerInfo, Stream, Transport

__all__ = [
    "HostSpec",
    "MarketProcess",
    "ProcessPool",
    "exchange_raw",
    "production_sdk",
]

#: Bound on one process becoming ready (imports py-libp2p and web3: about 1.5 s on an idle machine; the
#: built-in model adds its load). Generous because the machine may be busy with the other processes.
START_TIMEOUT = 45.0
_POLL = 0.05
_LOG_TAIL = 40


@dataclass(frozen=True, kw_only=True)
class HostSpec:
    """One ``fabstir host run``: the simulated backend unless ``backend`` says otherwise; ``models`` are
    served (``--model``), ``prices`` maps a model (or ``""`` for the default) to wei per token."""

    name: str
    models: tuple[str, ...] = ()
    prices: dict[str, int] = field(default_factory=dict)
    backend: str = "simulated"
    max_concurrent_jobs: int = 2
    max_queue: int = 4
    token_delay: float = 0.0
    #: extra command-line options, e.g. the hidden ``--fault-kill-at-token 6``
    extra: tuple[str, ...] = ()

    def args(self, bootstrap: Sequence[str]) -> list[str]:
        args = ["host", "run", "--no-escrow", "--backend", self.backend, "--status-interval", "0"]
        for model in self.models:
            args += ["--model", model]
        for model, price in self.prices.items():
            args += ["--price", f"{model}={price}" if model else str(price)]
        args += ["--max-concurrent-jobs", str(self.max_concurrent_jobs), "--max-queue", str(self.max_queue)]
        args += ["--token-delay", repr(self.token_delay)]
        for addr in bootstrap:
            args += ["--bootstrap", addr]
        return args + list(self.extra)


@dataclass
class MarketProcess:
    """A started process and what its ready file announced (``peer_id``, ``addrs``, ``models``, ...)."""

    name: str
    process: subprocess.Popen[bytes]
    log: Path
    info: dict[str, Any]

    @property
    def peer_id(self) -> str:
        return str(self.info["peer_id"])

    @property
    def addrs(self) -> list[str]:
        """Full multiaddrs, ending in ``/p2p/<peer id>``."""
        return [str(a) for a in self.info["addrs"]]

    @property
    def peer(self) -> PeerInfo:
        """The peer as a transport dials it (addresses without the ``/p2p/`` suffix)."""
        suffix = f"/p2p/{self.peer_id}"
        return PeerInfo(self.peer_id, tuple(a.removesuffix(suffix) for a in self.addrs))

    def send_signal(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.process.send_signal(signum)


def tail(path: Path) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()[-_LOG_TAIL:]
    except OSError:
        return "(no log)"
    return "\n".join(lines) or "(empty log)"


class ProcessPool:
    """Starts fabstir processes in ``directory`` (ready files and logs live there) and kills them all on
    :meth:`close`."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._started: list[MarketProcess] = []
        self._count = 0

    def _spawn(self, name: str, args: Sequence[str]) -> tuple[str, subprocess.Popen[bytes], Path, Path]:
        self._count += 1
        name = f"{name}-{self._count}"
        ready = self.directory / f"{name}.ready.json"
        log = self.directory / f"{name}.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", "fabstir", *args, "--ready-file", str(ready)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        # tracked at once: a process that fails to start is still killed at close
        self._started.append(MarketProcess(name, process, log, {}))
        return name, process, ready, log

    def _wait_ready(
        self, pending: Sequence[tuple[str, subprocess.Popen[bytes], Path, Path]]
    ) -> list[MarketProcess]:
        """Polls every ready file until all exist (written atomically by the process), bounded."""
        deadline = time.monotonic() + START_TIMEOUT
        infos: dict[str, dict[str, Any]] = {}
        while len(infos) < len(pending):
            for name, process, ready, log in pending:
                if name in infos:
                    continue
                if ready.exists():
                    infos[name] = json.loads(ready.read_text())
                    continue
                code = process.poll()
                if code is not None:
                    raise AssertionError(
                        f"{name} exited with status {code} while starting; log:\n{tail(log)}"
                    )
            if time.monotonic() > deadline and len(infos) < len(pending):
                late = [(n, log) for n, _, _, log in pending if n not in infos]
                logs = "\n".join(f"--- {n}:\n{tail(log)}" for n, log in late)
                raise AssertionError(f"not ready within {START_TIMEOUT:g} s: {[n for n, _ in late]}\n{logs}")
            time.sleep(_POLL)
        by_name = {p.name: p for p in self._started}
        for name, info in infos.items():
            by_name[name].info = info
        return [by_name[name] for name, *_ in pending]

    def start_bootstrap(self, *options: str) -> MarketProcess:
        """A bootstrap peer (a DHT server the hosts and clients start from); ``options`` are added to
        ``fabstir bootstrap`` (``--identity``, ``--listen``)."""
        return self._wait_ready([self._spawn("bootstrap", ["bootstrap", *options])])[0]

    def start_hosts(
        self, specs: Sequence[HostSpec], bootstrap: MarketProcess | Sequence[str]
    ) -> list[MarketProcess]:
        """Starts the hosts in parallel; returns them (in ``specs`` order) once every one serves.
        ``bootstrap`` is a started bootstrap peer or the addresses of one (that may not be up yet)."""
        addrs = bootstrap.addrs if isinstance(bootstrap, MarketProcess) else list(bootstrap)
        pending = [self._spawn(spec.name, spec.args(addrs)) for spec in specs]
        return self._wait_ready(pending)

    def close(self) -> None:
        """Kills everything started here and reaps it. SIGKILL ends a stopped process too; the SIGCONT
        before it only makes sure nothing is left frozen should the kill be refused."""
        for entry in self._started:
            entry.send_signal(signal.SIGCONT)
            entry.send_signal(signal.SIGKILL)
        for entry in self._started:
            with contextlib.suppress(subprocess.TimeoutExpired):
                entry.process.wait(timeout=10.0)
        self._started.clear()


def production_sdk(bootstrap: MarketProcess, **overrides: Any) -> FabstirSDK:
    """An SDK in production mode (libp2p, no escrow) on the test network, with short timeouts so that a
    failure shows within seconds. ``overrides`` replace whole option groups (``timeouts={...}``) — the
    defaults below are merged in, so an override names only what it changes."""
    options: dict[str, Any] = {
        "p2p": {
            "bootstrap_nodes": bootstrap.addrs,
            "ping_interval": 0.5,
            "ping_timeout": 0.5,
            "dial_timeout": 3.0,
            "request_timeout": 5.0,
            "max_retries": 2,
        },
        "chain": {"escrow": False},
        "timeouts": {
            "connect": 5.0,
            "negotiation": 5.0,
            "first_token": 5.0,
            "inter_token": 3.0,
            "overall": 60.0,
        },
        "discovery": {"timeout": 15.0},
        # the SDK would otherwise be free to move a broken job to another host
        "recovery": {"failover": False},
    }
    for key, value in overrides.items():
        options[key] = {**options.get(key, {}), **value} if isinstance(value, dict) else value
    return FabstirSDK(mode="production", **options)


async def exchange_raw(transport: Transport, peer: PeerInfo, data: bytes) -> tuple[list[Frame], str]:
    """Opens a job stream to ``peer``, writes ``data`` as it is, and reads until the host ends the stream.
    Returns the frames decoded from what arrived and how the stream ended (``"eof"`` or ``"reset"``).
    The caller bounds it with ``asyncio.timeout``."""
    stream: Stream = await transport.open_stream(peer, PROTOCOL_ID)
    decoder = FrameDecoder()
    frames: list[Frame] = []
    try:
        await stream.write(data)
        try:
            while chunk := await stream.read():
                frames += decoder.receive_data(chunk)
            ended = "eof"
        except TransportError:
            ended = "reset"
    finally:
        with contextlib.suppress(TransportError):
            await stream.reset()
    return frames, ended
