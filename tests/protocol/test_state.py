"""The per-job state machine, driven through a client and a host JobConnection that pass bytes."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from fabstir import ErrorCode, LocalProtocolError, RemoteProtocolError
from fabstir.protocol import (
    FRAME_TYPES,
    TRANSITIONS,
    Cancel,
    ClientState,
    Confirm,
    End,
    Error,
    Frame,
    Hello,
    HostState,
    JobConnection,
    Offer,
    Receipt,
    Reject,
    Request,
    Resume,
    Role,
    TokenBatch,
    encode,
    next_state,
)

C, H = ClientState, HostState
State = ClientState | HostState
Move = tuple[Role, Frame]
JOB = "job-1"
SESSION = "0x" + "ab" * 32
VERSIONS = ("1.0",)


class ConnectionPair:
    """A client and a host JobConnection joined by two in-memory byte pipes.

    ``send`` encodes frames on one side and queues the bytes; ``deliver`` hands the queued bytes to the
    other side (in pieces of ``fragment`` bytes) and returns the frames it decoded. Keeping the two
    apart lets a test make frames cross on the wire.
    """

    def __init__(self, fragment: int | None = None) -> None:
        self.client = JobConnection(Role.CLIENT)
        self.host = JobConnection(Role.HOST)
        self.fragment = fragment
        self._in_flight: dict[Role, bytearray] = {Role.CLIENT: bytearray(), Role.HOST: bytearray()}

    def side(self, role: Role) -> JobConnection:
        return self.client if role is Role.CLIENT else self.host

    def send(self, role: Role, *frames: Frame) -> None:
        """``role`` sends ``frames`` in one write; nothing is delivered yet."""
        self._in_flight[role] += b"".join(self.side(role).send(frame) for frame in frames)

    def deliver(self, sender: Role) -> list[Frame]:
        """Everything ``sender`` has sent so far arrives at the other side."""
        data = bytes(self._in_flight[sender])
        self._in_flight[sender].clear()
        receiver = self.side(sender.peer)
        if self.fragment is None:
            return receiver.receive_data(data)
        frames: list[Frame] = []
        for start in range(0, len(data), self.fragment):
            frames += receiver.receive_data(data[start : start + self.fragment])
        return frames

    def exchange(self, role: Role, *frames: Frame) -> None:
        """``role`` sends ``frames`` and the peer receives exactly them; both views then agree."""
        self.send(role, *frames)
        assert self.deliver(role) == list(frames)
        self.assert_views_agree()

    def assert_views_agree(self) -> None:
        assert (self.client.client_state, self.client.host_state) == (
            self.host.client_state,
            self.host.host_state,
        )
        assert self.client.next_seq == self.host.next_seq
        assert self.client.job_id == self.host.job_id

    @property
    def states(self) -> tuple[ClientState, HostState]:
        self.assert_views_agree()
        return self.client.client_state, self.client.host_state


def request(**overrides: Any) -> Request:
    base = Request(JOB, "llama", "Tell me a story", 100, "0x" + "11" * 20, "ETH", max_price_per_token=10)
    return dataclasses.replace(base, **overrides)


def offer() -> Offer:
    return Offer(JOB, 10, "ETH", "0x" + "22" * 20, 31337, 2000, credit_tokens=8, hold_ms=5000)


def receipt(tokens: int) -> Receipt:
    return Receipt(SESSION, JOB, tokens, tokens * 10, b"\x01" * 65)


def end(reason: str = "stop", sent: int = 0) -> End:
    return End(JOB, reason, 5, sent, sent, b"\x00" * 32, b"\x02" * 64)


def confirmed(fragment: int | None = None, **request_overrides: Any) -> ConnectionPair:
    """A pair that went through Hello + Request, Hello + Offer, Confirm."""
    pair = ConnectionPair(fragment)
    pair.exchange(Role.CLIENT, Hello(VERSIONS), request(**request_overrides))
    pair.exchange(Role.HOST, Hello(VERSIONS), offer())
    pair.exchange(Role.CLIENT, Confirm(JOB, SESSION))
    return pair


# -- the paths of the flow -------------------------------------------------------------------------------


@pytest.mark.parametrize("fragment", [1, 7, None], ids=["bytewise", "pieces-of-7", "whole"])
def test_happy_path(fragment: int | None) -> None:
    """Hello + Request, Hello + Offer, Confirm, token batches with receipts interleaved, End, the final
    receipt: every step is legal, both connections agree on both states, and seq numbers advance."""
    pair = ConnectionPair(fragment)
    assert pair.states == (C.START, H.START)
    pair.exchange(Role.CLIENT, Hello(VERSIONS, "client/1"), request())
    assert pair.states == (C.REQUESTED, H.START)
    assert pair.host.job_id == JOB
    pair.exchange(Role.HOST, Hello(VERSIONS, "host/1"), offer())
    assert pair.states == (C.REQUESTED, H.OFFERED)
    pair.exchange(Role.CLIENT, Confirm(JOB, SESSION))
    assert pair.states == (C.CONFIRMED, H.OFFERED)
    pair.exchange(Role.HOST, TokenBatch(0, ("Once",)))  # the first token goes out alone, at once
    assert pair.states == (C.CONFIRMED, H.STREAMING)
    pair.exchange(Role.HOST, TokenBatch(1, (" upon", " a")))
    pair.exchange(Role.CLIENT, receipt(3))
    pair.exchange(Role.HOST, TokenBatch(3, (" time",)), TokenBatch(4, (".",)))
    pair.exchange(Role.CLIENT, receipt(5))
    assert pair.host.next_seq == 5
    pair.exchange(Role.HOST, end("stop", sent=5))
    assert pair.states == (C.CONFIRMED, H.ENDED)
    pair.exchange(Role.CLIENT, receipt(5))
    assert pair.states == (C.CONFIRMED, H.ENDED)


def test_receipts_may_cross_token_batches() -> None:
    """Receipts and batches travel in opposite directions at once; neither side sees a violation."""
    pair = confirmed()
    pair.send(Role.HOST, TokenBatch(0, ("a", "b")))
    pair.send(Role.CLIENT, receipt(0))
    pair.send(Role.HOST, TokenBatch(2, ("c",)))
    assert len(pair.deliver(Role.CLIENT)) == 1
    assert len(pair.deliver(Role.HOST)) == 2
    assert pair.states == (C.CONFIRMED, H.STREAMING)


def test_reject_path() -> None:
    """Hello, Reject: the host is done and may send nothing more, not even Error."""
    pair = ConnectionPair()
    pair.exchange(Role.CLIENT, Hello(VERSIONS), request())
    pair.exchange(Role.HOST, Hello(VERSIONS), Reject(JOB, "busy", "every slot is taken"))
    assert pair.states == (C.REQUESTED, H.REJECTED)
    for frame in (offer(), TokenBatch(0, ("a",)), Error("internal", "oops")):
        with pytest.raises(LocalProtocolError):
            pair.host.send(frame)


def test_version_mismatch_reject() -> None:
    """On a version mismatch the host greets with its own versions, then rejects."""
    pair = ConnectionPair()
    pair.exchange(Role.CLIENT, Hello(("2.0",)), request())
    pair.exchange(Role.HOST, Hello(("1.0", "1.1")), Reject(JOB, "version_mismatch"))
    assert pair.states == (C.REQUESTED, H.REJECTED)


def test_resume_of_an_unknown_job_is_an_error() -> None:
    """Hello + Resume for a job the host no longer keeps: Hello, then Error(job_not_found)."""
    pair = ConnectionPair()
    pair.exchange(Role.CLIENT, Hello(VERSIONS), Resume(JOB, 3))
    pair.exchange(Role.HOST, Hello(VERSIONS), Error("job_not_found", "not kept here"))
    assert pair.states == (C.CONFIRMED, H.ERRORED)


def test_cancel_after_request() -> None:
    """A cancel before Confirm withdraws the request: the host may not stream or end it, and the client
    may not confirm it any more."""
    pair = ConnectionPair()
    pair.exchange(Role.CLIENT, Hello(VERSIONS), request())
    pair.exchange(Role.HOST, Hello(VERSIONS), offer())
    pair.exchange(Role.CLIENT, Cancel(JOB, "declined"))
    assert pair.states == (C.WITHDRAWN, H.OFFERED)
    for frame in (TokenBatch(0, ("a",)), end("cancelled")):
        with pytest.raises(LocalProtocolError):
            pair.host.send(frame)
    for client_frame in (Confirm(JOB, SESSION), receipt(0), Cancel(JOB)):
        with pytest.raises(LocalProtocolError):
            pair.client.send(client_frame)


def test_a_cancel_crossing_the_offer_is_legal() -> None:
    """The client cancels while the host's Hello + Offer are on the way: both arrive without violation."""
    pair = ConnectionPair()
    pair.exchange(Role.CLIENT, Hello(VERSIONS), request())
    pair.send(Role.CLIENT, Cancel(JOB, "declined"))
    pair.send(Role.HOST, Hello(VERSIONS), offer())
    assert [type(f) for f in pair.deliver(Role.HOST)] == [Hello, Offer]
    assert [type(f) for f in pair.deliver(Role.CLIENT)] == [Cancel]
    assert pair.states == (C.WITHDRAWN, H.OFFERED)


@pytest.mark.parametrize("answer", [offer(), Reject(JOB, "busy")], ids=["offer", "reject"])
def test_the_host_may_answer_a_request_cancelled_in_the_same_read(answer: Frame) -> None:
    """Hello, Request and Cancel arriving in one read are applied at once; the host, which has not looked
    at the Cancel yet, may still greet and answer the request."""
    pair = ConnectionPair()
    pair.send(Role.CLIENT, Hello(VERSIONS), request(), Cancel(JOB, "changed my mind"))
    pair.deliver(Role.CLIENT)
    pair.exchange(Role.HOST, Hello(VERSIONS), answer)


def test_cancel_while_streaming() -> None:
    """Cancel after Confirm: batches already on the way still arrive, the host ends with
    End(cancelled), and the client sends its final receipt."""
    pair = confirmed()
    pair.exchange(Role.HOST, TokenBatch(0, ("a", "b")))
    pair.send(Role.CLIENT, Cancel(JOB, "user"))
    pair.send(Role.HOST, TokenBatch(2, ("c",)))  # crosses the cancel
    assert pair.deliver(Role.HOST) == [TokenBatch(2, ("c",))]
    assert pair.deliver(Role.CLIENT) == [Cancel(JOB, "user")]
    assert pair.states == (C.CANCELLED, H.STREAMING)
    pair.exchange(Role.HOST, end("cancelled", sent=3))
    pair.exchange(Role.CLIENT, receipt(3))
    assert pair.states == (C.CANCELLED, H.ENDED)
    with pytest.raises(LocalProtocolError):
        pair.client.send(Cancel(JOB))


def test_resume_path() -> None:
    """Hello + Resume(from_seq) on a new stream: the host greets, streams from from_seq, ends."""
    pair = ConnectionPair()
    pair.exchange(Role.CLIENT, Hello(VERSIONS), Resume(JOB, 17))
    assert pair.states == (C.CONFIRMED, H.START)
    assert pair.host.next_seq == 17
    pair.exchange(Role.HOST, Hello(VERSIONS), TokenBatch(17, ("x", "y")))
    pair.exchange(Role.CLIENT, receipt(19))
    pair.exchange(Role.HOST, end("length", sent=19))
    pair.exchange(Role.CLIENT, receipt(19))
    assert pair.states == (C.CONFIRMED, H.ENDED)


def test_resume_of_a_finished_job_goes_straight_to_end() -> None:
    """A job that ended while the stream was broken is resumed with Hello then End alone."""
    pair = ConnectionPair()
    pair.exchange(Role.CLIENT, Hello(VERSIONS), Resume(JOB, 40))
    pair.exchange(Role.HOST, Hello(VERSIONS), end("stop", sent=40))
    assert pair.states == (C.CONFIRMED, H.ENDED)


def test_failover_request_numbers_tokens_from_first_index() -> None:
    """A Request carrying a continuation and first_index: the new host's first batch starts there."""
    pair = confirmed(continuation="Once upon a", first_index=3)
    pair.exchange(Role.HOST, TokenBatch(3, (" time",)))
    assert pair.host.next_seq == 4


def host_errored(fragment: int | None = None) -> ConnectionPair:
    """A confirmed job in which the host sent one batch, then Error."""
    pair = confirmed(fragment)
    pair.exchange(Role.HOST, TokenBatch(0, ("a",)))
    pair.exchange(Role.HOST, Error("backend", "the model crashed", True))
    return pair


def client_errored() -> ConnectionPair:
    """A confirmed job in which the host sent one batch, then the client sent Error."""
    pair = confirmed()
    pair.exchange(Role.HOST, TokenBatch(0, ("a",)))
    pair.exchange(Role.CLIENT, Error("invalid_state", "bad end signature"))
    return pair


@pytest.mark.parametrize("fragment", [1, None], ids=["bytewise", "whole"])
def test_an_error_from_the_host_ends_the_stream(fragment: int | None) -> None:
    """After the host's Error it sends nothing more (locally refused, and refused by the client if it
    does); the client may still acknowledge what it received, and nothing else but its own Error."""
    pair = host_errored(fragment)
    assert pair.states == (C.CONFIRMED, H.ERRORED)
    for frame in (TokenBatch(1, ("b",)), end(), Error("backend", "again")):
        with pytest.raises(LocalProtocolError):
            pair.host.send(frame)
        with pytest.raises(RemoteProtocolError):
            host_errored().client.receive_data(encode(frame))
    pair.exchange(Role.CLIENT, receipt(1))  # pays for the token delivered; also when it crosses the Error
    pair.exchange(Role.CLIENT, Error("host_error", "giving up"))
    assert pair.states == (C.ERRORED, H.ERRORED)


def test_an_error_from_the_client_ends_the_stream() -> None:
    """After the client's Error neither side may send anything but the host's own Error."""
    pair = client_errored()
    assert pair.states == (C.ERRORED, H.STREAMING)
    for frame in (TokenBatch(1, ("b",)), end()):
        with pytest.raises(LocalProtocolError):
            pair.host.send(frame)
    for client_frame in (receipt(1), Cancel(JOB), Error("x", "y")):
        with pytest.raises(LocalProtocolError):
            pair.client.send(client_frame)
        with pytest.raises(RemoteProtocolError):
            client_errored().host.receive_data(encode(client_frame))
    pair.exchange(Role.HOST, Error("unexpected_frame", "crossing errors are fine"))


def test_an_error_before_anything_else() -> None:
    """Error is legal before the sender's Hello (e.g. the host cannot serve at all)."""
    pair = ConnectionPair()
    pair.exchange(Role.CLIENT, Hello(VERSIONS), request())
    pair.exchange(Role.HOST, Error("internal", "shutting down", True))
    assert pair.states == (C.REQUESTED, H.ERRORED)


# -- illegal moves ------------------------------------------------------------------------------------

CLIENT_HELLO: Move = (Role.CLIENT, Hello(VERSIONS))
CLIENT_REQUEST: Move = (Role.CLIENT, request())
HOST_HELLO: Move = (Role.HOST, Hello(VERSIONS))
HOST_OFFER: Move = (Role.HOST, offer())
CONFIRM: Move = (Role.CLIENT, Confirm(JOB, SESSION))
NEGOTIATED: list[Move] = [CLIENT_HELLO, CLIENT_REQUEST, HOST_HELLO, HOST_OFFER]
CONFIRMED_: list[Move] = [*NEGOTIATED, CONFIRM]
FIRST_BATCH: Move = (Role.HOST, TokenBatch(0, ("a", "b")))

#: (prefix of legal moves, the illegal move)
ILLEGAL: dict[str, tuple[list[Move], Move]] = {
    "client request before hello": ([], CLIENT_REQUEST),
    "client resume before hello": ([], (Role.CLIENT, Resume(JOB, 0))),
    "client second hello": ([CLIENT_HELLO], CLIENT_HELLO),
    "client hello without versions": ([], (Role.CLIENT, Hello(()))),
    "client cancel before request": ([CLIENT_HELLO], (Role.CLIENT, Cancel(JOB))),
    "client request after request": ([CLIENT_HELLO, CLIENT_REQUEST], CLIENT_REQUEST),
    "client resume after request": ([CLIENT_HELLO, CLIENT_REQUEST], (Role.CLIENT, Resume(JOB, 0))),
    "client confirm before offer": ([CLIENT_HELLO, CLIENT_REQUEST, HOST_HELLO], CONFIRM),
    "client confirm before host hello": ([CLIENT_HELLO, CLIENT_REQUEST], CONFIRM),
    "client confirm after reject": (
        [CLIENT_HELLO, CLIENT_REQUEST, HOST_HELLO, (Role.HOST, Reject(JOB, "busy"))],
        CONFIRM,
    ),
    "client second confirm": (CONFIRMED_, CONFIRM),
    "client receipt before confirm": (NEGOTIATED, (Role.CLIENT, receipt(0))),
    "client confirm after cancel": ([*NEGOTIATED, (Role.CLIENT, Cancel(JOB))], CONFIRM),
    "client confirm on a resumed job": ([CLIENT_HELLO, (Role.CLIENT, Resume(JOB, 0))], CONFIRM),
    "client sends tokens": (CONFIRMED_, (Role.CLIENT, TokenBatch(0, ("a",)))),
    "client sends end": (CONFIRMED_, (Role.CLIENT, end())),
    "client sends offer": ([CLIENT_HELLO, CLIENT_REQUEST], (Role.CLIENT, offer())),
    "client receipt after its error": (
        [*CONFIRMED_, (Role.CLIENT, Error("x", "y"))],
        (Role.CLIENT, receipt(0)),
    ),
    "host hello before client hello": ([], HOST_HELLO),
    "host error after its error": (
        [CLIENT_HELLO, (Role.HOST, Error("x", "y"))],
        (Role.HOST, Error("x", "z")),
    ),
    "host second hello": ([CLIENT_HELLO, CLIENT_REQUEST, HOST_HELLO], HOST_HELLO),
    "host hello without versions": ([CLIENT_HELLO, CLIENT_REQUEST], (Role.HOST, Hello(()))),
    "host offer before hello": ([CLIENT_HELLO, CLIENT_REQUEST], HOST_OFFER),
    "host offer before request": ([CLIENT_HELLO, HOST_HELLO], HOST_OFFER),
    "host reject before request": ([CLIENT_HELLO, HOST_HELLO], (Role.HOST, Reject(JOB, "busy"))),
    "host second offer": (NEGOTIATED, HOST_OFFER),
    "host offer after reject": (
        [CLIENT_HELLO, CLIENT_REQUEST, HOST_HELLO, (Role.HOST, Reject(JOB, "busy"))],
        HOST_OFFER,
    ),
    "host error after reject": (
        [CLIENT_HELLO, CLIENT_REQUEST, HOST_HELLO, (Role.HOST, Reject(JOB, "busy"))],
        (Role.HOST, Error("x", "y")),
    ),
    "host offer on a resumed job": ([CLIENT_HELLO, (Role.CLIENT, Resume(JOB, 0)), HOST_HELLO], HOST_OFFER),
    "host reject after confirm": (CONFIRMED_, (Role.HOST, Reject(JOB, "busy"))),
    "host tokens before confirm": (NEGOTIATED, (Role.HOST, TokenBatch(0, ("a",)))),
    "host end before confirm": (NEGOTIATED, (Role.HOST, end())),
    "host tokens before hello": (
        [CLIENT_HELLO, (Role.CLIENT, Resume(JOB, 0))],
        (Role.HOST, TokenBatch(0, ("a",))),
    ),
    "host tokens after a withdrawn request": (
        [*NEGOTIATED, (Role.CLIENT, Cancel(JOB))],
        (Role.HOST, TokenBatch(0, ("a",))),
    ),
    "host end after a withdrawn request": ([*NEGOTIATED, (Role.CLIENT, Cancel(JOB))], (Role.HOST, end())),
    "host first batch not at zero": (CONFIRMED_, (Role.HOST, TokenBatch(1, ("a",)))),
    "host seq gap": ([*CONFIRMED_, FIRST_BATCH], (Role.HOST, TokenBatch(3, ("c",)))),
    "host seq overlap": ([*CONFIRMED_, FIRST_BATCH], (Role.HOST, TokenBatch(1, ("b",)))),
    "host first batch not at first_index": (
        [
            CLIENT_HELLO,
            (Role.CLIENT, request(first_index=5, continuation="abcde")),
            HOST_HELLO,
            HOST_OFFER,
            CONFIRM,
        ],
        (Role.HOST, TokenBatch(0, ("a",))),
    ),
    "host resumed batch not at from_seq": (
        [CLIENT_HELLO, (Role.CLIENT, Resume(JOB, 9)), HOST_HELLO],
        (Role.HOST, TokenBatch(8, ("a",))),
    ),
    "host tokens after end": (
        [*CONFIRMED_, FIRST_BATCH, (Role.HOST, end())],
        (Role.HOST, TokenBatch(2, ("c",))),
    ),
    "host second end": ([*CONFIRMED_, (Role.HOST, end())], (Role.HOST, end())),
    "host tokens after the client's error": (
        [*CONFIRMED_, FIRST_BATCH, (Role.CLIENT, Error("x", "y"))],
        (Role.HOST, TokenBatch(2, ("c",))),
    ),
    "host tokens after its error": (
        [*CONFIRMED_, FIRST_BATCH, (Role.HOST, Error("x", "y"))],
        (Role.HOST, TokenBatch(2, ("c",))),
    ),
    "host sends request": ([CLIENT_HELLO], (Role.HOST, request())),
    "host sends receipt": (CONFIRMED_, (Role.HOST, receipt(0))),
    "host sends cancel": (CONFIRMED_, (Role.HOST, Cancel(JOB))),
    "host sends confirm": (NEGOTIATED, (Role.HOST, Confirm(JOB, SESSION))),
}


def build(prefix: list[Move]) -> ConnectionPair:
    pair = ConnectionPair()
    for role, frame in prefix:
        pair.exchange(role, frame)
    return pair


@pytest.mark.parametrize(("prefix", "move"), ILLEGAL.values(), ids=ILLEGAL.keys())
def test_an_illegal_move_is_a_local_error_to_send(prefix: list[Move], move: Move) -> None:
    """Sending a frame the protocol forbids here raises LocalProtocolError(unexpected_frame) and changes
    nothing: the connection's states and seq are as before."""
    pair = build(prefix)
    role, frame = move
    sender = pair.side(role)
    before = (sender.client_state, sender.host_state, sender.next_seq, sender.job_id)
    with pytest.raises(LocalProtocolError) as info:
        sender.send(frame)
    assert info.value.code is ErrorCode.UNEXPECTED_FRAME
    assert (sender.client_state, sender.host_state, sender.next_seq, sender.job_id) == before


@pytest.mark.parametrize(("prefix", "move"), ILLEGAL.values(), ids=ILLEGAL.keys())
def test_an_illegal_move_is_a_remote_error_to_receive(prefix: list[Move], move: Move) -> None:
    """Receiving a frame the peer was not allowed to send raises RemoteProtocolError(unexpected_frame),
    and the connection stays broken for further data."""
    pair = build(prefix)
    role, frame = move
    receiver = pair.side(role.peer)
    with pytest.raises(RemoteProtocolError) as info:
        receiver.receive_data(encode(frame))
    assert info.value.code is ErrorCode.UNEXPECTED_FRAME
    with pytest.raises(RemoteProtocolError) as again:
        receiver.receive_data(encode(Error("x", "y")))
    assert again.value is info.value


def test_a_frame_that_fails_to_encode_changes_no_state() -> None:
    """A frame beyond the codec limits is refused before the state moves: the next valid frame works."""
    pair = confirmed()
    with pytest.raises(LocalProtocolError):
        pair.host.send(TokenBatch(0, ("x" * 300,)))
    assert pair.host.host_state is H.OFFERED
    assert pair.host.next_seq == 0
    pair.exchange(Role.HOST, TokenBatch(0, ("x",)))


def test_a_broken_connection_can_still_send_its_error() -> None:
    """After a RemoteProtocolError the receiver can still tell the peer why, with an Error frame."""
    pair = confirmed()
    with pytest.raises(RemoteProtocolError):
        pair.client.receive_data(encode(TokenBatch(4, ("late",))))
    data = pair.client.send(Error(ErrorCode.UNEXPECTED_FRAME.value, "seq gap"))
    assert pair.host.receive_data(data) == [Error("unexpected_frame", "seq gap")]


def test_good_frames_before_a_bad_one_do_not_survive_the_error() -> None:
    """Frames decoded in the same read as an illegal one are reported through the error only: the
    connection raises, and keeps raising, rather than handing out frames after a violation."""
    pair = confirmed()
    data = encode(TokenBatch(0, ("a",))) + encode(TokenBatch(5, ("b",)))
    with pytest.raises(RemoteProtocolError):
        pair.client.receive_data(data)
    with pytest.raises(RemoteProtocolError):
        pair.client.receive_data(encode(end()))


def test_malformed_bytes_are_a_remote_error_with_the_codec_code() -> None:
    """Bytes that are not a frame raise RemoteProtocolError with the codec's code, not unexpected_frame."""
    pair = ConnectionPair()
    with pytest.raises(RemoteProtocolError) as info:
        pair.host.receive_data(b"\x02\xc1\xc1")
    assert info.value.code is ErrorCode.MALFORMED_FRAME


# -- the table itself ----------------------------------------------------------------------------------

FINAL: set[State] = {C.ERRORED, H.ERRORED, H.REJECTED}
#: states from which only Error may still be sent
ONLY_ERROR: set[State] = {H.ENDED, C.WITHDRAWN}


def sample(kind: type[Frame]) -> Frame:
    samples: dict[type[Frame], Frame] = {
        Hello: Hello(VERSIONS),
        Request: request(),
        Offer: offer(),
        Reject: Reject(JOB, "busy"),
        Confirm: Confirm(JOB, SESSION),
        TokenBatch: TokenBatch(0, ("a",)),
        Receipt: receipt(0),
        End: end(),
        Error: Error("x", "y"),
        Cancel: Cancel(JOB),
        Resume: Resume(JOB, 0),
    }
    return samples[kind]


def test_no_transition_leads_out_of_a_final_state() -> None:
    """TRANSITIONS has no entry from ERRORED or REJECTED, and next_state refuses every frame there,
    Error included, whatever the peer's state."""
    for _role, state, _kind in TRANSITIONS:
        assert state not in FINAL
    for state in FINAL:
        role = Role.CLIENT if isinstance(state, ClientState) else Role.HOST
        peer_states: list[State] = [*HostState] if role is Role.CLIENT else [*ClientState]
        for kind in FRAME_TYPES:
            for peer_state in peer_states:
                assert isinstance(next_state(role, state, peer_state, sample(kind)), str)


def test_from_ended_or_withdrawn_only_an_error_may_follow() -> None:
    """A host that sent End, or a client that withdrew its request, may only still report an Error."""
    for _role, state, _kind in TRANSITIONS:
        assert state not in ONLY_ERROR
    for state in ONLY_ERROR:
        role = Role.CLIENT if isinstance(state, ClientState) else Role.HOST
        peer_state: State = H.OFFERED if role is Role.CLIENT else C.CONFIRMED
        for kind in FRAME_TYPES:
            result = next_state(role, state, peer_state, sample(kind))
            assert isinstance(result, str) == (kind is not Error)


def test_the_table_is_well_typed() -> None:
    """Every entry moves a role's own state to another of its own states, guarded by peer states only."""
    for (role, state, kind), (target, guard) in TRANSITIONS.items():
        own = ClientState if role is Role.CLIENT else HostState
        peer = HostState if role is Role.CLIENT else ClientState
        assert isinstance(state, own)
        assert isinstance(target, own)
        assert kind in FRAME_TYPES
        assert kind is not Error  # Error is handled by next_state for every state
        assert guard is None or all(isinstance(s, peer) for s in guard)


def test_every_state_is_reachable() -> None:
    """Each state of both roles is the target of some transition (or the start, or ERRORED via Error)."""
    targets = {target for target, _ in TRANSITIONS.values()} | {C.START, H.START, C.ERRORED, H.ERRORED}
    assert targets == set(ClientState) | set(HostState)
