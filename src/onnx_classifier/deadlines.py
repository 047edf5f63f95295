"""Waiting for a request to another resource (a camera, an ML model service) under a deadline."""

from __future__ import annotations

import asyncio
from typing import Awaitable, TypeVar

from grpclib import GRPCError, Status

T = TypeVar("T")

# A call's work ends this long before its deadline (a tenth of the time it has, at most a quarter
# of a second), so that an answer naming the camera or ML model service that did not answer
# reaches the caller before the caller's own deadline ends the call with no reason.
ANSWER_MARGIN_S = 0.25


def work_time(timeout: float) -> float:
    """How long a call with `timeout` seconds left may wait for the resources it uses."""
    return timeout - min(ANSWER_MARGIN_S, 0.1 * timeout)


async def within(request: Awaitable[T], limit: float) -> T:
    """`request`'s result, or asyncio.TimeoutError once `limit` seconds have passed.

    The request carries the same deadline to the other side (the `timeout` a camera or a service is
    given), which may end it first and answer DEADLINE_EXCEEDED. That is the same deadline passing, so it
    is the same error here, whichever side noticed first; wait_for makes sure a request that hangs cannot
    hold the caller past the limit.
    """
    try:
        return await asyncio.wait_for(request, limit)
    except GRPCError as e:
        if e.status is Status.DEADLINE_EXCEEDED:
            raise asyncio.TimeoutError(f"the other side ended the request at its deadline: {e.message}") from e
        raise
