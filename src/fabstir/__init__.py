"""fabstir: a peer-to-peer LLM inference marketplace SDK.

Find GPU hosts through a DHT, negotiate, stream tokens over libp2p, pay per token through escrow — or
run the whole marketplace in-process in mock mode (the default)::

    async with FabstirSDK() as sdk:
        handle = await sdk.submit_job(prompt="Hello", model="llama-3.2-1b-instruct", stream=True)
        async for token in handle.stream:
            print(token.text, end="")

This module is the public surface: re-exports only.
"""

from ._config import (
    ChainConfig,
    DiscoveryConfig,
    MockConfig,
    MockHostSpec,
    P2PConfig,
    RecoveryConfig,
    RetryConfig,
    SDKConfig,
    TimeoutConfig,
)
from ._events import Event, EventName
from ._exceptions import (
    BackendError,
    CancelledError,
    ConfigurationError,
    DiscoveryError,
    ErrorCode,
    FabstirError,
    HostError,
    HostRejectedError,
    InsufficientFundsError,
    InvalidReceiptError,
    InvalidStateError,
    JobNotFoundError,
    LocalProtocolError,
    NoNodesAcceptedError,
    NotConnectedError,
    PaymentError,
    PeerUnreachableError,
    ProtocolError,
    RefundNotAllowedError,
    RemoteProtocolError,
    TimeoutError,
    TransportError,
    ValidationError,
)
from ._models import (
    NATIVE_TOKEN,
    ChainTransaction,
    CostBreakdown,
    CostEstimate,
    FinishReason,
    JobDetails,
    JobRecoveryInfo,
    JobRequest,
    JobStatus,
    ModelInfo,
    NodeCapabilities,
    NodeInfo,
    PaymentDetails,
    PaymentStatus,
    RecoverySession,
    RejectReason,
    StreamMetrics,
    StreamSummary,
    Token,
    TokenType,
)
from ._version import __version__
from .client import FabstirSDK, FabstirSDKSync, JobHandle, SyncJobHandle, SyncResponseStream
from .core import ResponseStream
from .core._selection import SelectionStrategy
from .host import HostConfig, HostFaults, HostMetrics, HostNode
from .mock import MockMarketplace

__all__ = [
    "NATIVE_TOKEN",
    "BackendError",
    "CancelledError",
    "ChainConfig",
    "ChainTransaction",
    "ConfigurationError",
    "CostBreakdown",
    "CostEstimate",
    "DiscoveryConfig",
    "DiscoveryError",
    "ErrorCode",
    "Event",
    "EventName",
    "FabstirError",
    "FabstirSDK",
    "FabstirSDKSync",
    "FinishReason",
    "HostConfig",
    "HostError",
    "HostFaults",
    "HostMetrics",
    "HostNode",
    "HostRejectedError",
    "InsufficientFundsError",
    "InvalidReceiptError",
    "InvalidStateError",
    "JobDetails",
    "JobHandle",
    "JobNotFoundError",
    "JobRecoveryInfo",
    "JobRequest",
    "JobStatus",
    "LocalProtocolError",
    "MockConfig",
    "MockHostSpec",
    "MockMarketplace",
    "ModelInfo",
    "NoNodesAcceptedError",
    "NodeCapabilities",
    "NodeInfo",
    "NotConnectedError",
    "P2PConfig",
    "PaymentDetails",
    "PaymentError",
    "PaymentStatus",
    "PeerUnreachableError",
    "ProtocolError",
    "RecoveryConfig",
    "RecoverySession",
    "RefundNotAllowedError",
    "RejectReason",
    "RemoteProtocolError",
    "ResponseStream",
    "RetryConfig",
    "SDKConfig",
    "SelectionStrategy",
    "StreamMetrics",
    "StreamSummary",
    "SyncJobHandle",
    "SyncResponseStream",
    "TimeoutConfig",
    "TimeoutError",
    "Token",
    "TokenType",
    "TransportError",
    "ValidationError",
    "__version__",
]
