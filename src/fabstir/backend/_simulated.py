"""A deterministic stand-in for a language model: the backend of mock mode and of the host's tests.

The text is a function of (backend seed, model, system prompt, prompt, request seed) only: a seeded
:class:`random.Random` writes sentences from a small built-in vocabulary. Tokens are words with their
leading space, and punctuation marks. The completion's natural length (where it says "stop") is part of
that function too, so a completion can be *continued*: given the text of its first ``k`` tokens as
``continuation``, a generation yields exactly tokens ``k, k+1, ...`` of the uninterrupted completion. A
host taking over a failed host's job relies on this to continue the answer without a seam.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import weakref
from collections.abc import Sequence

from .._exceptions import BackendError
from ._base import GenerationRequest, Usage

__all__ = ["SimulatedBackend", "SimulatedGeneration"]

_DETERMINERS = ("the", "a", "every", "this", "one", "each", "our", "that")
_ADJECTIVES = (
    "quiet", "bright", "small", "ancient", "curious", "gentle", "distant", "clever", "green", "silver",
    "patient", "hidden", "warm", "simple", "careful", "strange", "golden", "steady", "open", "busy",
)  # fmt: skip
_NOUNS = (
    "river", "model", "garden", "network", "teacher", "engine", "forest", "signal", "village", "answer",
    "machine", "library", "mountain", "question", "market", "window", "story", "harbor", "student", "lantern",
    "token", "bridge", "city", "planet", "melody", "letter", "traveler", "island", "circuit", "idea",
)  # fmt: skip
_VERBS = (
    "finds", "builds", "follows", "remembers", "carries", "explains", "watches", "opens", "changes", "guides",
    "answers", "shapes", "crosses", "measures", "reaches", "holds", "writes", "joins", "lights", "keeps",
)  # fmt: skip
_ADVERBS = (
    "slowly", "often", "quietly", "always", "again", "together", "softly", "today", "carefully", "still",
)  # fmt: skip
_CONNECTORS = ("and", "while", "because", "so", "but", "until", "when")
_ENDINGS = (".", ".", ".", ".", "!", "?")

#: Natural completions run between these many tokens (then end at the next sentence boundary).
_MIN_LENGTH = 24
_MAX_LENGTH = 320


def _sentence(rng: random.Random) -> list[str]:
    words: list[str] = [rng.choice(_DETERMINERS)]
    if rng.random() < 0.6:
        words.append(rng.choice(_ADJECTIVES))
    words += [rng.choice(_NOUNS), rng.choice(_VERBS)]
    if rng.random() < 0.5:
        words.append(rng.choice(_ADVERBS))
    else:
        words += [rng.choice(_DETERMINERS), rng.choice(_NOUNS)]
    tail: list[str] = []
    if rng.random() < 0.4:
        clause = (_CONNECTORS, _DETERMINERS, _NOUNS, _VERBS)
        tail = [",", *(rng.choice(words) for words in clause)]
        if rng.random() < 0.5:
            tail.append(rng.choice(_ADVERBS))
    words[0] = words[0].capitalize()
    return [*words, *tail, rng.choice(_ENDINGS)]


def _completion(rng: random.Random, *, leading_space: bool) -> tuple[str, ...]:
    """One natural completion: whole sentences, ending at the first sentence end past a seeded length."""
    target = rng.randint(_MIN_LENGTH, _MAX_LENGTH)
    tokens: list[str] = []
    while len(tokens) < target:
        for piece in _sentence(rng):
            if piece in {",", ".", "!", "?"}:
                tokens.append(piece)
            elif tokens or leading_space:
                tokens.append(" " + piece)
            else:
                tokens.append(piece)
    return tuple(tokens)


def _rng_for(*parts: object) -> random.Random:
    digest = hashlib.sha256("\x00".join(repr(p) for p in parts).encode()).digest()
    return random.Random(int.from_bytes(digest[:16], "big"))


def _split_continuation(tokens: tuple[str, ...], continuation: str) -> int | None:
    """How many leading tokens spell ``continuation`` exactly, or ``None`` if it is not such a prefix."""
    if not continuation:
        return 0
    length = 0
    for count, token in enumerate(tokens, start=1):
        length += len(token)
        if length == len(continuation):
            return count if "".join(tokens[:count]) == continuation else None
        if length > len(continuation):
            return None
    return None


class SimulatedGeneration:
    """One running simulated completion (implements :class:`~fabstir.backend.Generation`).

    ``usage`` and ``finish_reason`` are set once the last token was yielded. After an early ``aclose``,
    ``usage`` counts the tokens yielded so far and ``finish_reason`` stays ``None``.
    """

    def __init__(
        self,
        tokens: tuple[str, ...],
        *,
        finish_reason: str,
        prompt_tokens: int,
        token_delay: float,
        first_token_delay: float,
    ) -> None:
        self.usage: Usage | None = None
        self.finish_reason: str | None = None
        self._tokens = tokens
        self._final_reason = finish_reason
        self._prompt_tokens = prompt_tokens
        self._token_delay = token_delay
        self._first_token_delay = first_token_delay
        self._index = 0
        self._closed = asyncio.Event()

    def __aiter__(self) -> SimulatedGeneration:
        return self

    async def __anext__(self) -> str:
        if self._closed.is_set():
            raise StopAsyncIteration
        if self._index >= len(self._tokens):
            self._finish()
            raise StopAsyncIteration
        delay = self._first_token_delay if self._index == 0 else self._token_delay
        if delay > 0:
            # Waiting on the close event (not a bare sleep) lets aclose() interrupt the pacing at once.
            try:
                async with asyncio.timeout(delay):
                    await self._closed.wait()
            except TimeoutError:
                pass
            if self._closed.is_set():
                raise StopAsyncIteration
        token = self._tokens[self._index]
        self._index += 1
        if self._index == len(self._tokens):
            self._finish()
        return token

    def _finish(self) -> None:
        if self.usage is None:
            self.usage = Usage(self._prompt_tokens, self._index)
            self.finish_reason = self._final_reason

    async def aclose(self) -> None:
        """Stops the generation; idempotent. A pending ``__anext__`` ends the iteration."""
        if self._closed.is_set():
            return
        self._closed.set()
        if self.usage is None:
            self.usage = Usage(self._prompt_tokens, self._index)


class SimulatedBackend:
    """A deterministic :class:`~fabstir.backend.Backend` serving ``models``.

    ``token_delay`` paces tokens (seconds between two tokens) and ``first_token_delay`` delays the first
    one; with both at 0 a generation never sleeps. ``seed`` selects one of many possible "models": hosts
    sharing a seed write the same completion for the same request, which is what failover relies on.
    ``temperature`` is ignored: the simulated model is deterministic by construction.
    """

    def __init__(
        self,
        models: Sequence[str],
        *,
        token_delay: float = 0.0,
        first_token_delay: float = 0.0,
        seed: int = 0,
    ) -> None:
        if isinstance(models, str) or not models or not all(isinstance(m, str) and m for m in models):
            raise ValueError("models must be a non-empty sequence of model ids")
        if token_delay < 0 or first_token_delay < 0:
            raise ValueError("delays must not be negative")
        self._models = tuple(models)
        self._token_delay = float(token_delay)
        self._first_token_delay = float(first_token_delay)
        self._seed = seed
        self._generations: weakref.WeakSet[SimulatedGeneration] = weakref.WeakSet()
        self._closed = False

    async def list_models(self) -> tuple[str, ...]:
        return self._models

    def completion(self, request: GenerationRequest) -> tuple[tuple[str, ...], str]:
        """The tokens a generation of ``request`` yields and its finish reason, computed at once."""
        if request.model not in self._models:
            raise BackendError(f"model {request.model!r} is not served by this backend")
        if request.max_tokens < 0:
            raise BackendError("max_tokens must not be negative")
        key = (self._seed, request.model, request.system, request.prompt, request.seed)
        natural = _completion(_rng_for(*key), leading_space=False)
        start = _split_continuation(natural, request.continuation)
        if start is None:
            # Text this model would not have written (another backend's, or cut mid-token): continue it
            # with a fresh completion that depends on it, still deterministically.
            natural = _completion(_rng_for(*key, request.continuation), leading_space=True)
            start = 0
        remaining = natural[start:]
        if len(remaining) > request.max_tokens:
            return remaining[: request.max_tokens], "length"
        return remaining, "stop"

    def generate(self, request: GenerationRequest) -> SimulatedGeneration:
        """Starts a generation. Raises :class:`BackendError` for an unknown model or a closed backend."""
        if self._closed:
            raise BackendError("the backend is closed")
        tokens, finish_reason = self.completion(request)
        generation = SimulatedGeneration(
            tokens,
            finish_reason=finish_reason,
            prompt_tokens=len(request.prompt) // 4 + 1,
            token_delay=self._token_delay,
            first_token_delay=self._first_token_delay,
        )
        self._generations.add(generation)
        return generation

    async def aclose(self) -> None:
        """Stops every running generation; later ``generate`` calls fail. Idempotent."""
        self._closed = True
        for generation in list(self._generations):
            await generation.aclose()
