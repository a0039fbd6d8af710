"""The backend seam: where a host's tokens come from.

The HTTP backends (:class:`OpenAIBackend`, :class:`LlamaCppBackend`) are imported on first use, so that
mock mode and the sans-IO protocol never load an HTTP client.
"""

from typing import TYPE_CHECKING, Any

from ._base import Backend, Generation, GenerationRequest, Usage
from ._simulated import SimulatedBackend, SimulatedGeneration

if TYPE_CHECKING:
    from ._llamacpp import BUILTIN_MODEL_ID, LlamaCppBackend
    from ._openai import OpenAIBackend, OpenAIGeneration

__all__ = [
    "BUILTIN_MODEL_ID",
    "Backend",
    "Generation",
    "GenerationRequest",
    "LlamaCppBackend",
    "OpenAIBackend",
    "OpenAIGeneration",
    "SimulatedBackend",
    "SimulatedGeneration",
    "Usage",
]

_LAZY = {
    "BUILTIN_MODEL_ID": "._llamacpp",
    "LlamaCppBackend": "._llamacpp",
    "OpenAIBackend": "._openai",
    "OpenAIGeneration": "._openai",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module, __name__), name)
