"""Token coalescing: which tokens go into the next ``TokenBatch`` frame, and when.

One frame per token caps a libp2p stream near 2,000 frames/s; ~50 tokens per frame reach ~70,000
tokens/s (FINDINGS.md). So the host flushes the first token at once (time to first token is what users
feel) and afterwards at most once per ``batch_interval``, sending everything generated meanwhile.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = [
    "MAX_BATCH_CHARS",
    "MAX_BATCH_TOKENS",
    "MAX_TOKEN_CHARS",
    "FlushPacer",
    "split_token",
    "take_batch",
]

#: The codec refuses token texts over 256 characters; longer backend pieces are split (never truncated).
MAX_TOKEN_CHARS = 256
#: At most this many tokens per frame: far above what ~25 ms of generation produces, far below the
#: codec's 8192, so a backlog (a resumed stream, a slow reader catching up) goes out in several frames.
MAX_BATCH_TOKENS = 1024
#: And at most this much text per frame: a quarter of the 1 MiB frame limit leaves room for msgpack overhead.
MAX_BATCH_CHARS = 256 * 1024


def split_token(text: str) -> list[str]:
    """``text`` as pieces the wire accepts (each at most :data:`MAX_TOKEN_CHARS`); empty text yields none."""
    return [text[i : i + MAX_TOKEN_CHARS] for i in range(0, len(text), MAX_TOKEN_CHARS)]


def take_batch(tokens: Sequence[str], start: int, stop: int) -> tuple[str, ...]:
    """``tokens[start:stop]``, cut short so that one frame stays within the batch limits (never empty if
    ``start < stop``)."""
    stop = min(stop, len(tokens), start + MAX_BATCH_TOKENS)
    chars = 0
    end = start
    while end < stop:
        chars += len(tokens[end])
        if chars > MAX_BATCH_CHARS and end > start:
            break
        end += 1
    return tuple(tokens[start:end])


class FlushPacer:
    """When the next batch may go out: at once for the first, then at most every ``interval`` seconds."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._next: float | None = None

    def delay(self, now: float) -> float:
        """Seconds to wait before flushing (0: flush now)."""
        if self._next is None:
            return 0.0
        return max(0.0, self._next - now)

    def flushed(self, now: float) -> None:
        self._next = now + self.interval
