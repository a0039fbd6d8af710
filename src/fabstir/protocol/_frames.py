"""The frames of the job protocol ``/fabstir/job/1.0.0``: one frozen, slotted class per kind.

A job lives on one long-lived stream. The client speaks first (``Hello`` then ``Request`` or
``Resume``); the host answers ``Hello`` then ``Offer`` or ``Reject``; the client ``Confirm``\\ s with the
payment session it opened; the host streams ``TokenBatch``\\ es and finishes with ``End``; the client
acknowledges tokens with signed ``Receipt``\\ s as they arrive and sends a last one after ``End``.
``Error`` and ``Cancel`` may interrupt. docs/PROTOCOL.md is the normative description.

The wire name of each class is its ``KIND``; field names on the wire are the attribute names.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

__all__ = [
    "Cancel",
    "Confirm",
    "End",
    "Error",
    "Frame",
    "Hello",
    "Offer",
    "Receipt",
    "Reject",
    "Request",
    "Resume",
    "TokenBatch",
]


@dataclass(frozen=True, slots=True)
class Hello:
    """First frame of each side. The client lists the versions it speaks; the host answers with one."""

    KIND: ClassVar[str] = "hello"
    versions: tuple[str, ...]
    agent: str = ""


@dataclass(frozen=True, slots=True)
class Request:
    """A job request. ``continuation`` is text already delivered by another host (failover): the host
    continues the same completion after it, and ``first_index`` is that text's length in tokens."""

    KIND: ClassVar[str] = "request"
    job_id: str
    model: str
    prompt: str
    max_tokens: int
    client_address: str
    payment_token: str
    temperature: float = 0.0
    seed: int | None = None
    system: str | None = None
    max_price_per_token: int | None = None
    continuation: str = ""
    first_index: int = 0


@dataclass(frozen=True, slots=True)
class Offer:
    """The host accepts: its price, how long it expects to take, where to pay, and its credit window
    (how many tokens it streams ahead of the client's latest receipt). Valid for ``hold_ms``."""

    KIND: ClassVar[str] = "offer"
    job_id: str
    price_per_token: int
    payment_token: str
    payment_address: str
    chain_id: int
    estimated_time_ms: int
    credit_tokens: int
    hold_ms: int


@dataclass(frozen=True, slots=True)
class Reject:
    """The host declines; ``reason`` is a :class:`fabstir.RejectReason` value."""

    KIND: ClassVar[str] = "reject"
    job_id: str
    reason: str
    message: str = ""


@dataclass(frozen=True, slots=True)
class Confirm:
    """The client takes the offer and names the payment session (escrow) that pays for it.

    A session may carry several jobs to one host, one after another: ``base_amount`` is the session's
    cumulative amount the client signed for its earlier jobs (this job's receipts count on from it), and
    ``keep_open`` asks the host to settle but not close the session after this job, because more jobs
    will follow. The defaults are a session's only job."""

    KIND: ClassVar[str] = "confirm"
    job_id: str
    session_id: str
    base_amount: int = 0
    keep_open: bool = False


@dataclass(frozen=True, slots=True)
class TokenBatch:
    """Consecutive tokens; ``seq`` is the index of the first one. Batches are gap-free and in order.

    ``model`` names the model generating the job. A host sets it on the first batch of each stream (the
    first of the job, the first after a ``Resume``) so the client can tell a host serving another model
    than it asked for; ``""`` (not sent, and what older hosts send) says nothing."""

    KIND: ClassVar[str] = "tokens"
    seq: int
    tokens: tuple[str, ...]
    model: str = ""


@dataclass(frozen=True, slots=True)
class Receipt:
    """A client-signed acknowledgement: the session's cumulative amount owed (EIP-712 signature), and,
    for information, how many tokens of this job it covers."""

    KIND: ClassVar[str] = "receipt"
    session_id: str
    job_id: str
    tokens: int
    amount: int
    signature: bytes


@dataclass(frozen=True, slots=True)
class End:
    """The host is done. ``transcript_hash`` is sha256 of the UTF-8 text of all tokens it sent for the
    job; ``signature`` is the host's peer-key signature over :func:`end_signing_payload`."""

    KIND: ClassVar[str] = "end"
    job_id: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    tokens_sent: int
    transcript_hash: bytes
    signature: bytes


@dataclass(frozen=True, slots=True)
class Error:
    """Either side reports a failure; ``code`` is an :class:`fabstir.ErrorCode` value."""

    KIND: ClassVar[str] = "error"
    code: str
    message: str
    retryable: bool = False


@dataclass(frozen=True, slots=True)
class Cancel:
    """The client stops the job; the host answers with ``End`` (finish reason ``cancelled``)."""

    KIND: ClassVar[str] = "cancel"
    job_id: str
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Resume:
    """On a new stream to the same host after a broken one: continue ``job_id`` from token ``from_seq``."""

    KIND: ClassVar[str] = "resume"
    job_id: str
    from_seq: int


Frame = Hello | Request | Offer | Reject | Confirm | TokenBatch | Receipt | End | Error | Cancel | Resume

FRAME_TYPES: tuple[type[Frame], ...] = (
    Hello,
    Request,
    Offer,
    Reject,
    Confirm,
    TokenBatch,
    Receipt,
    End,
    Error,
    Cancel,
    Resume,
)


def end_signing_payload(
    job_id: str, completion_tokens: int, tokens_sent: int, transcript_hash: bytes
) -> bytes:
    """The bytes a host signs in ``End``: binds the job, the usage it claims and the text it sent.

    ``b"fabstir/end/v1\\x00" + job_id + b"\\x00" + decimal(completion_tokens) + b"\\x00" +
    decimal(tokens_sent) + b"\\x00" + transcript_hash``. Read from the left it has one meaning only because
    a job id holds no NUL (the codec refuses such ids; so does this function, with :class:`ValueError`)
    and decimals hold none.
    """
    if "\x00" in job_id:
        raise ValueError("a job id must not contain NUL")
    if completion_tokens < 0 or tokens_sent < 0:
        raise ValueError("token counts are non-negative")
    return b"fabstir/end/v1\x00" + b"\x00".join(
        (job_id.encode(), str(completion_tokens).encode(), str(tokens_sent).encode(), transcript_hash)
    )
