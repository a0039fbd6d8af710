"""The devnet file: where a running devnet's bootstrap peer and hosts are, for the SDK and the CLI.

``fabstir devnet up`` writes it (atomically) into the devnet directory — ``$FABSTIR_DEVNET_DIR`` or
``~/.fabstir/devnet`` — and ``FabstirSDK.from_devnet()``, ``fabstir run`` and ``fabstir nodes`` read it.
Reading validates everything: a stale, truncated or foreign file is a :class:`ConfigurationError` that
says what to do, never a crash further on.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._exceptions import ConfigurationError

__all__ = [
    "DEVNET_FILE",
    "DevnetFile",
    "DevnetProcess",
    "default_devnet_dir",
    "read_devnet_file",
    "write_devnet_file",
    "write_json_atomically",
]

DEVNET_FILE = "devnet.json"
_FORMAT = 1


def default_devnet_dir() -> Path:
    configured = os.environ.get("FABSTIR_DEVNET_DIR")
    return Path(configured) if configured else Path.home() / ".fabstir" / "devnet"


@dataclass(frozen=True, slots=True)
class DevnetProcess:
    """One process of the devnet: its role (``chain``, ``bootstrap`` or ``host``), pid and start time
    (to tell it from a later process that reuses the pid), addresses (the chain's: its RPC URL), and for
    hosts the models and prices."""

    role: str
    name: str
    pid: int
    started: float
    peer_id: str
    addrs: tuple[str, ...]
    log: str
    models: tuple[str, ...] = ()
    prices: tuple[tuple[str, int], ...] = ()

    def as_json(self) -> dict[str, Any]:
        return {
            "role": self.role,
            "name": self.name,
            "pid": self.pid,
            "started": self.started,
            "peer_id": self.peer_id,
            "addrs": list(self.addrs),
            "log": self.log,
            "models": list(self.models),
            "prices": dict(self.prices),
        }


@dataclass(frozen=True, slots=True)
class DevnetFile:
    """A devnet: its processes and, with escrow, its chain (JSON-RPC URL, contract addresses, and the
    private key of a funded test account for clients — a well-known test key, never a real one)."""

    directory: Path
    created: float
    escrow: bool
    chain_id: int
    processes: tuple[DevnetProcess, ...]
    rpc_url: str | None = None
    contracts: tuple[tuple[str, str], ...] = ()
    client_key: str | None = None

    @property
    def bootstrap_nodes(self) -> tuple[str, ...]:
        return tuple(a for p in self.processes if p.role == "bootstrap" for a in p.addrs)

    @property
    def hosts(self) -> tuple[DevnetProcess, ...]:
        return tuple(p for p in self.processes if p.role == "host")

    def as_json(self) -> dict[str, Any]:
        return {
            "format": _FORMAT,
            "created": self.created,
            "escrow": self.escrow,
            "chain_id": self.chain_id,
            "rpc_url": self.rpc_url,
            "contracts": dict(self.contracts),
            "client_key": self.client_key,
            "bootstrap_nodes": list(self.bootstrap_nodes),
            "processes": [p.as_json() for p in self.processes],
        }


def write_json_atomically(path: Path, data: Mapping[str, Any]) -> None:
    """Writes ``data`` so that a reader sees the old file or the whole new one, never half of it (the
    devnet file, and the ready files its processes write)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def write_devnet_file(devnet: DevnetFile) -> Path:
    path = devnet.directory / DEVNET_FILE
    write_json_atomically(path, devnet.as_json())
    return path


def _bad(path: Path, what: str) -> ConfigurationError:
    return ConfigurationError(f"the devnet file {path} is not valid ({what}); run 'fabstir devnet down'")


def _process(path: Path, raw: Any) -> DevnetProcess:
    if not isinstance(raw, dict):
        raise _bad(path, "a process entry is not an object")
    try:
        prices = raw.get("prices", {})
        result = DevnetProcess(
            role=str(raw["role"]),
            name=str(raw["name"]),
            pid=int(raw["pid"]),
            started=float(raw["started"]),
            peer_id=str(raw["peer_id"]),
            addrs=tuple(str(a) for a in raw["addrs"]),
            log=str(raw["log"]),
            models=tuple(str(m) for m in raw.get("models", ())),
            prices=tuple((str(m), int(p)) for m, p in prices.items()),
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise _bad(path, f"a process entry lacks or mistypes {exc}") from exc
    if result.role not in ("bootstrap", "host", "chain") or result.pid <= 0:
        raise _bad(path, f"unexpected process entry {result.name!r}")
    return result


def read_devnet_file(directory: Path | None = None) -> DevnetFile:
    """The devnet in ``directory`` (default: :func:`default_devnet_dir`); :class:`ConfigurationError` if
    there is none or the file is not one this version wrote."""
    directory = directory or default_devnet_dir()
    path = directory / DEVNET_FILE
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigurationError(
            f"no devnet is running (no {path}); start one with 'fabstir devnet up', or use --mock"
        ) from None
    except (OSError, ValueError) as exc:
        raise _bad(path, str(exc)) from exc
    if not isinstance(raw, dict) or raw.get("format") != _FORMAT:
        raise _bad(path, "unknown format")
    processes = raw.get("processes")
    if not isinstance(processes, list):
        raise _bad(path, "no process list")
    try:
        devnet = DevnetFile(
            directory=directory,
            created=float(raw["created"]),
            escrow=bool(raw["escrow"]),
            chain_id=int(raw["chain_id"]),
            processes=tuple(_process(path, p) for p in processes),
            rpc_url=None if raw.get("rpc_url") is None else str(raw["rpc_url"]),
            contracts=tuple((str(k), str(v)) for k, v in dict(raw.get("contracts") or {}).items()),
            client_key=None if raw.get("client_key") is None else str(raw["client_key"]),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise _bad(path, f"missing or mistyped {exc}") from exc
    if not devnet.bootstrap_nodes:
        raise _bad(path, "no bootstrap peer")
    if devnet.escrow and not (devnet.rpc_url and devnet.contracts and devnet.client_key):
        raise _bad(path, "escrow without a chain")
    return devnet
