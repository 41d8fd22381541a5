"""RCPT tokens for an open session: the throttle's rate caps count RCPT commands.

A session's connection is granted when an RCPT token is available (the conductor's
`acquire(..., rcpts=0)`), but each RCPT takes its token from the throttle
(`Throttle.more`) just before it is sent: a token taken at connect time would reach the
server after the connect, banner and EHLO, bunched with tokens taken on time by other
sessions. So a pipelined group holds as many RCPTs as there are tokens now.
Waiting for a token does not count against the session's deadline (the server is not
slow, we are polite). A token that does not come within the wait ends the session:
what it did not send goes back in line (`OutOfTokens`), nothing is answered for it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence

from mailprobe.engine.bulk.steps import CatchAllStep, RcptStep, Step
from mailprobe.throttle import Slot, Throttle, ThrottleError

TOKEN_WAIT_MAX = 10.0  # seconds an open connection may idle for its next RCPT token


class OutOfTokens(Exception):
    """No RCPT token within the wait (or the shared throttle went away): end the session."""


class Tokens:
    """The RCPT tokens of one session: those taken with its slot, then more as it goes."""

    def __init__(
        self, throttle: Throttle, slot: Slot, wait: float, critical: Callable[[], bool]
    ) -> None:
        self.throttle = throttle
        self.critical = critical  # is the session's lane the run's critical path, now
        self.slot = slot
        self.wait = wait
        self.left = slot.rcpts
        self.waited = 0.0  # seconds spent waiting for tokens
        self.deadline: asyncio.Timeout | None = None  # the session's, moved by each wait

    async def take(self, want: int) -> int:
        """Between 1 and `want` tokens (0 when `want` is 0); raises OutOfTokens."""
        if want <= 0:
            return 0
        if self.left:
            taken = min(self.left, want)
            self.left -= taken
            return taken
        deadline = self.deadline
        when = deadline.when() if deadline is not None else None
        if deadline is not None and when is not None:
            deadline.reschedule(when + self.wait)
        start = time.monotonic()
        try:
            taken = await self.throttle.more(
                self.slot, want, wait=self.wait, priority=self.critical()
            )
        except ThrottleError as exc:
            raise OutOfTokens(str(exc)) from exc
        finally:
            waited = time.monotonic() - start
            self.waited += waited
            if deadline is not None and when is not None:
                deadline.reschedule(when + waited)
        if waited > 1.0 and self.slot.expires_at is not None:
            try:  # a shared lease must outlive the session
                await self.throttle.renew(self.slot)
            except ThrottleError as exc:
                raise OutOfTokens(str(exc)) from exc
        return taken


def is_rcpt(step: Step) -> bool:
    return isinstance(step, RcptStep | CatchAllStep)


def rcpts_from(plan: Sequence[Step], start: int) -> int:
    """The RCPT commands in the plan from `start` on (each needs a token)."""
    return sum(1 for step in plan[start:] if is_rcpt(step))


def group_end(plan: Sequence[Step], start: int, tokens: int) -> int:
    """Where the group that begins at `start` ends: just before its (tokens + 1)-th RCPT,
    so it carries at most `tokens` RCPTs (and the MAIL, RSET or QUIT around them)."""
    seen = 0
    for i in range(start, len(plan)):
        if is_rcpt(plan[i]):
            if seen == tokens:
                return i
            seen += 1
    return len(plan)
