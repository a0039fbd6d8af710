"""The public surface: ``fabstir`` and ``fabstir.protocol`` re-export what users need under a sorted,
importable ``__all__``."""

from __future__ import annotations

import re
from types import ModuleType

import pytest

import fabstir
import fabstir.protocol
from fabstir import _events, _exceptions, _models

PUBLIC_PACKAGES = [fabstir, fabstir.protocol]


def ruff_sort_key(name: str) -> tuple[int, list[str | int]]:
    """The order ruff's RUF022 ("isort-style") wants: SCREAMING_CASE constants, then CamelCase names, then
    everything else, each group in natural order (digit runs compare as numbers)."""
    if len(name) > 1 and name.isupper():
        group = 0
    elif name[:1].isupper():
        group = 1
    else:
        group = 2
    return group, [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def test_sort_key_agrees_with_ruff_on_examples() -> None:
    """The key reproduces RUF022's order on names of each kind (checked against ``ruff --select RUF022``)."""
    ordered = [
        "MAX_2",
        "MAX_10",
        "NATIVE_TOKEN",
        "Frame",
        "JobStatus",
        "Token2",
        "Token10",
        "decode",
        "encode",
    ]
    scrambled = ordered[1::2] + ordered[::2]
    assert sorted(scrambled, key=ruff_sort_key) == ordered


@pytest.mark.parametrize("package", PUBLIC_PACKAGES, ids=lambda m: m.__name__)
def test_all_is_sorted_and_unique(package: ModuleType) -> None:
    """``__all__`` is sorted the way ruff's RUF022 sorts it and lists no name twice."""
    names = list(package.__all__)
    assert names == sorted(names, key=ruff_sort_key)
    assert len(names) == len(set(names))


@pytest.mark.parametrize("package", PUBLIC_PACKAGES, ids=lambda m: m.__name__)
def test_every_name_in_all_resolves(package: ModuleType) -> None:
    """Every name in ``__all__`` is an attribute of the package and ``from package import name`` works."""
    for name in package.__all__:
        assert getattr(package, name) is not None, name
    namespace: dict[str, object] = {}
    exec(f"from {package.__name__} import *", namespace)
    assert set(package.__all__) <= namespace.keys()


@pytest.mark.parametrize("module", [_exceptions, _models], ids=lambda m: m.__name__)
def test_errors_and_values_are_all_re_exported(module: ModuleType) -> None:
    """Every error class and value object is importable from ``fabstir`` itself, as the same object."""
    for name in module.__all__:
        assert name in fabstir.__all__, name
        assert getattr(fabstir, name) is getattr(module, name)


def test_event_types_are_re_exported() -> None:
    """Event and EventName, which callbacks and iterators hand to users, are public."""
    assert fabstir.Event is _events.Event
    assert fabstir.EventName is _events.EventName


def test_public_objects_come_from_fabstir() -> None:
    """The surface re-exports fabstir's own classes, never a third-party object."""
    for name in fabstir.__all__:
        obj = getattr(fabstir, name)
        module = getattr(obj, "__module__", None)
        if isinstance(obj, type):
            assert str(module).split(".")[0] == "fabstir", name


def test_only_dunder_private_names() -> None:
    """No private name leaks into ``__all__`` (``__version__`` is the one dunder)."""
    assert [n for n in fabstir.__all__ if n.startswith("_")] == ["__version__"]
    assert isinstance(fabstir.__version__, str)
    assert fabstir.__version__


def test_job_status_compares_equal_to_strings() -> None:
    """JobStatus is a string enum: ``status == "POSTED"`` holds, as for TypeScript SDK users."""
    assert fabstir.JobStatus.POSTED == "POSTED"
    assert fabstir.JobStatus("COMPLETED") is fabstir.JobStatus.COMPLETED
    assert {s.value for s in fabstir.JobStatus} == {
        "POSTED",
        "CLAIMED",
        "PROCESSING",
        "COMPLETED",
        "FAILED",
        "CANCELLED",
        "DISPUTED",
    }
