"""The backend seam: where a host's tokens come from."""

from ._base import Backend, Generation, GenerationRequest, Usage

__all__ = ["Backend", "Generation", "GenerationRequest", "Usage"]
