"""What ``fabstir host run`` builds, seen through a stand-in HostService: the hidden ``--fault-*`` options
build the host's HostFaults (and hand the node a hook that signals the host's own process), bad values are
refused before anything starts, and the announcement options reach HostServiceOptions."""

from __future__ import annotations

import os
import pathlib
import signal
from typing import Any

import pytest
from click.testing import CliRunner

from fabstir import ConfigurationError
from fabstir.cli import _network, cli
from fabstir.host import HostFaults, HostServiceOptions

BASE = ["host", "run", "--no-escrow", "--backend", "simulated", "--status-interval", "0"]


class Captured:
    options: HostServiceOptions | None = None
    process_fault: Any = None


@pytest.fixture
def runner(monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path) -> CliRunner:
    monkeypatch.setenv("FABSTIR_DEVNET_DIR", str(tmp_path / "devnet"))
    monkeypatch.delenv("FABSTIR_HOST_PRIVATE_KEY", raising=False)
    return CliRunner()


@pytest.fixture
def captured(monkeypatch: pytest.MonkeyPatch) -> Captured:
    """Replaces HostService with a stand-in that records what the command built, then stops it (a
    configuration error, exit code 3) before any network or backend is started."""
    seen = Captured()

    class StandIn:
        def __init__(self, options: HostServiceOptions, *, process_fault: Any = None) -> None:
            seen.options = options
            seen.process_fault = process_fault
            raise ConfigurationError("stopped by the test")

    monkeypatch.setattr(_network, "HostService", StandIn)
    return seen


def test_every_fault_option_lands_in_host_faults(runner: CliRunner, captured: Captured) -> None:
    """Each --fault-* option sets its HostFaults field, and the node gets the self-signalling hook."""
    args = [
        *("--fault-kill-at-token", "7"),
        *("--fault-stop-at-token", "8"),
        *("--fault-drop-at-token", "9"),
        *("--fault-error-at-token", "10"),
        *("--fault-first-token-delay", "0.25"),
        *("--fault-overclaim-tokens", "3"),
        *("--fault-serve-model", "other-model"),
        *("--fault-reject", "busy"),
    ]
    result = runner.invoke(cli, [*BASE, *args])
    assert result.exit_code == 3, result.output
    assert "stopped by the test" in result.output
    assert captured.options is not None
    assert captured.options.faults == HostFaults(
        kill_at_token=7,
        stop_at_token=8,
        drop_at_token=9,
        error_at_token=10,
        first_token_delay=0.25,
        overclaim_tokens=3,
        serve_model="other-model",
        reject="busy",
    )
    assert captured.options.host_config().faults == captured.options.faults
    assert captured.process_fault is _network._signal_self


def test_one_fault_option_leaves_the_others_at_their_defaults(runner: CliRunner, captured: Captured) -> None:
    """Only the options given are set."""
    result = runner.invoke(cli, [*BASE, "--fault-kill-at-token", "0"])
    assert result.exit_code == 3, result.output
    assert captured.options is not None
    assert captured.options.faults == HostFaults(kill_at_token=0)


def test_without_fault_options_there_are_no_faults(runner: CliRunner, captured: Captured) -> None:
    """A host started without --fault-* options commits no fault (faults is None)."""
    result = runner.invoke(cli, BASE)
    assert result.exit_code == 3, result.output
    assert captured.options is not None
    assert captured.options.faults is None


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("--fault-kill-at-token", "-1"),
        ("--fault-kill-at-token", "x"),
        ("--fault-stop-at-token", "1.5"),
        ("--fault-drop-at-token", "-2"),
        ("--fault-error-at-token", "many"),
        ("--fault-first-token-delay", "-0.5"),
        ("--fault-first-token-delay", "soon"),
        ("--fault-overclaim-tokens", "-1"),
        ("--fault-reject", "nope"),
    ],
)
def test_bad_fault_values_are_usage_errors(
    runner: CliRunner, captured: Captured, option: str, value: str
) -> None:
    """A malformed or out-of-range value is a usage error (exit 2) naming the option; nothing is built."""
    result = runner.invoke(cli, [*BASE, option, value])
    assert result.exit_code == 2, result.output
    assert f"Invalid value for '{option}'" in result.output
    assert "Traceback" not in result.output
    assert captured.options is None


@pytest.mark.parametrize(
    ("option", "value", "fragment"),
    [("--fault-first-token-delay", "inf", "first_token_delay"), ("--fault-serve-model", "", "serve_model")],
)
def test_values_the_faults_refuse_are_configuration_errors(
    runner: CliRunner, captured: Captured, option: str, value: str, fragment: str
) -> None:
    """Values that parse but HostFaults refuses end with one 'error:' line (exit 3), nothing built."""
    result = runner.invoke(cli, [*BASE, option, value])
    assert result.exit_code == 3, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    assert lines[0].startswith("error:")
    assert fragment in lines[0]
    assert captured.options is None


def test_fault_options_are_hidden(runner: CliRunner) -> None:
    """`host run --help` does not advertise the fault options."""
    result = runner.invoke(cli, ["host", "run", "--help"])
    assert result.exit_code == 0
    assert "--listen" in result.output
    assert "--fault" not in result.output


@pytest.mark.parametrize("name", ["SIGKILL", "SIGSTOP"])
def test_the_hook_signals_this_process(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    """The hook given to the node sends the named signal to the host's own process id."""
    sent: list[tuple[int, int]] = []
    monkeypatch.setattr(os, "kill", lambda pid, sig: sent.append((pid, sig)))  # the os module _network uses
    _network._signal_self(name)
    assert sent == [(os.getpid(), getattr(signal, name))]


def test_announcement_options_land_in_the_host_options(runner: CliRunner, captured: Captured) -> None:
    """--record-refresh, --record-ttl and --provider-refresh set their HostServiceOptions fields; without
    them the fields keep the library's defaults."""
    result = runner.invoke(
        cli, [*BASE, "--record-refresh", "30", "--record-ttl", "120", "--provider-refresh", "900"]
    )
    assert result.exit_code == 3, result.output
    assert captured.options is not None
    options = captured.options
    assert (options.record_refresh, options.record_ttl, options.provider_refresh) == (30, 120, 900)

    result = runner.invoke(cli, BASE)
    assert result.exit_code == 3, result.output
    defaults = HostServiceOptions(backend="simulated", escrow=False)
    options = captured.options
    assert (options.record_refresh, options.record_ttl, options.provider_refresh) == (
        defaults.record_refresh,
        defaults.record_ttl,
        defaults.provider_refresh,
    )
