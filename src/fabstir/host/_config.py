"""The host node's configuration: frozen, keyword-only, validated at construction.

Times are seconds (floats) except ``hold_ms``, which travels on the wire in the ``Offer`` frame.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from .._exceptions import ConfigurationError
from .._models import RejectReason
from ..protocol import MAX_FIELD_CHARS

__all__ = ["SETTLEMENT_POLICIES", "HostConfig", "HostFaults"]

#: The agent string travels in ``Hello``; a short product/version tag is all it is for.
_MAX_AGENT_CHARS = 256


def _int(owner: str, name: str, value: Any, *, minimum: int) -> None:
    if type(value) is not int:
        raise ConfigurationError(f"{owner}.{name} must be an integer, got {value!r}")
    if value < minimum:
        raise ConfigurationError(f"{owner}.{name} must be at least {minimum}, got {value}")


def _optional_int(owner: str, name: str, value: Any, *, minimum: int) -> None:
    if value is not None:
        _int(owner, name, value, minimum=minimum)


def _seconds(owner: str, name: str, value: Any, *, positive: bool) -> None:
    if type(value) not in (int, float) or not math.isfinite(value):
        raise ConfigurationError(f"{owner}.{name} must be a finite number of seconds, got {value!r}")
    if value < 0 or (positive and value == 0):
        kind = "positive" if positive else "non-negative"
        raise ConfigurationError(f"{owner}.{name} must be {kind}, got {value!r}")


@dataclass(frozen=True, kw_only=True, slots=True)
class HostFaults:
    """Scripted misbehaviour, for mock mode and fault tests. The defaults commit no fault.

    * ``reject`` — answer every request with ``Reject(reason=reject)`` (a :class:`fabstir.RejectReason`);
    * ``drop_at_token`` — after sending this many tokens, reset the stream and forget the job, like a crash
      (no ``End``, no ``Error``; what was receipted is still settled);
    * ``first_token_delay`` — seconds to wait before the first token;
    * ``overclaim_tokens`` — report this many more completion tokens in ``End`` than were generated;
    * ``error_at_token`` — after sending this many tokens, send ``Error(code="backend", retryable=True)``;
    * ``kill_at_token`` — after sending this many tokens, crash for real: the node calls its
      ``process_fault`` hook with ``"SIGKILL"`` (``fabstir host run`` kills its own process: no ``End``, no
      ``Error``, no settlement). In-process, or once the hook returns, it behaves like ``drop_at_token``;
    * ``stop_at_token`` — after sending this many tokens, freeze: the hook gets ``"SIGSTOP"`` (the process
      stops; the connection stays open and nothing more arrives). In-process, or once the hook returns
      (the process was continued), the job hangs: no more tokens, no ``End``, not even for a ``Cancel``,
      until the client gives up and ends the stream;
    * ``serve_model`` — serve jobs with this model instead of the one requested and advertised (a swapped
      or misconfigured backend), and say so truthfully in the ``model`` field of ``TokenBatch``.

    The token counts are exact: the batch carrying token N is the last one sent before the fault.
    """

    reject: str | None = None
    drop_at_token: int | None = None
    first_token_delay: float = 0.0
    overclaim_tokens: int = 0
    error_at_token: int | None = None
    kill_at_token: int | None = None
    stop_at_token: int | None = None
    serve_model: str | None = None

    def __post_init__(self) -> None:
        if self.reject is not None and self.reject not in {r.value for r in RejectReason}:
            reasons = ", ".join(r.value for r in RejectReason)
            raise ConfigurationError(f"HostFaults.reject must be one of {reasons}, got {self.reject!r}")
        _optional_int("HostFaults", "drop_at_token", self.drop_at_token, minimum=0)
        _optional_int("HostFaults", "error_at_token", self.error_at_token, minimum=0)
        _optional_int("HostFaults", "kill_at_token", self.kill_at_token, minimum=0)
        _optional_int("HostFaults", "stop_at_token", self.stop_at_token, minimum=0)
        _int("HostFaults", "overclaim_tokens", self.overclaim_tokens, minimum=0)
        _seconds("HostFaults", "first_token_delay", self.first_token_delay, positive=False)
        model: Any = self.serve_model
        # it travels in TokenBatch.model, a short string field of the codec
        if model is not None and not (isinstance(model, str) and 0 < len(model) <= MAX_FIELD_CHARS):
            raise ConfigurationError(
                f"HostFaults.serve_model must be a model id of 1 to {MAX_FIELD_CHARS} characters, "
                f"got {model!r}"
            )


def _freeze_prices(raw: Any, models: tuple[str, ...]) -> Mapping[str, Mapping[str, int]]:
    if not isinstance(raw, Mapping):
        raise ConfigurationError("HostConfig.prices must map model -> payment token -> price per token")
    prices: dict[str, Mapping[str, int]] = {}
    for model, per_token in raw.items():
        if model not in models:
            raise ConfigurationError(f"HostConfig.prices names model {model!r}, which is not in models")
        if not isinstance(per_token, Mapping) or not per_token:
            raise ConfigurationError(
                f"HostConfig.prices[{model!r}] must map payment token -> price per token"
            )
        for token, price in per_token.items():
            if not isinstance(token, str) or not token:
                raise ConfigurationError(
                    f"HostConfig.prices[{model!r}] has a payment token that is not a string"
                )
            if type(price) is not int or price < 0:
                raise ConfigurationError(
                    f"HostConfig.prices[{model!r}][{token!r}] must be a non-negative integer, got {price!r}"
                )
        prices[model] = MappingProxyType(dict(per_token))
    missing = [m for m in models if m not in prices]
    if missing:
        raise ConfigurationError(f"HostConfig.prices has no price for model(s) {', '.join(missing)}")
    return MappingProxyType(prices)


#: When a host settles a session that carries several jobs (see :class:`HostConfig`).
SETTLEMENT_POLICIES = ("per_job", "batched")


@dataclass(frozen=True, kw_only=True, slots=True)
class HostConfig:
    """What a :class:`~fabstir.host.HostNode` serves and how it protects itself.

    ``prices`` maps model → payment token → price per token (smallest unit); every model needs at least one
    price. ``max_tokens`` caps one job; ``max_concurrent_jobs`` jobs generate at once and ``max_queue`` more
    may wait for a slot. ``credit_tokens`` is how far the host streams ahead of the client's latest receipt;
    an offer holds its place for ``hold_ms``. ``receipt_timeout`` bounds every wait on the client (receipts
    while out of credit, a blocked write); ``final_receipt_timeout`` the wait for the last receipt after
    ``End``. The capability record lives ``record_ttl``; the host hands out a fresh one as soon as its load
    changes, and puts it in the DHT every ``record_refresh`` (a DHT walk each time). The provider records
    are re-announced every ``provider_refresh`` (they do not change, and last far longer in the DHT). A
    broken stream's job can be resumed for ``resume_ttl`` (0: never). A session must stay open
    ``min_session_ttl`` beyond the confirmation. ``settle_timeout`` bounds one settlement.

    A session may carry several jobs (the client asks with ``Confirm.keep_open``). ``settlement`` says when
    the host cashes the receipts of such a session: ``"per_job"`` (settle after each job: the host holds at
    most one job's earnings unsettled) or ``"batched"`` (only when the session closes: one transaction for
    all its jobs). A session left idle ``session_idle_timeout`` is closed (the rest refunded), and always
    before it expires.
    """

    models: tuple[str, ...]
    prices: Mapping[str, Mapping[str, int]]
    max_tokens: int = 2048
    max_concurrent_jobs: int = 4
    max_queue: int = 8
    credit_tokens: int = 64
    hold_ms: int = 10_000
    batch_interval: float = 0.025
    receipt_timeout: float = 10.0
    final_receipt_timeout: float = 5.0
    record_ttl: float = 300.0
    record_refresh: float = 60.0
    provider_refresh: float = 600.0
    resume_ttl: float = 60.0
    min_session_ttl: float = 60.0
    settle_timeout: float = 60.0
    settlement: str = "per_job"
    session_idle_timeout: float = 120.0
    agent: str = "fabstir-host"
    faults: HostFaults | None = field(default=None)

    def __post_init__(self) -> None:
        models: Any = self.models
        if isinstance(models, str) or not isinstance(models, tuple | list) or not models:
            raise ConfigurationError("HostConfig.models must be a non-empty list of model ids")
        if not all(isinstance(m, str) and m for m in models):
            raise ConfigurationError("HostConfig.models must hold non-empty strings")
        if len(set(models)) != len(models):
            raise ConfigurationError("HostConfig.models lists a model twice")
        object.__setattr__(self, "models", tuple(models))
        object.__setattr__(self, "prices", _freeze_prices(self.prices, self.models))
        _int("HostConfig", "max_tokens", self.max_tokens, minimum=1)
        _int("HostConfig", "max_concurrent_jobs", self.max_concurrent_jobs, minimum=1)
        _int("HostConfig", "max_queue", self.max_queue, minimum=0)
        _int("HostConfig", "credit_tokens", self.credit_tokens, minimum=1)
        _int("HostConfig", "hold_ms", self.hold_ms, minimum=1)
        for name in (
            "receipt_timeout",
            "final_receipt_timeout",
            "record_ttl",
            "record_refresh",
            "provider_refresh",
            "settle_timeout",
            "session_idle_timeout",
        ):
            _seconds("HostConfig", name, getattr(self, name), positive=True)
        for name in ("batch_interval", "resume_ttl", "min_session_ttl"):
            _seconds("HostConfig", name, getattr(self, name), positive=False)
        if self.settlement not in SETTLEMENT_POLICIES:
            raise ConfigurationError(
                f"HostConfig.settlement must be one of {', '.join(SETTLEMENT_POLICIES)}, "
                f"got {self.settlement!r}"
            )
        if self.record_refresh >= self.record_ttl:
            raise ConfigurationError("HostConfig.record_refresh must be shorter than record_ttl")
        if not isinstance(self.agent, str) or len(self.agent) > _MAX_AGENT_CHARS:
            raise ConfigurationError(
                f"HostConfig.agent must be a string of at most {_MAX_AGENT_CHARS} characters"
            )
        if self.faults is not None and not isinstance(self.faults, HostFaults):
            raise ConfigurationError("HostConfig.faults must be a HostFaults or None")

    def price(self, model: str, payment_token: str) -> int | None:
        """The price per token of ``model`` in ``payment_token``, or ``None`` if not accepted."""
        return self.prices.get(model, {}).get(payment_token)
