"""The README's devnet walkthrough, run line by line as a new user would: it reaches a streamed answer."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from fabstir.devnet import stop_devnet
from fabstir.devnet._file import DEVNET_FILE

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

ROOT = Path(__file__).resolve().parents[1]
#: Per command: a devnet of two built-in-model hosts starts in ~20 s on 2 cores, a job streams in seconds.
COMMAND_TIMEOUT = 150.0


def walkthrough() -> list[list[str]]:
    """The commands of the README's "Production mode on a devnet" block, without their comments."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## Production mode on a devnet", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S)
    assert block is not None, "the README's devnet section has no bash block"
    return [shlex.split(line, comments=True) for line in block.group(1).splitlines() if line.strip()]


def test_the_walkthrough_is_what_this_test_runs() -> None:
    """The block is set-up, then fabstir commands from the venv — the shape the test below relies on."""
    commands = walkthrough()
    assert commands[0] == ["bash", "scripts/setup.sh"]
    assert all(c[0] == ".venv/bin/fabstir" for c in commands[1:])
    assert [c[1:3] for c in commands[1:]] == [
        ["devnet", "up"],
        ["nodes"],
        ["run", "Tell me a joke"],
        ["job", "status"],
        ["devnet", "down"],
    ]


def test_a_new_user_following_the_readme_gets_a_streamed_answer_from_the_devnet(tmp_path: Path) -> None:
    """Every fabstir line of the walkthrough succeeds in order (the set-up line is what made this test's
    environment): the devnet starts with its hosts, `nodes` lists them, `run` streams an answer from the
    real model and pays for it, `job status 1` shows that job completed, `devnet down` stops everything."""
    devnet_dir = tmp_path / "devnet"
    env = {
        **os.environ,
        "FABSTIR_DEVNET_DIR": str(devnet_dir),
        "FABSTIR_JOURNAL": str(tmp_path / "jobs.sqlite"),
    }
    outputs: dict[str, subprocess.CompletedProcess[str]] = {}
    try:
        for command in walkthrough()[1:]:
            # .venv/bin/fabstir is this interpreter's fabstir: the venv the set-up line creates
            done = subprocess.run(
                [sys.executable, "-m", "fabstir", *command[1:]],
                cwd=ROOT,
                env=env,
                capture_output=True,
                text=True,
                timeout=COMMAND_TIMEOUT,
                check=False,
            )
            assert done.returncode == 0, (
                f"{shlex.join(command)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
            )
            outputs[" ".join(command[1:3])] = done
    finally:
        if (devnet_dir / DEVNET_FILE).exists():
            asyncio.run(stop_devnet(devnet_dir))

    assert outputs["nodes"].stdout.count("12D3KooW") == 2
    answer = outputs["run Tell me a joke"]
    assert answer.stdout.strip()  # the streamed text
    assert re.search(r"job 1 · \d+ tokens", answer.stderr)
    status = outputs["job status"].stdout
    assert "COMPLETED" in status
    assert " ".join(answer.stdout.split())[:60] in " ".join(status.split())  # the text, as recorded
    assert not (devnet_dir / DEVNET_FILE).exists()  # down removed the devnet file


def test_job_status_in_json_matches_the_run(tmp_path: Path) -> None:
    """The CLI quickstart's `fabstir --json job status 1` after `fabstir run --mock`: the same job."""
    env = {**os.environ, "FABSTIR_JOURNAL": str(tmp_path / "jobs.sqlite")}

    def fabstir(*args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "fabstir", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        return done.stdout

    ran = json.loads(fabstir("--json", "run", "--mock", "--max-tokens", "8", "Tell me a joke"))
    shown = json.loads(fabstir("--json", "job", "status", "1"))
    assert ran["job_id"] == shown["job_id"] == 1
    assert shown["text"] == ran["text"]
    assert shown["status"] == "COMPLETED"
