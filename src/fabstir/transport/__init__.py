"""The transport seam: interfaces, and the in-memory implementation used by mock mode and unit tests."""

from ._base import PeerEvent, PeerEventKind, PeerInfo, Stream, StreamHandler, Transport
from ._memory import InMemoryNetwork, InMemoryStream, InMemoryTransport

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
]
