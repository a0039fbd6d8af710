"""A devnet on this machine: a bootstrap peer and N hosts, each a process of its own, on loopback.

``fabstir devnet up`` leaves the processes running (detached, in their own sessions) and writes the
devnet file; ``fabstir devnet down`` stops them; ``fabstir demo`` uses a throwaway one
(``async with Devnet(directory, options):``). Every process writes a ready file when it serves and its
output to ``<name>.log`` in the devnet directory, so a failed start is explained by the log's tail.

Until the contracts land (issue 4) the devnet runs without escrow (see
:class:`fabstir.chain.UnescrowedLedger`); the hosts serve the built-in model by default.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from .._exceptions import ConfigurationError, FabstirError
from ..chain._unescrowed import UNESCROWED_CHAIN_ID
from ._file import (
    DEVNET_FILE,
    DevnetFile,
    DevnetProcess,
    default_devnet_dir,
    read_devnet_file,
    write_devnet_file,
)

__all__ = ["Devnet", "DevnetOptions", "devnet_status", "stop_devnet"]

_log = logging.getLogger("fabstir.devnet")
_STOP_GRACE = 10.0
_LOG_TAIL = 15
_POLL = 0.05
#: The embedded chain funds 9 accounts besides the deployer: one for clients, the rest for hosts.
_MAX_PAID_HOSTS = 8


@dataclass(frozen=True, kw_only=True, slots=True)
class DevnetOptions:
    """``hosts`` hosts; host *i* (from 0) charges ``base_price × (i + 1)`` per token, so prices differ.
    ``backend`` is ``"builtin"`` (the real model, ``threads`` threads per host) or ``"simulated"``
    (``token_delay`` s per token; for tests and benchmarks). ``start_timeout`` bounds the whole start."""

    hosts: int = 3
    backend: str = "builtin"
    base_price: int = 1_000_000_000
    threads: int = 1
    token_delay: float = 0.0
    max_concurrent_jobs: int = 2
    start_timeout: float = 120.0
    escrow: bool = True
    register_stake: int = 10**16  # 0.01 ETH per host in the HostRegistry

    def __post_init__(self) -> None:
        if type(self.hosts) is not int or not 1 <= self.hosts <= 64:
            raise ConfigurationError("a devnet has between 1 and 64 hosts")
        if self.backend not in ("builtin", "simulated"):
            raise ConfigurationError(
                f"devnet hosts run the builtin or simulated backend, not {self.backend!r}"
            )
        if type(self.base_price) is not int or self.base_price <= 0:
            raise ConfigurationError("the base price must be a positive integer")
        if not self.start_timeout > 0:
            raise ConfigurationError("start_timeout must be positive")
        if self.escrow and self.hosts > _MAX_PAID_HOSTS:
            raise ConfigurationError(
                f"a devnet with payments has at most {_MAX_PAID_HOSTS} hosts (funded test accounts); "
                "use fewer hosts or escrow=False"
            )


def _start_token(pid: int) -> float:
    """The process's start time in clock ticks since boot (Linux), to recognise it later; 0 if unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    return float(stat.rsplit(")", 1)[1].split()[19])


def _alive(pid: int, started: float) -> bool:
    """Whether the process ``pid`` that started at ``started`` still runs (a zombie does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    except OSError:  # no /proc: the best we can do is ask the kernel whether the pid exists
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] == "Z":
        return False
    return started == 0.0 or float(fields[19]) == started


def _read_ready(path: Path) -> dict[str, Any] | None:
    """The ready file's content once it exists (it is written atomically), else ``None``."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    if not isinstance(data, dict):
        raise FabstirError(f"{path} does not hold a JSON object")
    return data


def _tail(path: Path) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()[-_LOG_TAIL:]
    except OSError:
        return ""
    return ("\n" + "\n".join(lines)) if lines else ""


class Devnet:
    """Starts a devnet in ``directory`` (default: ``$FABSTIR_DEVNET_DIR`` or ``~/.fabstir/devnet``).

    :meth:`up` returns the :class:`DevnetFile` once every process serves; :meth:`down` stops them.
    ``async with`` does both (a throwaway devnet)."""

    def __init__(self, directory: Path | None = None, options: DevnetOptions | None = None) -> None:
        self.directory = directory or default_devnet_dir()
        self.options = options or DevnetOptions()
        self._children: list[tuple[str, subprocess.Popen[bytes]]] = []
        self.file: DevnetFile | None = None

    async def __aenter__(self) -> DevnetFile:
        return await self.up()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.down()

    def _spawn(
        self, name: str, args: Sequence[str], env: dict[str, str] | None = None
    ) -> tuple[subprocess.Popen[bytes], Path, Path]:
        ready = self.directory / f"{name}.ready.json"
        log = self.directory / f"{name}.log"
        ready.unlink(missing_ok=True)
        command = [sys.executable, "-m", "fabstir", *args, "--ready-file", str(ready)]
        with log.open("wb") as out:
            process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # survives the terminal that ran 'devnet up'
                env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
            )
        self._children.append((name, process))
        return process, ready, log

    async def _wait_ready(
        self, name: str, process: subprocess.Popen[bytes], ready: Path, log: Path, deadline: float
    ) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        while (data := _read_ready(ready)) is None:
            code = process.poll()
            if code is not None:
                raise FabstirError(f"devnet {name} exited with status {code} while starting{_tail(log)}")
            if loop.time() > deadline:
                raise FabstirError(
                    f"devnet {name} did not start within {self.options.start_timeout:g} s{_tail(log)}"
                )
            await asyncio.sleep(_POLL)
        return data

    def _entry(
        self, role: str, name: str, process: subprocess.Popen[bytes], log: Path, ready: dict[str, Any]
    ) -> DevnetProcess:
        prices = ready.get("prices", {})
        return DevnetProcess(
            role=role,
            name=name,
            pid=process.pid,
            started=_start_token(process.pid),
            peer_id=str(ready["peer_id"]),
            addrs=tuple(ready["addrs"]),
            log=str(log),
            models=tuple(ready.get("models", ())),
            prices=tuple((m, int(next(iter(p.values())))) for m, p in prices.items()),
        )

    async def up(self) -> DevnetFile:
        """Starts the bootstrap peer, then the hosts (in parallel), then writes the devnet file.
        Raises :class:`ConfigurationError` if a devnet already runs in the directory and
        :class:`FabstirError` (with the log's tail) if a process fails to start; nothing is left running."""
        existing = self.directory / DEVNET_FILE
        if existing.exists():
            try:
                running = read_devnet_file(self.directory)
            except ConfigurationError:
                running = None
            if running is not None and any(_alive(p.pid, p.started) for p in running.processes):
                raise ConfigurationError(
                    f"a devnet already runs in {self.directory}; stop it with 'fabstir devnet down'"
                )
            existing.unlink()  # a stale file: its processes are gone
        self.directory.mkdir(parents=True, exist_ok=True)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.options.start_timeout
        options = self.options
        chain_info: dict[str, Any] | None = None
        try:
            entries: list[DevnetProcess] = []
            if options.escrow:
                node, node_ready, node_log = self._spawn("chain", ["chain", "serve"])
                chain_info = await self._wait_ready("chain", node, node_ready, node_log, deadline)
                entries.append(
                    DevnetProcess(
                        role="chain",
                        name="chain",
                        pid=node.pid,
                        started=_start_token(node.pid),
                        peer_id="",
                        addrs=(str(chain_info["rpc_url"]),),
                        log=str(node_log),
                    )
                )
            boot, boot_ready, boot_log = self._spawn(
                "bootstrap", ["bootstrap", "--identity", str(self.directory / "bootstrap.key")]
            )
            boot_info = await self._wait_ready("bootstrap", boot, boot_ready, boot_log, deadline)
            entries.append(self._entry("bootstrap", "bootstrap", boot, boot_log, boot_info))
            waits = []
            for index in range(options.hosts):
                name = f"host-{index + 1}"
                args = [
                    "host",
                    "run",
                    "--backend",
                    options.backend,
                    "--price",
                    str(options.base_price * (index + 1)),
                    "--max-concurrent-jobs",
                    str(options.max_concurrent_jobs),
                    "--threads",
                    str(options.threads),
                    "--token-delay",
                    repr(options.token_delay),
                    "--identity",
                    str(self.directory / f"{name}.key"),
                ]
                for addr in boot_info["addrs"]:
                    args += ["--bootstrap", addr]
                env: dict[str, str] = {}
                if chain_info is None:
                    args.append("--no-escrow")
                else:
                    args += ["--rpc-url", str(chain_info["rpc_url"])]
                    args += ["--register-stake", str(options.register_stake)]
                    for contract, address in chain_info["contracts"].items():
                        args += ["--contract", f"{contract}={address}"]
                    # the wallet through the environment, not the command line (ps shows arguments)
                    env["FABSTIR_HOST_PRIVATE_KEY"] = str(chain_info["keys"][1 + index])
                process, ready, log = self._spawn(name, args, env)
                waits.append((name, process, ready, log))
            infos = await asyncio.gather(*(self._wait_ready(*w, deadline) for w in waits))
            for (name, process, _, log), info in zip(waits, infos, strict=True):
                entries.append(self._entry("host", name, process, log, info))
        except BaseException:
            await self.down()
            raise
        self.file = DevnetFile(
            directory=self.directory,
            created=time.time(),
            escrow=chain_info is not None,
            chain_id=int(chain_info["chain_id"]) if chain_info else UNESCROWED_CHAIN_ID,
            processes=tuple(entries),
            rpc_url=str(chain_info["rpc_url"]) if chain_info else None,
            contracts=tuple(chain_info["contracts"].items()) if chain_info else (),
            client_key=str(chain_info["keys"][0]) if chain_info else None,
        )
        write_devnet_file(self.file)
        return self.file

    async def down(self) -> None:
        """Stops what this object started (if :meth:`up` ran here) and removes the devnet file."""
        if self.file is not None or self._children:
            # hosts first (they settle their jobs on the chain as they stop), the chain last
            order = {"chain": 2, "bootstrap": 1}
            for rank in (0, 1, 2):
                await _stop(
                    [
                        (name, p.pid, _start_token(p.pid))
                        for name, p in self._children
                        if order.get(name, 0) == rank
                    ]
                )
            for _, process in self._children:
                with contextlib.suppress(Exception):
                    process.wait(timeout=1.0)  # reap: no zombies left behind
            self._children.clear()
        if self.file is not None:
            (self.directory / DEVNET_FILE).unlink(missing_ok=True)
            self.file = None


async def _stop(processes: Sequence[tuple[str, int, float]]) -> list[str]:
    """SIGTERM to each live process (hosts settle their jobs), SIGKILL after a grace period. Returns
    the names of the processes that had to be killed."""
    live = [(n, pid, s) for n, pid, s in processes if _alive(pid, s)]
    for _, pid, _ in live:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + _STOP_GRACE
    while True:
        if not any(_alive(pid, s) for _, pid, s in live) or loop.time() >= deadline:
            break
        await asyncio.sleep(_POLL)
    killed = []
    for name, pid, started in live:
        if _alive(pid, started):
            killed.append(name)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    return killed


async def stop_devnet(directory: Path | None = None) -> tuple[DevnetFile, list[str]]:
    """Stops the devnet described in ``directory`` (hosts first, then the bootstrap peer) and removes
    its file. Returns it and the names of processes that had to be killed."""
    devnet = read_devnet_file(directory)
    killed: list[str] = []
    for role in ("host", "bootstrap", "chain"):  # hosts settle on the chain as they stop: it goes last
        killed += await _stop([(p.name, p.pid, p.started) for p in devnet.processes if p.role == role])
    (devnet.directory / DEVNET_FILE).unlink(missing_ok=True)
    return devnet, killed


def devnet_status(directory: Path | None = None) -> tuple[DevnetFile, dict[str, bool]]:
    """The devnet described in ``directory`` and, for each process, whether it is still running."""
    devnet = read_devnet_file(directory)
    return devnet, {p.name: _alive(p.pid, p.started) for p in devnet.processes}
