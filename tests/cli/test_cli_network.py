"""The network commands' mistakes: `fabstir host run` with bad options and `fabstir devnet status|down`
without a devnet each end with one 'error:' line that says what to do, and exit code 3 (configuration),
before anything is started."""

from __future__ import annotations

import pathlib

import pytest
from click.testing import CliRunner

from fabstir.cli import cli


@pytest.fixture
def runner(monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path) -> CliRunner:
    # an empty devnet directory: these tests must not find a devnet someone left running on this machine
    monkeypatch.setenv("FABSTIR_DEVNET_DIR", str(tmp_path / "devnet"))
    monkeypatch.delenv("FABSTIR_HOST_PRIVATE_KEY", raising=False)
    monkeypatch.delenv("FABSTIR_BACKEND_API_KEY", raising=False)
    return CliRunner()


def one_error_line(output: str) -> str:
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1, output
    assert lines[0].startswith("error:"), output
    assert "Traceback" not in output
    return lines[0]


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--backend", "simulated"], "--no-escrow"),
        (["--no-escrow", "--backend", "openai", "--model", "m"], "--backend-url"),
        (["--no-escrow", "--backend", "openai", "--backend-url", "http://127.0.0.1:8080"], "--model"),
        (
            ["--no-escrow", "--backend", "simulated", "--price", "abc"],
            "--price must be AMOUNT or MODEL=AMOUNT",
        ),
        (["--no-escrow", "--backend", "simulated", "--price", "0"], "positive integer"),
        (["--no-escrow", "--backend", "simulated", "--price", "llama=5"], "not served: llama"),
        (["--no-escrow", "--backend", "simulated", "--bootstrap", "/ip4/127.0.0.1/tcp/4001"], "bootstrap"),
        (["--no-escrow", "--backend", "simulated", "--model", "=x"], "--model must be ID"),
        (["--no-escrow", "--backend", "simulated", "--max-concurrent-jobs", "0"], "max_concurrent_jobs"),
        (["--no-escrow", "--backend", "simulated", "--status-interval", "-1"], "--status-interval"),
        (
            ["--no-escrow", "--backend", "simulated", "--idle-connection-timeout", "0"],
            "idle_connection_timeout",
        ),
        (["--no-escrow", "--backend", "simulated", "--private-key", "0x1234"], "wallet key"),
        (["--no-escrow", "--backend", "simulated", "--provider-refresh", "0"], "provider_refresh"),
        (
            ["--no-escrow", "--backend", "simulated", "--record-refresh", "400", "--record-ttl", "300"],
            "record_refresh (400.0 s) must be shorter than record_ttl (300.0 s)",
        ),
    ],
)
def test_host_run_bad_options(runner: CliRunner, args: list[str], fragment: str) -> None:
    """Each bad `host run` option: exit code 3 and one error line naming what to fix."""
    result = runner.invoke(cli, ["host", "run", *args])
    assert result.exit_code == 3, result.output
    assert fragment in one_error_line(result.output)


def test_host_run_bad_option_as_json(runner: CliRunner) -> None:
    """With --json the error is a JSON object with code 'configuration'."""
    result = runner.invoke(cli, ["--json", "host", "run", "--backend", "simulated"])
    assert result.exit_code == 3
    assert '"code": "configuration"' in result.output


@pytest.mark.parametrize("command", ["status", "down"])
def test_devnet_commands_without_a_devnet(runner: CliRunner, command: str) -> None:
    """`devnet status` and `devnet down` with no devnet in FABSTIR_DEVNET_DIR: exit 3, one line telling to
    run 'fabstir devnet up'."""
    result = runner.invoke(cli, ["devnet", command])
    assert result.exit_code == 3, result.output
    assert "fabstir devnet up" in one_error_line(result.output)


def test_devnet_status_with_dir_option(runner: CliRunner, tmp_path: pathlib.Path) -> None:
    """--dir points at another directory, and its (missing) devnet file is the one named in the error."""
    result = runner.invoke(cli, ["devnet", "status", "--dir", str(tmp_path / "other")])
    assert result.exit_code == 3
    line = one_error_line(result.output)
    assert "other" in line
    assert "fabstir devnet up" in line
