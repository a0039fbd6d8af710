"""The fabstir command: mock-mode commands, JSON output, one-line errors and exit codes."""

from __future__ import annotations

import json
import pathlib

import pytest
from click.testing import CliRunner

from fabstir import (
    ConfigurationError,
    FabstirError,
    HostRejectedError,
    NoNodesAcceptedError,
    PaymentError,
    TimeoutError,
    TransportError,
)
from fabstir.cli import cli, exit_code_for


@pytest.fixture
def runner(monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path) -> CliRunner:
    # an empty devnet directory: these tests must not find a devnet someone left running on this machine
    monkeypatch.setenv("FABSTIR_DEVNET_DIR", str(tmp_path / "devnet"))
    return CliRunner()


def test_demo_mock_json_reports_the_whole_flow(runner: CliRunner) -> None:
    """`fabstir --json demo --mock --fast` prints one JSON document with timeline, text, cost and metrics."""
    result = runner.invoke(cli, ["--json", "demo", "--mock", "--fast", "--max-tokens", "16"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    events = [entry["event"] for entry in doc["timeline"]]
    assert events[0].startswith("discovered 3 hosts")
    assert any(e.startswith("escrowed") for e in events)
    assert any(e.startswith("first token") for e in events)
    assert any(e.startswith("settled") for e in events)
    assert doc["text"]
    cost = doc["cost"]
    assert cost["host"] + cost["treasury"] == cost["total"] == cost["tokens"] * cost["price_per_token"]
    assert doc["payment_status"] == "released"
    assert doc["metrics"]["tokens"] == cost["tokens"]


def test_demo_mock_human_output_shows_timeline_and_tables(runner: CliRunner) -> None:
    """The human demo prints the timeline, the streamed answer, the cost breakdown and the metrics."""
    result = runner.invoke(cli, ["demo", "--mock", "--fast", "--max-tokens", "12"])
    assert result.exit_code == 0, result.output
    for fragment in (
        "discovered 3 hosts",
        "escrowed",
        "first token",
        "settled",
        "cost breakdown",
        "stream metrics",
    ):
        assert fragment in result.output


def test_run_mock_streams_text_to_stdout(runner: CliRunner) -> None:
    """`fabstir run --mock PROMPT` writes the answer to stdout; --json gives the text and the cost."""
    plain = runner.invoke(cli, ["run", "--mock", "--max-tokens", "10", "hello"])
    assert plain.exit_code == 0, plain.output
    as_json = runner.invoke(cli, ["--json", "run", "--mock", "--max-tokens", "10", "hello"])
    doc = json.loads(as_json.output)
    assert doc["text"]
    assert doc["text"] in plain.output
    assert doc["cost"]["total"] == doc["cost"]["host"] + doc["cost"]["treasury"]


def test_models_and_nodes(runner: CliRunner) -> None:
    """`models` and `nodes` list what the mock hosts offer, as tables or JSON."""
    models = runner.invoke(cli, ["--json", "models", "--mock"])
    assert "llama-3.2-1b-instruct" in [m["id"] for m in json.loads(models.output)]
    nodes = runner.invoke(cli, ["--json", "nodes", "--mock", "--model", "mistral-7b-instruct"])
    found = json.loads(nodes.output)
    assert len(found) == 1
    assert "mistral-7b-instruct" in found[0]["models"]
    table = runner.invoke(cli, ["nodes", "--mock"])
    assert table.exit_code == 0
    assert "12D3KooW" in table.output


def test_errors_are_one_line_with_a_meaningful_exit_code(runner: CliRunner) -> None:
    """Without --mock and with no devnet running: one 'error:' line saying how to start one, exit code 3."""
    result = runner.invoke(cli, ["run", "hello"])
    assert result.exit_code == 3
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1
    assert lines[0].startswith("error:")
    assert "fabstir devnet up" in lines[0]
    assert "Traceback" not in result.output


def test_json_errors(runner: CliRunner) -> None:
    """With --json an error is a JSON object with message and code."""
    result = runner.invoke(cli, ["--json", "models"])
    assert result.exit_code == 3
    assert json.loads(result.output.strip().splitlines()[-1])["error"]["code"] == "configuration"


def test_unknown_model_exits_4(runner: CliRunner) -> None:
    """A model no host serves ends the run with exit code 4 (no host)."""
    result = runner.invoke(cli, ["run", "--mock", "--model", "no-such-model", "hello"])
    assert result.exit_code == 4
    assert "error:" in result.output


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (ConfigurationError("x"), 3),
        (NoNodesAcceptedError("x"), 4),
        (HostRejectedError("x"), 4),
        (TransportError("x"), 5),
        (PaymentError("x"), 6),
        (TimeoutError("x"), 7),
        (FabstirError("x"), 1),
    ],
)
def test_exit_codes(error: FabstirError, code: int) -> None:
    """Each kind of error maps to its documented exit code."""
    assert exit_code_for(error) == code


def test_job_status_shows_what_run_recorded(runner: CliRunner, tmp_path: pathlib.Path) -> None:
    """`fabstir run` records each job in the journal; `fabstir job status ID` shows its status, host,
    tokens, payment session and text, as a table or as JSON, for every job run with that journal."""
    journal = str(tmp_path / "mine.sqlite")
    first = json.loads(
        runner.invoke(
            cli, ["--json", "run", "--mock", "--journal", journal, "--max-tokens", "6", "one"]
        ).output
    )
    second = json.loads(
        runner.invoke(
            cli, ["--json", "run", "--mock", "--journal", journal, "--max-tokens", "4", "two"]
        ).output
    )
    assert second["job_id"] != first["job_id"]  # the journal never hands out an id twice

    shown = json.loads(
        runner.invoke(cli, ["--json", "job", "status", "--journal", journal, str(first["job_id"])]).output
    )
    assert shown["status"] == "COMPLETED"
    assert shown["text"] == first["text"]
    assert shown["tokens"] == first["tokens"] == 6
    assert shown["host"] == first["host"]
    [session] = shown["sessions"]
    assert int(session["signed_for_job"]) == first["cost"]["total"]
    assert session["closed"] is True

    table = runner.invoke(cli, ["job", "status", "--journal", journal, str(second["job_id"])])
    assert table.exit_code == 0, table.output
    assert "COMPLETED" in table.output
    assert second["text"] in table.output


def test_job_status_reads_the_journal_of_fabstir_journal(
    runner: CliRunner, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without --journal both commands use $FABSTIR_JOURNAL (default ~/.fabstir/jobs.sqlite)."""
    monkeypatch.setenv("FABSTIR_JOURNAL", str(tmp_path / "env.sqlite"))
    ran = json.loads(runner.invoke(cli, ["--json", "run", "--mock", "--max-tokens", "3", "hi"]).output)
    assert (tmp_path / "env.sqlite").is_file()
    shown = json.loads(runner.invoke(cli, ["--json", "job", "status", str(ran["job_id"])]).output)
    assert shown["text"] == ran["text"]


def test_job_status_of_an_unknown_job_exits_8(runner: CliRunner, tmp_path: pathlib.Path) -> None:
    """An id the journal does not hold, or no journal at all: one error line naming the journal, exit 8,
    and no journal file is created by asking."""
    journal = tmp_path / "jobs.sqlite"
    missing = runner.invoke(cli, ["job", "status", "--journal", str(journal), "1"])
    assert missing.exit_code == 8
    assert "no job journal" in missing.output
    assert str(journal) in missing.output
    assert not journal.exists()

    runner.invoke(cli, ["run", "--mock", "--journal", str(journal), "--max-tokens", "2", "x"])
    unknown = runner.invoke(cli, ["--json", "job", "status", "--journal", str(journal), "999"])
    assert unknown.exit_code == 8
    assert json.loads(unknown.output)["error"]["code"] == "job_not_found"
    bad = runner.invoke(cli, ["job", "status", "--journal", str(journal), "-1"])
    assert bad.exit_code == 2  # a usage error: ids are not negative
