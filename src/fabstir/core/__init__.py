"""The core: discovery and selection, negotiation, the client job runner, streams, pricing, retry and
reliability policies. Pure policies plus drivers over the seams; no seam implementation lives here."""

from ._stream import ResponseStream, TokenBuffer

__all__ = ["ResponseStream", "TokenBuffer"]
