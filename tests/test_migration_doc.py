"""docs/MIGRATION.md: every Python name its TypeScript → Python tables name in backticks exists.

The tables are the rows under a ``| TypeScript | Python | ... |`` header. A backticked name in the Python
column must be one of: an event name (``job:submitted``); a configuration field (``mode``,
``p2p.bootstrap_nodes``); or an attribute path from a ``FabstirSDK`` instance or from the ``fabstir``
package (``submit_job``, ``JobStatus.POSTED``, ``ResponseStream.get_metrics``, ``Token.text``). A call
(``discover_nodes(model=..., exclude=...)``) must name parameters the callable has; one that forwards
``**kwargs`` also accepts job options (``JobRequest`` fields) and SDK options (``SDKConfig`` fields).
"""

from __future__ import annotations

import dataclasses
import inspect
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import fabstir
from fabstir import EventName, FabstirSDK, JobRequest, SDKConfig

DOC = Path(__file__).resolve().parents[1] / "docs" / "MIGRATION.md"

#: The configuration parts whose fields a ``part.field`` name may point at.
CONFIG_PARTS: dict[str, type[Any]] = {
    "p2p": fabstir.P2PConfig,
    "chain": fabstir.ChainConfig,
    "retry": fabstir.RetryConfig,
    "timeouts": fabstir.TimeoutConfig,
    "discovery": fabstir.DiscoveryConfig,
    "recovery": fabstir.RecoveryConfig,
    "mock": fabstir.MockConfig,
}
EVENT_NAMES = frozenset(e.value for e in EventName)
_SENTINEL = object()


@dataclass(frozen=True)
class Row:
    line: int
    cells: tuple[str, ...]

    @property
    def typescript(self) -> str:
        return self.cells[0]

    @property
    def python(self) -> str:
        return self.cells[1]


def _fields(cls: type[Any]) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


def mapping_tables(text: str) -> list[list[Row]]:
    """The body rows of every table whose header starts with ``TypeScript | Python``."""
    tables: list[list[Row]] = []
    current: list[Row] | None = None
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.startswith("|"):
            current = None
            continue
        cells = tuple(cell.strip() for cell in line.strip().strip("|").split("|"))
        if cells[:2] == ("TypeScript", "Python"):
            current = []
            tables.append(current)
        elif current is not None and not all(set(cell) <= set("-: ") for cell in cells):
            current.append(Row(number, cells))
    return tables


def python_names(row: Row) -> list[str]:
    return re.findall(r"`([^`]+)`", row.python)


def _attribute_path(parts: list[str]) -> Any:
    """The object ``parts`` names from a FabstirSDK instance or from the package, else the sentinel."""
    for root in (FabstirSDK(), fabstir):
        obj: Any = root
        for index, part in enumerate(parts):
            if isinstance(obj, type) and dataclasses.is_dataclass(obj) and part in _fields(obj):
                # a field (slotted or without a default is no plain class attribute): only as the last part
                obj = obj if index == len(parts) - 1 else _SENTINEL
            else:
                obj = getattr(obj, part, _SENTINEL)
            if obj is _SENTINEL:
                break
        if obj is not _SENTINEL:
            return obj
    return _SENTINEL


def _check_arguments(target: str, obj: Any, arguments: str) -> str | None:
    if not callable(obj):
        return f"{target} is not callable"
    parameters = inspect.signature(obj).parameters
    named = {p.name for p in parameters.values() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
    if any(p.kind is p.VAR_KEYWORD for p in parameters.values()):
        named |= _fields(JobRequest) | _fields(SDKConfig)
    for argument in (a.strip() for a in arguments.split(",")):
        name = argument.split("=", 1)[0].strip()
        if name.isidentifier() and name not in named:
            return f"{target} has no parameter {name!r}"
    return None


def problem(name: str) -> str | None:
    """Why ``name`` names nothing in the package, or None if it exists."""
    call = re.fullmatch(r"([\w.]+)\((.*)\)", name)
    target, arguments = (call.group(1), call.group(2)) if call else (name, None)
    if arguments is None and target in EVENT_NAMES:
        return None
    parts = target.split(".")
    if arguments is None and parts[0] in _fields(SDKConfig):
        if len(parts) == 1:
            return None
        part = CONFIG_PARTS.get(parts[0])
        if part is not None and len(parts) == 2 and parts[1] in _fields(part):
            return None
        return f"{target} is no configuration field"
    obj = _attribute_path(parts)
    if obj is _SENTINEL:
        return f"{target} is neither an event, a config field, a FabstirSDK attribute nor a fabstir name"
    return None if arguments is None else _check_arguments(target, obj, arguments)


TABLES = mapping_tables(DOC.read_text(encoding="utf-8"))
ROWS = [row for table in TABLES for row in table]
NAMES = sorted({(name, row.line) for row in ROWS for name in python_names(row)}, key=lambda x: x[1])


def test_the_mapping_tables_are_found() -> None:
    """The document has its mapping tables, each row with the three columns TypeScript, Python, Notes
    (a stray ``|`` in a cell would shift the columns and hide names from this check)."""
    assert len(TABLES) >= 8
    assert len(ROWS) >= 100
    bad = [row.line for row in ROWS if len(row.cells) != 3]
    assert not bad, f"rows without exactly three cells at lines {bad}"


@pytest.mark.parametrize(("name", "line"), NAMES, ids=[f"{n}@{line}" for n, line in NAMES])
def test_every_python_name_in_the_tables_exists(name: str, line: int) -> None:
    """Each backticked name in a Python column is an event, a config field, a FabstirSDK attribute or
    a fabstir name (and a call names only parameters the callable takes)."""
    assert problem(name) is None, f"MIGRATION.md line {line}: {problem(name)}"


@pytest.mark.parametrize(
    "name",
    [
        "submitJob",  # the TypeScript spelling
        "job:failover:failed",  # a TypeScript event Python does not have
        "p2p.bootstrapNodes",
        "retry.backoff_factor",
        "chain.rpc_url.scheme",
        "JobStatus.PENDING",
        "ResponseStream.on",
        "discover_nodes(modelId=...)",
        "wait_for_job_completion(job, options)",
        "JobStatus(stream=True)",  # a name that exists, with an argument its constructor lacks
        "NATIVE_TOKEN(value=1)",  # not callable
    ],
)
def test_the_check_rejects_names_that_do_not_exist(name: str) -> None:
    """The check is not vacuous: TypeScript spellings, unknown fields, events, attributes and
    parameters are reported."""
    assert problem(name) is not None


@pytest.mark.parametrize(
    ("typescript", "python"),
    [
        ("submitJob(request)", "submit_job"),
        ("discoverNodes(options)", "discover_nodes"),
        ("getJobStatus(jobId)", "get_job_status"),
        ("createResponseStream(options)", "create_response_stream"),
        ("onJobStatusChange(jobId, cb)", "on_job_status_change"),
        ("p2pConfig.bootstrapNodes", "p2p.bootstrap_nodes"),
        ("JobStatus", "JobStatus"),
        ("FabstirError", "FabstirError"),
    ],
)
def test_the_central_renames_are_in_the_tables(typescript: str, python: str) -> None:
    """The renames a porter looks up first have a row mapping the TypeScript name to the Python one."""
    found = [python_names(row) for row in ROWS if row.typescript.startswith(f"`{typescript}`")]
    assert found, f"no row for {typescript}"
    assert any(name.split("(")[0] == python for names in found for name in names)


def test_every_event_name_is_mapped() -> None:
    """Every event the SDK can emit appears in a Python column, so porters see which names they keep."""
    mapped = {name for row in ROWS for name in python_names(row)}
    assert EVENT_NAMES - mapped == set()
