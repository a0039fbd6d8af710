"""Ending a stream on a failure so that the client still learns why.

A reset discards what the peer has not read yet, so an ``Error`` frame followed at once by a reset
would often never arrive. Instead the host sends ``Error``, closes its side (the peer reads the frame,
then EOF), waits a moment for the peer to close or reset in turn, and only then resets.
"""

from __future__ import annotations

import asyncio
import builtins
from collections.abc import Callable

from .._exceptions import ErrorCode, FabstirError
from ..core._channel import FrameChannel
from ..protocol import Error, Frame

__all__ = ["LINGER", "abort_with_error", "linger_and_reset"]

#: How long a failed stream may linger for the client to read the Error frame: a client reacts in
#: milliseconds; one that does not is not worth holding the stream for.
LINGER = 1.0


async def abort_with_error(
    channel: FrameChannel,
    code: ErrorCode | str,
    message: str,
    *,
    retryable: bool = False,
    timeout: float,
    on_frame: Callable[[Frame], None] | None = None,
) -> None:
    """Sends ``Error`` (best effort, within ``timeout``), then :func:`linger_and_reset`."""
    try:
        async with asyncio.timeout(timeout):
            await channel.send(Error(str(code), message, retryable))
    except (FabstirError, builtins.TimeoutError):
        await channel.reset()
        return
    await linger_and_reset(channel, timeout=timeout, on_frame=on_frame)


async def linger_and_reset(
    channel: FrameChannel, *, timeout: float, on_frame: Callable[[Frame], None] | None = None
) -> None:
    """Closes our side (the peer reads what was sent, then EOF), waits until the peer ends the stream (at
    most :data:`LINGER` seconds, and at most ``timeout``), then resets. Frames arriving meanwhile go to
    ``on_frame`` (a receipt in flight still counts); without it, or once the bytes stop making sense,
    they are discarded."""
    try:
        async with asyncio.timeout(min(timeout, LINGER)):
            await channel.stream.close()
            if on_frame is not None:
                while True:
                    on_frame(await channel.receive())
            while await channel.stream.read():
                pass
    except (FabstirError, builtins.TimeoutError):
        pass
    await channel.reset()
