"""The committed contract artifacts (``src/fabstir/chain/artifacts``) are what ``contracts/src`` compiles to.

The Python side deploys and talks to the contracts through these JSON files, never through a compiler, so
a ``.sol`` edit without a rebuild (``scripts/build_contracts.sh``) would ship stale bytecode. Two checks:
the source hashes recorded in every artifact match the files on disk (no Node needed), and a fresh build
with the pinned solc-js (``contracts/node_modules``, installed by ``scripts/setup.sh``) reproduces the
artifacts byte for byte. Neither is skipped when the toolchain is missing: CI runs setup.sh, so a missing
``node_modules`` there is a broken setup and fails with a message saying so.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from importlib.resources import files
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
CONTRACTS = ROOT / "contracts"
NODE_MODULES = CONTRACTS / "node_modules"
ARTIFACTS = Path(str(files("fabstir.chain") / "artifacts"))
#: Every deployable contract, by artifact path (test-only contracts under test/).
EXPECTED = {"HostRegistry", "PaymentSessions", "TestToken", "test/ReentrantToken"}
KEYS = {
    "contractName",
    "abi",
    "bytecode",
    "deployedBytecode",
    "compiler",
    "evmVersion",
    "optimizer",
    "sourcePath",
    "sourceSha256",
    "sourcesSha256",
}
#: Bound on one solc-js build (2-3 s on an idle machine); only turns a hang into a failure.
BUILD_TIMEOUT = 100.0


def _artifacts() -> dict[str, dict[str, Any]]:
    """The committed artifacts by name relative to the artifacts folder, without ``.json``."""
    found: dict[str, dict[str, Any]] = {}
    for path in sorted(ARTIFACTS.rglob("*.json")):
        name = path.relative_to(ARTIFACTS).with_suffix("").as_posix()
        found[name] = json.loads(path.read_text(encoding="utf-8"))
    return found


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _require_toolchain() -> None:
    if not (NODE_MODULES / "solc").is_dir() or not (NODE_MODULES / "@openzeppelin" / "contracts").is_dir():
        pytest.fail(
            f"{NODE_MODULES} is missing or incomplete: the artifact checks need the pinned solc-js and "
            "OpenZeppelin; run `bash scripts/setup.sh` (it runs `npm ci` in contracts/)"
        )


def test_every_contract_has_a_well_formed_artifact() -> None:
    """Each deployable contract has an artifact with the agreed keys, deployable 0x bytecode, and the
    pinned compiler settings (solc 0.8.37, evm cancun, optimizer on at 200 runs)."""
    artifacts = _artifacts()
    assert set(artifacts) == EXPECTED
    for name, artifact in artifacts.items():
        assert set(artifact) == KEYS, name
        assert artifact["contractName"] == name.rsplit("/", 1)[-1]
        for key in ("bytecode", "deployedBytecode"):
            code = artifact[key]
            assert code.startswith("0x"), (name, key)
            assert len(bytes.fromhex(code[2:])) > 0, (name, key)
        assert artifact["compiler"].startswith("0.8.37+commit."), name
        assert artifact["evmVersion"] == "cancun"
        assert artifact["optimizer"] == {"enabled": True, "runs": 200}
        assert any(entry["type"] == "constructor" for entry in artifact["abi"]), name


def test_recorded_hashes_match_the_contract_sources() -> None:
    """Every artifact's ``sourceSha256`` is the sha256 of its own .sol file, every ``src/`` entry of its
    ``sourcesSha256`` matches the file in contracts/, and every .sol file under contracts/src is the source
    of some artifact: editing or adding a contract without rebuilding fails here."""
    artifacts = _artifacts()
    sources_with_artifacts = set()
    for name, artifact in artifacts.items():
        source = ROOT / artifact["sourcePath"]
        assert source.is_file(), f"{name}: {artifact['sourcePath']} does not exist"
        assert artifact["sourceSha256"] == _sha256(source), (
            f"{artifact['sourcePath']} changed since {name}.json was built: run scripts/build_contracts.sh"
        )
        unit = source.relative_to(CONTRACTS).as_posix()
        assert artifact["sourcesSha256"][unit] == artifact["sourceSha256"]
        for other, digest in artifact["sourcesSha256"].items():
            if other.startswith("src/"):
                assert digest == _sha256(CONTRACTS / other), (
                    f"{other} (used by {name}) changed since the build: run scripts/build_contracts.sh"
                )
        sources_with_artifacts.add(unit)
    on_disk = {path.relative_to(CONTRACTS).as_posix() for path in (CONTRACTS / "src").rglob("*.sol")}
    assert on_disk == sources_with_artifacts


def test_recorded_hashes_match_the_installed_openzeppelin() -> None:
    """The OpenZeppelin files each artifact was built from are the ones package-lock.json installs: a
    different OpenZeppelin version would compile to different bytecode."""
    _require_toolchain()
    checked = 0
    for name, artifact in _artifacts().items():
        for unit, digest in artifact["sourcesSha256"].items():
            if unit.startswith("@openzeppelin/"):
                assert digest == _sha256(NODE_MODULES / unit), f"{name}: {unit} differs from the build's"
                checked += 1
    assert checked > 0


@pytest.mark.integration
def test_a_fresh_build_reproduces_the_artifacts(tmp_path: Path) -> None:
    """Compiling contracts/src again with build.mjs (the pinned solc-js, on the system Node) writes the
    same artifact files, byte for byte: ABI, bytecode and every recorded hash."""
    _require_toolchain()
    node = shutil.which("node")
    if node is None:
        pytest.fail("`node` is not on PATH: the contracts build runs solc-js on the system Node (>= 20)")
    result = subprocess.run(
        [node, str(CONTRACTS / "build.mjs"), "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT,
        check=False,
    )
    assert result.returncode == 0, f"build.mjs failed:\n{result.stderr}"
    built = {p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.json")}
    committed = {p.relative_to(ARTIFACTS).as_posix() for p in ARTIFACTS.rglob("*.json")}
    assert built == committed
    for name in sorted(committed):
        fresh = json.loads((tmp_path / name).read_text(encoding="utf-8"))
        stored = json.loads((ARTIFACTS / name).read_text(encoding="utf-8"))
        for key in ("abi", "bytecode", "deployedBytecode"):
            assert fresh[key] == stored[key], f"{name}: {key} differs: run scripts/build_contracts.sh"
        assert (tmp_path / name).read_bytes() == (ARTIFACTS / name).read_bytes(), name
