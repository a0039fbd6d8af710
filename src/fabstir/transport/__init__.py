"""The transport seam: interfaces, and the in-memory implementation used by mock mode and unit tests.

The libp2p implementation, ``Libp2pTransport`` (and its ``Libp2pStream``), is imported on first access
(``from fabstir.transport import Libp2pTransport``): it loads py-libp2p and trio, which mock mode never
needs. It is left out of ``__all__`` so that ``import *`` stays light.
"""

from typing import TYPE_CHECKING

from ._addrs import dialable_addrs, parse_peer_addr
from ._base import PeerEvent, PeerEventKind, PeerInfo, Stream, StreamHandler, Transport
from ._memory import InMemoryNetwork, InMemoryStream, InMemoryTransport

if TYPE_CHECKING:
    from ._libp2p import Libp2pStream as Libp2pStream
    from ._libp2p import Libp2pTransport as Libp2pTransport

__all__ = [
    "InMemoryNetwork",
    "InMemoryStream",
    "InMemoryTransport",
    "PeerEvent",
    "PeerEventKind",
    "PeerInfo",
    "Stream",
    "StreamHandler",
    "Transport",
    "dialable_addrs",
    "parse_peer_addr",
]

_LAZY = frozenset({"Libp2pStream", "Libp2pTransport"})


def __getattr__(name: str) -> object:
    if name in _LAZY:
        from . import _libp2p

        return getattr(_libp2p, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
