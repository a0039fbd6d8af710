"""Per-host reliability: success/failure counts with a prior, and time-limited blacklisting (pure state,
driven by an injected clock)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["NodeStats", "ReliabilityTracker"]


@dataclass(slots=True)
class NodeStats:
    successes: float = 0.0
    failures: float = 0.0
    lies: int = 0
    drops: int = 0
    last_failure: float | None = None


class ReliabilityTracker:
    """Reliability = (successes + prior·w) / (attempts + w): a new host starts at its prior (``w`` pseudo
    observations), and evidence moves it."""

    def __init__(self, clock: Callable[[], float], *, prior: float = 0.9, prior_weight: float = 5.0) -> None:
        self._clock = clock
        self._prior = prior
        self._weight = prior_weight
        self._stats: dict[str, NodeStats] = {}
        self._priors: dict[str, float] = {}
        self._blacklist: dict[str, float] = {}

    def set_prior(self, peer_id: str, prior: float) -> None:
        self._priors[peer_id] = prior

    def stats(self, peer_id: str) -> NodeStats:
        return self._stats.setdefault(peer_id, NodeStats())

    def reliability(self, peer_id: str) -> float:
        stats = self._stats.get(peer_id, NodeStats())
        prior = self._priors.get(peer_id, self._prior)
        attempts = stats.successes + stats.failures
        return (stats.successes + prior * self._weight) / (attempts + self._weight)

    def record_success(self, peer_id: str) -> None:
        self.stats(peer_id).successes += 1

    def record_failure(self, peer_id: str, *, drop: bool = False, lie: bool = False) -> None:
        stats = self.stats(peer_id)
        stats.failures += 1
        stats.last_failure = self._clock()
        stats.drops += int(drop)
        stats.lies += int(lie)

    def blacklist(self, peer_id: str, duration: float) -> None:
        self._blacklist[peer_id] = self._clock() + duration

    def is_blacklisted(self, peer_id: str) -> bool:
        until = self._blacklist.get(peer_id)
        if until is None:
            return False
        if until <= self._clock():
            del self._blacklist[peer_id]
            return False
        return True

    def blacklisted(self) -> dict[str, float]:
        now = self._clock()
        return {peer: until for peer, until in self._blacklist.items() if until > now}
