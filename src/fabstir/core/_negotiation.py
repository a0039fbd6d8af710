"""Negotiation: send the job request to the top K hosts in parallel and collect offers.

Each candidate gets its own job stream (the one the job will run on if it wins), so the winning host
streams tokens without a new stream set-up; losers get ``Cancel(declined)``.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass

from .._exceptions import FabstirError, RemoteProtocolError
from .._models import NodeInfo, RejectReason
from ..protocol import (
    PROTOCOL_ID,
    SUPPORTED_VERSIONS,
    Cancel,
    Error,
    Hello,
    Offer,
    Reject,
    Request,
    Role,
)
from ..transport import PeerInfo, Transport
from ._channel import FrameChannel

__all__ = ["OfferInHand", "Rejection", "decline", "negotiate", "request_offer"]

_log = logging.getLogger("fabstir.negotiation")


@dataclass(slots=True)
class OfferInHand:
    """An accepted offer and the open stream it arrived on."""

    node: NodeInfo
    offer: Offer
    channel: FrameChannel
    round_trip: float


@dataclass(frozen=True, slots=True)
class Rejection:
    node: NodeInfo
    reason: str  # a RejectReason value
    message: str


async def request_offer(
    transport: Transport,
    node: NodeInfo,
    request: Request,
    *,
    agent: str,
    chain_id: int,
    timeout: float,
) -> OfferInHand | Rejection:
    """Asks one host. Never raises for the host's sake: failures come back as a :class:`Rejection`."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    channel: FrameChannel | None = None
    try:
        async with asyncio.timeout(timeout):
            stream = await transport.open_stream(PeerInfo(node.peer_id, node.addresses), PROTOCOL_ID)
            channel = FrameChannel(stream, Role.CLIENT)
            await channel.send(Hello(SUPPORTED_VERSIONS, agent), request)
            await channel.receive()  # the host's Hello (the state machine guarantees it comes first)
            reply = await channel.receive()
    except builtins.TimeoutError:
        return await _fail(channel, node, f"no answer within {timeout:g} s")
    except RemoteProtocolError as exc:
        if channel is not None:
            await _send_error(channel, exc)
            await channel.linger_close()
        return await _fail(None, node, f"protocol violation: {exc}")
    except FabstirError as exc:
        return await _fail(channel, node, str(exc))
    match reply:
        case Offer() as offer:
            problem = _check_offer(offer, request, chain_id)
            if problem is None:
                return OfferInHand(node, offer, channel, loop.time() - started)
            await decline(channel, reason=problem)
            return Rejection(node, RejectReason.ERROR, problem)
        case Reject(reason=reason, message=message):
            await channel.close()
            return Rejection(node, reason, message)
        case Error(code=code, message=message):
            await channel.reset()
            return Rejection(node, RejectReason.ERROR, f"{code}: {message}")
        case _:  # pragma: no cover - the state machine admits nothing else here
            await channel.reset()
            return Rejection(node, RejectReason.ERROR, f"unexpected {reply.KIND} frame")


def _check_offer(offer: Offer, request: Request, chain_id: int) -> str | None:
    if offer.job_id != request.job_id:
        return "offer for another job"
    if offer.payment_token != request.payment_token:
        return f"offer in {offer.payment_token}, asked for {request.payment_token}"
    if request.max_price_per_token is not None and offer.price_per_token > request.max_price_per_token:
        return "offer above the maximum price"
    if offer.chain_id != chain_id:
        return f"host settles on chain {offer.chain_id}, we are on {chain_id}"
    return None


async def _fail(channel: FrameChannel | None, node: NodeInfo, message: str) -> Rejection:
    if channel is not None:
        await channel.reset()
    _log.info("negotiation with %s failed: %s", node.peer_id, message)
    return Rejection(node, RejectReason.ERROR, message)


async def _send_error(channel: FrameChannel, exc: FabstirError) -> None:
    with contextlib.suppress(FabstirError):
        await channel.send(Error(exc.code.value, exc.message, exc.retryable))


async def decline(channel: FrameChannel, *, reason: str = "declined") -> None:
    """Tells a host we do not take its offer, and closes the stream."""
    try:
        async with asyncio.timeout(1.0):
            await channel.send(Cancel(channel.connection.job_id or "", reason))
            await channel.close()
    except (FabstirError, builtins.TimeoutError):
        await channel.reset()


async def negotiate(
    transport: Transport,
    nodes: Sequence[NodeInfo],
    request: Request,
    *,
    agent: str,
    chain_id: int,
    timeout: float,
) -> tuple[list[OfferInHand], list[Rejection]]:
    """Asks every node in parallel. Offers come back in the order of ``nodes`` (best first)."""
    answers = await asyncio.gather(
        *(
            request_offer(transport, n, request, agent=agent, chain_id=chain_id, timeout=timeout)
            for n in nodes
        )
    )
    offers = [a for a in answers if isinstance(a, OfferInHand)]
    rejections = [a for a in answers if isinstance(a, Rejection)]
    return offers, rejections
