"""Per-host reliability: a prior moved by evidence, per-host priors, drops and lies, and blacklisting on a
fake clock."""

from __future__ import annotations

import pytest

from fabstir.core._reliability import NodeStats, ReliabilityTracker


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


def test_new_host_starts_at_the_prior(tracker: ReliabilityTracker) -> None:
    """A host never seen before has exactly the prior reliability, and empty stats."""
    assert tracker.reliability("new") == pytest.approx(0.9)
    assert tracker.stats("new") == NodeStats()


def test_default_prior(clock: FakeClock) -> None:
    """Without arguments the prior is 0.9."""
    assert ReliabilityTracker(clock).reliability("new") == pytest.approx(0.9)


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


def test_much_evidence_outweighs_the_prior(tracker: ReliabilityTracker) -> None:
    """After many observations reliability approaches the observed success rate."""
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


def test_failures_count_drops_and_lies_and_remember_when(
    tracker: ReliabilityTracker, clock: FakeClock
) -> None:
    """record_failure counts the failure, whether it was a drop or a lie, and the time of the last one."""
    tracker.record_failure("h", drop=True)
    clock.now += 10
    tracker.record_failure("h", lie=True)
    clock.now += 10
    tracker.record_failure("h", drop=True, lie=True)
    tracker.record_failure("h")
    stats = tracker.stats("h")
    assert (stats.failures, stats.drops, stats.lies, stats.successes) == (4, 2, 2, 0)
    assert stats.last_failure == 1_020.0


def test_blacklist_expires_with_the_clock(tracker: ReliabilityTracker, clock: FakeClock) -> None:
    """A blacklisted host stays blacklisted for the duration and is free again once it has passed."""
    tracker.blacklist("h", 60.0)
    assert tracker.is_blacklisted("h")
    clock.now = 1_059.5
    assert tracker.is_blacklisted("h")
    clock.now = 1_060.0
    assert not tracker.is_blacklisted("h")
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


def test_blacklisting_does_not_change_reliability(tracker: ReliabilityTracker) -> None:
    """The blacklist is separate from the success statistics."""
    tracker.blacklist("h", 10.0)
    assert tracker.reliability("h") == pytest.approx(0.9)
