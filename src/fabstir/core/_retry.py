"""Retry policy as pure functions: exponential backoff with jitter and a cap, never past a deadline."""

from __future__ import annotations

import random

from .._config import RetryConfig
from .._exceptions import FabstirError

__all__ = ["backoff_delay", "should_retry"]


def backoff_delay(attempt: int, config: RetryConfig, rng: random.Random | None = None) -> float:
    """Delay before retry number ``attempt`` (1-based): initial × multiplier**(attempt-1), capped,
    ± jitter."""
    if attempt < 1:
        raise ValueError("attempt is 1-based")
    base = min(config.initial_delay * config.multiplier ** (attempt - 1), config.max_delay)
    if config.jitter:
        spread = base * config.jitter
        base += (rng or random).uniform(-spread, spread)
    return max(0.0, min(base, config.max_delay))


def should_retry(error: BaseException, attempt: int, config: RetryConfig, remaining: float | None) -> bool:
    """Retry if the error says it can help, attempts remain, and the next delay fits in the deadline.

    ``attempt`` is the number of attempts made so far (1 after the first failure), so at most
    ``max_retries`` retries follow the first try; ``remaining`` is the time left (None: no deadline).
    """
    if not isinstance(error, FabstirError) or not error.retryable:
        return False
    if attempt > config.max_retries:
        return False
    nominal = min(config.initial_delay * config.multiplier ** (attempt - 1), config.max_delay)
    # Jitter may lengthen the delay by up to its fraction; only the worst case is sure to fit.
    longest = min(nominal * (1 + config.jitter), config.max_delay)
    return remaining is None or remaining > longest
