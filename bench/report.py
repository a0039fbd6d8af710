"""Regenerates the tables of docs/BENCHMARKS.md from the results files in bench/results/.

Each benchmark ``bench/bench_NAME.py`` writes ``bench/results/NAME.json`` and has a ``render(result)``
function that turns it into Markdown. In docs/BENCHMARKS.md each section's generated part sits between
``<!-- bench:NAME -->`` and ``<!-- /bench:NAME -->``: a line saying when, on what machine and with which
command the numbers were measured, then the tables. Everything outside the markers is prose, written by
hand. ``bash scripts/bench.sh`` runs this last, so one command measures everything and rewrites the file.

Run:  .venv/bin/python bench/report.py            # rewrite docs/BENCHMARKS.md
      .venv/bin/python bench/report.py --check    # exit 1 if the file is not what the results give
"""

from __future__ import annotations

import argparse
import importlib
import json
import re
import sys
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "results"
DOCUMENT = BENCH.parent / "docs" / "BENCHMARKS.md"
_MARKED = re.compile(r"(<!-- bench:(?P<name>[a-z_]+) -->\n)(?P<body>.*?)(<!-- /bench:(?P=name) -->)", re.S)


class ReportError(Exception):
    """The document or a results file is not what the report needs."""


def machine_line(result: dict[str, Any]) -> str:
    """When and where the numbers were measured, and the command that measures them again."""
    machine = result.get("machine", {})
    facts = [f"{machine.get('cpus', '?')} cores", f"Python {machine.get('python', '?')}"]
    load = machine.get("load_average_1m_at_start")
    if load is not None:
        facts.append(f"load average {load:.1f} at start")
    date = str(machine.get("date", ""))[:10]
    when = f" on {date}" if date else ""
    command = str(result.get("command", "")).removeprefix("python ")
    return f"Measured{when}: {', '.join(facts)}. Command: `.venv/bin/python {command}`."


def section(name: str) -> str:
    """The generated part of one section: the machine line and the tables ``bench_NAME.render`` makes."""
    path = RESULTS / f"{name}.json"
    try:
        result = json.loads(path.read_text())
    except FileNotFoundError:
        raise ReportError(f"{path} is missing: run bench/bench_{name}.py first") from None
    return render_section(name, result)


def render_section(name: str, result: dict[str, Any]) -> str:
    """What :func:`section` writes for ``result``, a results file's contents."""
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))  # the benchmarks import their neighbour _procs
    module = importlib.import_module(f"bench_{name}")
    return f"{machine_line(result)}\n\n{module.render(result).rstrip()}\n"


def regenerate(text: str) -> str:
    """The document with every marked section regenerated from its results file."""
    names = [m.group("name") for m in _MARKED.finditer(text)]
    if not names:
        raise ReportError("the document has no <!-- bench:NAME --> sections")
    return _MARKED.sub(lambda m: m.group(1) + section(m.group("name")) + m.group(4), text)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--check", action="store_true", help="exit 1 if the document is out of date")
    parser.add_argument("--document", type=Path, default=DOCUMENT)
    args = parser.parse_args()
    current = args.document.read_text()
    try:
        updated = regenerate(current)
    except ReportError as exc:
        print(f"report: {exc}", file=sys.stderr)
        return 2
    if args.check:
        if updated != current:
            print(f"report: {args.document} is out of date: run bench/report.py", file=sys.stderr)
            return 1
        return 0
    if updated != current:
        args.document.write_text(updated)
        print(f"report: rewrote {args.document}")
    else:
        print(f"report: {args.document} is up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
