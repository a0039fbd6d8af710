"""fabstir.protocol performs no I/O: importing it loads no networking, chain or HTTP library."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

import fabstir.protocol

PROTOCOL_DIR = Path(fabstir.protocol.__file__).parent
SRC_DIR = PROTOCOL_DIR.parent.parent
#: Libraries that do I/O; none may be loaded by importing the protocol.
NETWORKING = {"libp2p", "trio", "web3", "httpx", "aiohttp", "requests", "urllib3", "websockets", "anyio"}
#: Standard-library modules for I/O the protocol's own code must not import.
IO_STDLIB = {
    "asyncio",
    "socket",
    "ssl",
    "selectors",
    "http",
    "urllib",
    "socketserver",
    "threading",
    "subprocess",
}
#: Third-party packages the protocol may use: pure computation (serialisation, hashing, signatures).
ALLOWED_THIRD_PARTY = {"msgpack", "eth_account", "eth_abi", "nacl", "base58"}


def modules_after(code: str) -> set[str]:
    """The top-level names in sys.modules after running ``code`` in a fresh interpreter."""
    script = f"{code}\nimport json, sys\nprint(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}})))"
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60
    )
    return set(json.loads(result.stdout.splitlines()[-1]))


def test_importing_the_protocol_loads_no_networking_library() -> None:
    """`import fabstir.protocol` in a fresh interpreter loads none of libp2p, trio, web3, httpx, aiohttp,
    requests (nor their usual companions)."""
    loaded = modules_after("import fabstir.protocol")
    assert "fabstir" in loaded
    assert loaded.isdisjoint(NETWORKING), loaded & NETWORKING


def test_the_protocol_alone_loads_no_asyncio() -> None:
    """The protocol package's own import closure (without the SDK's top-level __init__, which the client
    needs) loads no asyncio either: it is usable under any event loop, or none."""
    isolate = (
        "import sys, types\n"
        "package = types.ModuleType('fabstir')\n"
        f"package.__path__ = [{str(SRC_DIR / 'fabstir')!r}]\n"
        "sys.modules['fabstir'] = package\n"
        "import fabstir.protocol\n"
        "assert 'fabstir.client' not in sys.modules\n"
    )
    loaded = modules_after(isolate)
    assert loaded.isdisjoint(NETWORKING | {"asyncio"}), loaded & (NETWORKING | {"asyncio"})


def imports_of(path: Path) -> set[str]:
    """The top-level names of the absolute imports in one source file."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module is not None:
            names.add(node.module.split(".")[0])
    return names


SOURCES = sorted(PROTOCOL_DIR.glob("*.py"))


def test_the_protocol_sources_are_found() -> None:
    """Control for the checks below: they read the real package (every module it is made of)."""
    assert {p.name for p in SOURCES} >= {"_codec.py", "_connection.py", "_frames.py", "_state.py"}


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.name)
def test_the_protocol_sources_import_no_io_module(path: Path) -> None:
    """No protocol module imports asyncio, socket or any other I/O module, and its third-party imports
    are the pure-computation libraries only (relative imports stay inside fabstir)."""
    names = imports_of(path)
    assert names.isdisjoint(IO_STDLIB | NETWORKING), names & (IO_STDLIB | NETWORKING)
    third_party = {n for n in names if n not in sys.stdlib_module_names and n != "__future__"}
    assert third_party <= ALLOWED_THIRD_PARTY, third_party - ALLOWED_THIRD_PARTY
