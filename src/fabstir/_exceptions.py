"""The one error tree of fabstir.

Users only ever see these classes: every seam (transport, chain, backend) maps foreign exceptions
(libp2p, trio, web3, httpx, ...) into them with ``raise ... from exc``. Classes are split by what the
caller can *do* about the failure, not by where it happened::

    FabstirError                      root; .code, .job_id, .node_id, .retryable, .context
    ├── ConfigurationError            bad SDK / host configuration (also a ValueError)
    ├── ValidationError               bad API arguments (also a ValueError)
    ├── NotConnectedError             the SDK is not connected (call connect() first)
    ├── JobNotFoundError              unknown job id (also a KeyError)
    ├── InvalidStateError             operation not allowed in the current job/stream state
    ├── TransportError                the network failed: dial, stream reset, peer vanished (retryable)
    │   └── PeerUnreachableError      could not dial a peer
    ├── ProtocolError                 a frame broke the job protocol
    │   ├── LocalProtocolError        *we* tried to send something illegal (a bug on our side)
    │   └── RemoteProtocolError       the peer sent something illegal (malformed, oversized, out of order)
    ├── DiscoveryError                no usable hosts found
    ├── HostRejectedError             a host answered the job request with a reject (has .reason)
    │   └── NoNodesAcceptedError      every negotiated host rejected (or none answered)
    ├── HostError                     a host reported a failure mid-job (error frame)
    ├── PaymentError                  escrow / ledger / contract problem
    │   ├── InsufficientFundsError
    │   ├── InvalidReceiptError       bad signature, replay, non-monotonic or over-deposit receipt
    │   └── RefundNotAllowedError
    ├── BackendError                  the inference backend failed (host side)
    ├── TimeoutError                  a phase ran out of time (.phase); also a builtin TimeoutError
    └── CancelledError                the job was cancelled by the user (not asyncio.CancelledError)
"""

from __future__ import annotations

import builtins
from collections.abc import Mapping
from enum import StrEnum
from types import MappingProxyType
from typing import Any

__all__ = [
    "BackendError",
    "CancelledError",
    "ConfigurationError",
    "DiscoveryError",
    "ErrorCode",
    "FabstirError",
    "HostError",
    "HostRejectedError",
    "InsufficientFundsError",
    "InvalidReceiptError",
    "InvalidStateError",
    "JobNotFoundError",
    "LocalProtocolError",
    "NoNodesAcceptedError",
    "NotConnectedError",
    "PaymentError",
    "PeerUnreachableError",
    "ProtocolError",
    "RefundNotAllowedError",
    "RemoteProtocolError",
    "TimeoutError",
    "TransportError",
    "ValidationError",
]


class ErrorCode(StrEnum):
    """Stable machine-readable codes (also used on the wire in ``error`` frames)."""

    CONFIGURATION = "configuration"
    VALIDATION = "validation"
    NOT_CONNECTED = "not_connected"
    JOB_NOT_FOUND = "job_not_found"
    INVALID_STATE = "invalid_state"
    TRANSPORT = "transport"
    PEER_UNREACHABLE = "peer_unreachable"
    PROTOCOL = "protocol"
    FRAME_TOO_LARGE = "frame_too_large"
    MALFORMED_FRAME = "malformed_frame"
    UNEXPECTED_FRAME = "unexpected_frame"
    MODEL_MISMATCH = "model_mismatch"  # a RemoteProtocolError: the host serves another model than requested
    DISCOVERY = "discovery"
    HOST_REJECTED = "host_rejected"
    NO_NODES_ACCEPTED = "no_nodes_accepted"
    HOST_ERROR = "host_error"
    PAYMENT = "payment"
    INSUFFICIENT_FUNDS = "insufficient_funds"
    INVALID_RECEIPT = "invalid_receipt"
    REFUND_NOT_ALLOWED = "refund_not_allowed"
    BACKEND = "backend"
    TIMEOUT = "timeout"
    CANCELLED = "cancelled"
    INTERNAL = "internal"


class FabstirError(Exception):
    """Root of every error fabstir raises.

    Attributes a caller may rely on:
      * ``message`` – the human sentence (also ``str(err)``);
      * ``code`` – an :class:`ErrorCode`;
      * ``job_id`` / ``node_id`` – which job and which host, when known;
      * ``retryable`` – whether trying again (possibly elsewhere) can help;
      * ``context`` – a read-only mapping of extra details.
    """

    default_code: ErrorCode = ErrorCode.INTERNAL
    default_retryable: bool = False

    def __init__(
        self,
        message: str,
        *,
        code: ErrorCode | str | None = None,
        job_id: int | str | None = None,
        node_id: str | None = None,
        retryable: bool | None = None,
        context: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = ErrorCode(code) if code is not None else self.default_code
        self.job_id = job_id
        self.node_id = node_id
        self.retryable = self.default_retryable if retryable is None else retryable
        self.context: Mapping[str, Any] = MappingProxyType(dict(context or {}))

    def __str__(self) -> str:
        return self.message

    def __reduce__(self) -> tuple[Any, ...]:
        # A mappingproxy cannot be pickled (errors cross process boundaries: executors, test workers):
        # ship the context as a dict and make it read-only again on arrival.
        return (type(self), (self.message,), {**self.__dict__, "context": dict(self.context)})

    def __setstate__(self, state: dict[str, Any] | None, /) -> None:
        self.__dict__.update(state or {})
        self.context = MappingProxyType(dict(self.__dict__.get("context") or {}))

    def __repr__(self) -> str:
        extra = "".join(
            f", {name}={value!r}"
            for name, value in (("job_id", self.job_id), ("node_id", self.node_id))
            if value is not None
        )
        return f"{type(self).__name__}({self.message!r}, code={self.code.value!r}{extra})"


class ConfigurationError(FabstirError, ValueError):
    default_code = ErrorCode.CONFIGURATION


class ValidationError(FabstirError, ValueError):
    default_code = ErrorCode.VALIDATION


class NotConnectedError(FabstirError):
    default_code = ErrorCode.NOT_CONNECTED


class JobNotFoundError(FabstirError, KeyError):
    default_code = ErrorCode.JOB_NOT_FOUND

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return self.message


class InvalidStateError(FabstirError):
    default_code = ErrorCode.INVALID_STATE


class TransportError(FabstirError):
    default_code = ErrorCode.TRANSPORT
    default_retryable = True


class PeerUnreachableError(TransportError):
    default_code = ErrorCode.PEER_UNREACHABLE


class ProtocolError(FabstirError):
    default_code = ErrorCode.PROTOCOL


class LocalProtocolError(ProtocolError):
    """We attempted to send a frame the protocol does not allow in the current state."""


class RemoteProtocolError(ProtocolError):
    """The peer sent bytes that are not a valid frame, or a frame not allowed in the current state."""

    default_retryable = True  # another host may well behave


class DiscoveryError(FabstirError):
    default_code = ErrorCode.DISCOVERY
    default_retryable = True


class HostRejectedError(FabstirError):
    default_code = ErrorCode.HOST_REJECTED
    default_retryable = True

    def __init__(self, message: str, *, reason: str = "error", **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.reason = reason


class NoNodesAcceptedError(HostRejectedError):
    default_code = ErrorCode.NO_NODES_ACCEPTED


class HostError(FabstirError):
    default_code = ErrorCode.HOST_ERROR
    default_retryable = True


class PaymentError(FabstirError):
    default_code = ErrorCode.PAYMENT


class InsufficientFundsError(PaymentError):
    default_code = ErrorCode.INSUFFICIENT_FUNDS


class InvalidReceiptError(PaymentError):
    default_code = ErrorCode.INVALID_RECEIPT


class RefundNotAllowedError(PaymentError):
    default_code = ErrorCode.REFUND_NOT_ALLOWED


class BackendError(FabstirError):
    default_code = ErrorCode.BACKEND
    default_retryable = True


class TimeoutError(FabstirError, builtins.TimeoutError):
    """A phase ran out of time. ``phase`` says which (``dial``, ``negotiation``, ``first_token``, ...)."""

    default_code = ErrorCode.TIMEOUT
    default_retryable = True

    def __init__(self, message: str, *, phase: str = "overall", **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.phase = phase


class CancelledError(FabstirError):
    default_code = ErrorCode.CANCELLED
