"""Plain value objects shared by every layer: frozen, slotted, no I/O, no behaviour beyond validation.

Amounts are integers in the smallest unit of their payment token (wei for ETH, 1e-6 for the USDC-like
token); prices are per generated token in those units. Times are floats in seconds (``time.time()``
epoch for timestamps, monotonic seconds for durations).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType
from typing import Any

__all__ = [
    "NATIVE_TOKEN",
    "CostBreakdown",
    "CostEstimate",
    "FinishReason",
    "JobDetails",
    "JobRecoveryInfo",
    "JobRequest",
    "JobStatus",
    "ModelInfo",
    "NodeCapabilities",
    "NodeInfo",
    "PaymentDetails",
    "PaymentStatus",
    "RecoverySession",
    "RejectReason",
    "StreamMetrics",
    "StreamSummary",
    "Token",
    "TokenType",
]

#: The symbol of the chain's native currency when used as a payment token.
NATIVE_TOKEN = "ETH"


class JobStatus(StrEnum):
    """Lifecycle of a job. A ``StrEnum``: ``status == "POSTED"`` holds."""

    POSTED = "POSTED"
    CLAIMED = "CLAIMED"
    PROCESSING = "PROCESSING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    DISPUTED = "DISPUTED"

    @property
    def is_terminal(self) -> bool:
        return self in (JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED, JobStatus.DISPUTED)


class RejectReason(StrEnum):
    """Why a host declined a job request (the ``reason`` of a reject offer)."""

    BUSY = "busy"
    UNSUPPORTED_MODEL = "unsupported_model"
    INSUFFICIENT_PAYMENT = "insufficient_payment"
    VERSION_MISMATCH = "version_mismatch"
    ERROR = "error"


class FinishReason(StrEnum):
    STOP = "stop"  # the model ended the answer
    LENGTH = "length"  # max_tokens reached
    CANCELLED = "cancelled"  # the client cancelled
    CREDIT = "credit"  # the host stopped: the client's receipts did not keep up
    ERROR = "error"


class TokenType(StrEnum):
    CONTENT = "content"


class PaymentStatus(StrEnum):
    NONE = "none"  # no session yet
    ESCROWED = "escrowed"  # deposit locked in a session
    RELEASED = "released"  # settled: host paid, remainder refunded
    REFUNDED = "refunded"  # the client took the deposit back (failed / cancelled / expired)
    DISPUTED = "disputed"


@dataclass(frozen=True, slots=True)
class ModelInfo:
    id: str
    name: str
    context_length: int = 2048
    description: str = ""


@dataclass(frozen=True, slots=True)
class JobRequest:
    """What a client asks for. Validated by the SDK (``Prompt cannot be empty`` ...), not here."""

    prompt: str
    model: str
    max_tokens: int = 128
    temperature: float = 0.0
    seed: int | None = None
    system: str | None = None
    max_price_per_token: int | None = None
    payment_token: str = NATIVE_TOKEN


@dataclass(frozen=True, slots=True)
class CostEstimate:
    """The TypeScript SDK's estimate: ceil(len(prompt)/4) + floor(0.8 × max_tokens) tokens."""

    estimated_tokens: int
    price_per_token: int
    estimated_cost: int
    includes_buffer: bool
    payment_token: str = NATIVE_TOKEN


@dataclass(frozen=True, slots=True)
class NodeCapabilities:
    """What a host advertises in its signed capability record."""

    models: tuple[str, ...]
    prices: Mapping[str, Mapping[str, int]]  # model -> payment token -> price per token
    max_tokens: int
    max_concurrent_jobs: int
    current_load: int
    payment_address: str
    chain_id: int
    protocol_versions: tuple[str, ...]

    def price_for(self, model: str, payment_token: str = NATIVE_TOKEN) -> int | None:
        return self.prices.get(model, {}).get(payment_token)


@dataclass(frozen=True, slots=True)
class NodeInfo:
    """A discovered host: identity, where to reach it, what it offers and how it has behaved."""

    peer_id: str
    addresses: tuple[str, ...]
    capabilities: NodeCapabilities
    latency_ms: float | None = None
    reliability: float = 1.0
    record_seq: int = 0
    record_expires: float = 0.0

    @property
    def node_id(self) -> str:
        return self.peer_id


@dataclass(frozen=True, slots=True)
class Token:
    """One streamed token (a piece of text) with its 0-based position in the completion."""

    index: int
    text: str
    timestamp: float
    type: TokenType = TokenType.CONTENT


@dataclass(frozen=True, slots=True)
class StreamMetrics:
    tokens_received: int
    tokens_per_second: float
    time_to_first_token: float | None  # seconds from stream start to the first token
    mean_inter_token_latency: float | None  # seconds
    p99_inter_token_latency: float | None
    bytes_received: int
    elapsed: float


@dataclass(frozen=True, slots=True)
class StreamSummary:
    total_tokens: int
    duration: float
    finish_reason: FinishReason
    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass(frozen=True, slots=True)
class CostBreakdown:
    """What a job actually cost, split between host and treasury (``total = host + treasury``)."""

    tokens: int
    price_per_token: int
    total: int
    host: int
    treasury: int
    refunded: int
    payment_token: str = NATIVE_TOKEN
    fee_basis_points: int = 0


@dataclass(frozen=True, slots=True)
class ChainTransaction:
    """One transaction on the chain: what it did (``description``, e.g. ``"opening a session"``), its hash,
    who sent it, the gas it used and what that cost the sender (wei), and its block."""

    description: str
    tx_hash: str
    sender: str
    gas_used: int
    gas_cost: int
    block_number: int


@dataclass(frozen=True, slots=True)
class PaymentDetails:
    """A job's payment. ``legs``: when the job failed over, each host's part (its own session), the failed
    hosts first — and then the amounts here are the totals over them; empty otherwise."""

    job_id: int
    session_id: str | None
    status: PaymentStatus
    payment_token: str
    deposit: int
    price_per_token: int
    acknowledged_tokens: int  # tokens covered by the latest signed receipt
    settled_amount: int
    refunded_amount: int
    host_address: str | None
    client_address: str | None
    legs: tuple[PaymentDetails, ...] = ()


@dataclass(frozen=True, slots=True)
class JobDetails:
    job_id: int
    status: JobStatus
    request: JobRequest
    host: str | None
    created_at: float
    updated_at: float
    price_per_token: int | None
    tokens_generated: int
    result: str | None
    error: str | None
    extra: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))


@dataclass(frozen=True, slots=True)
class RecoverySession:
    """One payment session of a job, as recovery sees it: what was deposited, what our receipts signed
    for, what the chain says was settled and refunded, and whether the client may reclaim it now (it is
    open and past its expiry)."""

    session_id: str
    host: str | None  # the host's peer id
    deposit: int
    signed_amount: int  # the session's cumulative amount our latest receipt signed for
    settled: int
    refunded: int
    closed: bool
    expiry: float
    reclaimable: bool


@dataclass(frozen=True, slots=True)
class JobRecoveryInfo:
    """What a client (also a restarted one, from its journal) knows about a job: how far it got, the text
    delivered, whether it can be resumed (``resume_response_stream``), and each session that holds or
    held its money (a job that failed over has one per host)."""

    job_id: int
    status: JobStatus
    host: str | None
    tokens_delivered: int
    text: str
    can_resume: bool
    error: str | None
    error_code: str | None
    sessions: tuple[RecoverySession, ...]
    from_journal: bool  # read back from the journal (the job ran in an earlier process)
