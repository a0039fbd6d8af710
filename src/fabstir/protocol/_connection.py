"""A job stream seen from one side, sans-IO: h11-style ``send(frame) -> bytes`` and
``receive_data(bytes) -> frames``, with the state machine and the sequence rules applied."""

from __future__ import annotations

from .._exceptions import ErrorCode, LocalProtocolError, RemoteProtocolError
from ._codec import MAX_FRAME_SIZE, FrameDecoder, encode
from ._frames import Frame, Hello, Request, Resume, TokenBatch
from ._state import ClientState, HostState, Role, State, next_state

__all__ = ["PROTOCOL_ID", "PROTOCOL_VERSION", "SUPPORTED_VERSIONS", "JobConnection"]

#: The libp2p protocol id of the job protocol.
PROTOCOL_ID = "/fabstir/job/1.0.0"
#: The version negotiated in ``Hello`` (major.minor; a host accepts any minor of a major it speaks).
PROTOCOL_VERSION = "1.0"
SUPPORTED_VERSIONS: tuple[str, ...] = (PROTOCOL_VERSION,)


class JobConnection:
    """Both sides' protocol state for one job stream.

    ``send`` checks that *we* may send the frame (else :class:`LocalProtocolError`, and nothing changes)
    and returns its bytes; ``receive_data`` decodes what the peer sent and checks that *it* was allowed
    (else :class:`RemoteProtocolError`). Token batches must be gap-free: each ``seq`` continues the last
    one (the first batch starts at the request's ``first_index`` or the resume's ``from_seq``).

    After a :class:`RemoteProtocolError` the peer's side of the stream is unusable: ``receive_data`` raises
    the same error again on any further data, while ``send`` still works (to send an ``Error`` frame).
    """

    def __init__(self, role: Role, *, max_frame_size: int = MAX_FRAME_SIZE) -> None:
        self.role = role
        self._decoder = FrameDecoder(max_frame_size)
        self.client_state: ClientState = ClientState.START
        self.host_state: HostState = HostState.START
        self.next_seq: int = 0
        self.job_id: str | None = None
        self._broken: RemoteProtocolError | None = None

    @property
    def our_state(self) -> State:
        return self.client_state if self.role is Role.CLIENT else self.host_state

    @property
    def their_state(self) -> State:
        return self.host_state if self.role is Role.CLIENT else self.client_state

    def send(self, frame: Frame) -> bytes:
        # Encode first: a frame that breaks the size limits must not move the state either.
        data = encode(frame)
        problem = self._apply(self.role, frame)
        if problem is not None:
            raise LocalProtocolError(problem, code=ErrorCode.UNEXPECTED_FRAME)
        return data

    def receive_data(self, data: bytes) -> list[Frame]:
        if self._broken is not None:
            raise self._broken
        try:
            frames = self._decoder.receive_data(data)
            for frame in frames:
                problem = self._apply(self.role.peer, frame)
                if problem is not None:
                    raise RemoteProtocolError(problem, code=ErrorCode.UNEXPECTED_FRAME)
        except RemoteProtocolError as exc:
            # Frames after the bad one were decoded but not applied: our view of the peer is lost.
            self._broken = exc
            raise
        return frames

    def _apply(self, sender: Role, frame: Frame) -> str | None:
        state = self.client_state if sender is Role.CLIENT else self.host_state
        peer_state = self.host_state if sender is Role.CLIENT else self.client_state
        result = next_state(sender, state, peer_state, frame)
        if isinstance(result, str):
            return result
        if isinstance(frame, Hello) and not frame.versions:
            return "hello lists no protocol version"
        if isinstance(frame, Request):
            self.job_id, self.next_seq = frame.job_id, frame.first_index
        elif isinstance(frame, Resume):
            self.job_id, self.next_seq = frame.job_id, frame.from_seq
        elif isinstance(frame, TokenBatch):
            if frame.seq != self.next_seq:
                return f"token batch starts at {frame.seq}, expected {self.next_seq}"
            self.next_seq += len(frame.tokens)
        if sender is Role.CLIENT:
            assert isinstance(result, ClientState)
            self.client_state = result
        else:
            assert isinstance(result, HostState)
            self.host_state = result
        return None
