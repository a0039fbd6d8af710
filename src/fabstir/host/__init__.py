"""The host node: serves jobs from an inference backend and gets paid through payment sessions."""

from ._config import HostConfig, HostFaults
from ._metrics import HostMetrics, SettledJob
from ._node import HostNode
from ._service import HostService, HostServiceOptions

__all__ = [
    "HostConfig",
    "HostFaults",
    "HostMetrics",
    "HostNode",
    "HostService",
    "HostServiceOptions",
    "SettledJob",
]
