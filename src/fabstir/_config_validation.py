"""Validation rules of the configuration, with the exact messages of SPEC §3 (Python field names).
(Stub: to be completed.)"""

from __future__ import annotations

from typing import Any


def validate_mode(mode: Any) -> None:
    pass


def validate_p2p_for_production(p2p: Any) -> None:
    pass


def validate_retry(config: Any) -> None:
    pass


def validate_timeouts(config: Any) -> None:
    pass


def validate_discovery(config: Any) -> None:
    pass


def validate_chain(config: Any) -> None:
    pass


def validate_recovery(config: Any) -> None:
    pass


def validate_mock(config: Any) -> None:
    pass


def validate_selection_strategy(value: Any) -> None:
    pass


def require_positive_int(value: Any, name: str) -> None:
    pass


def reject_unknown_keys(cls: type, values: Any) -> None:
    pass
