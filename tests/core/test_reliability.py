"""Per-host reliability on a fake clock: a prior moved by decaying evidence, lie weight, the automatic
blacklisting and alert policy, latency averages, reports, and the bounded, atomic JSON file."""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fabstir import ConfigurationError, ValidationError
from fabstir.core import _reliability
from fabstir.core._reliability import (
    FORMAT_VERSION,
    FailureVerdict,
    HostReliability,
    NodeStats,
    ReliabilityTracker,
)

DAY = 24 * 3600.0


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self, now: float = 1_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def tracker(clock: FakeClock) -> ReliabilityTracker:
    return ReliabilityTracker(clock, prior=0.9, prior_weight=5.0)


# -- the prior and evidence -------------------------------------------------------------------------------


def test_new_host_starts_at_the_prior(tracker: ReliabilityTracker) -> None:
    """A host never seen before has exactly the prior reliability, and empty stats."""
    assert tracker.reliability("new") == pytest.approx(0.9)
    assert tracker.stats("new") == NodeStats()


def test_default_prior(clock: FakeClock) -> None:
    """Without arguments the prior is 0.9."""
    assert ReliabilityTracker(clock).reliability("new") == pytest.approx(0.9)


def test_reading_does_not_remember_a_host(tracker: ReliabilityTracker) -> None:
    """Asking about an unknown host (reliability, stats, snapshot, blacklist) does not add it to report()."""
    tracker.reliability("ghost")
    tracker.stats("ghost")
    tracker.snapshot("ghost")
    tracker.is_blacklisted("ghost")
    assert tracker.report() == []


def test_successes_raise_and_failures_lower_reliability(tracker: ReliabilityTracker) -> None:
    """Each success moves reliability up towards 1, each failure down towards 0."""
    tracker.record_success("good")
    after_one = tracker.reliability("good")
    tracker.record_success("good")
    assert 0.9 < after_one < tracker.reliability("good") < 1.0

    tracker.record_failure("bad")
    after_one = tracker.reliability("bad")
    tracker.record_failure("bad")
    assert 0.0 < tracker.reliability("bad") < after_one < 0.9


def test_reliability_is_the_smoothed_success_rate(tracker: ReliabilityTracker) -> None:
    """Reliability = (successes + prior·w) / (attempts + w)."""
    for _ in range(3):
        tracker.record_success("h")
    tracker.record_failure("h")
    assert tracker.reliability("h") == pytest.approx((3 + 0.9 * 5) / (4 + 5))


def test_much_evidence_outweighs_the_prior(clock: FakeClock) -> None:
    """After many observations reliability approaches the observed success rate."""
    tracker = ReliabilityTracker(clock, consecutive_failures=10_000)
    for _ in range(1000):
        tracker.record_failure("h")
    assert tracker.reliability("h") < 0.01


def test_hosts_are_tracked_independently(tracker: ReliabilityTracker) -> None:
    """Evidence about one host does not change another's reliability."""
    tracker.record_failure("a")
    assert tracker.reliability("b") == pytest.approx(0.9)


def test_per_host_prior_overrides_the_default(tracker: ReliabilityTracker) -> None:
    """set_prior gives one host its own starting point, which evidence then moves."""
    tracker.set_prior("trusted", 0.99)
    tracker.set_prior("dubious", 0.5)
    assert tracker.reliability("trusted") == pytest.approx(0.99)
    assert tracker.reliability("dubious") == pytest.approx(0.5)
    assert tracker.reliability("other") == pytest.approx(0.9)
    tracker.record_success("dubious")
    assert tracker.reliability("dubious") == pytest.approx((1 + 0.5 * 5) / (1 + 5))
    assert tracker.snapshot("dubious").prior == 0.5
    assert tracker.snapshot("other").prior == 0.9


@pytest.mark.parametrize("prior", [-0.1, 1.5, math.nan, "0.5", True])
def test_set_prior_rejects_values_that_are_not_reliabilities(tracker: ReliabilityTracker, prior: Any) -> None:
    """A prior must be a number in [0, 1]; anything else is a ValidationError and changes nothing."""
    with pytest.raises(ValidationError):
        tracker.set_prior("h", prior)
    assert tracker.report() == []


def test_failures_count_kinds_and_remember_when(tracker: ReliabilityTracker, clock: FakeClock) -> None:
    """record_failure tallies drops, timeouts and lies, weighs a lie as lie_weight failures, and keeps the
    time of the last failure and of the last success."""
    tracker.record_success("h")
    tracker.record_failure("h", drop=True)
    clock.now += 10
    tracker.record_failure("h", timeout=True)
    clock.now += 10
    tracker.record_failure("h", lie=True)
    stats = tracker.stats("h")
    assert (stats.drops, stats.timeouts, stats.lies) == (1, 1, 1)
    # Each failure has decayed for the time since it happened (a day's half-life).
    expected = 1 * 0.5 ** (20 / DAY) + 1 * 0.5 ** (10 / DAY) + 5
    assert stats.failures == pytest.approx(expected)
    assert stats.last_failure == 1_020.0
    assert stats.last_success == 1_000.0


def test_stats_is_a_copy(tracker: ReliabilityTracker) -> None:
    """Changing the object stats() returns does not change what the tracker knows."""
    tracker.record_failure("h")
    tracker.stats("h").failures = 0.0
    assert tracker.stats("h").failures == 1.0


# -- decay --------------------------------------------------------------------------------------------------


def test_evidence_halves_after_one_half_life(clock: FakeClock) -> None:
    """After half_life seconds successes and failures are worth half as much."""
    tracker = ReliabilityTracker(clock, half_life=3600.0, consecutive_failures=100)
    for _ in range(4):
        tracker.record_success("h")
    for _ in range(2):
        tracker.record_failure("h")
    clock.now += 3600.0
    stats = tracker.stats("h")
    assert stats.successes == pytest.approx(2.0)
    assert stats.failures == pytest.approx(1.0)
    assert tracker.reliability("h") == pytest.approx((2 + 0.9 * 5) / (3 + 5))
    clock.now += 3600.0
    assert tracker.stats("h").failures == pytest.approx(0.5)


def test_default_half_life_is_a_day(clock: FakeClock) -> None:
    """Without a half_life argument evidence halves after 24 hours."""
    tracker = ReliabilityTracker(clock)
    tracker.record_failure("h")
    clock.now += DAY
    assert tracker.stats("h").failures == pytest.approx(0.5)


def test_decay_is_exact_whatever_the_reads_and_writes_in_between(clock: FakeClock) -> None:
    """Lazy decay gives the same value at time t whether or not the host was read or written meanwhile."""
    other_clock = FakeClock()
    quiet = ReliabilityTracker(other_clock, half_life=100.0)
    busy = ReliabilityTracker(clock, half_life=100.0)
    for t in (quiet, busy):
        t.record_failure("h")
    for step in range(1, 8):
        clock.now = 1_000.0 + 37.0 * step
        busy.reliability("h")
        busy.set_prior("h", 0.9)  # a write: decays the stored counts to now
    clock.now = other_clock.now = 1_000.0 + 300.0
    assert busy.stats("h").failures == pytest.approx(quiet.stats("h").failures, rel=1e-12)
    assert quiet.stats("h").failures == pytest.approx(0.125)


def test_an_old_failure_weighs_less_than_a_new_one(clock: FakeClock) -> None:
    """Of two hosts with one failure each, the one that failed longer ago is the more reliable."""
    tracker = ReliabilityTracker(clock)
    tracker.record_failure("long-ago")
    clock.now += 2 * DAY
    tracker.record_failure("recent")
    assert tracker.reliability("long-ago") > tracker.reliability("recent")


def test_reliability_drifts_back_to_the_prior(clock: FakeClock) -> None:
    """A host that failed a lot and then was not seen for many half-lives is back near its prior."""
    tracker = ReliabilityTracker(clock, prior=0.8, half_life=60.0, consecutive_failures=1000)
    for _ in range(50):
        tracker.record_failure("h")
    assert tracker.reliability("h") < 0.2
    clock.now += 60.0 * 40
    assert tracker.reliability("h") == pytest.approx(0.8, abs=1e-6)


def test_a_clock_stepping_back_does_not_grow_evidence(clock: FakeClock) -> None:
    """If the clock goes backwards, evidence stays as it was instead of growing."""
    tracker = ReliabilityTracker(clock, half_life=10.0)
    tracker.record_success("h")
    clock.now -= 100.0
    assert tracker.stats("h").successes == 1.0
    tracker.record_success("h")
    assert tracker.stats("h").successes == 2.0


def test_infinite_half_life_disables_decay(clock: FakeClock) -> None:
    """half_life=inf keeps evidence forever."""
    tracker = ReliabilityTracker(clock, half_life=math.inf)
    tracker.record_success("h")
    clock.now += 1e9
    assert tracker.stats("h").successes == 1.0


_EVENT = st.one_of(
    st.tuples(st.just("success"), st.sampled_from("abc"), st.none() | st.floats(0, 60), st.none()),
    st.tuples(
        st.just("failure"),
        st.sampled_from("abc"),
        st.booleans(),
        st.tuples(st.booleans(), st.booleans()),
    ),
    st.tuples(st.just("wait"), st.just(""), st.floats(0, 1e7), st.none()),
    st.tuples(st.just("prior"), st.sampled_from("abc"), st.floats(0, 1), st.none()),
    st.tuples(st.just("blacklist"), st.sampled_from("abc"), st.floats(0.001, 1e4), st.none()),
)


@settings(max_examples=200, deadline=None)
@given(
    events=st.lists(_EVENT, max_size=60),
    half_life=st.floats(0.001, 1e6),
    prior_weight=st.floats(0.001, 100),
)
def test_reliability_stays_within_zero_and_one(
    events: list[tuple[str, str, Any, Any]], half_life: float, prior_weight: float
) -> None:
    """Whatever the events and time steps, every host's reliability is in [0, 1], its counts are not
    negative, and a to_json/from_json round trip reproduces the state exactly."""
    clock = FakeClock()
    kwargs: dict[str, Any] = {"half_life": half_life, "prior_weight": prior_weight, "max_hosts": 2}
    tracker = ReliabilityTracker(clock, **kwargs)
    for kind, peer, a, b in events:
        if kind == "success":
            tracker.record_success(peer, ttft=a, inter_token=a)
        elif kind == "failure":
            tracker.record_failure(peer, lie=a, drop=b[0], timeout=b[1])
        elif kind == "wait":
            clock.now += a
        elif kind == "prior":
            tracker.set_prior(peer, a)
        else:
            tracker.blacklist(peer, a)
        for snap in [*tracker.report(), tracker.snapshot("unseen")]:
            assert 0.0 <= snap.reliability <= 1.0
            assert snap.successes >= 0.0
            assert snap.failures >= 0.0
    assert len(tracker.report()) <= 2
    restored = ReliabilityTracker.from_json(json.loads(json.dumps(tracker.to_json())), clock, **kwargs)
    assert restored.to_json() == tracker.to_json()
    assert restored.report() == tracker.report()


# -- lies, blacklisting, alerts ----------------------------------------------------------------------------


def test_a_lie_counts_as_lie_weight_failures(clock: FakeClock) -> None:
    """One caught lie lowers reliability as much as lie_weight ordinary failures."""
    tracker = ReliabilityTracker(clock, consecutive_failures=100)
    tracker.record_failure("liar", lie=True)
    for _ in range(5):
        tracker.record_failure("crasher")
    assert tracker.reliability("liar") == pytest.approx(tracker.reliability("crasher"))
    assert tracker.reliability("liar") == pytest.approx(0.9 * 5 / (5 + 5))

    heavy = ReliabilityTracker(clock, lie_weight=20.0)
    heavy.record_failure("liar", lie=True)
    assert heavy.stats("liar").failures == 20.0


def test_a_lie_blacklists_at_once(tracker: ReliabilityTracker, clock: FakeClock) -> None:
    """A caught lie blacklists the host for blacklist_duration and returns an alert saying why."""
    verdict = tracker.record_failure("liar", lie=True, reason="usage_overclaim")
    assert verdict.blacklisted_until == 1_300.0
    assert verdict.alert is not None
    assert "usage_overclaim" in verdict.alert
    assert tracker.is_blacklisted("liar")
    assert tracker.blacklisted() == {"liar": 1_300.0}
    clock.now = 1_300.0
    assert not tracker.is_blacklisted("liar")


def test_blacklist_duration_is_configurable(clock: FakeClock) -> None:
    """blacklist_duration sets how long an automatic blacklisting lasts."""
    tracker = ReliabilityTracker(clock, blacklist_duration=60.0)
    assert tracker.record_failure("liar", lie=True).blacklisted_until == 1_060.0


def test_consecutive_failures_blacklist(tracker: ReliabilityTracker) -> None:
    """The third failure in a row blacklists; the first two do not."""
    assert tracker.record_failure("h", drop=True).blacklisted_until is None
    assert tracker.record_failure("h", timeout=True).blacklisted_until is None
    verdict = tracker.record_failure("h", reason="stream reset")
    assert verdict.blacklisted_until == 1_300.0
    assert verdict.alert is not None
    assert "3 consecutive failures" in verdict.alert
    assert "stream reset" in verdict.alert
    assert tracker.is_blacklisted("h")


def test_a_success_resets_the_failure_streak(clock: FakeClock) -> None:
    """A success in between means the failures are no longer in a row: no blacklisting."""
    tracker = ReliabilityTracker(clock, prior=0.99, consecutive_failures=3)
    verdicts = []
    for _ in range(5):
        verdicts.append(tracker.record_failure("h"))
        verdicts.append(tracker.record_failure("h"))
        tracker.record_success("h")
    assert all(v.blacklisted_until is None for v in verdicts)
    assert not tracker.is_blacklisted("h")


def test_the_streak_restarts_after_a_blacklisting(clock: FakeClock) -> None:
    """Once blacklisted for a streak, a host needs a full new streak to be blacklisted again."""
    tracker = ReliabilityTracker(clock, consecutive_failures=2, blacklist_duration=10.0)
    tracker.record_failure("h")
    assert tracker.record_failure("h").blacklisted_until == 1_010.0
    clock.now = 1_020.0
    assert tracker.record_failure("h").blacklisted_until is None
    assert tracker.record_failure("h").blacklisted_until == 1_030.0


def test_an_automatic_blacklisting_does_not_shorten_a_longer_one(tracker: ReliabilityTracker) -> None:
    """A host already blacklisted by hand for longer keeps the later expiry."""
    tracker.blacklist("h", 3_600.0)
    verdict = tracker.record_failure("h", lie=True)
    assert verdict.blacklisted_until == 4_600.0
    assert tracker.blacklisted() == {"h": 4_600.0}


def test_alert_only_when_reliability_crosses_below_the_threshold(clock: FakeClock) -> None:
    """An alert is raised by the failure that takes reliability below alert_threshold, not by later ones;
    after recovering above it, the next crossing alerts again."""
    tracker = ReliabilityTracker(clock, prior=0.9, prior_weight=5.0, consecutive_failures=1000)
    alerts = [tracker.record_failure("h", reason=f"#{i}").alert for i in range(8)]
    # (4.5)/(5+n) < 0.5 first for n = 5 failures: the fifth failure (index 4) crosses.
    assert [a is not None for a in alerts] == [False] * 4 + [True] + [False] * 3
    assert alerts[4] is not None
    assert "below 0.5" in alerts[4]
    assert "#4" in alerts[4]
    while tracker.reliability("h") < 0.5:
        tracker.record_success("h")
    assert tracker.record_failure("h").alert is not None


def test_no_alert_for_a_host_that_starts_below_the_threshold(clock: FakeClock) -> None:
    """A host whose prior is already below the threshold never crosses it, so ordinary failures are quiet."""
    tracker = ReliabilityTracker(clock, consecutive_failures=1000)
    tracker.set_prior("h", 0.3)
    assert all(tracker.record_failure("h").alert is None for _ in range(10))


def test_alert_threshold_is_configurable(clock: FakeClock) -> None:
    """With alert_threshold=0.85 the first failure of a 0.9-prior host already crosses it."""
    tracker = ReliabilityTracker(clock, alert_threshold=0.85)
    verdict = tracker.record_failure("h")
    assert verdict == FailureVerdict(blacklisted_until=None, alert=verdict.alert)
    assert verdict.alert is not None
    assert "below 0.85" in verdict.alert


def test_verdict_of_an_ordinary_failure_is_empty(tracker: ReliabilityTracker) -> None:
    """One failure of a healthy host neither blacklists nor alerts."""
    assert tracker.record_failure("h") == FailureVerdict()


def test_blacklist_expires_with_the_clock(tracker: ReliabilityTracker, clock: FakeClock) -> None:
    """A blacklisted host stays blacklisted for the duration and is free again once it has passed."""
    tracker.blacklist("h", 60.0)
    assert tracker.is_blacklisted("h")
    clock.now = 1_059.5
    assert tracker.is_blacklisted("h")
    assert tracker.snapshot("h").blacklisted_until == 1_060.0
    clock.now = 1_060.0
    assert not tracker.is_blacklisted("h")
    assert tracker.snapshot("h").blacklisted_until is None
    assert not tracker.is_blacklisted("never-listed")


def test_blacklisting_again_extends_from_now(tracker: ReliabilityTracker, clock: FakeClock) -> None:
    """Blacklisting a host that is already listed restarts its period from the current time."""
    tracker.blacklist("h", 10.0)
    clock.now += 5
    tracker.blacklist("h", 10.0)
    clock.now += 9
    assert tracker.is_blacklisted("h")


def test_blacklisted_lists_only_current_entries(tracker: ReliabilityTracker, clock: FakeClock) -> None:
    """blacklisted() maps each currently listed host to its expiry time and omits expired entries."""
    tracker.blacklist("short", 10.0)
    tracker.blacklist("long", 100.0)
    assert tracker.blacklisted() == {"short": 1_010.0, "long": 1_100.0}
    clock.now += 10.0
    assert tracker.blacklisted() == {"long": 1_100.0}
    clock.now += 1_000.0
    assert tracker.blacklisted() == {}


def test_unblacklist_lifts_the_ban(tracker: ReliabilityTracker) -> None:
    """unblacklist frees a listed host at once and is harmless for one that is not listed."""
    tracker.blacklist("h", 100.0)
    tracker.unblacklist("h")
    tracker.unblacklist("never-listed")
    assert not tracker.is_blacklisted("h")
    assert tracker.blacklisted() == {}


@pytest.mark.parametrize("duration", [0.0, -1.0, math.inf, math.nan])
def test_blacklist_rejects_durations_that_are_not_positive(
    tracker: ReliabilityTracker, duration: float
) -> None:
    """A blacklist duration must be a positive, finite number of seconds."""
    with pytest.raises(ValidationError):
        tracker.blacklist("h", duration)


def test_blacklisting_does_not_change_reliability(tracker: ReliabilityTracker) -> None:
    """The blacklist is separate from the success statistics."""
    tracker.blacklist("h", 10.0)
    assert tracker.reliability("h") == pytest.approx(0.9)


# -- latency averages ---------------------------------------------------------------------------------------


def test_latency_averages_are_ewmas(clock: FakeClock) -> None:
    """The first sample sets the average; each later one moves it by ewma_alpha of the difference."""
    tracker = ReliabilityTracker(clock, ewma_alpha=0.25)
    tracker.record_success("h", ttft=2.0, inter_token=0.1)
    snap = tracker.snapshot("h")
    assert (snap.ttft_ewma, snap.inter_token_ewma, snap.samples) == (2.0, 0.1, 1)
    tracker.record_success("h", ttft=4.0, inter_token=0.5)
    snap = tracker.snapshot("h")
    assert snap.ttft_ewma == pytest.approx(2.5)
    assert snap.inter_token_ewma == pytest.approx(0.2)
    assert snap.samples == 2


def test_latency_metrics_are_independent_and_optional(tracker: ReliabilityTracker) -> None:
    """A success without timings leaves the averages alone; ttft and inter_token are averaged separately."""
    tracker.record_success("h")
    assert (tracker.snapshot("h").ttft_ewma, tracker.snapshot("h").samples) == (None, 0)
    tracker.record_success("h", ttft=1.0)
    tracker.record_failure("h")
    snap = tracker.snapshot("h")
    assert (snap.ttft_ewma, snap.inter_token_ewma, snap.samples) == (1.0, None, 1)


@pytest.mark.parametrize("value", [-0.1, math.nan, math.inf])
def test_latency_samples_must_be_sane(tracker: ReliabilityTracker, value: float) -> None:
    """Negative, NaN or infinite timings are a ValidationError rather than a poisoned average."""
    with pytest.raises(ValidationError):
        tracker.record_success("h", ttft=value)
    with pytest.raises(ValidationError):
        tracker.record_success("h", inter_token=value)
    assert tracker.report() == []


# -- reports ------------------------------------------------------------------------------------------------


def test_snapshot_of_a_host(tracker: ReliabilityTracker, clock: FakeClock) -> None:
    """snapshot() gathers everything known about one host at the current time."""
    tracker.record_success("h", ttft=1.5, inter_token=0.05)
    clock.now += 5
    tracker.record_failure("h", drop=True)
    decayed = 0.5 ** (5 / DAY)  # the success, five seconds later
    assert tracker.snapshot("h") == HostReliability(
        peer_id="h",
        reliability=pytest.approx((decayed + 4.5) / (decayed + 1 + 5)),  # type: ignore[arg-type]
        prior=0.9,
        successes=pytest.approx(decayed),  # type: ignore[arg-type]
        failures=1.0,
        drops=1,
        timeouts=0,
        lies=0,
        ttft_ewma=1.5,
        inter_token_ewma=0.05,
        samples=1,
        last_success=1_000.0,
        last_failure=1_005.0,
        blacklisted_until=None,
    )


def test_report_orders_hosts_most_reliable_first(tracker: ReliabilityTracker) -> None:
    """report() lists every known host, most reliable first, ties broken by peer id."""
    tracker.record_failure("bad")
    tracker.record_success("good")
    tracker.set_prior("zeta", 0.9)
    tracker.set_prior("alpha", 0.9)
    tracker.blacklist("listed", 10.0)
    assert [s.peer_id for s in tracker.report()] == ["good", "alpha", "listed", "zeta", "bad"]
    assert tracker.report()[2].blacklisted_until == 1_010.0


# -- persistence --------------------------------------------------------------------------------------------


def _busy_tracker(clock: FakeClock) -> ReliabilityTracker:
    tracker = ReliabilityTracker(clock, half_life=3600.0)
    tracker.record_success("a", ttft=0.7, inter_token=0.03)
    clock.now += 100.0
    tracker.record_failure("a", drop=True)
    tracker.record_failure("liar", lie=True, reason="wrong model")
    tracker.set_prior("b", 0.75)
    tracker.blacklist("gone", 10.0)
    clock.now += 20.0  # "gone" is no longer blacklisted
    return tracker


def test_save_and_load_round_trip(tmp_path: Path, clock: FakeClock) -> None:
    """A saved tracker loads back to the same state, and leaves no temporary files behind."""
    tracker = _busy_tracker(clock)
    path = tmp_path / "reliability.json"
    tracker.save(path)
    loaded = ReliabilityTracker.load(path, clock, half_life=3600.0)
    assert loaded.to_json() == tracker.to_json()
    assert loaded.report() == tracker.report()
    assert loaded.blacklisted() == {"liar": 1_400.0}
    assert os.listdir(tmp_path) == ["reliability.json"]
    assert json.loads(path.read_text())["version"] == FORMAT_VERSION


def test_saving_again_replaces_the_file(tmp_path: Path, clock: FakeClock) -> None:
    """A second save overwrites the first with the current state."""
    tracker = ReliabilityTracker(clock)
    path = tmp_path / "r.json"
    tracker.save(path)
    tracker.record_success("h")
    tracker.save(path)
    assert ReliabilityTracker.load(path, clock).to_json() == tracker.to_json()


def test_blacklist_entries_persist_with_their_absolute_expiry(tmp_path: Path, clock: FakeClock) -> None:
    """A blacklisting survives a restart until its original expiry, not a fresh period."""
    tracker = ReliabilityTracker(clock)
    tracker.blacklist("h", 300.0)
    tracker.save(tmp_path / "r.json")
    clock.now += 200.0
    loaded = ReliabilityTracker.load(tmp_path / "r.json", clock)
    assert loaded.blacklisted() == {"h": 1_300.0}
    clock.now += 100.0
    assert not loaded.is_blacklisted("h")


def test_evidence_keeps_decaying_across_a_restart(tmp_path: Path, clock: FakeClock) -> None:
    """Loading a file later applies the decay for the time the file sat on disk."""
    tracker = ReliabilityTracker(clock, half_life=3600.0)
    tracker.record_failure("h")
    tracker.save(tmp_path / "r.json")
    clock.now += 3600.0
    loaded = ReliabilityTracker.load(tmp_path / "r.json", clock, half_life=3600.0)
    assert loaded.stats("h").failures == pytest.approx(0.5)


def test_a_missing_file_loads_as_an_empty_tracker(tmp_path: Path, clock: FakeClock) -> None:
    """First run: no file yet means no knowledge, and the policy keywords still apply."""
    loaded = ReliabilityTracker.load(tmp_path / "absent.json", clock, prior=0.7)
    assert loaded.report() == []
    assert loaded.reliability("h") == pytest.approx(0.7)


def test_a_failed_save_keeps_the_old_file(
    tmp_path: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If the final rename fails, the previous file is untouched and the temporary file is removed."""
    tracker = ReliabilityTracker(clock)
    path = tmp_path / "r.json"
    tracker.save(path)
    before = path.read_bytes()
    tracker.record_success("h")

    def broken_replace(src: str, dst: str) -> None:
        raise OSError("disk on fire")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk on fire"):
        tracker.save(path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["r.json"]


def _valid_host(**changes: Any) -> dict[str, Any]:
    host: dict[str, Any] = {
        "successes": 1.0,
        "failures": 0.0,
        "drops": 0,
        "timeouts": 0,
        "lies": 0,
        "consecutive_failures": 0,
        "samples": 0,
        "ttft_ewma": None,
        "inter_token_ewma": None,
        "last_success": 1_000.0,
        "last_failure": None,
        "prior": None,
        "updated": 1_000.0,
    }
    host.update(changes)
    return host


def _file(hosts: Any = None, blacklist: Any = None, **top: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "version": FORMAT_VERSION,
        "hosts": {"h": _valid_host()} if hosts is None else hosts,
    }
    data["blacklist"] = {} if blacklist is None else blacklist
    data.update(top)
    return data


def test_the_valid_fixture_loads(clock: FakeClock) -> None:
    """The hand-written file the corruption cases start from is itself valid."""
    assert ReliabilityTracker.from_json(_file(blacklist={"h": 2_000.0}), clock).blacklisted() == {
        "h": 2_000.0
    }


_CORRUPT: dict[str, Any] = {
    "not an object": [1, 2],
    "unknown version": _file(version=2),
    "version as a string": _file(version="1"),
    "version as a bool": _file(version=True),
    "missing version": {"hosts": {}, "blacklist": {}},
    "unknown top-level key": _file(extra=1),
    "hosts not an object": _file(hosts=[]),
    "host not an object": _file(hosts={"h": 3}),
    "empty peer id": _file(hosts={"": _valid_host()}),
    "missing key": _file(hosts={"h": {k: v for k, v in _valid_host().items() if k != "lies"}}),
    "unknown host key": _file(hosts={"h": _valid_host(colour="red")}),
    "negative count": _file(hosts={"h": _valid_host(drops=-1)}),
    "negative evidence": _file(hosts={"h": _valid_host(failures=-0.5)}),
    "fractional count": _file(hosts={"h": _valid_host(lies=1.5)}),
    "count as a bool": _file(hosts={"h": _valid_host(samples=True)}),
    "string evidence": _file(hosts={"h": _valid_host(successes="3")}),
    "NaN evidence": _file(hosts={"h": _valid_host(successes=math.nan)}),
    "infinite time": _file(hosts={"h": _valid_host(updated=math.inf)}),
    "missing update time": _file(hosts={"h": _valid_host(updated=None)}),
    "prior above one": _file(hosts={"h": _valid_host(prior=1.5)}),
    "negative prior": _file(hosts={"h": _valid_host(prior=-0.1)}),
    "negative latency": _file(hosts={"h": _valid_host(ttft_ewma=-1.0)}),
    "blacklist not an object": _file(blacklist=["h"]),
    "blacklist expiry not a number": _file(blacklist={"h": "soon"}),
    "blacklist expiry NaN": _file(blacklist={"h": math.nan}),
    "blacklist for an unknown host": _file(blacklist={"stranger": 2_000.0}),
}


@pytest.mark.parametrize("case", sorted(_CORRUPT))
def test_corrupt_files_raise_configuration_error_naming_the_path(
    tmp_path: Path, clock: FakeClock, case: str
) -> None:
    """Malformed content or values (and an unknown version) are a ConfigurationError that names the file."""
    path = tmp_path / "r.json"
    path.write_text(json.dumps(_CORRUPT[case]))  # NaN/inf are written as JSON's NaN/Infinity extensions
    with pytest.raises(ConfigurationError) as info:
        ReliabilityTracker.load(path, clock)
    assert str(path) in str(info.value)
    assert info.value.context["path"] == str(path)
    with pytest.raises(ConfigurationError):
        ReliabilityTracker.from_json(_CORRUPT[case], clock)


@pytest.mark.parametrize("content", [b"{not json", b"", b"\xff\xfe\x00garbage"])
def test_unparseable_files_raise_configuration_error(
    tmp_path: Path, clock: FakeClock, content: bytes
) -> None:
    """Bytes that are not JSON (or not UTF-8) are a ConfigurationError naming the file."""
    path = tmp_path / "r.json"
    path.write_bytes(content)
    with pytest.raises(ConfigurationError, match=re.escape(str(tmp_path / "r.json"))):
        ReliabilityTracker.load(path, clock)


def test_an_unreadable_path_raises_configuration_error(tmp_path: Path, clock: FakeClock) -> None:
    """A path that exists but cannot be read as a file (here, a directory) is a ConfigurationError."""
    with pytest.raises(ConfigurationError, match=re.escape(str(tmp_path))):
        ReliabilityTracker.load(tmp_path, clock)


# -- bounds and configuration -------------------------------------------------------------------------------


def test_max_hosts_forgets_the_least_recently_seen(tracker: ReliabilityTracker, clock: FakeClock) -> None:
    """Beyond max_hosts the host seen longest ago is dropped, with its blacklist entry; seeing a host again
    makes it recent."""
    small = ReliabilityTracker(clock, max_hosts=3)
    small.blacklist("a", 1_000.0)
    clock.now += 1
    small.record_success("b")
    clock.now += 1
    small.record_failure("c")
    clock.now += 1
    small.record_success("a")  # "a" is recent again; "b" is now the oldest
    clock.now += 1
    small.record_success("d")
    assert sorted(s.peer_id for s in small.report()) == ["a", "c", "d"]
    clock.now += 1
    small.set_prior("e", 0.5)  # drops "c"
    clock.now += 1
    small.record_success("f")  # drops "a", blacklisted or not
    assert sorted(s.peer_id for s in small.report()) == ["d", "e", "f"]
    assert small.blacklisted() == {}
    assert small.reliability("a") == pytest.approx(0.9)


def test_loading_more_hosts_than_the_cap_keeps_the_most_recent(clock: FakeClock) -> None:
    """A file with more hosts than max_hosts loads its most recently seen hosts only."""
    hosts = {f"h{i}": _valid_host(updated=1_000.0 + i) for i in range(5)}
    loaded = ReliabilityTracker.from_json(_file(hosts=hosts, blacklist={"h0": 5_000.0}), clock, max_hosts=2)
    assert sorted(s.peer_id for s in loaded.report()) == ["h3", "h4"]
    assert loaded.blacklisted() == {}


@pytest.mark.parametrize(
    "kwargs",
    [
        {"prior": 1.1},
        {"prior": math.nan},
        {"prior_weight": 0.0},
        {"half_life": 0.0},
        {"half_life": -5.0},
        {"lie_weight": 0.5},
        {"blacklist_duration": 0.0},
        {"blacklist_duration": math.inf},
        {"alert_threshold": 2.0},
        {"ewma_alpha": 0.0},
        {"ewma_alpha": 1.5},
        {"consecutive_failures": 0},
        {"consecutive_failures": 2.5},
        {"max_hosts": 0},
        {"max_hosts": True},
    ],
)
def test_constructor_rejects_bad_policy(clock: FakeClock, kwargs: dict[str, Any]) -> None:
    """Every policy setting is checked at construction, with a ConfigurationError naming it."""
    with pytest.raises(ConfigurationError, match=next(iter(kwargs))):
        ReliabilityTracker(clock, **kwargs)


def test_public_names() -> None:
    """The module exports its public classes and nothing private."""
    assert sorted(_reliability.__all__) == [
        "FORMAT_VERSION",
        "FailureVerdict",
        "HostReliability",
        "NodeStats",
        "ReliabilityTracker",
    ]
