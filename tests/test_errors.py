"""The error tree: which classes are also builtin errors, default codes and retry advice, context, repr."""

from __future__ import annotations

import builtins
import inspect
import pickle

import pytest

from fabstir import _exceptions
from fabstir._exceptions import (
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

#: Each class, its default code, whether a retry helps by default, and its parent in the documented tree.
TREE: list[tuple[type[FabstirError], ErrorCode, bool, type[Exception]]] = [
    (ConfigurationError, ErrorCode.CONFIGURATION, False, FabstirError),
    (ValidationError, ErrorCode.VALIDATION, False, FabstirError),
    (NotConnectedError, ErrorCode.NOT_CONNECTED, False, FabstirError),
    (JobNotFoundError, ErrorCode.JOB_NOT_FOUND, False, FabstirError),
    (InvalidStateError, ErrorCode.INVALID_STATE, False, FabstirError),
    (TransportError, ErrorCode.TRANSPORT, True, FabstirError),
    (PeerUnreachableError, ErrorCode.PEER_UNREACHABLE, True, TransportError),
    (ProtocolError, ErrorCode.PROTOCOL, False, FabstirError),
    (LocalProtocolError, ErrorCode.PROTOCOL, False, ProtocolError),
    (RemoteProtocolError, ErrorCode.PROTOCOL, True, ProtocolError),
    (DiscoveryError, ErrorCode.DISCOVERY, True, FabstirError),
    (HostRejectedError, ErrorCode.HOST_REJECTED, True, FabstirError),
    (NoNodesAcceptedError, ErrorCode.NO_NODES_ACCEPTED, True, HostRejectedError),
    (HostError, ErrorCode.HOST_ERROR, True, FabstirError),
    (PaymentError, ErrorCode.PAYMENT, False, FabstirError),
    (InsufficientFundsError, ErrorCode.INSUFFICIENT_FUNDS, False, PaymentError),
    (InvalidReceiptError, ErrorCode.INVALID_RECEIPT, False, PaymentError),
    (RefundNotAllowedError, ErrorCode.REFUND_NOT_ALLOWED, False, PaymentError),
    (BackendError, ErrorCode.BACKEND, True, FabstirError),
    (TimeoutError, ErrorCode.TIMEOUT, True, FabstirError),
    (CancelledError, ErrorCode.CANCELLED, False, FabstirError),
]


@pytest.mark.parametrize(
    ("cls", "code", "retryable", "parent"), TREE, ids=lambda v: getattr(v, "__name__", None)
)
def test_defaults_and_place_in_the_tree(
    cls: type[FabstirError], code: ErrorCode, retryable: bool, parent: type[Exception]
) -> None:
    """Each class sits where the module docstring draws it and carries its default code and retry advice."""
    error = cls("something happened")
    assert issubclass(cls, parent)
    assert isinstance(error, FabstirError)
    assert error.code is code
    assert error.retryable is retryable
    assert error.message == str(error) == "something happened"


def test_every_exported_error_is_covered() -> None:
    """The table above lists every error class the module exports (so a new class gets checked)."""
    exported = {
        obj
        for name in _exceptions.__all__
        if inspect.isclass(obj := getattr(_exceptions, name)) and issubclass(obj, FabstirError)
    }
    assert exported == {FabstirError} | {row[0] for row in TREE}


def test_root_defaults() -> None:
    """A bare FabstirError is an internal, non-retryable error with an empty context and no ids."""
    error = FabstirError("boom")
    assert (error.code, error.retryable, error.job_id, error.node_id) == (
        ErrorCode.INTERNAL,
        False,
        None,
        None,
    )
    assert dict(error.context) == {}


def test_configuration_and_validation_errors_are_value_errors() -> None:
    """Bad configuration and bad arguments can be caught as ValueError, as Python users expect."""
    with pytest.raises(ValueError, match="Invalid SDK mode"):
        raise ConfigurationError('Invalid SDK mode: x. Must be "mock" or "production"')
    with pytest.raises(ValueError, match="Prompt cannot be empty"):
        raise ValidationError("Prompt cannot be empty")


def test_job_not_found_is_a_key_error_with_a_plain_message() -> None:
    """JobNotFoundError is a KeyError whose str() is the message itself, not KeyError's quoted repr."""
    error = JobNotFoundError("Job 42 not found", job_id=42)
    assert isinstance(error, KeyError)
    assert str(error) == "Job 42 not found"
    with pytest.raises(KeyError):
        raise error


def test_timeout_error_is_a_builtin_timeout_error_with_a_phase() -> None:
    """fabstir's TimeoutError is also the builtin TimeoutError (so ``except TimeoutError`` catches it) and
    says which phase ran out of time (``overall`` by default)."""
    error = TimeoutError("no first token in 30 s", phase="first_token", job_id=1)
    assert isinstance(error, builtins.TimeoutError)
    assert isinstance(error, FabstirError)
    assert error.phase == "first_token"
    assert TimeoutError("late").phase == "overall"
    with pytest.raises(builtins.TimeoutError):
        raise error


def test_host_rejected_carries_the_reason() -> None:
    """HostRejectedError (and NoNodesAcceptedError) carry the host's reject reason, ``error`` by default,
    alongside the usual fields."""
    error = HostRejectedError("host is busy", reason="busy", node_id="peer-1", job_id=3)
    assert (error.reason, error.node_id, error.job_id) == ("busy", "peer-1", 3)
    assert HostRejectedError("no").reason == "error"
    assert (
        NoNodesAcceptedError("No nodes accepted the job", reason="unsupported_model").reason
        == "unsupported_model"
    )


def test_code_and_retryable_can_be_overridden() -> None:
    """Callers may give a specific code (as an ErrorCode or its string) and override the retry advice."""
    error = RemoteProtocolError("frame too large", code="frame_too_large", retryable=False)
    assert error.code is ErrorCode.FRAME_TOO_LARGE
    assert error.retryable is False
    assert TransportError("x", retryable=False).retryable is False
    assert PaymentError("x", retryable=True).retryable is True
    with pytest.raises(ValueError, match="not-a-code"):
        FabstirError("x", code="not-a-code")


def test_context_is_a_read_only_copy() -> None:
    """context is a read-only mapping, and changing the dict it was built from does not change it."""
    details = {"frame": "token", "size": 10}
    error = RemoteProtocolError("bad frame", context=details)
    details["size"] = 99
    assert dict(error.context) == {"frame": "token", "size": 10}
    with pytest.raises(TypeError):
        error.context["size"] = 1  # type: ignore[index]


def test_repr_names_the_class_code_and_ids() -> None:
    """repr() shows the class, message, code and the job / node ids when known."""
    error = HostError("model crashed", job_id=12, node_id="12D3KooWpeer")
    text = repr(error)
    assert text.startswith("HostError('model crashed'")
    assert "code='host_error'" in text
    assert "job_id=12" in text
    assert "node_id='12D3KooWpeer'" in text
    assert repr(HostError("no ids")) == "HostError('no ids', code='host_error')"


def test_chaining_keeps_the_foreign_cause() -> None:
    """A seam maps a foreign exception with ``raise ... from exc``: the cause stays available."""
    cause = OSError("connection reset")

    def dial() -> None:
        try:
            raise cause
        except OSError as exc:
            raise PeerUnreachableError("could not dial", node_id="p") from exc

    with pytest.raises(TransportError) as info:
        dial()
    assert info.value.__cause__ is cause


@pytest.mark.parametrize(
    "error",
    [
        HostRejectedError("busy", reason="busy", job_id=1, node_id="p", context={"queue": 8}),
        TimeoutError("late", phase="dial", retryable=False),
        JobNotFoundError("Job 5 not found", job_id=5),
        RemoteProtocolError("bad frame", code=ErrorCode.MALFORMED_FRAME),
    ],
    ids=lambda e: type(e).__name__,
)
def test_errors_survive_pickling(error: FabstirError) -> None:
    """Errors cross process boundaries (executors, test workers) intact: class, message, code, ids, retry
    advice, extra attributes, and a context that is still read-only."""
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is type(error)
    assert copy.__dict__.keys() == error.__dict__.keys()
    for name in ("message", "code", "job_id", "node_id", "retryable", "reason", "phase"):
        assert getattr(copy, name, None) == getattr(error, name, None)
    assert dict(copy.context) == dict(error.context)
    assert str(copy) == str(error)
    with pytest.raises(TypeError):
        copy.context["x"] = 1  # type: ignore[index]
