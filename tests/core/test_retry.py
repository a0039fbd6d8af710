"""Retry policy: exponential backoff with jitter and a cap, and the decision whether to retry at all."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fabstir._config import RetryConfig
from fabstir._exceptions import (
    ConfigurationError,
    FabstirError,
    HostError,
    InvalidStateError,
    TransportError,
    ValidationError,
)
from fabstir.core._retry import backoff_delay, should_retry

NO_JITTER = RetryConfig(jitter=0.0)


@pytest.mark.parametrize(
    ("attempt", "expected"),
    [(1, 0.1), (2, 0.2), (3, 0.4), (4, 0.8), (5, 1.6), (6, 3.2), (7, 5.0), (8, 5.0), (50, 5.0)],
)
def test_backoff_doubles_from_100ms_and_caps_at_5s(attempt: int, expected: float) -> None:
    """Without jitter the delay is 100 ms × 2**(attempt−1), never more than max_delay (5 s)."""
    assert backoff_delay(attempt, NO_JITTER) == pytest.approx(expected)


def test_backoff_follows_the_configured_curve() -> None:
    """initial_delay, multiplier and max_delay come from the config."""
    config = RetryConfig(initial_delay=1.0, multiplier=3.0, max_delay=20.0, jitter=0.0)
    assert [backoff_delay(a, config) for a in (1, 2, 3, 4)] == pytest.approx([1.0, 3.0, 9.0, 20.0])


def test_backoff_without_jitter_ignores_the_generator() -> None:
    """With jitter 0 the delay is deterministic and consumes no randomness."""
    rng = random.Random(7)
    state = rng.getstate()
    backoff_delay(3, NO_JITTER, rng)
    assert rng.getstate() == state


@given(
    attempt=st.integers(min_value=1, max_value=30),
    jitter=st.floats(min_value=0.0, max_value=0.9),
    seed=st.integers(min_value=0, max_value=2**32),
)
def test_jitter_stays_within_its_fraction_and_under_the_cap(attempt: int, jitter: float, seed: int) -> None:
    """A jittered delay lies within ± jitter × the nominal delay, is never negative and never exceeds
    max_delay."""
    config = RetryConfig(jitter=jitter)
    nominal = backoff_delay(attempt, RetryConfig(jitter=0.0))
    delay = backoff_delay(attempt, config, random.Random(seed))
    assert nominal * (1 - jitter) - 1e-12 <= delay <= nominal * (1 + jitter) + 1e-12
    assert 0.0 <= delay <= config.max_delay


def test_jitter_is_reproducible_with_a_seeded_generator() -> None:
    """The same seed gives the same jittered delays; jitter does move the delay off the nominal value."""
    config = RetryConfig(jitter=0.5)
    first = [backoff_delay(a, config, random.Random(3)) for a in range(1, 6)]
    second = [backoff_delay(a, config, random.Random(3)) for a in range(1, 6)]
    assert first == second
    assert first != [backoff_delay(a, NO_JITTER) for a in range(1, 6)]


@pytest.mark.parametrize("attempt", [0, -1])
def test_attempt_is_one_based(attempt: int) -> None:
    """Attempt numbers start at 1; 0 or less is a programming error (ValueError)."""
    with pytest.raises(ValueError, match="1-based"):
        backoff_delay(attempt, NO_JITTER)


RETRYABLE = TransportError("stream reset", node_id="peer-1")


@pytest.mark.parametrize(
    "error",
    [
        ValidationError("Prompt cannot be empty"),
        ConfigurationError("bad config"),
        InvalidStateError("not now"),
        FabstirError("internal"),
        HostError("host said no", retryable=False),
        RuntimeError("not a fabstir error"),
    ],
)
def test_non_retryable_errors_are_not_retried(error: BaseException) -> None:
    """Errors that do not say a retry can help (and foreign exceptions) are never retried."""
    assert should_retry(error, 1, RetryConfig(), None) is False


def test_retryable_error_within_budget_is_retried() -> None:
    """A retryable error with attempts left and no deadline is retried."""
    assert should_retry(RETRYABLE, 1, RetryConfig(), None) is True
    assert should_retry(FabstirError("explicitly retryable", retryable=True), 1, RetryConfig(), None) is True


def test_attempts_are_exhausted_after_max_retries() -> None:
    """``max_retries`` retries follow the first try: attempts 1..max_retries may retry, later ones not."""
    config = RetryConfig(max_retries=3)
    assert [should_retry(RETRYABLE, a, config, None) for a in (1, 2, 3, 4, 5)] == [
        True,
        True,
        True,
        False,
        False,
    ]


def test_zero_max_retries_never_retries() -> None:
    """With max_retries 0 the first failure is final."""
    assert should_retry(RETRYABLE, 1, RetryConfig(max_retries=0), None) is False


def test_deadline_too_short_for_the_next_delay_stops_retrying() -> None:
    """A retry is refused when the remaining time cannot hold the next backoff delay."""
    config = RetryConfig(max_retries=10, jitter=0.0)
    # the third attempt's delay is 0.4 s
    assert should_retry(RETRYABLE, 3, config, 0.5) is True
    assert should_retry(RETRYABLE, 3, config, 0.4) is False
    assert should_retry(RETRYABLE, 3, config, 0.1) is False
    assert should_retry(RETRYABLE, 3, config, 0.0) is False
    assert should_retry(RETRYABLE, 3, config, -1.0) is False


def test_deadline_allows_for_the_longest_jittered_delay() -> None:
    """With jitter the delay may be up to (1 + jitter) × nominal, so only a deadline that holds that
    worst case allows the retry: sleeping must never run past the deadline."""
    config = RetryConfig(max_retries=10, jitter=0.5)
    # nominal delay of attempt 1 is 0.1 s, the longest jittered one 0.15 s
    assert should_retry(RETRYABLE, 1, config, 0.12) is False
    assert should_retry(RETRYABLE, 1, config, 0.16) is True
    for seed in range(200):
        assert backoff_delay(1, config, random.Random(seed)) < 0.16


def test_deadline_uses_the_capped_delay() -> None:
    """Past the cap the next delay is max_delay, so a deadline just above max_delay still allows retries."""
    config = RetryConfig(max_retries=100, jitter=0.1)
    assert should_retry(RETRYABLE, 40, config, config.max_delay + 0.01) is True
    assert should_retry(RETRYABLE, 40, config, config.max_delay - 0.01) is False
