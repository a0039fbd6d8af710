"""Peer multiaddrs as people write them (``/ip4/…/tcp/…/p2p/<peer id>``): parsed into a
:class:`PeerInfo`, and built from a running node's addresses."""

from __future__ import annotations

from typing import Any

from .._exceptions import ConfigurationError
from ._base import PeerInfo

__all__ = ["dialable_addrs", "parse_peer_addr"]


def parse_peer_addr(addr: str) -> PeerInfo:
    """``/ip4/…/tcp/…/p2p/<peer id>`` → :class:`PeerInfo`; :class:`ConfigurationError` otherwise."""
    if not isinstance(addr, str) or "/p2p/" not in addr:
        raise ConfigurationError(f"Invalid bootstrap node format: {addr}")
    transport_part, _, peer_id = addr.rpartition("/p2p/")
    if not peer_id or "/" in peer_id or not transport_part:
        raise ConfigurationError(f"Invalid bootstrap node format: {addr}")
    return PeerInfo(peer_id, (transport_part,))


def dialable_addrs(transport: Any, peer_id: str) -> list[str]:
    """A running node's announced addresses, each ending in ``/p2p/<peer id>`` (``[]`` if not running)."""
    if transport is None:
        return []
    suffix = f"/p2p/{peer_id}"
    return [a if a.endswith(suffix) else a + suffix for a in transport.listen_addrs]
