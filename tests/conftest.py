"""Suite-wide setup.

Hypothesis is imported here, at start-up: its pytest plugin otherwise imports it lazily in the terminal
summary, and on CPython 3.11.7 compiling (assertion-rewriting) its modules that deep in pytest's hook
stack can fail with ``SystemError: AST constructor recursion depth mismatch`` after every test passed —
seen when a run's tests never imported hypothesis themselves.
"""

import pathlib

import hypothesis  # noqa: F401
import pytest


@pytest.fixture(autouse=True)
def _private_job_journal(monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path) -> None:
    """`fabstir run` records jobs in ~/.fabstir/jobs.sqlite by default: tests (and the processes they
    start, which inherit the environment) use a journal of their own instead."""
    monkeypatch.setenv("FABSTIR_JOURNAL", str(tmp_path / "jobs.sqlite"))
