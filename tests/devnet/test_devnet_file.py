"""The devnet file: what ``fabstir devnet up`` leaves for the SDK and the CLI. Written atomically, read
back exactly, and every way it can be missing, stale or foreign is a ConfigurationError that says what
to do — never a KeyError or a JSON traceback further on."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from fabstir import ConfigurationError
from fabstir.devnet import DevnetFile, DevnetProcess, default_devnet_dir, read_devnet_file
from fabstir.devnet._file import DEVNET_FILE, write_devnet_file

PEER = "12D3KooWBootstrapPeerIdForTestsOnly"


def sample(directory: Path) -> DevnetFile:
    boot = DevnetProcess(
        role="bootstrap",
        name="bootstrap",
        pid=4242,
        started=123456.0,
        peer_id=PEER,
        addrs=(f"/ip4/127.0.0.1/tcp/4001/p2p/{PEER}",),
        log=str(directory / "bootstrap.log"),
    )
    host = DevnetProcess(
        role="host",
        name="host-1",
        pid=4343,
        started=123457.0,
        peer_id="12D3KooWHost1",
        addrs=("/ip4/127.0.0.1/tcp/4002/p2p/12D3KooWHost1",),
        log=str(directory / "host-1.log"),
        models=("smollm2-135m-instruct",),
        prices=(("smollm2-135m-instruct", 1_000_000_000),),
    )
    return DevnetFile(
        directory=directory, created=1_700_000_000.5, escrow=False, chain_id=31337, processes=(boot, host)
    )


def raw(directory: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((directory / DEVNET_FILE).read_text())
    return data


def rewrite(directory: Path, data: Any) -> None:
    (directory / DEVNET_FILE).write_text(json.dumps(data))


def test_round_trip(tmp_path: Path) -> None:
    """What write_devnet_file writes, read_devnet_file returns unchanged (bootstrap nodes and hosts
    derived from the processes), and the JSON carries format 1 and the bootstrap addresses."""
    devnet = sample(tmp_path)
    path = write_devnet_file(devnet)
    assert path == tmp_path / DEVNET_FILE
    assert read_devnet_file(tmp_path) == devnet
    assert devnet.bootstrap_nodes == (f"/ip4/127.0.0.1/tcp/4001/p2p/{PEER}",)
    assert [h.name for h in devnet.hosts] == ["host-1"]
    data = raw(tmp_path)
    assert data["format"] == 1
    assert data["bootstrap_nodes"] == list(devnet.bootstrap_nodes)


def test_write_is_atomic_and_leaves_no_temp_file(tmp_path: Path) -> None:
    """Writing (into a directory created on the way, and again over an existing file) leaves exactly the
    devnet file: the temporary file was renamed over it, never left behind."""
    directory = tmp_path / "nested" / "devnet"
    write_devnet_file(sample(directory))
    write_devnet_file(sample(directory))
    assert sorted(p.name for p in directory.iterdir()) == [DEVNET_FILE]


def test_missing_file_says_how_to_start_a_devnet(tmp_path: Path) -> None:
    """No devnet file: a ConfigurationError naming the path and 'fabstir devnet up'."""
    with pytest.raises(ConfigurationError) as caught:
        read_devnet_file(tmp_path)
    assert "fabstir devnet up" in caught.value.message
    assert str(tmp_path / DEVNET_FILE) in caught.value.message


def test_truncated_json(tmp_path: Path) -> None:
    """A half-written file (as a crash mid-write of a non-atomic writer would leave) is a
    ConfigurationError that says to take the devnet down."""
    write_devnet_file(sample(tmp_path))
    text = (tmp_path / DEVNET_FILE).read_text()
    (tmp_path / DEVNET_FILE).write_text(text[: len(text) // 2])
    with pytest.raises(ConfigurationError, match=r"not valid.*fabstir devnet down"):
        read_devnet_file(tmp_path)


@pytest.mark.parametrize("fmt", [None, 0, 2, "1"])
def test_wrong_format_number(tmp_path: Path, fmt: Any) -> None:
    """A file of another format version (or none) is refused as an unknown format."""
    write_devnet_file(sample(tmp_path))
    data = raw(tmp_path)
    data["format"] = fmt
    rewrite(tmp_path, data)
    with pytest.raises(ConfigurationError, match="unknown format"):
        read_devnet_file(tmp_path)


def test_not_an_object(tmp_path: Path) -> None:
    """A JSON document that is not an object is refused."""
    rewrite(tmp_path, [1, 2, 3])
    with pytest.raises(ConfigurationError, match="not valid"):
        read_devnet_file(tmp_path)


@pytest.mark.parametrize("field", ["created", "escrow", "chain_id", "processes"])
def test_missing_top_level_field(tmp_path: Path, field: str) -> None:
    """Each required top-level field missing is a ConfigurationError."""
    write_devnet_file(sample(tmp_path))
    data = raw(tmp_path)
    del data[field]
    rewrite(tmp_path, data)
    with pytest.raises(ConfigurationError, match="not valid"):
        read_devnet_file(tmp_path)


@pytest.mark.parametrize("field", ["role", "name", "pid", "started", "peer_id", "addrs", "log"])
def test_missing_process_field(tmp_path: Path, field: str) -> None:
    """Each required field of a process entry missing is a ConfigurationError naming what is wrong."""
    write_devnet_file(sample(tmp_path))
    data = raw(tmp_path)
    del data["processes"][1][field]
    rewrite(tmp_path, data)
    with pytest.raises(ConfigurationError, match="process entry"):
        read_devnet_file(tmp_path)


@pytest.mark.parametrize(
    ("field", "value"),
    [("pid", "not-a-number"), ("pid", 0), ("role", "miner"), ("prices", ["x"]), ("addrs", 5)],
)
def test_mistyped_process_field(tmp_path: Path, field: str, value: Any) -> None:
    """A mistyped or impossible value in a process entry is a ConfigurationError too."""
    write_devnet_file(sample(tmp_path))
    data = raw(tmp_path)
    data["processes"][1][field] = value
    rewrite(tmp_path, data)
    with pytest.raises(ConfigurationError, match="not valid"):
        read_devnet_file(tmp_path)


def test_no_bootstrap_peer(tmp_path: Path) -> None:
    """A devnet without a bootstrap peer cannot be joined: ConfigurationError."""
    devnet = sample(tmp_path)
    write_devnet_file(DevnetFile(**{**_fields(devnet), "processes": devnet.hosts}))
    with pytest.raises(ConfigurationError, match="no bootstrap peer"):
        read_devnet_file(tmp_path)


def _fields(devnet: DevnetFile) -> dict[str, Any]:
    return {
        "directory": devnet.directory,
        "created": devnet.created,
        "escrow": devnet.escrow,
        "chain_id": devnet.chain_id,
        "processes": devnet.processes,
    }


def test_default_dir_honours_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """FABSTIR_DEVNET_DIR chooses the directory (and read_devnet_file() reads from it); without it the
    default is ~/.fabstir/devnet."""
    monkeypatch.setenv("FABSTIR_DEVNET_DIR", str(tmp_path / "elsewhere"))
    assert default_devnet_dir() == tmp_path / "elsewhere"
    write_devnet_file(sample(tmp_path / "elsewhere"))
    assert read_devnet_file().directory == tmp_path / "elsewhere"
    monkeypatch.delenv("FABSTIR_DEVNET_DIR")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_devnet_dir() == tmp_path / "home" / ".fabstir" / "devnet"
