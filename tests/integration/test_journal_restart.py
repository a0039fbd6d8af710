"""A client process killed mid-stream, and a new client that picks the job up from the journal: real
processes (a bootstrap peer, a host on the simulated backend, the killed client) on loopback.

The killed client journals as it streams; the new one (this test's SDK, same journal file) finds the job
unfinished with the tokens journaled so far, resumes it — the delivered tokens first, then a host
continuing the same completion — and ends with exactly the text an uninterrupted run gives.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from fabstir import JobStatus

from ._processes import HostSpec, MarketProcess, ProcessPool, production_sdk

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

MODEL = "journal-model"
PROMPT = "Tell me a long story about a journal."
MAX_TOKENS = 80
KILL_AFTER = 10
LIMIT = 45.0

#: The client that gets killed: streams one job with a journal, printing a line per token.
CLIENT = textwrap.dedent(
    """
    import asyncio, sys
    from fabstir import FabstirSDK

    async def main(bootstrap, journal, prompt, model, max_tokens):
        sdk = FabstirSDK(
            mode="production",
            p2p={"bootstrap_nodes": [bootstrap]},
            chain={"escrow": False},
            recovery={"journal_path": journal},
        )
        async with sdk:
            handle = await sdk.submit_job(
                prompt=prompt, model=model, max_tokens=int(max_tokens), stream=True
            )
            print("job", handle.job_id, flush=True)
            async for token in handle.stream:
                print("token", token.index, flush=True)

    asyncio.run(main(*sys.argv[1:6]))
    """
)


@pytest.fixture(scope="module")
def host(module_pool: ProcessPool, bootstrap: MarketProcess) -> MarketProcess:
    spec = HostSpec(name="writer", models=(MODEL,), prices={"": 2}, token_delay=0.05, max_concurrent_jobs=4)
    return module_pool.start_hosts([spec], bootstrap)[0]


async def test_a_killed_client_resumes_its_job_from_the_journal(
    tmp_path: Path, bootstrap: MarketProcess, host: MarketProcess
) -> None:
    """The client process is SIGKILLed after KILL_AFTER tokens; a new client with the same journal sees
    the job PROCESSING with at most the tokens it printed, resumes it, and the final text — journaled
    tokens then the continuation — equals the uninterrupted completion, indices contiguous; a new job
    does not reuse the journaled job's id."""
    journal = tmp_path / "jobs.sqlite3"
    script = tmp_path / "client.py"
    script.write_text(CLIENT)
    async with production_sdk(bootstrap, recovery={"failover": True}) as reference_sdk:
        ref = await reference_sdk.submit_job(prompt=PROMPT, model=MODEL, max_tokens=MAX_TOKENS)
        await reference_sdk.wait_for_job_completion(ref.job_id, timeout=LIMIT)
        reference = await reference_sdk.get_job_result(ref.job_id)

    client = await asyncio.create_subprocess_exec(
        sys.executable,
        str(script),
        bootstrap.addrs[0],
        str(journal),
        PROMPT,
        MODEL,
        str(MAX_TOKENS),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    job_id = None
    printed = 0
    try:
        async with asyncio.timeout(LIMIT):
            assert client.stdout is not None
            while line := (await client.stdout.readline()).decode():
                kind, value = line.split()
                if kind == "job":
                    job_id = int(value)
                elif kind == "token":
                    printed += 1
                    if printed == KILL_AFTER:
                        client.send_signal(signal.SIGKILL)
                        break
    finally:
        if client.returncode is None:
            client.kill()
        await client.wait()
    assert job_id is not None
    assert printed == KILL_AFTER

    async with production_sdk(bootstrap, recovery={"failover": True, "journal_path": str(journal)}) as sdk:
        info = await sdk.get_job_recovery_info(job_id)
        assert info.from_journal
        assert info.status in (JobStatus.PROCESSING, JobStatus.CLAIMED)
        assert info.can_resume
        assert 0 < info.tokens_delivered <= KILL_AFTER
        assert reference.startswith(info.text)
        async with asyncio.timeout(LIMIT):
            stream = await sdk.resume_response_stream(job_id)
            indices: list[int] = []
            texts: list[str] = []
            async for token in stream:
                indices.append(token.index)
                texts.append(token.text)
            details = await sdk.wait_for_job_completion(job_id)
        assert details.status is JobStatus.COMPLETED
        assert indices == list(range(len(indices)))
        assert "".join(texts) == reference
        fresh = await sdk.submit_job(prompt="next", model=MODEL, max_tokens=3)
        assert fresh.job_id > job_id  # the journal's ids are not reused
        await sdk.wait_for_job_completion(fresh.job_id, timeout=LIMIT)
