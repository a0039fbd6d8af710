"""The backend seam: where a host's tokens come from.

Implementations: :class:`~fabstir.backend.SimulatedBackend` (mock mode; deterministic), an
OpenAI-compatible HTTP client and the embedded llama.cpp server (issue 3). They map their own failures to
:class:`fabstir.BackendError`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

__all__ = ["Backend", "Generation", "GenerationRequest", "Usage"]


@dataclass(frozen=True, slots=True)
class GenerationRequest:
    model: str
    prompt: str
    max_tokens: int
    temperature: float = 0.0
    seed: int | None = None
    system: str | None = None
    #: text already produced for this completion (by this host or another): continue after it.
    continuation: str = ""


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int


@runtime_checkable
class Generation(Protocol):
    """One running completion: iterate for token texts; afterwards ``usage`` and ``finish_reason``
    (``"stop"`` or ``"length"``) are set. ``aclose`` stops generation early (idempotent)."""

    usage: Usage | None
    finish_reason: str | None

    def __aiter__(self) -> AsyncIterator[str]: ...

    async def aclose(self) -> None: ...


@runtime_checkable
class Backend(Protocol):
    async def list_models(self) -> tuple[str, ...]: ...

    def generate(self, request: GenerationRequest) -> Generation: ...

    async def aclose(self) -> None: ...
