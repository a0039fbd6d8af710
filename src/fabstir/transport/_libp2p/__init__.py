"""The production transport: py-libp2p (TCP, noise, yamux, Kademlia) behind the asyncio seam.

Importing this package imports py-libp2p and trio (about a second); :mod:`fabstir.transport` only does
so when ``Libp2pTransport`` is first asked for, so mock mode never pays for it.
"""

from ._dht import KAD_PROTOCOL_ID
from ._stream import Libp2pStream
from ._transport import Libp2pTransport

__all__ = ["KAD_PROTOCOL_ID", "Libp2pStream", "Libp2pTransport"]
