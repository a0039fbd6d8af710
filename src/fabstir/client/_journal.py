"""The job journal: what a restarted client needs to find its jobs, resume their streams and reclaim money.

A small SQLite file (stdlib ``sqlite3``), written as the client goes. Every call is one short transaction,
so a crash loses at most the call in flight and two processes on the same file serialise instead of
overwriting each other (``BEGIN IMMEDIATE`` for writes, WAL so readers do not block the writer).

What a caller may rely on:

* the journal never forgets delivered text: progress only moves forward (``record_progress``);
* amounts are ``uint256`` and stored as decimal TEXT, because SQLite integers stop at 64 bits;
* ``prune`` never deletes a job that still references an open payment session, whatever its age;
* ``next_job_id`` never hands out an id this file has seen, even after the job was pruned;
* a row damaged by hand is skipped (with a warning) by the listing calls, so one bad row does not hide
  the other jobs; ``get`` of that row raises.

A payment session can carry several jobs (see ``_sessions.py``), so the same session id may appear under
several jobs, each with its own ``base_amount``. Being closed is a property of the session on chain:
``reclaimable`` and ``prune`` treat a session as closed if any job's row says so, and ``reclaimable``
reports each open session once (the row with the highest ``signed_amount``, i.e. the latest receipt).
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Self

from .._exceptions import ConfigurationError, InvalidStateError, JobNotFoundError, ValidationError
from .._models import JobStatus

__all__ = ["JobJournal", "JournalEntry", "JournalSession"]

_log = logging.getLogger("fabstir.client")

#: Bumped when the schema changes; a file with a higher version was written by a newer SDK and is refused
#: rather than half-understood.
SCHEMA_VERSION: Final = 1
#: "FbJr" in the SQLite header: tells our file from any other SQLite database at the same path.
APPLICATION_ID: Final = 0x46624A72
#: How long a call waits for another process's write transaction before giving up (seconds).
BUSY_TIMEOUT: Final = 10.0

_UINT256_MAX: Final = 2**256 - 1
_HEX = re.compile(r"0x[0-9a-fA-F]+", re.ASCII)
_DECIMAL = re.compile(r"[0-9]+", re.ASCII)
_TERMINAL: Final = frozenset(s.value for s in JobStatus if s.is_terminal)

_SCHEMA: Final = """
CREATE TABLE jobs (
    job_id INTEGER PRIMARY KEY,
    key TEXT NOT NULL,
    request TEXT NOT NULL,
    status TEXT NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    ended_at REAL,
    host TEXT,
    text TEXT NOT NULL,
    tokens INTEGER NOT NULL,
    error TEXT,
    error_code TEXT,
    client_address TEXT,
    lengths TEXT NOT NULL DEFAULT ''
);
CREATE TABLE sessions (
    job_id INTEGER NOT NULL REFERENCES jobs(job_id) ON DELETE CASCADE,
    position INTEGER NOT NULL,
    session_id TEXT NOT NULL,
    host TEXT NOT NULL,
    payment_address TEXT NOT NULL,
    token TEXT NOT NULL,
    deposit TEXT NOT NULL,
    price_per_token TEXT NOT NULL,
    expiry REAL NOT NULL,
    base_amount TEXT NOT NULL,
    signed_amount TEXT NOT NULL,
    settled TEXT NOT NULL,
    refunded TEXT NOT NULL,
    closed INTEGER NOT NULL,
    chain_id INTEGER NOT NULL,
    contract TEXT NOT NULL,
    closes_session INTEGER NOT NULL,
    PRIMARY KEY (job_id, session_id)
);
CREATE INDEX sessions_by_id ON sessions(session_id);
CREATE TABLE meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
"""

_SESSION_COLUMNS: Final = (
    "session_id, host, payment_address, token, deposit, price_per_token, expiry, base_amount, "
    "signed_amount, settled, refunded, closed, chain_id, contract, closes_session"
)
_JOB_COLUMNS: Final = (
    "job_id, key, request, status, created_at, updated_at, host, text, tokens, error, error_code, "
    "client_address, lengths"
)


@dataclass(frozen=True, slots=True)
class JournalSession:
    """One payment session a job used (a job that failed over has one per host). Amounts in token units."""

    session_id: str  # 0x-hex
    host: str  # peer id
    payment_address: str
    token: str
    deposit: int
    price_per_token: int
    expiry: float  # unix seconds
    base_amount: int  # the session's cumulative amount before this job
    signed_amount: int  # cumulative amount of our latest receipt in the session
    settled: int
    refunded: int
    closed: bool
    chain_id: int
    contract: str  # the receipts' verifying contract
    closes_session: bool


@dataclass(frozen=True, slots=True)
class JournalEntry:
    """One job as the journal keeps it. ``request`` holds JSON values only (it is stored as JSON)."""

    job_id: int
    key: str  # the job id on the wire
    request: dict[str, Any]
    status: str  # a JobStatus value
    created_at: float
    updated_at: float
    host: str | None = None
    text: str = ""  # the text delivered so far
    tokens: int = 0  # how many tokens were delivered
    error: str | None = None
    error_code: str | None = None
    sessions: tuple[JournalSession, ...] = ()
    client_address: str | None = None
    #: each delivered token's length in characters (empty: not recorded), so that a restarted client
    #: gives back the same tokens, not only the same text
    token_lengths: tuple[int, ...] = ()


class _BadRow(Exception):
    """A stored row that does not decode (edited by hand, or written by something else)."""


class JobJournal:
    """The journal file. Synchronous and thread-safe; see the module docstring for the guarantees.

    ``ttl`` is how long (seconds) a finished job whose sessions are all closed is kept; ``clock`` gives
    ``updated_at`` and the age ``prune`` compares against (injectable for tests).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        ttl: float = 3600.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if isinstance(ttl, bool) or not isinstance(ttl, int | float) or not math.isfinite(ttl) or ttl < 0:
            raise ValidationError(f"Journal ttl must be a non-negative number of seconds, got {ttl!r}")
        self._path = os.fspath(path)
        self._ttl = float(ttl)
        self._clock = clock
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        if self._path != ":memory:":
            try:
                Path(self._path).parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise self._unusable(f"cannot create its directory ({exc})") from exc
        try:
            conn = sqlite3.connect(
                self._path, timeout=BUSY_TIMEOUT, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as exc:
            raise self._unusable(str(exc)) from exc
        try:
            self._open(conn)
        except BaseException:
            conn.close()
            raise
        self._conn = conn

    # -- lifecycle ---------------------------------------------------------------------------------------

    @property
    def path(self) -> str:
        return self._path

    @property
    def ttl(self) -> float:
        return self._ttl

    def close(self) -> None:
        """Close the file. Idempotent; later calls raise ``InvalidStateError``."""
        with self._lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._conn is None else "open"
        return f"JobJournal({self._path!r}, {state})"

    # -- jobs --------------------------------------------------------------------------------------------

    def add_job(self, entry: JournalEntry) -> None:
        """Insert a new job (with the sessions it already has). An existing ``job_id`` is an error:
        replacing a job would silently drop its progress and sessions."""
        row = _encode_entry(entry)
        sessions = [_encode_session(s) for s in _check_sessions(entry.sessions)]
        status = row["status"]
        ended_at = entry.updated_at if status in _TERMINAL else None
        with self._write() as conn:
            if conn.execute("SELECT 1 FROM jobs WHERE job_id = ?", (entry.job_id,)).fetchone():
                raise InvalidStateError(f"Job {entry.job_id} is already in the journal", job_id=entry.job_id)
            conn.execute(
                f"INSERT INTO jobs ({_JOB_COLUMNS}, ended_at) VALUES ({', '.join('?' * 14)})",
                (*row.values(), ended_at),
            )
            for position, values in enumerate(sessions):
                conn.execute(
                    f"INSERT INTO sessions (job_id, position, {_SESSION_COLUMNS}) "
                    f"VALUES ({', '.join('?' * 17)})",
                    (entry.job_id, position, *values),
                )
            high = _high_water(conn)
            if entry.job_id > high:
                conn.execute(
                    "INSERT OR REPLACE INTO meta (name, value) VALUES ('last_job_id', ?)",
                    (str(entry.job_id),),
                )

    def update_job(
        self,
        job_id: int,
        *,
        status: str | None = None,
        host: str | None = None,
        error: str | None = None,
        error_code: str | None = None,
    ) -> None:
        """Change the given fields (``None`` = leave as is) and set ``updated_at`` to now."""
        _check_job_id(job_id)
        new_status = _check_status(status) if status is not None else None
        for name, value in (("host", host), ("error", error), ("error_code", error_code)):
            if value is not None and not isinstance(value, str):
                raise ValidationError(f"Journal {name} must be a string, got {value!r}", job_id=job_id)
        now = self._now()
        with self._write() as conn:
            current = conn.execute("SELECT status, ended_at FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
            if current is None:
                raise _not_found(job_id)
            sets: dict[str, object] = {"updated_at": now}
            if new_status is not None:
                sets["status"] = new_status
                if new_status not in _TERMINAL:
                    sets["ended_at"] = None
                elif current[0] not in _TERMINAL or current[1] is None:
                    # Only on entering the terminal states: FAILED -> CANCELLED does not restart the clock.
                    sets["ended_at"] = now
            for name, value in (("host", host), ("error", error), ("error_code", error_code)):
                if value is not None:
                    sets[name] = value
            assignments = ", ".join(f"{name} = ?" for name in sets)
            conn.execute(f"UPDATE jobs SET {assignments} WHERE job_id = ?", (*sets.values(), job_id))

    def record_progress(
        self, job_id: int, text: str, tokens: int, lengths: Sequence[int] | None = None
    ) -> None:
        """Store the whole text delivered so far and its token count (and, with ``lengths``, each token's
        length in characters: ``tokens`` of them, summing to ``len(text)``).

        Progress only moves forward: fewer tokens than stored, or a text (or lengths) that does not extend
        the stored one, is an ``InvalidStateError`` and changes nothing — a resumed stream must never lose
        text.
        """
        _check_job_id(job_id)
        if not isinstance(text, str):
            raise ValidationError(f"Journal text must be a string, got {type(text).__name__}", job_id=job_id)
        _check_count("tokens", tokens, job_id)
        encoded = _encode_lengths(lengths, text, tokens, job_id)
        now = self._now()
        with self._write() as conn:
            current = conn.execute(
                "SELECT text, tokens, lengths FROM jobs WHERE job_id = ?", (job_id,)
            ).fetchone()
            if current is None:
                raise _not_found(job_id)
            old_text, old_tokens, old_lengths = current
            if isinstance(old_tokens, int) and tokens < old_tokens:
                raise InvalidStateError(
                    f"Job {job_id}: progress cannot go back from {old_tokens} to {tokens} tokens",
                    job_id=job_id,
                    context={"stored": old_tokens, "given": tokens},
                )
            if isinstance(old_text, str) and not text.startswith(old_text):
                raise InvalidStateError(
                    f"Job {job_id}: the new text does not extend the {len(old_text)} characters already "
                    "delivered",
                    job_id=job_id,
                )
            if (
                isinstance(old_lengths, str)
                and old_lengths
                and encoded
                and not (encoded == old_lengths or encoded.startswith(old_lengths + ","))
            ):
                raise InvalidStateError(
                    f"Job {job_id}: the token lengths do not extend those already delivered", job_id=job_id
                )
            conn.execute(
                "UPDATE jobs SET text = ?, tokens = ?, lengths = ?, updated_at = ? WHERE job_id = ?",
                (text, tokens, encoded or (old_lengths if isinstance(old_lengths, str) else ""), now, job_id),
            )

    # -- sessions ----------------------------------------------------------------------------------------

    def add_session(self, job_id: int, session: JournalSession) -> None:
        """Append a session to the job (after the ones it has). A job references a session id only once."""
        _check_job_id(job_id)
        values = _encode_session(_check_session(session))
        now = self._now()
        with self._write() as conn:
            if not conn.execute("SELECT 1 FROM jobs WHERE job_id = ?", (job_id,)).fetchone():
                raise _not_found(job_id)
            if conn.execute(
                "SELECT 1 FROM sessions WHERE job_id = ? AND session_id = ?", (job_id, session.session_id)
            ).fetchone():
                raise InvalidStateError(
                    f"Job {job_id} already has session {session.session_id}",
                    job_id=job_id,
                    context={"session_id": session.session_id},
                )
            (position,) = conn.execute(
                "SELECT COALESCE(MAX(position) + 1, 0) FROM sessions WHERE job_id = ?", (job_id,)
            ).fetchone()
            conn.execute(
                f"INSERT INTO sessions (job_id, position, {_SESSION_COLUMNS}) VALUES ({', '.join('?' * 17)})",
                (job_id, position, *values),
            )
            conn.execute("UPDATE jobs SET updated_at = ? WHERE job_id = ?", (now, job_id))

    def update_session(
        self,
        job_id: int,
        session_id: str,
        *,
        signed_amount: int | None = None,
        settled: int | None = None,
        refunded: int | None = None,
        closed: bool | None = None,
    ) -> None:
        """Change the given fields of one of the job's sessions (``None`` = leave as is).

        ``signed_amount`` never decreases (receipts are cumulative and cannot be taken back); ``settled``,
        ``refunded`` and ``closed`` follow the chain, which a reorganisation may move either way.
        """
        _check_job_id(job_id)
        sets: dict[str, object] = {}
        for name, amount in (("signed_amount", signed_amount), ("settled", settled), ("refunded", refunded)):
            if amount is not None:
                sets[name] = str(_check_amount(name, amount))
        if closed is not None:
            if not isinstance(closed, bool):
                raise ValidationError(f"Journal closed must be a bool, got {closed!r}", job_id=job_id)
            sets["closed"] = int(closed)
        now = self._now()
        with self._write() as conn:
            if not conn.execute("SELECT 1 FROM jobs WHERE job_id = ?", (job_id,)).fetchone():
                raise _not_found(job_id)
            current = conn.execute(
                "SELECT signed_amount FROM sessions WHERE job_id = ? AND session_id = ?", (job_id, session_id)
            ).fetchone()
            if current is None:
                raise ValidationError(
                    f"Job {job_id} has no session {session_id}",
                    job_id=job_id,
                    context={"session_id": session_id},
                )
            if signed_amount is not None:
                stored = _decimal_or_none(current[0])
                if stored is not None and signed_amount < stored:
                    raise InvalidStateError(
                        f"Job {job_id}: the signed amount of session {session_id} cannot go back "
                        f"from {stored} to {signed_amount}",
                        job_id=job_id,
                        context={"session_id": session_id, "stored": stored, "given": signed_amount},
                    )
            if sets:
                assignments = ", ".join(f"{name} = ?" for name in sets)
                conn.execute(
                    f"UPDATE sessions SET {assignments} WHERE job_id = ? AND session_id = ?",
                    (*sets.values(), job_id, session_id),
                )
            conn.execute("UPDATE jobs SET updated_at = ? WHERE job_id = ?", (now, job_id))

    # -- queries -----------------------------------------------------------------------------------------

    def get(self, job_id: int) -> JournalEntry | None:
        """The job, or ``None`` if unknown; a damaged row raises ``ConfigurationError``."""
        _check_job_id(job_id)
        with self._read() as conn:
            row = conn.execute(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
            if row is None:
                return None
            sessions = conn.execute(
                f"SELECT {_SESSION_COLUMNS} FROM sessions WHERE job_id = ? ORDER BY position", (job_id,)
            ).fetchall()
        try:
            return _decode_entry(row, sessions)
        except _BadRow as exc:
            raise ConfigurationError(
                f"Job journal {self._path}: the row of job {job_id} is damaged ({exc})",
                job_id=job_id,
                context={"path": self._path},
            ) from None

    def jobs(self) -> list[JournalEntry]:
        """Every job, by ``job_id``; damaged rows are skipped with a warning."""
        return self._select("")

    def unfinished(self) -> list[JournalEntry]:
        """Jobs not in a terminal state (a restarted client resumes or fails them), by ``job_id``."""
        marks = ", ".join("?" * len(_TERMINAL))
        return self._select(f"WHERE status NOT IN ({marks})", tuple(sorted(_TERMINAL)))

    def reclaimable(self, now: float | None = None) -> list[tuple[int, JournalSession]]:
        """Open sessions whose expiry has passed (``expiry < now``): their locked funds can be reclaimed.

        Each session id appears once, with the job whose row has the latest receipt (highest
        ``signed_amount``, then highest ``job_id``); a session closed in any job's row is left out.
        Ordered by job id, then by the job's session order.
        """
        when = self._now() if now is None else now
        with self._read() as conn:
            rows = conn.execute(
                f"SELECT job_id, position, {_SESSION_COLUMNS} FROM sessions ORDER BY job_id, position"
            ).fetchall()
        closed: set[str] = set()
        best: dict[str, tuple[int, int, JournalSession]] = {}
        for row in rows:
            job_id, position = row[0], row[1]
            try:
                session = _decode_session(row[2:])
            except _BadRow as exc:
                _log.warning(
                    "Job journal %s: skipping a damaged session row of job %s (%s)", self._path, job_id, exc
                )
                continue
            if session.closed:
                closed.add(session.session_id)
                continue
            held = best.get(session.session_id)
            if held is None or (session.signed_amount, job_id) >= (held[2].signed_amount, held[0]):
                best[session.session_id] = (job_id, position, session)
        picked = sorted(
            (job_id, position, session)
            for job_id, position, session in best.values()
            if session.session_id not in closed and session.expiry < when
        )
        return [(job_id, session) for job_id, _, session in picked]

    def next_job_id(self) -> int:
        """One more than the highest job id this file has ever held (1 when it has held none)."""
        with self._read() as conn:
            (highest,) = conn.execute("SELECT COALESCE(MAX(job_id), 0) FROM jobs").fetchone()
            return max(int(highest), _high_water(conn)) + 1

    def prune(self) -> int:
        """Delete jobs that ended more than ``ttl`` seconds ago and whose sessions are all closed.

        A job still referencing an open session is kept however old (it is how the money is found again).
        Returns how many jobs were deleted.
        """
        cutoff = self._now() - self._ttl
        marks = ", ".join("?" * len(_TERMINAL))
        with self._write() as conn:
            # A session counts as closed if any job's row says so (closing is a fact about the session).
            candidates = conn.execute(
                f"""
                SELECT j.job_id FROM jobs AS j
                WHERE j.status IN ({marks}) AND j.ended_at IS NOT NULL AND j.ended_at < ?
                  AND NOT EXISTS (
                      SELECT 1 FROM sessions AS s
                      WHERE s.job_id = j.job_id
                        AND NOT EXISTS (
                            SELECT 1 FROM sessions AS c WHERE c.session_id = s.session_id AND c.closed = 1
                        )
                  )
                """,
                (*sorted(_TERMINAL), cutoff),
            ).fetchall()
            ids = [job_id for (job_id,) in candidates]
            conn.executemany("DELETE FROM jobs WHERE job_id = ?", [(job_id,) for job_id in ids])
        if ids:
            _log.debug("Job journal %s: pruned %d finished jobs", self._path, len(ids))
        return len(ids)

    # -- plumbing ----------------------------------------------------------------------------------------

    def _now(self) -> float:
        return float(self._clock())

    def _unusable(self, reason: str) -> ConfigurationError:
        return ConfigurationError(
            f"Job journal {self._path} is not usable: {reason}", context={"path": self._path}
        )

    def _open(self, conn: sqlite3.Connection) -> None:
        """Create the schema in a new file, or check that an existing file is a journal this SDK reads."""
        try:
            conn.execute("PRAGMA foreign_keys = ON")
            # Two processes opening the same new file: one creates the schema, the other then checks it.
            conn.execute("BEGIN IMMEDIATE")
            try:
                (version,) = conn.execute("PRAGMA user_version").fetchone()
                (app_id,) = conn.execute("PRAGMA application_id").fetchone()
                (tables,) = conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
                if version == 0 and app_id == 0 and tables == 0:
                    # One statement at a time: executescript() would commit half-way through.
                    for statement in _SCHEMA.split(";"):
                        if statement.strip():
                            conn.execute(statement)
                    conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
                    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                elif app_id != APPLICATION_ID:
                    raise self._unusable("it is not a job journal (another SQLite database)")
                elif version > SCHEMA_VERSION:
                    raise self._unusable(
                        f"its schema version {version} is newer than this SDK's ({SCHEMA_VERSION}); "
                        "upgrade fabstir or use another journal_path"
                    )
                elif version != SCHEMA_VERSION:
                    raise self._unusable(f"unknown schema version {version}")
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            (check,) = conn.execute("PRAGMA quick_check").fetchone()
            if check != "ok":
                raise self._unusable(f"the file is corrupt ({check})")
            if self._path != ":memory:":
                conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
        except sqlite3.Error as exc:
            raise self._unusable(str(exc)) from exc

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise InvalidStateError(f"Job journal {self._path} is closed")
        return self._conn

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, taken at once (``IMMEDIATE``) so a read-check-write cannot interleave
        with another process's; rolled back on any error."""
        with self._lock:
            conn = self._connection()
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise self._unusable(str(exc)) from exc
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException as exc:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                if isinstance(exc, sqlite3.Error):
                    raise self._unusable(str(exc)) from exc
                raise

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        """One read transaction: the jobs and their sessions come from the same snapshot."""
        with self._lock:
            conn = self._connection()
            try:
                conn.execute("BEGIN")
                try:
                    yield conn
                finally:
                    if conn.in_transaction:
                        conn.execute("COMMIT")
            except sqlite3.Error as exc:
                raise self._unusable(str(exc)) from exc

    def _select(self, where: str, params: Sequence[object] = ()) -> list[JournalEntry]:
        with self._read() as conn:
            rows = conn.execute(f"SELECT {_JOB_COLUMNS} FROM jobs {where} ORDER BY job_id", params).fetchall()
            session_rows = conn.execute(
                f"SELECT job_id, {_SESSION_COLUMNS} FROM sessions ORDER BY job_id, position"
            ).fetchall()
        by_job: dict[object, list[Sequence[object]]] = {}
        for srow in session_rows:
            by_job.setdefault(srow[0], []).append(srow[1:])
        entries: list[JournalEntry] = []
        for row in rows:
            try:
                entries.append(_decode_entry(row, by_job.get(row[0], [])))
            except _BadRow as exc:
                _log.warning(
                    "Job journal %s: skipping the damaged row of job %s (%s)", self._path, row[0], exc
                )
        return entries


# -- validation and encoding ------------------------------------------------------------------------------


def _not_found(job_id: int) -> JobNotFoundError:
    return JobNotFoundError(f"Job {job_id} not found in the journal", job_id=job_id)


def _check_job_id(job_id: object) -> None:
    if isinstance(job_id, bool) or not isinstance(job_id, int) or job_id < 1:
        raise ValidationError(f"Journal job id must be a positive integer, got {job_id!r}")


def _check_count(name: str, value: object, job_id: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValidationError(f"Journal {name} must be a non-negative integer, got {value!r}", job_id=job_id)
    return value


def _check_amount(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _UINT256_MAX:
        raise ValidationError(f"Journal {name} must be an integer in the uint256 range, got {value!r}")
    return value


def _check_time(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValidationError(f"Journal {name} must be a finite number of seconds, got {value!r}")
    return float(value)


def _check_str(name: str, value: object, *, optional: bool = False) -> str | None:
    if value is None and optional:
        return None
    if not isinstance(value, str):
        raise ValidationError(f"Journal {name} must be a string, got {value!r}")
    return value


def _check_status(status: object) -> str:
    """The canonical JobStatus value; the enum's values are upper case, lower case is accepted too."""
    if isinstance(status, str):
        try:
            return JobStatus(status.upper()).value
        except ValueError:
            pass
    raise ValidationError(f"Journal status must be a JobStatus, got {status!r}")


def _check_session(session: object) -> JournalSession:
    if not isinstance(session, JournalSession):
        raise ValidationError(f"Expected a JournalSession, got {type(session).__name__}")
    if not isinstance(session.session_id, str) or not _HEX.fullmatch(session.session_id):
        raise ValidationError(f"Journal session id must be 0x-hex, got {session.session_id!r}")
    for name in ("host", "payment_address", "token", "contract"):
        _check_str(f"session {name}", getattr(session, name))
    for name in ("deposit", "price_per_token", "base_amount", "signed_amount", "settled", "refunded"):
        _check_amount(name, getattr(session, name))
    _check_time("session expiry", session.expiry)
    _check_count("chain id", session.chain_id)
    for name in ("closed", "closes_session"):
        if not isinstance(getattr(session, name), bool):
            raise ValidationError(f"Journal session {name} must be a bool, got {getattr(session, name)!r}")
    return session


def _check_sessions(sessions: object) -> tuple[JournalSession, ...]:
    if not isinstance(sessions, tuple):
        raise ValidationError("Journal sessions must be a tuple of JournalSession")
    seen: set[str] = set()
    for session in sessions:
        _check_session(session)
        if session.session_id in seen:
            raise InvalidStateError(f"Session {session.session_id} appears twice in one job")
        seen.add(session.session_id)
    return sessions


def _encode_request(request: object) -> str:
    """JSON, refusing anything that would not come back equal (tuples, non-string keys, NaN, objects)."""
    if not isinstance(request, dict):
        raise ValidationError(f"Journal request must be a dict, got {type(request).__name__}")
    try:
        text = json.dumps(request, sort_keys=True, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise ValidationError(f"Journal request must hold JSON values only ({exc})") from exc
    if json.loads(text) != request:
        raise ValidationError(
            "Journal request must hold JSON values only (lists, not tuples; string keys): "
            "it would not read back equal"
        )
    return text


def _encode_entry(entry: object) -> dict[str, object]:
    if not isinstance(entry, JournalEntry):
        raise ValidationError(f"Expected a JournalEntry, got {type(entry).__name__}")
    _check_job_id(entry.job_id)
    return {
        "job_id": entry.job_id,
        "key": _check_str("key", entry.key),
        "request": _encode_request(entry.request),
        "status": _check_status(entry.status),
        "created_at": _check_time("created_at", entry.created_at),
        "updated_at": _check_time("updated_at", entry.updated_at),
        "host": _check_str("host", entry.host, optional=True),
        "text": _check_str("text", entry.text),
        "tokens": _check_count("tokens", entry.tokens, entry.job_id),
        "error": _check_str("error", entry.error, optional=True),
        "error_code": _check_str("error_code", entry.error_code, optional=True),
        "client_address": _check_str("client_address", entry.client_address, optional=True),
        "lengths": _encode_lengths(entry.token_lengths or None, entry.text, entry.tokens, entry.job_id),
    }


def _encode_lengths(lengths: Sequence[int] | None, text: str, tokens: int, job_id: int) -> str:
    """``lengths`` as stored (comma-separated), after checking they describe ``text`` in ``tokens``."""
    if lengths is None:
        return ""
    values = list(lengths)
    if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in values):
        raise ValidationError("token lengths must be non-negative integers", job_id=job_id)
    if len(values) != tokens or sum(values) != len(text):
        raise ValidationError(
            f"token lengths must be {tokens} values summing to the text's {len(text)} characters",
            job_id=job_id,
        )
    return ",".join(map(str, values))


def _encode_session(s: JournalSession) -> tuple[object, ...]:
    return (
        s.session_id,
        s.host,
        s.payment_address,
        s.token,
        str(s.deposit),
        str(s.price_per_token),
        float(s.expiry),
        str(s.base_amount),
        str(s.signed_amount),
        str(s.settled),
        str(s.refunded),
        int(s.closed),
        s.chain_id,
        s.contract,
        int(s.closes_session),
    )


def _high_water(conn: sqlite3.Connection) -> int:
    row = conn.execute("SELECT value FROM meta WHERE name = 'last_job_id'").fetchone()
    value = _decimal_or_none(row[0]) if row else None
    return value or 0


# -- decoding (strict: a hand-edited row must fail here, not later in the SDK) ----------------------------


def _decimal_or_none(value: object) -> int | None:
    if isinstance(value, str) and _DECIMAL.fullmatch(value) and len(value) <= 78:
        return int(value)
    return None


def _amount(name: str, value: object) -> int:
    number = _decimal_or_none(value)
    if number is None or number > _UINT256_MAX:
        raise _BadRow(f"{name} is not a uint256 decimal: {value!r}")
    return number


def _text(name: str, value: object) -> str:
    if not isinstance(value, str):
        raise _BadRow(f"{name} is not text: {value!r}")
    return value


def _optional_text(name: str, value: object) -> str | None:
    return None if value is None else _text(name, value)


def _real(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise _BadRow(f"{name} is not a number: {value!r}")
    return float(value)


def _whole(name: str, value: object, *, flag: bool = False) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0 or (flag and value > 1):
        raise _BadRow(f"{name} is not a {'flag' if flag else 'count'}: {value!r}")
    return value


def _decode_session(row: Sequence[object]) -> JournalSession:
    session_id = _text("session_id", row[0])
    if not _HEX.fullmatch(session_id):
        raise _BadRow(f"session_id is not 0x-hex: {session_id!r}")
    return JournalSession(
        session_id=session_id,
        host=_text("session host", row[1]),
        payment_address=_text("payment_address", row[2]),
        token=_text("token", row[3]),
        deposit=_amount("deposit", row[4]),
        price_per_token=_amount("price_per_token", row[5]),
        expiry=_real("expiry", row[6]),
        base_amount=_amount("base_amount", row[7]),
        signed_amount=_amount("signed_amount", row[8]),
        settled=_amount("settled", row[9]),
        refunded=_amount("refunded", row[10]),
        closed=bool(_whole("closed", row[11], flag=True)),
        chain_id=_whole("chain_id", row[12]),
        contract=_text("contract", row[13]),
        closes_session=bool(_whole("closes_session", row[14], flag=True)),
    )


def _decode_entry(row: Sequence[object], sessions: Sequence[Sequence[object]]) -> JournalEntry:
    try:
        request = json.loads(_text("request", row[2]))
    except ValueError as exc:
        raise _BadRow(f"request is not JSON ({exc})") from None
    if not isinstance(request, dict):
        raise _BadRow("request is not a JSON object")
    status = _text("status", row[3])
    if status not in {s.value for s in JobStatus}:
        raise _BadRow(f"unknown status {status!r}")
    return JournalEntry(
        job_id=_whole("job_id", row[0]),
        key=_text("key", row[1]),
        request=request,
        status=status,
        created_at=_real("created_at", row[4]),
        updated_at=_real("updated_at", row[5]),
        host=_optional_text("host", row[6]),
        text=_text("text", row[7]),
        tokens=_whole("tokens", row[8]),
        error=_optional_text("error", row[9]),
        error_code=_optional_text("error_code", row[10]),
        sessions=tuple(_decode_session(s) for s in sessions),
        client_address=_optional_text("client_address", row[11]),
        token_lengths=_decode_lengths(row[12], row[7], row[8]),
    )


def _decode_lengths(value: object, text: object, tokens: object) -> tuple[int, ...]:
    stored = _text("lengths", value)
    if not stored:
        return ()
    try:
        lengths = tuple(int(n) for n in stored.split(","))
    except ValueError:
        raise _BadRow("lengths is not a list of integers") from None
    if (
        any(n < 0 for n in lengths)
        or len(lengths) != tokens
        or not isinstance(text, str)
        or sum(lengths) != len(text)
    ):
        raise _BadRow("lengths do not describe the text")
    return lengths
