"""The host node: serves jobs from an inference backend and gets paid through payment sessions."""

from ._config import HostConfig, HostFaults
from ._metrics import HostMetrics, SettledJob
from ._node import HostNode

__all__ = ["HostConfig", "HostFaults", "HostMetrics", "HostNode", "SettledJob"]
