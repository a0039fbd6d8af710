"""Mapping libp2p and trio exceptions to the fabstir error tree (the only errors callers see)."""

from __future__ import annotations

import trio
from libp2p.host.exceptions import StreamFailure
from libp2p.network.exceptions import SwarmException
from libp2p.network.stream.exceptions import StreamReset
from libp2p.protocol_muxer.exceptions import MultiselectClientError
from libp2p.stream_muxer.exceptions import MuxedStreamReset

from ..._exceptions import FabstirError, PeerUnreachableError, TransportError

__all__ = ["is_reset", "is_unsupported_protocol", "to_transport_error", "unreachable"]


def is_unsupported_protocol(exc: BaseException) -> bool:
    """Whether a failed ``new_stream`` means "the peer is there but does not speak this protocol".

    py-libp2p raises the same ``MultiselectClientError`` for a refused protocol, a timeout and a broken
    connection; only the message tells them apart (stable: the version is pinned)."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, MultiselectClientError) and str(cause).startswith("protocols not supported"):
            return True
        cause = cause.__cause__
    return False


def is_reset(exc: BaseException) -> bool:
    """Whether ``exc`` was caused by the peer resetting the stream."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, StreamReset | MuxedStreamReset):
            return True
        cause = cause.__cause__
    return False


def unreachable(peer_id: str, exc: BaseException | None = None) -> PeerUnreachableError:
    detail = f": {_describe(exc)}" if exc is not None else ""
    return PeerUnreachableError(f"cannot reach peer {peer_id}{detail}", node_id=peer_id)


def to_transport_error(exc: BaseException, what: str, peer_id: str | None = None) -> TransportError:
    """``exc`` as a :class:`TransportError` (fabstir errors pass through; use ``raise ... from exc``)."""
    if isinstance(exc, TransportError):
        return exc
    if isinstance(exc, FabstirError):
        return TransportError(f"{what}: {exc}", node_id=peer_id)
    if isinstance(exc, SwarmException):
        return PeerUnreachableError(f"{what}: {_describe(exc)}", node_id=peer_id)
    if isinstance(exc, trio.TooSlowError):
        return TransportError(f"{what}: timed out", node_id=peer_id)
    if isinstance(exc, StreamFailure) and is_unsupported_protocol(exc):
        return TransportError(f"{what}: the peer does not support the protocol", node_id=peer_id)
    return TransportError(f"{what}: {_describe(exc)}", node_id=peer_id)


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
