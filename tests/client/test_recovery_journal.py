"""The job journal and persisted reliability, through the SDK (mock mode): a restarted client finds its
jobs, reads their text and sessions, resumes an unfinished one where it stopped, never reuses a job id,
and keeps what it learnt about hosts.

A "restart" is a second SDK on a fresh mock market with the same seed (same hosts, same client key)
and the same journal file; an unfinished job is one whose journal row says PROCESSING — as a client
killed mid-stream leaves it (tests/integration/test_journal_restart.py does that with a real process).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from fabstir import (
    ConfigurationError,
    FabstirSDK,
    JobNotFoundError,
    JobStatus,
    MockConfig,
    MockHostSpec,
)
from fabstir.client._journal import JobJournal, JournalEntry

MODEL = "llama-3.2-1b-instruct"
PROMPT = "a journaled story"
MAX_TOKENS = 30


def _sdk(tmp_path: Path, *hosts: MockHostSpec, **recovery: Any) -> FabstirSDK:
    hosts = hosts or (MockHostSpec(name="one", price_per_token=2),)
    return FabstirSDK(
        mock=MockConfig(seed=11, hosts=hosts),
        recovery={"journal_path": str(tmp_path / "jobs.sqlite3"), **recovery},
    )


async def _completed(tmp_path: Path) -> tuple[int, list[tuple[int, str]]]:
    async with _sdk(tmp_path) as sdk:
        handle = await sdk.submit_job(prompt=PROMPT, model=MODEL, max_tokens=MAX_TOKENS, stream=True)
        assert handle.stream is not None
        tokens = [(t.index, t.text) async for t in handle.stream]
        await sdk.approve_job_payment(handle.job_id)
        return handle.job_id, tokens


async def test_a_restarted_client_finds_a_finished_job_and_its_tokens(tmp_path: Path) -> None:
    """After a restart, get_job_recovery_info reads the finished job from the journal (status, text,
    its session with the amount signed), and resume_response_stream gives back the very same tokens."""
    job_id, tokens = await _completed(tmp_path)
    async with _sdk(tmp_path) as sdk:
        info = await sdk.get_job_recovery_info(job_id)
        assert info.from_journal
        assert info.status is JobStatus.COMPLETED
        assert info.text == "".join(text for _, text in tokens)
        assert info.tokens_delivered == len(tokens)
        assert not info.can_resume
        (session,) = info.sessions
        assert session.signed_amount == len(tokens) * 2
        assert session.closed
        stream = await sdk.resume_response_stream(job_id)
        assert [(t.index, t.text) async for t in stream] == tokens
        stream = await sdk.resume_response_stream(job_id, resume_from=5)
        assert [(t.index, t.text) async for t in stream] == tokens[5:]


async def test_a_restarted_client_never_reuses_a_job_id(tmp_path: Path) -> None:
    """Job ids continue after the journal's highest: a new job never takes an id the journal holds."""
    job_id, _ = await _completed(tmp_path)
    async with _sdk(tmp_path) as sdk:
        handle = await sdk.submit_job(prompt="next", model=MODEL, max_tokens=4)
        assert handle.job_id > job_id
        await sdk.wait_for_job_completion(handle.job_id)


async def test_an_unfinished_job_resumes_where_it_stopped(tmp_path: Path) -> None:
    """A journaled job left PROCESSING after 9 tokens resumes on a host that continues the same
    completion: the stream gives the 9 journaled tokens, then the rest, indices contiguous, and the
    whole text equals the uninterrupted completion."""
    _, reference = await _completed(tmp_path / "reference")
    journal = JobJournal(tmp_path / "jobs.sqlite3")
    head = reference[:9]
    now = time.time()
    journal.add_job(
        JournalEntry(
            job_id=7,
            key="ab" * 16,
            request={"prompt": PROMPT, "model": MODEL, "max_tokens": MAX_TOKENS},
            status="PROCESSING",
            created_at=now,
            updated_at=now,
        )
    )
    texts = [text for _, text in head]
    journal.record_progress(7, "".join(texts), len(texts), [len(t) for t in texts])
    journal.close()
    async with _sdk(tmp_path) as sdk:
        info = await sdk.get_job_recovery_info(7)
        assert info.can_resume
        assert info.tokens_delivered == 9
        stream = await sdk.resume_response_stream(7)
        resumed = [(t.index, t.text) async for t in stream]
        details = await sdk.wait_for_job_completion(7)
        assert resumed == reference
        assert details.status is JobStatus.COMPLETED
    journal = JobJournal(tmp_path / "jobs.sqlite3")
    entry = journal.get(7)
    journal.close()
    assert entry is not None
    assert entry.status == "COMPLETED"
    assert entry.text == "".join(text for _, text in reference)
    assert len(entry.sessions) == 1  # the session of the host that finished it


async def test_an_unknown_job_is_a_typed_error(tmp_path: Path) -> None:
    """Neither in memory nor in the journal: JobNotFoundError, from both recovery calls."""
    async with _sdk(tmp_path) as sdk:
        with pytest.raises(JobNotFoundError):
            await sdk.get_job_recovery_info(404)
        with pytest.raises(JobNotFoundError):
            await sdk.resume_response_stream(404)


async def test_a_journal_path_that_cannot_be_a_journal_fails_connect_typed(tmp_path: Path) -> None:
    """A journal path naming a file that is not a journal makes connect raise ConfigurationError (and
    the SDK stays disconnected)."""
    bogus = tmp_path / "jobs.sqlite3"
    bogus.write_bytes(b"this is not a database" * 100)
    sdk = _sdk(tmp_path)
    with pytest.raises(ConfigurationError):
        await sdk.connect()
    assert not sdk.is_connected


async def test_reliability_survives_a_restart(tmp_path: Path) -> None:
    """A host that failed a job is less reliable for the next run of the client too: the statistics are
    saved to reliability_path and loaded at connect."""
    path = str(tmp_path / "reliability.json")
    hosts = (MockHostSpec(name="flaky", drop_at_token=2, price_per_token=1),)
    async with _sdk(tmp_path, *hosts, reliability_path=path, failover=False) as sdk:
        handle = await sdk.submit_job(prompt=PROMPT, model=MODEL, max_tokens=MAX_TOKENS)
        with pytest.raises(Exception):  # noqa: B017, PT011 - any typed failure; checked below
            await sdk.wait_for_job_completion(handle.job_id)
        (host,) = [n.peer_id for n in await sdk.discover_nodes(model=MODEL)]
        before = sdk.get_node_reliability(host)
    async with _sdk(tmp_path, *hosts, reliability_path=path) as sdk:
        assert sdk.get_node_reliability(host) == pytest.approx(before, rel=1e-3)
        assert before < 0.99


async def test_transition_mode_keeps_jobs_subscriptions_and_reliability(tmp_path: Path) -> None:
    """Switching modes (here mock → mock with another market, the same path as mock ↔ production) keeps
    the finished jobs, event callbacks and reliability statistics, and is refused while a job runs;
    a bad target mode is a ConfigurationError and changes nothing."""
    from fabstir import EventName, InvalidStateError

    hosts = (MockHostSpec(name="flaky", drop_at_token=2, price_per_token=1),)
    async with _sdk(tmp_path, *hosts, failover=False) as sdk:
        seen: list[str] = []
        sdk.on(EventName.CONNECTED, lambda e: seen.append(str(e.data["mode"])))
        handle = await sdk.submit_job(prompt=PROMPT, model=MODEL, max_tokens=MAX_TOKENS)
        with pytest.raises(Exception):  # noqa: B017, PT011 - the flaky host fails it; checked below
            await sdk.wait_for_job_completion(handle.job_id)
        (host,) = [n.peer_id for n in await sdk.discover_nodes(model=MODEL)]
        slow = await sdk.submit_job(prompt=PROMPT, model=MODEL, max_tokens=MAX_TOKENS)
        if not (await sdk.get_job_status(slow.job_id)).is_terminal:
            with pytest.raises(InvalidStateError):
                await sdk.transition_mode("mock")
        with pytest.raises(Exception):  # noqa: B017, PT011
            await sdk.wait_for_job_completion(slow.job_id)
        reliability = sdk.get_node_reliability(host)
        with pytest.raises(ConfigurationError):
            await sdk.transition_mode("staging")
        assert sdk.is_connected
        await sdk.transition_mode("mock", mock={"hosts": (MockHostSpec(name="steady"),)})
        assert sdk.is_connected
        assert seen == ["mock"]
        assert await sdk.get_job_status(handle.job_id) is JobStatus.FAILED
        assert sdk.get_node_reliability(host) == pytest.approx(reliability, rel=1e-4)  # (decay)
        done = await sdk.submit_job(prompt=PROMPT, model=MODEL, max_tokens=5)
        assert (await sdk.wait_for_job_completion(done.job_id)).status is JobStatus.COMPLETED
        assert done.job_id > slow.job_id
