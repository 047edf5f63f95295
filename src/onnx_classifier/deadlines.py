"""Waiting for a request to another resource (a camera, an ML model service) under a deadline."""

from __future__ import annotations

import asyncio
from typing import Awaitable, TypeVar

from grpclib import GRPCError, Status

T = TypeVar("T")


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
