"""Per-host reliability: decaying success/failure evidence around a prior, latency averages, an automatic
blacklisting policy, reports, and a bounded JSON file that survives restarts.

Pure state driven by an injected clock; the only I/O is :meth:`ReliabilityTracker.save` /
:meth:`ReliabilityTracker.load`. Nothing here emits events: :meth:`ReliabilityTracker.record_failure` returns
a :class:`FailureVerdict` and the caller (the SDK) turns it into ``node:reliability-alert``.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from .._exceptions import ConfigurationError, ValidationError

__all__ = ["FORMAT_VERSION", "FailureVerdict", "HostReliability", "NodeStats", "ReliabilityTracker"]

#: Version of the :meth:`ReliabilityTracker.to_json` layout; a file with any other version is refused rather
#: than half-understood.
FORMAT_VERSION = 1

_FLOAT_FIELDS = ("successes", "failures")
_INT_FIELDS = ("drops", "timeouts", "lies", "consecutive_failures", "samples")
_OPTIONAL_FLOAT_FIELDS = ("ttft_ewma", "inter_token_ewma")
_OPTIONAL_TIME_FIELDS = ("last_success", "last_failure")
_HOST_KEYS = frozenset(
    (*_FLOAT_FIELDS, *_INT_FIELDS, *_OPTIONAL_FLOAT_FIELDS, *_OPTIONAL_TIME_FIELDS, "prior", "updated")
)


@dataclass(slots=True)
class NodeStats:
    """What is known about one host.

    ``successes`` and ``failures`` are the *evidence* behind reliability: they decay with the tracker's
    half-life (as of ``updated``), and a caught lie adds ``lie_weight`` to ``failures``. ``drops``,
    ``timeouts`` and ``lies`` are lifetime tallies of kinds of failure, kept for diagnosis; they do not decay.
    """

    successes: float = 0.0
    failures: float = 0.0
    lies: int = 0
    drops: int = 0
    last_failure: float | None = None
    timeouts: int = 0
    consecutive_failures: int = 0
    ttft_ewma: float | None = None
    inter_token_ewma: float | None = None
    samples: int = 0
    last_success: float | None = None
    prior: float | None = None  # None: the tracker's default prior
    updated: float | None = None  # when the evidence was last decayed; also "last seen" for the host cap


@dataclass(frozen=True, slots=True)
class FailureVerdict:
    """What the policy decided about a failure: a new blacklist expiry (absolute clock time) if the host was
    blacklisted by it, and a human-readable alert reason if the caller should raise an alert."""

    blacklisted_until: float | None = None
    alert: str | None = None


@dataclass(frozen=True, slots=True)
class HostReliability:
    """A read-only report on one host at one moment (counts decayed to that moment)."""

    peer_id: str
    reliability: float
    prior: float
    successes: float
    failures: float
    drops: int
    timeouts: int
    lies: int
    ttft_ewma: float | None
    inter_token_ewma: float | None
    samples: int
    last_success: float | None
    last_failure: float | None
    blacklisted_until: float | None


class ReliabilityTracker:
    """Reliability = (successes + prior·w) / (successes + failures + w).

    A new host starts at its prior (``w`` pseudo-observations) and evidence moves it. Evidence halves every
    ``half_life`` seconds, so a host that failed long ago drifts back toward its prior and an old failure
    weighs less than a new one. Decay is applied lazily on every read and write, so a read at time ``t`` is
    exact whatever the pattern of calls. A caught lie counts as ``lie_weight`` failures — lying is worse than
    crashing — and blacklists the host at once; ``consecutive_failures`` failures in a row blacklist it too.

    At most ``max_hosts`` hosts are remembered (the least recently seen is forgotten first, blacklist entry
    included), so neither memory nor the saved file grows without bound.
    """

    def __init__(
        self,
        clock: Callable[[], float],
        *,
        prior: float = 0.9,
        prior_weight: float = 5.0,
        half_life: float = 24 * 3600.0,
        lie_weight: float = 5.0,
        blacklist_duration: float = 300.0,
        consecutive_failures: int = 3,
        alert_threshold: float = 0.5,
        ewma_alpha: float = 0.2,
        max_hosts: int = 10_000,
    ) -> None:
        _check_config("prior", prior, low=0.0, high=1.0)
        _check_config("prior_weight", prior_weight, low=0.0, strict=True)
        _check_config("half_life", half_life, low=0.0, strict=True, allow_inf=True)
        _check_config("lie_weight", lie_weight, low=1.0)
        _check_config("blacklist_duration", blacklist_duration, low=0.0, strict=True)
        _check_config("alert_threshold", alert_threshold, low=0.0, high=1.0)
        _check_config("ewma_alpha", ewma_alpha, low=0.0, high=1.0, strict=True)
        for name, count in (("consecutive_failures", consecutive_failures), ("max_hosts", max_hosts)):
            if not _is_int(count) or count < 1:
                raise ConfigurationError(f"Reliability {name} must be a positive integer, got {count!r}")
        self._clock = clock
        self._prior = prior
        self._weight = prior_weight
        self._half_life = half_life
        self._lie_weight = lie_weight
        self._blacklist_duration = blacklist_duration
        self._streak_limit = consecutive_failures
        self._alert_threshold = alert_threshold
        self._alpha = ewma_alpha
        self._max_hosts = max_hosts
        # Insertion order is recency order: every write moves the host to the end, so the first key is the
        # least recently seen host and eviction is O(1).
        self._hosts: dict[str, NodeStats] = {}
        self._blacklist: dict[str, float] = {}

    # -- reading -------------------------------------------------------------------------------------------

    def stats(self, peer_id: str) -> NodeStats:
        """A copy of the host's record with its evidence decayed to now (empty stats for an unknown host).
        Reading never creates a record; change the record through the ``record_*`` methods."""
        record = self._hosts.get(peer_id)
        if record is None:
            return NodeStats()
        return self._decayed(record, self._clock())

    def reliability(self, peer_id: str) -> float:
        """The smoothed success rate in [0, 1]; an unknown host has exactly its prior."""
        record = self._hosts.get(peer_id)
        if record is None:
            return self._prior
        return self._reliability_of(self._decayed(record, self._clock()))

    def snapshot(self, peer_id: str) -> HostReliability:
        """Everything known about one host, as of now."""
        return self._snapshot(peer_id, self._clock())

    def report(self) -> list[HostReliability]:
        """Every remembered host, most reliable first (ties broken by peer id, so the order is stable)."""
        now = self._clock()
        snapshots = [self._snapshot(peer, now) for peer in self._hosts]
        return sorted(snapshots, key=lambda s: (-s.reliability, s.peer_id))

    def _snapshot(self, peer_id: str, now: float) -> HostReliability:
        record = self._hosts.get(peer_id)
        stats = NodeStats() if record is None else self._decayed(record, now)
        until = self._blacklist.get(peer_id)
        return HostReliability(
            peer_id=peer_id,
            reliability=self._reliability_of(stats),
            prior=self._prior_of(stats),
            successes=stats.successes,
            failures=stats.failures,
            drops=stats.drops,
            timeouts=stats.timeouts,
            lies=stats.lies,
            ttft_ewma=stats.ttft_ewma,
            inter_token_ewma=stats.inter_token_ewma,
            samples=stats.samples,
            last_success=stats.last_success,
            last_failure=stats.last_failure,
            blacklisted_until=until if until is not None and until > now else None,
        )

    # -- evidence ------------------------------------------------------------------------------------------

    def set_prior(self, peer_id: str, prior: float) -> None:
        """Give one host its own starting point (e.g. an advertised or configured reliability)."""
        if not _is_number(prior) or not 0.0 <= prior <= 1.0:
            raise ValidationError(f"Prior must be a reliability in [0, 1], got {prior!r}", node_id=peer_id)
        self._touch(peer_id).prior = float(prior)

    def record_success(
        self, peer_id: str, *, ttft: float | None = None, inter_token: float | None = None
    ) -> None:
        """A job completed. ``ttft`` (time to first token) and ``inter_token`` (mean gap between tokens), in
        seconds, feed the host's latency averages when measured. A success ends a failure streak."""
        for name, value in (("ttft", ttft), ("inter_token", inter_token)):
            if value is not None and (not _is_number(value) or not 0.0 <= value < math.inf):
                raise ValidationError(
                    f"{name} must be a finite, non-negative number of seconds, got {value!r}"
                )
        now = self._clock()
        record = self._touch(peer_id, now)
        record.successes += 1.0
        record.consecutive_failures = 0
        record.last_success = now
        if ttft is not None:
            record.ttft_ewma = self._ewma(record.ttft_ewma, float(ttft))
        if inter_token is not None:
            record.inter_token_ewma = self._ewma(record.inter_token_ewma, float(inter_token))
        if ttft is not None or inter_token is not None:
            record.samples += 1

    def record_failure(
        self,
        peer_id: str,
        *,
        drop: bool = False,
        lie: bool = False,
        timeout: bool = False,
        reason: str = "",
    ) -> FailureVerdict:
        """A job failed on this host: a mid-stream ``drop``, a ``timeout``, a caught ``lie`` (usage
        over-claim, wrong model) or anything else (``reason`` says what, for the alert).

        A lie blacklists at once; so does the ``consecutive_failures``-th failure in a row (the streak then
        starts again: the host served its time for it). An alert is returned when the host is blacklisted
        or when this failure takes its reliability from at least ``alert_threshold`` to below it — only on
        the crossing, so a host that stays bad does not raise an alert per failure.
        """
        now = self._clock()
        record = self._touch(peer_id, now)
        before = self._reliability_of(record)
        record.failures += self._lie_weight if lie else 1.0
        record.drops += int(drop)
        record.timeouts += int(timeout)
        record.lies += int(lie)
        record.consecutive_failures += 1
        record.last_failure = now
        after = self._reliability_of(record)

        what = reason or ("lie" if lie else "timeout" if timeout else "drop" if drop else "failure")
        cause: str | None = None
        if lie:
            cause = f"caught lying ({what})"
        elif record.consecutive_failures >= self._streak_limit:
            cause = f"{record.consecutive_failures} consecutive failures (last: {what})"
        until: float | None = None
        if cause is not None:
            until = max(now + self._blacklist_duration, self._blacklist.get(peer_id, -math.inf))
            self._blacklist[peer_id] = until
            record.consecutive_failures = 0

        crossed = before >= self._alert_threshold > after
        alerts = []
        if cause is not None:
            alerts.append(f"blacklisted for {self._blacklist_duration:g}s: {cause}")
        if crossed:
            alerts.append(f"reliability {after:.3f} fell below {self._alert_threshold:g} (last: {what})")
        return FailureVerdict(blacklisted_until=until, alert="; ".join(alerts) or None)

    # -- blacklist -----------------------------------------------------------------------------------------

    def blacklist(self, peer_id: str, duration: float) -> None:
        """Exclude a host for ``duration`` seconds from now (restarting any current period)."""
        if not _is_number(duration) or not 0.0 < duration < math.inf:
            raise ValidationError(
                f"Blacklist duration must be a positive number of seconds, got {duration!r}", node_id=peer_id
            )
        now = self._clock()
        self._touch(peer_id, now)
        self._blacklist[peer_id] = now + duration

    def unblacklist(self, peer_id: str) -> None:
        """Lift a blacklisting early (a no-op for a host that is not listed)."""
        self._blacklist.pop(peer_id, None)

    def is_blacklisted(self, peer_id: str) -> bool:
        until = self._blacklist.get(peer_id)
        if until is None:
            return False
        if until <= self._clock():
            del self._blacklist[peer_id]
            return False
        return True

    def blacklisted(self) -> dict[str, float]:
        """Each currently listed host with its expiry (absolute clock time)."""
        now = self._clock()
        return {peer: until for peer, until in self._blacklist.items() if until > now}

    # -- persistence ---------------------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict of everything remembered: raw (decayed-as-of-``updated``) records, so a
        :meth:`from_json` round trip is exact; expired blacklist entries are left out."""
        now = self._clock()
        return {
            "version": FORMAT_VERSION,
            "hosts": {
                peer: {
                    "successes": r.successes,
                    "failures": r.failures,
                    "drops": r.drops,
                    "timeouts": r.timeouts,
                    "lies": r.lies,
                    "consecutive_failures": r.consecutive_failures,
                    "samples": r.samples,
                    "ttft_ewma": r.ttft_ewma,
                    "inter_token_ewma": r.inter_token_ewma,
                    "last_success": r.last_success,
                    "last_failure": r.last_failure,
                    "prior": r.prior,
                    "updated": r.updated,
                }
                for peer, r in self._hosts.items()
            },
            "blacklist": {peer: until for peer, until in self._blacklist.items() if until > now},
        }

    @classmethod
    def from_json(cls, data: Any, clock: Callable[[], float], **kwargs: Any) -> ReliabilityTracker:
        """Rebuild a tracker from :meth:`to_json` output; ``kwargs`` are the constructor's policy settings.

        Raises :class:`ConfigurationError` for an unknown version or any malformed value (wrong type,
        negative count, NaN, prior outside [0, 1]). If the data holds more than ``max_hosts`` hosts, the most
        recently seen are kept.
        """
        tracker = cls(clock, **kwargs)
        if not isinstance(data, Mapping):
            raise ConfigurationError("Reliability data must be a JSON object")
        version = data.get("version")
        if version != FORMAT_VERSION or not _is_int(version):
            raise ConfigurationError(
                f"Unsupported reliability data version {version!r} (expected {FORMAT_VERSION})"
            )
        unknown = set(data) - {"version", "hosts", "blacklist"}
        if unknown:
            raise ConfigurationError(f"Unknown keys in reliability data: {sorted(unknown)}")
        hosts = _mapping(data.get("hosts"), "hosts")
        blacklist = _mapping(data.get("blacklist"), "blacklist")
        records = [(_peer_id(peer, "hosts"), _parse_host(peer, raw)) for peer, raw in hosts.items()]
        records.sort(
            key=lambda item: (item[1].updated if item[1].updated is not None else -math.inf, item[0])
        )
        for peer, record in records[-tracker._max_hosts :]:
            tracker._hosts[peer] = record
        for peer, until in blacklist.items():
            _peer_id(peer, "blacklist")
            if not _is_number(until) or not math.isfinite(until):
                raise ConfigurationError(f"blacklist[{peer!r}] must be a finite time, got {until!r}")
            if peer not in hosts:  # at run time blacklisting records the host, so every entry has one
                raise ConfigurationError(f"blacklist[{peer!r}] names a host missing from 'hosts'")
            if peer in tracker._hosts:  # a host dropped by the cap loses its entry too, as at run time
                tracker._blacklist[peer] = float(until)
        return tracker

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write :meth:`to_json` to ``path`` atomically: a temporary file in the same directory, fsynced,
        then renamed over the target — a crash leaves either the old file or the new one, never half of
        one. OS errors (no space, no permission) propagate after the temporary file is removed."""
        target = Path(path)
        text = json.dumps(self.to_json(), allow_nan=False, sort_keys=True, separators=(",", ":"))
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(text)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        _fsync_dir(target.parent)

    @classmethod
    def load(
        cls, path: str | os.PathLike[str], clock: Callable[[], float], **kwargs: Any
    ) -> ReliabilityTracker:
        """Read a file written by :meth:`save`. A missing file gives an empty tracker (first run); an
        unreadable or malformed one raises :class:`ConfigurationError` naming the path."""
        source = Path(path)
        try:
            text = source.read_text(encoding="utf-8")
        except FileNotFoundError:
            return cls(clock, **kwargs)
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigurationError(
                f"Cannot read reliability file {source}: {exc}", context={"path": str(source)}
            ) from exc
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise ConfigurationError(
                f"Reliability file {source} is not valid JSON: {exc}", context={"path": str(source)}
            ) from exc
        try:
            return cls.from_json(data, clock, **kwargs)
        except ConfigurationError as exc:
            raise ConfigurationError(
                f"Reliability file {source}: {exc.message}", context={"path": str(source)}
            ) from exc

    # -- internals -----------------------------------------------------------------------------------------

    def _touch(self, peer_id: str, now: float | None = None) -> NodeStats:
        """The host's record, created if new, decayed to now and moved to the most-recent end; the least
        recently seen host is forgotten if the cap is exceeded."""
        if not isinstance(peer_id, str) or not peer_id:
            raise ValidationError(f"Peer id must be a non-empty string, got {peer_id!r}")
        if now is None:
            now = self._clock()
        record = self._hosts.pop(peer_id, None)
        if record is None:
            record = NodeStats(updated=now)
            while len(self._hosts) >= self._max_hosts:
                evicted = next(iter(self._hosts))
                del self._hosts[evicted]
                self._blacklist.pop(evicted, None)
        else:
            self._decay(record, now)
        self._hosts[peer_id] = record
        return record

    def _decay(self, record: NodeStats, now: float) -> None:
        # A clock that steps backwards must not grow evidence: elapsed time is never negative.
        if record.updated is None or now > record.updated:
            if record.updated is not None:
                factor = 0.5 ** ((now - record.updated) / self._half_life)
                record.successes *= factor
                record.failures *= factor
            record.updated = now

    def _decayed(self, record: NodeStats, now: float) -> NodeStats:
        copy = replace(record)
        self._decay(copy, now)
        return copy

    def _prior_of(self, stats: NodeStats) -> float:
        return self._prior if stats.prior is None else stats.prior

    def _reliability_of(self, stats: NodeStats) -> float:
        # Float addition is monotone, so numerator <= denominator holds after rounding too: the result
        # never leaves [0, 1].
        prior = self._prior_of(stats)
        return (stats.successes + prior * self._weight) / (stats.successes + stats.failures + self._weight)

    def _ewma(self, current: float | None, sample: float) -> float:
        return sample if current is None else current + self._alpha * (sample - current)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_config(
    name: str,
    value: object,
    *,
    low: float,
    high: float = math.inf,
    strict: bool = False,
    allow_inf: bool = False,
) -> None:
    ok = False
    if isinstance(value, int | float) and not isinstance(value, bool) and not math.isnan(value):
        ok = (value > low if strict else value >= low) and value <= high
        ok = ok and (allow_inf or math.isfinite(value))
    if not ok:
        bounds = f"{'>' if strict else '>='} {low:g}" + (f" and <= {high:g}" if high < math.inf else "")
        raise ConfigurationError(f"Reliability {name} must be a number {bounds}, got {value!r}")


def _mapping(value: object, where: str) -> Mapping[Any, Any]:
    if not isinstance(value, Mapping):
        raise ConfigurationError(
            f"Reliability data {where!r} must be a JSON object, got {type(value).__name__}"
        )
    return value


def _peer_id(peer: object, where: str) -> str:
    if not isinstance(peer, str) or not peer:
        raise ConfigurationError(f"Reliability data {where!r} has an invalid peer id {peer!r}")
    return peer


def _parse_host(peer: object, raw: object) -> NodeStats:
    fields = _mapping(raw, f"hosts[{peer!r}]")
    if set(fields) != _HOST_KEYS:
        missing, extra = sorted(_HOST_KEYS - set(fields)), sorted(set(fields) - _HOST_KEYS)
        raise ConfigurationError(f"hosts[{peer!r}] has missing keys {missing} / unknown keys {extra}")

    def bad(key: str, want: str) -> ConfigurationError:
        return ConfigurationError(f"hosts[{peer!r}].{key} must be {want}, got {fields[key]!r}")

    def number(key: str, *, non_negative: bool = True) -> float:
        value = fields[key]
        if not _is_number(value) or not math.isfinite(value) or (non_negative and value < 0):
            raise bad(key, "a finite non-negative number" if non_negative else "a finite number")
        return float(value)

    def optional(key: str, *, non_negative: bool = True) -> float | None:
        return None if fields[key] is None else number(key, non_negative=non_negative)

    counts: dict[str, int] = {}
    for key in _INT_FIELDS:
        if not _is_int(fields[key]) or fields[key] < 0:
            raise bad(key, "a non-negative integer")
        counts[key] = fields[key]
    prior = optional("prior")
    if prior is not None and prior > 1.0:
        raise bad("prior", "a reliability in [0, 1]")
    return NodeStats(
        successes=number("successes"),
        failures=number("failures"),
        ttft_ewma=optional("ttft_ewma"),
        inter_token_ewma=optional("inter_token_ewma"),
        last_success=optional("last_success", non_negative=False),
        last_failure=optional("last_failure", non_negative=False),
        prior=prior,
        updated=number("updated", non_negative=False),
        **counts,
    )


def _fsync_dir(directory: Path) -> None:
    """Make the rename itself durable where the OS allows opening a directory (POSIX); elsewhere a no-op."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
