"""The per-job state machine of the job protocol, for both roles, in one table.

Each side has its own state; a frame sent by a side moves *that side's* state, as the table says. Some
moves also require the other side to have reached a state (the host may only offer once the client has
requested; it may only stream once the client has confirmed or resumed). Both peers run the same machine:
a :class:`~fabstir.protocol.JobConnection` feeds it the frames it sends (a violation is a
:class:`LocalProtocolError`) and the frames it receives (a :class:`RemoteProtocolError`).

Client:  START -hello-> GREETED -request-> REQUESTED -confirm-> CONFIRMED -receipt-> CONFIRMED
                                 -resume--> CONFIRMED           -cancel-> CANCELLED -receipt-> CANCELLED
                                            REQUESTED -cancel-> WITHDRAWN   (nothing was bought)
Host:    START -hello-> GREETED -offer-> OFFERED -tokens-> STREAMING -tokens-> STREAMING -end-> ENDED
                                -reject-> REJECTED        -end-> ENDED
                                -tokens/end-> (resumed job)
Either side may send ``error`` from any state but ERRORED and REJECTED (-> ERRORED); after it the sender
sends nothing more.

The guards on the other side's state are checked by both peers against their own view, and the two
directions of a stream cross: a frame may have been sent before its sender saw our latest one. So guards
admit the states our crossing frames can lead to (a host may still greet, offer or reject a client whose
``Cancel`` is on its way), but never a state only reached after the frame they protect (tokens need a
confirmation or a resume; a cancelled request stays unpaid: no tokens, no ``End``).
"""

from __future__ import annotations

from enum import Enum

from ._frames import (
    Cancel,
    Confirm,
    End,
    Error,
    Frame,
    Hello,
    Offer,
    Receipt,
    Reject,
    Request,
    Resume,
    TokenBatch,
)

__all__ = ["TRANSITIONS", "ClientState", "HostState", "Role", "next_state"]


class Role(Enum):
    CLIENT = "client"
    HOST = "host"

    @property
    def peer(self) -> Role:
        return Role.HOST if self is Role.CLIENT else Role.CLIENT


class ClientState(Enum):
    START = "START"
    GREETED = "GREETED"
    REQUESTED = "REQUESTED"
    CONFIRMED = "CONFIRMED"
    CANCELLED = "CANCELLED"  # cancelled after confirming (or resuming): the host still ends the job
    WITHDRAWN = "WITHDRAWN"  # cancelled before confirming: nothing was bought
    ERRORED = "ERRORED"


class HostState(Enum):
    START = "START"
    GREETED = "GREETED"
    OFFERED = "OFFERED"
    STREAMING = "STREAMING"
    ENDED = "ENDED"
    REJECTED = "REJECTED"
    ERRORED = "ERRORED"


State = ClientState | HostState
C, H = ClientState, HostState
#: the client confirmed (or resumed) the job, possibly cancelling it since: tokens and End may flow
_STREAM_READY = frozenset({C.CONFIRMED, C.CANCELLED})
#: the client has asked for a job (and may have withdrawn it since, crossing our answer)
_REQUESTED = frozenset({C.REQUESTED, C.WITHDRAWN})
#: the client has greeted (whatever it sent next); not ERRORED: after an error nothing more is sent
_GREETED = frozenset({C.GREETED, C.REQUESTED, C.CONFIRMED, C.CANCELLED, C.WITHDRAWN})

#: (sender role, sender state, frame type) -> (sender's next state, states the peer must be in, or None)
TRANSITIONS: dict[tuple[Role, State, type[Frame]], tuple[State, frozenset[State] | None]] = {
    # client
    (Role.CLIENT, C.START, Hello): (C.GREETED, None),
    (Role.CLIENT, C.GREETED, Request): (C.REQUESTED, None),
    (Role.CLIENT, C.GREETED, Resume): (C.CONFIRMED, None),
    (Role.CLIENT, C.REQUESTED, Confirm): (C.CONFIRMED, frozenset({H.OFFERED})),
    (Role.CLIENT, C.REQUESTED, Cancel): (C.WITHDRAWN, None),
    (Role.CLIENT, C.CONFIRMED, Receipt): (C.CONFIRMED, None),
    (Role.CLIENT, C.CONFIRMED, Cancel): (C.CANCELLED, None),
    (Role.CLIENT, C.CANCELLED, Receipt): (C.CANCELLED, None),
    # host
    (Role.HOST, H.START, Hello): (H.GREETED, _GREETED),
    (Role.HOST, H.GREETED, Offer): (H.OFFERED, _REQUESTED),
    (Role.HOST, H.GREETED, Reject): (H.REJECTED, _REQUESTED),
    (Role.HOST, H.GREETED, TokenBatch): (H.STREAMING, _STREAM_READY),  # resumed job
    (Role.HOST, H.GREETED, End): (H.ENDED, _STREAM_READY),  # resumed job that had finished
    (Role.HOST, H.OFFERED, TokenBatch): (H.STREAMING, _STREAM_READY),
    (Role.HOST, H.OFFERED, End): (H.ENDED, _STREAM_READY),
    (Role.HOST, H.STREAMING, TokenBatch): (H.STREAMING, _STREAM_READY),
    (Role.HOST, H.STREAMING, End): (H.ENDED, _STREAM_READY),
}

_FINAL: frozenset[State] = frozenset({C.ERRORED, H.ERRORED, H.REJECTED})


def next_state(role: Role, state: State, peer_state: State, frame: Frame) -> State | str:
    """The sender's state after sending ``frame``, or a sentence saying why it may not be sent."""
    if isinstance(frame, Error):
        if state in _FINAL:
            return f"{role.value} may not send error in state {state.value}"
        return C.ERRORED if role is Role.CLIENT else H.ERRORED
    entry = TRANSITIONS.get((role, state, type(frame)))
    if entry is None:
        return f"{role.value} may not send {frame.KIND} in state {state.value}"
    new_state, peer_required = entry
    if peer_required is not None and peer_state not in peer_required:
        peer = role.peer.value
        return f"{role.value} may not send {frame.KIND} while the {peer} is in state {peer_state.value}"
    return new_state
