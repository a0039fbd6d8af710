"""The job journal (``fabstir.client._journal``): a SQLite file that keeps what a restarted client needs —
its jobs, the text each stream delivered, and the payment sessions that may still hold money."""

from __future__ import annotations

import dataclasses
import logging
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fabstir import JobStatus
from fabstir._exceptions import (
    ConfigurationError,
    InvalidStateError,
    JobNotFoundError,
    ValidationError,
)
from fabstir.client._journal import JobJournal, JournalEntry, JournalSession

UINT256_MAX = 2**256 - 1


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, now: float = 1_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def session(number: int = 1, **changes: Any) -> JournalSession:
    base = JournalSession(
        session_id=f"0x{number:064x}",
        host=f"12D3KooWHost{number}",
        payment_address="0x" + "ab" * 20,
        token="ETH",
        deposit=10**18,
        price_per_token=2_000_000_000,
        expiry=5_000.0,
        base_amount=0,
        signed_amount=0,
        settled=0,
        refunded=0,
        closed=False,
        chain_id=31337,
        contract="0x" + "cd" * 20,
        closes_session=True,
    )
    return dataclasses.replace(base, **changes)


def entry(job_id: int = 1, **changes: Any) -> JournalEntry:
    base = JournalEntry(
        job_id=job_id,
        key=f"job-{job_id}-key",
        request={"prompt": "Hello", "model": "llama-3.2-1b-instruct", "max_tokens": 64},
        status=JobStatus.PROCESSING,
        created_at=100.0,
        updated_at=100.0,
    )
    return dataclasses.replace(base, **changes)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def journal(clock: Clock) -> JobJournal:
    return JobJournal(":memory:", ttl=60.0, clock=clock)


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "journal.sqlite"


FULL = entry(
    7,
    key="0x" + "77" * 32,
    request={
        "prompt": "Écris un haïku 🌸 — 日本語",
        "max_tokens": 2**70,
        "temperature": 0.7,
        "stop": ["\n\n", "END"],
        "extra": {"nested": [1, None, True, {"k": "v"}]},
    },
    status=JobStatus.PROCESSING,
    created_at=1_700_000_000.25,
    updated_at=1_700_000_001.5,
    host="12D3KooWHost1",
    text="Cherry 🌸 blossoms\x00 fall — 桜",
    tokens=12,
    error="host vanished",
    error_code="transport",
    sessions=(
        session(1, deposit=UINT256_MAX, price_per_token=2**65 + 3, signed_amount=2**200, settled=2**64 + 1),
        session(2, base_amount=2**80, refunded=2**64, closed=True, closes_session=False, chain_id=2**40),
    ),
    client_address="0x" + "ef" * 20,
)


# -- round trips --------------------------------------------------------------------------------------------


def test_every_field_round_trips(journal: JobJournal) -> None:
    """A job with every field set — amounts above 2**64 up to the uint256 maximum, unicode and NUL in the
    text, nested JSON in the request, two sessions — comes back equal from get() and jobs()."""
    journal.add_job(FULL)
    assert journal.get(7) == FULL
    assert journal.jobs() == [FULL]


def test_reopening_the_file_gives_the_same_data(path: Path, clock: Clock) -> None:
    """After close(), a new JobJournal on the same file (creating its parent directories the first time)
    reads back exactly what was written, progress and session updates included."""
    with JobJournal(path, clock=clock) as first:
        first.add_job(FULL)
        first.add_job(entry(8, status=JobStatus.COMPLETED))
        first.record_progress(7, FULL.text + " more", 14)
        first.update_session(7, FULL.sessions[0].session_id, signed_amount=2**201)
        before = first.jobs()
    assert path.exists()
    with JobJournal(path, clock=clock) as second:
        assert second.jobs() == before
        assert second.get(7) is not None
        assert second.next_job_id() == 9


def test_missing_job_reads_as_none(journal: JobJournal) -> None:
    """get() of an id the journal never saw is None; jobs() of an empty journal is empty."""
    assert journal.get(3) is None
    assert journal.jobs() == []


def test_status_is_stored_as_the_job_status_value(journal: JobJournal) -> None:
    """A status given in lower case is stored as the JobStatus value (which compares equal to the enum)."""
    journal.add_job(entry(1, status="processing"))
    journal.update_job(1, status="completed")
    stored = journal.get(1)
    assert stored is not None
    assert stored.status == JobStatus.COMPLETED == "COMPLETED"


# -- add_job ------------------------------------------------------------------------------------------------


def test_adding_an_existing_job_id_is_refused_and_keeps_the_first(journal: JobJournal) -> None:
    """add_job never replaces: a second entry with the same id is InvalidStateError and the stored job (its
    progress and sessions) is untouched."""
    journal.add_job(FULL)
    with pytest.raises(InvalidStateError):
        journal.add_job(entry(7))
    assert journal.get(7) == FULL


@pytest.mark.parametrize(
    "bad",
    [
        entry(0),
        entry(-1),
        entry(1, status="RUNNING"),
        entry(1, tokens=-1),
        entry(1, created_at=float("nan")),
        entry(1, updated_at=float("inf")),
        entry(1, request={"stop": ("a", "b")}),  # a tuple would read back as a list
        entry(1, request={1: "int key"}),
        entry(1, request={"x": object()}),
        entry(1, request={"t": float("nan")}),
        entry(1, sessions=(session(1, deposit=-1),)),
        entry(1, sessions=(session(1, signed_amount=UINT256_MAX + 1),)),
        entry(1, sessions=(session(1, session_id="not-hex"),)),
        entry(1, sessions=(session(1, closed=1),)),
        entry(1, sessions=(session(1, expiry=float("nan")),)),
        entry(1, host=42),
    ],
)
def test_invalid_entries_are_validation_errors_and_store_nothing(
    journal: JobJournal, bad: JournalEntry
) -> None:
    """Bad arguments raise ValidationError (a ValueError) before anything is written."""
    with pytest.raises(ValidationError):
        journal.add_job(bad)
    assert journal.jobs() == []


def test_a_job_cannot_list_the_same_session_twice(journal: JobJournal) -> None:
    """An entry naming one session id twice is refused and nothing is stored."""
    with pytest.raises(InvalidStateError):
        journal.add_job(entry(1, sessions=(session(1), session(1))))
    assert journal.get(1) is None


# -- update_job ---------------------------------------------------------------------------------------------


def test_update_job_changes_only_the_given_fields(journal: JobJournal, clock: Clock) -> None:
    """Each update_job call changes the fields it names, leaves the others, and stamps updated_at."""
    journal.add_job(entry(1, host="12D3KooWOld"))
    clock.now = 2_000.0
    journal.update_job(1, status=JobStatus.FAILED, error="boom", error_code="host_error")
    assert journal.get(1) == entry(
        1, host="12D3KooWOld", status="FAILED", error="boom", error_code="host_error", updated_at=2_000.0
    )
    clock.now = 2_500.0
    journal.update_job(1, host="12D3KooWNew")
    assert journal.get(1) == entry(
        1, host="12D3KooWNew", status="FAILED", error="boom", error_code="host_error", updated_at=2_500.0
    )


def test_updating_an_unknown_job_is_job_not_found(journal: JobJournal) -> None:
    """Every per-job call on an id the journal does not hold raises JobNotFoundError (a KeyError)."""
    calls: list[Callable[[], None]] = [
        lambda: journal.update_job(9, status="FAILED"),
        lambda: journal.record_progress(9, "x", 1),
        lambda: journal.add_session(9, session()),
        lambda: journal.update_session(9, session().session_id, closed=True),
    ]
    for call in calls:
        with pytest.raises(JobNotFoundError) as info:
            call()
        assert info.value.job_id == 9


def test_update_job_rejects_bad_values(journal: JobJournal) -> None:
    """An unknown status or a non-positive job id is a ValidationError and changes nothing."""
    journal.add_job(entry(1))
    with pytest.raises(ValidationError):
        journal.update_job(1, status="DONE")
    with pytest.raises(ValidationError):
        journal.update_job(0, status="FAILED")
    assert journal.get(1) == entry(1)


# -- progress -----------------------------------------------------------------------------------------------


def test_progress_overwrites_with_the_whole_text(journal: JobJournal, clock: Clock) -> None:
    """record_progress stores the whole text so far and the token count, and stamps updated_at."""
    journal.add_job(entry(1))
    journal.record_progress(1, "Hel", 1)
    clock.now = 1_001.0
    journal.record_progress(1, "Hello, wörld 🌍", 4)
    stored = journal.get(1)
    assert stored is not None
    assert (stored.text, stored.tokens, stored.updated_at) == ("Hello, wörld 🌍", 4, 1_001.0)


def test_progress_never_goes_backwards(journal: JobJournal) -> None:
    """Fewer tokens than stored, or a text that drops delivered characters, is InvalidStateError and the
    stored progress stays; the same progress again is accepted."""
    journal.add_job(entry(1))
    journal.record_progress(1, "one two three", 3)
    with pytest.raises(InvalidStateError):
        journal.record_progress(1, "one two three four", 2)
    with pytest.raises(InvalidStateError):
        journal.record_progress(1, "one two", 5)
    with pytest.raises(InvalidStateError):
        journal.record_progress(1, "", 3)
    with pytest.raises(ValidationError):
        journal.record_progress(1, "one two three", -1)
    journal.record_progress(1, "one two three", 3)
    stored = journal.get(1)
    assert stored is not None
    assert (stored.text, stored.tokens) == ("one two three", 3)


# -- sessions -----------------------------------------------------------------------------------------------


def test_sessions_keep_the_order_they_were_added(journal: JobJournal) -> None:
    """A job that failed over lists its sessions in the order added (not sorted by id)."""
    journal.add_job(entry(1, sessions=(session(5),)))
    journal.add_session(1, session(2))
    journal.add_session(1, session(9))
    stored = journal.get(1)
    assert stored is not None
    assert stored.sessions == (session(5), session(2), session(9))


def test_update_session_changes_only_the_given_fields(journal: JobJournal, clock: Clock) -> None:
    """update_session changes the named session's named fields (uint256 amounts included), leaves the
    job's other sessions alone, and stamps the job's updated_at."""
    journal.add_job(entry(1, sessions=(session(1), session(2))))
    clock.now = 3_000.0
    journal.update_session(1, session(2).session_id, signed_amount=2**255, settled=2**100)
    journal.update_session(1, session(2).session_id, refunded=UINT256_MAX, closed=True)
    stored = journal.get(1)
    assert stored is not None
    assert stored.sessions == (
        session(1),
        session(2, signed_amount=2**255, settled=2**100, refunded=UINT256_MAX, closed=True),
    )
    assert stored.updated_at == 3_000.0


def test_session_errors(journal: JobJournal) -> None:
    """Adding a session the job already has is InvalidStateError; updating a session the job does not have,
    or with a negative or too large amount, is ValidationError; the signed amount cannot go back."""
    journal.add_job(entry(1, sessions=(session(1, signed_amount=500),)))
    sid = session(1).session_id
    with pytest.raises(InvalidStateError):
        journal.add_session(1, session(1, deposit=5))
    with pytest.raises(ValidationError):
        journal.update_session(1, session(2).session_id, closed=True)
    with pytest.raises(ValidationError):
        journal.update_session(1, sid, settled=-1)
    with pytest.raises(ValidationError):
        journal.update_session(1, sid, refunded=UINT256_MAX + 1)
    with pytest.raises(InvalidStateError):
        journal.update_session(1, sid, signed_amount=499)
    stored = journal.get(1)
    assert stored is not None
    assert stored.sessions == (session(1, signed_amount=500),)


def test_one_session_may_serve_several_jobs(journal: JobJournal) -> None:
    """A reused session appears under each job that used it, each with its own base amount."""
    journal.add_job(entry(1, sessions=(session(1, signed_amount=100),)))
    journal.add_job(entry(2, sessions=(session(1, base_amount=100, signed_amount=250),)))
    first, second = journal.get(1), journal.get(2)
    assert first is not None
    assert second is not None
    assert first.sessions[0].base_amount == 0
    assert second.sessions[0].base_amount == 100


# -- queries ------------------------------------------------------------------------------------------------


def test_unfinished_lists_jobs_not_in_a_terminal_state(journal: JobJournal) -> None:
    """unfinished() lists, by id, every job whose status is not terminal (COMPLETED, FAILED, CANCELLED,
    DISPUTED)."""
    for job_id, status in enumerate(JobStatus, start=1):
        journal.add_job(entry(job_id, status=status))
    open_ids = [e.job_id for e in journal.unfinished()]
    assert open_ids == [i for i, s in enumerate(JobStatus, start=1) if not s.is_terminal]
    assert [e.status for e in journal.unfinished()] == ["POSTED", "CLAIMED", "PROCESSING"]


def test_reclaimable_lists_expired_open_sessions(journal: JobJournal, clock: Clock) -> None:
    """reclaimable(now) gives (job id, session) for sessions not closed whose expiry is before now, in job
    order then session order; without an argument it asks the clock."""
    journal.add_job(entry(1, sessions=(session(1, expiry=900.0), session(2, expiry=2_000.0))))
    journal.add_job(entry(2, sessions=(session(3, expiry=500.0, closed=True), session(4, expiry=999.0))))
    journal.add_job(entry(3, status=JobStatus.COMPLETED, sessions=(session(5, expiry=100.0),)))
    assert journal.reclaimable(1_000.0) == [
        (1, session(1, expiry=900.0)),
        (2, session(4, expiry=999.0)),
        (3, session(5, expiry=100.0)),
    ]
    assert journal.reclaimable(900.0) == [(3, session(5, expiry=100.0))]  # not yet passed at its expiry
    clock.now = 2_000.5
    assert [(j, s.session_id) for j, s in journal.reclaimable()] == [
        (1, session(1).session_id),
        (1, session(2).session_id),
        (2, session(4).session_id),
        (3, session(5).session_id),
    ]


def test_a_shared_session_is_reclaimed_once_from_its_latest_receipt(journal: JobJournal) -> None:
    """A session carried by several jobs is listed once, with the row holding the highest signed amount; once
    any job's row says it is closed, it is not listed at all."""
    journal.add_job(entry(1, sessions=(session(1, expiry=10.0, signed_amount=100),)))
    journal.add_job(entry(2, sessions=(session(1, expiry=10.0, base_amount=100, signed_amount=300),)))
    journal.add_job(entry(3, sessions=(session(1, expiry=10.0, base_amount=300, signed_amount=300),)))
    assert journal.reclaimable(20.0) == [(3, session(1, expiry=10.0, base_amount=300, signed_amount=300))]
    # a later job whose row has no receipt yet does not hide the amount already signed
    journal.add_job(entry(4, sessions=(session(1, expiry=10.0, base_amount=300, signed_amount=0),)))
    assert journal.reclaimable(20.0) == [(3, session(1, expiry=10.0, base_amount=300, signed_amount=300))]
    journal.update_session(1, session(1).session_id, closed=True)
    assert journal.reclaimable(20.0) == []


def test_next_job_id_never_reuses_an_id(path: Path, clock: Clock) -> None:
    """next_job_id is 1 for an empty journal, then one more than the highest id ever added — also after that
    job was pruned and after the file is reopened."""
    with JobJournal(path, ttl=10.0, clock=clock) as journal:
        assert journal.next_job_id() == 1
        journal.add_job(entry(3))
        journal.add_job(entry(1))
        assert journal.next_job_id() == 4
        journal.update_job(3, status=JobStatus.COMPLETED)
        clock.now += 11.0
        assert journal.prune() == 1
        assert [e.job_id for e in journal.jobs()] == [1]
        assert journal.next_job_id() == 4
    with JobJournal(path, clock=clock) as reopened:
        assert reopened.next_job_id() == 4


# -- prune --------------------------------------------------------------------------------------------------


def test_prune_deletes_only_old_finished_jobs_without_money(clock: Clock) -> None:
    """prune() deletes jobs that ended more than ttl seconds ago and whose sessions are all closed, and keeps
    recent ones, unfinished ones however old, and finished ones that still reference an open session."""
    journal = JobJournal(":memory:", ttl=100.0, clock=clock)
    journal.add_job(entry(1, status=JobStatus.PROCESSING))  # unfinished
    journal.add_job(
        entry(2, status=JobStatus.PROCESSING, sessions=(session(2, closed=True),))
    )  # old, no money
    journal.add_job(entry(3, status=JobStatus.PROCESSING, sessions=(session(3),)))  # holds money
    journal.add_job(entry(4, status=JobStatus.PROCESSING))  # no session at all
    journal.add_job(entry(5, status=JobStatus.PROCESSING))  # ends later
    clock.now = 1_000.0
    for job_id in (2, 3, 4):
        journal.update_job(job_id, status=JobStatus.COMPLETED)
    clock.now = 1_050.0
    journal.update_job(5, status=JobStatus.FAILED)
    clock.now = 1_100.0
    assert journal.prune() == 0  # exactly ttl since the end is not more than ttl
    clock.now = 1_120.0
    assert journal.prune() == 2
    assert [e.job_id for e in journal.jobs()] == [1, 3, 5]
    journal.update_session(3, session(3).session_id, refunded=10**18, closed=True)
    clock.now = 1_151.0
    assert journal.prune() == 2
    assert [e.job_id for e in journal.jobs()] == [1]


def test_prune_counts_the_age_from_the_end_not_from_creation(clock: Clock) -> None:
    """A long job that just ended is kept; moving from one terminal status to another does not restart the
    clock; a job that leaves the terminal states is no longer prunable."""
    journal = JobJournal(":memory:", ttl=100.0, clock=clock)
    journal.add_job(entry(1, created_at=0.0, updated_at=0.0))
    journal.add_job(entry(2, created_at=0.0, updated_at=0.0))
    clock.now = 10_000.0
    journal.update_job(1, status=JobStatus.FAILED)
    journal.update_job(2, status=JobStatus.FAILED)
    clock.now = 10_050.0
    assert journal.prune() == 0
    journal.update_job(1, status=JobStatus.CANCELLED)
    journal.update_job(2, status=JobStatus.PROCESSING)
    clock.now = 10_101.0
    assert journal.prune() == 1
    assert [e.job_id for e in journal.jobs()] == [2]


def test_prune_treats_a_session_closed_in_another_job_as_closed(clock: Clock) -> None:
    """A reused session closed after a later job (recorded on that job's row) no longer keeps the earlier,
    finished job alive."""
    journal = JobJournal(":memory:", ttl=0.0, clock=clock)
    journal.add_job(entry(1, status=JobStatus.COMPLETED, sessions=(session(1),)))
    journal.add_job(entry(2, status=JobStatus.PROCESSING, sessions=(session(1, base_amount=5),)))
    clock.now += 1.0
    assert journal.prune() == 0
    journal.update_session(2, session(1).session_id, closed=True)
    assert journal.prune() == 1
    assert [e.job_id for e in journal.jobs()] == [2]


# -- damaged files and rows ---------------------------------------------------------------------------------


def test_a_file_that_is_not_a_database_is_a_configuration_error(path: Path) -> None:
    """Garbage bytes at the journal path raise ConfigurationError naming the path; the file is not touched."""
    path.parent.mkdir(parents=True)
    garbage = b"this is not sqlite" * 300
    path.write_bytes(garbage)
    with pytest.raises(ConfigurationError, match="not usable") as info:
        JobJournal(path)
    assert str(path) in str(info.value)
    assert info.value.context["path"] == str(path)
    assert path.read_bytes() == garbage


def test_another_sqlite_database_is_refused(path: Path) -> None:
    """A SQLite database of some other program at the path is not taken over: ConfigurationError, and its
    tables are left as they were."""
    path.parent.mkdir(parents=True)
    with sqlite3.connect(path) as other:
        other.execute("CREATE TABLE notes (body TEXT)")
    with pytest.raises(ConfigurationError, match="not a job journal"):
        JobJournal(path)
    with sqlite3.connect(path) as other:
        tables = [name for (name,) in other.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
    assert tables == ["notes"]


def test_a_journal_from_a_newer_sdk_is_refused(path: Path) -> None:
    """A journal whose schema version is higher than this SDK's raises ConfigurationError naming the path."""
    JobJournal(path).close()
    with sqlite3.connect(path) as raw:
        raw.execute("PRAGMA user_version = 99")
    with pytest.raises(ConfigurationError, match="newer") as info:
        JobJournal(path)
    assert str(path) in info.value.message


def test_a_corrupted_journal_is_a_configuration_error(path: Path) -> None:
    """A journal whose pages were overwritten raises ConfigurationError at open (no sqlite3 error leaks)."""
    with JobJournal(path) as journal:
        for job_id in range(1, 60):
            journal.add_job(entry(job_id, text="x" * 500))
    with sqlite3.connect(path) as raw:  # fold the WAL into the main file so the damage hits the data
        raw.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    data = bytearray(path.read_bytes())
    page = 4096
    assert len(data) > 4 * page
    data[2 * page : 4 * page] = b"\xff" * (2 * page)
    path.write_bytes(bytes(data))
    with pytest.raises(ConfigurationError) as info:
        JobJournal(path)
    assert str(path) in info.value.message


def _edit(path: Path, sql: str, *params: object) -> None:
    with sqlite3.connect(path) as raw:
        raw.execute(sql, params)


@pytest.mark.parametrize(
    ("sql", "params"),
    [
        ("UPDATE jobs SET request = ? WHERE job_id = 2", ("{not json",)),
        ("UPDATE jobs SET request = ? WHERE job_id = 2", ("[1, 2]",)),
        ("UPDATE jobs SET status = ? WHERE job_id = 2", ("RUNNING",)),
        ("UPDATE jobs SET tokens = ? WHERE job_id = 2", ("many",)),
        ("UPDATE sessions SET deposit = ? WHERE job_id = 2", ("-5",)),
        ("UPDATE sessions SET signed_amount = ? WHERE job_id = 2", (str(2**256),)),
        ("UPDATE sessions SET closed = ? WHERE job_id = 2", (7,)),
    ],
)
def test_a_hand_edited_row_is_skipped_with_a_warning(
    path: Path, clock: Clock, caplog: pytest.LogCaptureFixture, sql: str, params: tuple[object, ...]
) -> None:
    """A row that no longer decodes is skipped (with a warning naming the job) by jobs() and unfinished(), the
    other jobs are still listed, and get() of it raises ConfigurationError for that job."""
    with JobJournal(path, clock=clock) as journal:
        for job_id in (1, 2, 3):
            journal.add_job(entry(job_id, sessions=(session(job_id),)))
    _edit(path, sql, *params)
    with JobJournal(path, clock=clock) as journal, caplog.at_level(logging.WARNING, logger="fabstir.client"):
        assert [e.job_id for e in journal.jobs()] == [1, 3]
        assert [e.job_id for e in journal.unfinished()] == [1, 3]
        assert any("job 2" in r.getMessage() for r in caplog.records)
        with pytest.raises(ConfigurationError) as info:
            journal.get(2)
        assert info.value.job_id == 2
        assert journal.get(1) == entry(1, sessions=(session(1),))


def test_a_damaged_session_row_does_not_hide_other_money(path: Path, clock: Clock) -> None:
    """reclaimable() skips a session row that does not decode and still lists every other expired session."""
    with JobJournal(path, clock=clock) as journal:
        journal.add_job(entry(1, sessions=(session(1, expiry=1.0),)))
        journal.add_job(entry(2, sessions=(session(2, expiry=1.0), session(3, expiry=1.0))))
    _edit(path, "UPDATE sessions SET expiry = 'soon' WHERE session_id = ?", session(2).session_id)
    with JobJournal(path, clock=clock) as journal:
        assert [(j, s.session_id) for j, s in journal.reclaimable(10.0)] == [
            (1, session(1).session_id),
            (2, session(3).session_id),
        ]


# -- lifecycle, threads and processes -----------------------------------------------------------------------


def test_a_closed_journal_refuses_calls(path: Path) -> None:
    """After close() (which may be called twice) every call raises InvalidStateError."""
    journal = JobJournal(path)
    journal.close()
    journal.close()
    with pytest.raises(InvalidStateError):
        journal.jobs()
    with pytest.raises(InvalidStateError):
        journal.add_job(entry(1))


def test_a_bad_ttl_is_refused() -> None:
    """A negative or non-finite ttl is a ValidationError."""
    for ttl in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ValidationError):
            JobJournal(":memory:", ttl=ttl)


def test_two_instances_on_one_file_see_each_other(path: Path, clock: Clock) -> None:
    """Two JobJournal objects on one file (as two processes would have): each sees the other's writes, and
    the progress rule holds across them — the second cannot set back what the first recorded."""
    with JobJournal(path, clock=clock) as a, JobJournal(path, clock=clock) as b:
        a.add_job(entry(1))
        b.add_job(entry(2))
        with pytest.raises(InvalidStateError):
            b.add_job(entry(1))
        a.record_progress(2, "from a", 2)
        with pytest.raises(InvalidStateError):
            b.record_progress(2, "fr", 1)
        b.add_session(1, session(1))
        a.update_session(1, session(1).session_id, signed_amount=42)
        assert a.jobs() == b.jobs()
        assert [e.job_id for e in b.jobs()] == [1, 2]
        assert b.next_job_id() == 3


def test_concurrent_writers_on_one_file_lose_nothing(path: Path, clock: Clock) -> None:
    """Threads writing through two instances on one file at once: every job and every progress step lands,
    and the file stays readable."""
    journals = [JobJournal(path, clock=clock), JobJournal(path, clock=clock)]
    errors: list[BaseException] = []

    def work(worker: int) -> None:
        journal = journals[worker % 2]
        try:
            for n in range(20):
                job_id = worker * 100 + n + 1
                journal.add_job(entry(job_id, sessions=(session(job_id),)))
                journal.record_progress(job_id, "t" * n, n)
                journal.update_job(job_id, status=JobStatus.COMPLETED)
                journal.update_session(job_id, session(job_id).session_id, closed=True)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(w,)) for w in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    for journal in journals:
        stored = journal.jobs()
        assert len(stored) == 120
        assert all(e.status == "COMPLETED" and e.tokens == len(e.text) for e in stored)
        assert all(e.sessions[0].closed for e in stored)
        journal.close()


# -- property: the journal behaves like a dict ---------------------------------------------------------------

JOB_IDS = st.integers(1, 4)
STATUSES = st.sampled_from(list(JobStatus))
TEXTS = st.text(max_size=8)
AMOUNTS = st.integers(0, UINT256_MAX)
OPTIONAL_TEXT = st.none() | TEXTS

OPS = st.one_of(
    st.tuples(st.just("add"), JOB_IDS, STATUSES, TEXTS, st.integers(0, 5)),
    st.tuples(st.just("progress"), JOB_IDS, st.booleans(), TEXTS, st.integers(0, 12)),
    st.tuples(st.just("update"), JOB_IDS, st.none() | STATUSES, OPTIONAL_TEXT, OPTIONAL_TEXT, OPTIONAL_TEXT),
    st.tuples(st.just("session"), JOB_IDS, st.integers(1, 3), AMOUNTS, AMOUNTS),
    st.tuples(st.just("sign"), JOB_IDS, st.integers(1, 3), AMOUNTS, st.none() | st.booleans()),
)


def apply(journal: JobJournal, model: dict[int, JournalEntry], op: tuple[Any, ...], now: float) -> None:
    """Run one operation on the journal and on the dict model; the journal must raise exactly when the model
    says the operation is not allowed."""
    kind, job_id = op[0], op[1]
    current = model.get(job_id)
    if kind == "add":
        _, _, status, text, tokens = op
        new = entry(job_id, status=status, text=text, tokens=tokens, created_at=now, updated_at=now)
        if current is not None:
            with pytest.raises(InvalidStateError):
                journal.add_job(new)
        else:
            journal.add_job(new)
            model[job_id] = new
        return
    if current is None:
        with pytest.raises(JobNotFoundError):
            journal.update_job(job_id, status=op[2] if kind == "update" else None)
        return
    if kind == "progress":
        _, _, keep, suffix, tokens = op
        text = (current.text if keep else "") + suffix
        if tokens < current.tokens or not text.startswith(current.text):
            with pytest.raises(InvalidStateError):
                journal.record_progress(job_id, text, tokens)
        else:
            journal.record_progress(job_id, text, tokens)
            model[job_id] = dataclasses.replace(current, text=text, tokens=tokens, updated_at=now)
    elif kind == "update":
        _, _, status, host, error, error_code = op
        journal.update_job(job_id, status=status, host=host, error=error, error_code=error_code)
        changes = {"status": status, "host": host, "error": error, "error_code": error_code}
        model[job_id] = dataclasses.replace(
            current, updated_at=now, **{k: v for k, v in changes.items() if v is not None}
        )
    elif kind == "session":
        _, _, number, deposit, signed = op
        new_session = session(number, deposit=deposit, signed_amount=signed)
        if any(s.session_id == new_session.session_id for s in current.sessions):
            with pytest.raises(InvalidStateError):
                journal.add_session(job_id, new_session)
        else:
            journal.add_session(job_id, new_session)
            model[job_id] = dataclasses.replace(
                current, sessions=(*current.sessions, new_session), updated_at=now
            )
    else:  # sign
        _, _, number, signed, closed = op
        sid = session(number).session_id
        index = next((i for i, s in enumerate(current.sessions) if s.session_id == sid), None)
        if index is None:
            with pytest.raises(ValidationError):
                journal.update_session(job_id, sid, signed_amount=signed)
        elif signed < current.sessions[index].signed_amount:
            with pytest.raises(InvalidStateError):
                journal.update_session(job_id, sid, signed_amount=signed, closed=closed)
        else:
            journal.update_session(job_id, sid, signed_amount=signed, closed=closed)
            old = current.sessions[index]
            updated = dataclasses.replace(
                old, signed_amount=signed, closed=old.closed if closed is None else closed
            )
            sessions = (*current.sessions[:index], updated, *current.sessions[index + 1 :])
            model[job_id] = dataclasses.replace(current, sessions=sessions, updated_at=now)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(OPS, max_size=30))
def test_journal_matches_a_dict_model(ops: list[tuple[Any, ...]]) -> None:
    """After any sequence of add / progress / update / add-session / update-session calls, get() of every id
    equals the model, jobs() is the model in id order, and next_job_id is one past the highest id added."""
    clock = Clock(0.0)
    model: dict[int, JournalEntry] = {}
    with JobJournal(":memory:", clock=clock) as journal:
        for step, op in enumerate(ops):
            clock.now = float(step)
            apply(journal, model, op, clock.now)
            for job_id in range(1, 5):
                assert journal.get(job_id) == model.get(job_id)
        assert journal.jobs() == [model[k] for k in sorted(model)]
        assert journal.unfinished() == [
            model[k] for k in sorted(model) if not JobStatus(model[k].status).is_terminal
        ]
        assert journal.next_job_id() == max(model, default=0) + 1


def test_token_lengths_round_trip_and_only_grow(journal: JobJournal) -> None:
    """Token lengths are stored with the text (so a restarted client gives back the same tokens), must
    describe the text exactly, and may only be extended like the text itself."""
    journal.add_job(entry(3))
    journal.record_progress(3, "Hello, world", 3, [5, 1, 6])
    stored = journal.get(3)
    assert stored is not None
    assert stored.token_lengths == (5, 1, 6)
    with pytest.raises(ValidationError):
        journal.record_progress(3, "Hello, world!", 4, [5, 1, 6, 2])  # sums to 14, text has 13
    with pytest.raises(InvalidStateError):
        journal.record_progress(3, "Hello, world!", 4, [6, 0, 6, 1])  # rewrites the first tokens
    journal.record_progress(3, "Hello, world!", 4, [5, 1, 6, 1])
    stored = journal.get(3)
    assert stored is not None
    assert stored.token_lengths == (5, 1, 6, 1)
    assert stored.text == "Hello, world!"
