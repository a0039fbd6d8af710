"""docs/BENCHMARKS.md against the results files: its tables are generated (bench/report.py), never typed."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
DOCUMENT = ROOT / "docs" / "BENCHMARKS.md"


@pytest.fixture(scope="module")
def report() -> ModuleType:
    sys.path.insert(0, str(BENCH))  # where report.py and the benchmarks live (not a package)
    return importlib.import_module("report")


def test_every_benchmark_has_a_generated_section(report: ModuleType) -> None:
    """Each bench/bench_NAME.py has its section between markers, and each results file is rendered."""
    text = DOCUMENT.read_text()
    scripts = {p.stem.removeprefix("bench_") for p in BENCH.glob("bench_*.py")}
    results = {p.stem for p in (BENCH / "results").glob("*.json")}
    sections = {m.group("name") for m in report._MARKED.finditer(text)}
    assert scripts == sections == results


def test_the_tables_are_what_the_results_files_give(report: ModuleType) -> None:
    """Regenerating the document from bench/results/ changes nothing: no number was typed or left stale."""
    text = DOCUMENT.read_text()
    assert report.regenerate(text) == text


def test_a_changed_result_changes_the_document(report: ModuleType) -> None:
    """The check can fail: a different number in a results file gives a different section."""
    result = json.loads((BENCH / "results" / "gas.json").read_text())
    current = report.render_section("gas", result)
    result["operations"]["ETH"]["open"] = 1_234_567
    changed = report.render_section("gas", result)
    assert current in DOCUMENT.read_text()
    assert "1,234,567" in changed
    assert "1,234,567" not in current


def test_a_section_without_results_is_a_clear_error(report: ModuleType) -> None:
    """A marked section whose results file does not exist is reported by name, not silently dropped."""
    with pytest.raises(report.ReportError, match=r"nosuch\.json is missing"):
        report.regenerate("<!-- bench:nosuch -->\nold\n<!-- /bench:nosuch -->\n")


def test_the_machine_line_names_the_command(report: ModuleType) -> None:
    """Every generated section says when and on what it was measured and how to measure it again."""
    line = report.machine_line(
        {
            "machine": {
                "cpus": 2,
                "python": "3.11.7",
                "date": "2026-12-02T19:11:11+0000",
                "load_average_1m_at_start": 1.44,
            },
            "command": "python bench/bench_failover.py --runs 10",
        }
    )
    assert line == (
        "Measured on 2026-12-02: 2 cores, Python 3.11.7, load average 1.4 at start. "
        "Command: `.venv/bin/python bench/bench_failover.py --runs 10`."
    )
