"""Small asyncio helpers the loops share."""

from __future__ import annotations

import asyncio


async def wait_any(seconds: float, *events: asyncio.Event) -> None:
    """Return when any of `events` is set or `seconds` have passed."""
    if seconds <= 0 or any(event.is_set() for event in events):
        return
    waiters = [asyncio.ensure_future(event.wait()) for event in events]
    try:
        await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
