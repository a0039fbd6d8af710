"""The backend seam: where a host's tokens come from."""

from ._base import Backend, Generation, GenerationRequest, Usage
from ._simulated import SimulatedBackend, SimulatedGeneration

__all__ = ["Backend", "Generation", "GenerationRequest", "SimulatedBackend", "SimulatedGeneration", "Usage"]
