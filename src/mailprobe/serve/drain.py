"""A throttle that can be drained: once `close()` is called it grants no new slot (the bulk
scheduler takes that as a full cap and waits), and `drained()` waits for the sessions
that hold one to end. A stopping server drains before it cancels its jobs, so no SMTP
session is cut in the middle and no address it asked about is asked again after a restart.
"""

from __future__ import annotations

import asyncio
import contextlib

from mailprobe.throttle import Slot, Throttle, ThrottleTimeout, ThrottleWrapper


class DrainingThrottle(ThrottleWrapper):
    def __init__(self, inner: Throttle) -> None:
        super().__init__(inner)
        self.closing = False
        self.held = 0
        self._idle = asyncio.Event()
        self._idle.set()

    async def acquire(
        self, mx_host: str, *, wait: float | None = None, rcpts: int = 1, priority: bool = False
    ) -> Slot:
        if self.closing:
            raise ThrottleTimeout(mx_host, 0.0, "draining", retry_after=1.0)
        slot = await self.inner.acquire(mx_host, wait=wait, rcpts=rcpts, priority=priority)
        self.held += 1
        self._idle.clear()
        return slot

    async def release(self, slot: Slot) -> None:
        try:
            await self.inner.release(slot)
        finally:
            self.held = max(0, self.held - 1)
            if not self.held:
                self._idle.set()

    def close(self) -> None:
        self.closing = True

    async def drained(self, timeout: float) -> bool:
        """Wait (at most `timeout` seconds) for every held slot to be released."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), timeout)
        return not self.held
