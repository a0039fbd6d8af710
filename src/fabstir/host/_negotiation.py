"""The host's side of negotiation as pure decisions: which version to speak, whether a request can be
served (and if not, which reject reason), and whether a payment session pays for an offer."""

from __future__ import annotations

from collections.abc import Sequence

from .._models import RejectReason
from ..chain import SessionInfo
from ..protocol import Request
from ._config import HostConfig

__all__ = ["choose_version", "request_problem", "session_problem"]


def _parse(version: str) -> tuple[int, int] | None:
    major, _, minor = version.partition(".")
    if not (major.isdigit() and minor.isdigit()):
        return None
    return int(major), int(minor)


def choose_version(theirs: Sequence[str], ours: Sequence[str]) -> str | None:
    """The version to answer with: the highest major both speak, at the lower of the two minors (a minor
    only adds optional fields, so the lower one is what both understand). ``None`` if no major is shared."""
    their_minor: dict[int, int] = {}
    for version in theirs:
        parsed = _parse(version)
        if parsed is not None:
            their_minor[parsed[0]] = max(their_minor.get(parsed[0], -1), parsed[1])
    best: tuple[int, int] | None = None
    for version in ours:
        parsed = _parse(version)
        if parsed is None or parsed[0] not in their_minor:
            continue
        candidate = (parsed[0], min(parsed[1], their_minor[parsed[0]]))
        if best is None or candidate > best:
            best = candidate
    return None if best is None else f"{best[0]}.{best[1]}"


def request_problem(config: HostConfig, request: Request) -> tuple[RejectReason, str] | None:
    """Why ``request`` cannot be served (reject reason and message), checked in protocol order: model,
    token limit, price and payment token. ``None`` if it can (admission is checked separately)."""
    if request.model not in config.models:
        return RejectReason.UNSUPPORTED_MODEL, f"model {request.model!r} is not served here"
    if not 0 < request.max_tokens <= config.max_tokens:
        return RejectReason.ERROR, f"max_tokens must be between 1 and {config.max_tokens}"
    price = config.price(request.model, request.payment_token)
    if price is None:
        accepted = ", ".join(sorted(config.prices[request.model]))
        return (
            RejectReason.INSUFFICIENT_PAYMENT,
            f"payment token {request.payment_token!r} not accepted ({accepted})",
        )
    if request.max_price_per_token is not None and request.max_price_per_token < price:
        return RejectReason.INSUFFICIENT_PAYMENT, f"price per token is {price}, above the maximum offered"
    return None


def session_problem(
    session: SessionInfo,
    *,
    payment_address: str,
    payment_token: str,
    price_per_token: int,
    now: float,
    min_session_ttl: float,
) -> str | None:
    """Why ``session`` does not pay for the offer, or ``None`` if it does: it must be open, pay this host
    in the offered token at the offered price, stay open ``min_session_ttl`` longer, and hold at least
    one token's worth."""
    if session.closed:
        return "the payment session is closed"
    if session.host.lower() != payment_address.lower():
        return "the payment session pays another host"
    if session.token != payment_token:
        return f"the payment session is in {session.token}, the offer in {payment_token}"
    if session.price_per_token != price_per_token:
        return f"the payment session's price {session.price_per_token} is not the offered {price_per_token}"
    if session.expiry <= now + min_session_ttl:
        return f"the payment session expires within {min_session_ttl:g} s"
    if session.locked < price_per_token:
        return "the payment session's deposit does not cover one token"
    return None
