"""`LocalThrottle`: the caps within one process (one event loop), the default without Redis."""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
import uuid
from collections.abc import Callable

from mailprobe.config import Settings
from mailprobe.throttle.base import (
    Clock,
    Limits,
    Slot,
    Throttle,
    ThrottlePolicy,
    ThrottleTimeout,
    log,
    normalize_host,
    penalty_level,
    priority_reserve,
    take_tokens,
)


class LocalThrottle(Throttle):
    """Caps within this process (one event loop): the default when no Redis is configured.

    `clock` (monotonic seconds) drives rates and penalties; tests inject one to
    check recovery without sleeping. Waiting is on the event loop's own clock.
    """

    def __init__(self, policy: ThrottlePolicy | None = None, *, clock: Clock | None = None):
        self.policy = policy or ThrottlePolicy.from_settings(Settings())
        self._clock: Clock = clock or time.monotonic
        self._global_in_use = 0
        self._in_use: dict[str, int] = {}
        self._held: dict[str, str] = {}  # token -> mx host
        self._global_tat = -math.inf  # GCRA: earliest time of the next start
        self._tat: dict[str, float] = {}  # per MX: its RCPT rate's grid
        self._conn_tat: dict[str, float] = {}  # per MX: its new-connection rate's grid
        self._penalties: dict[str, tuple[int, float]] = {}  # host -> (level, since)
        self._changed: asyncio.Event | None = None
        self._priority_until = -math.inf  # the critical lane waits on the global rate till

    def _penalty(self, host: str, now: float) -> int:
        stored, since = self._penalties.get(host, (0, now))
        level = penalty_level(stored, since, now, self.policy.cooldown)
        if level == 0:
            self._penalties.pop(host, None)
        return level

    def _limits(self, host: str, now: float) -> Limits:
        return self.policy.limits_for(host).penalized(self._penalty(host, now))

    def _try_take(
        self, host: str, now: float, want: int, priority: bool = False
    ) -> tuple[int, float, str]:
        """Take a connection and up to `want` RCPT tokens now -> (RCPT tokens, 0, ""), or
        (0, seconds to wait, the cap in the way). `want=0`: one must be available, none
        is taken."""
        glob, mx = self.policy.global_limits, self._limits(host, now)
        if self._global_in_use >= glob.max_concurrency:
            return 0, math.inf, "global concurrency"
        if self._in_use.get(host, 0) >= mx.max_concurrency:
            return 0, math.inf, "per-MX concurrency"
        conn_tat = self._conn_tat.get(host, -math.inf)
        ok, conn_next, conn_wait = take_tokens(conn_tat, now, 1.0 / mx.connect_rate, 1, 1)
        if not ok:
            return 0, conn_wait, "per-MX connection rate"
        taken, wait, limited_by = self._take_rcpts(
            host, now, max(1, want), mx, commit=want > 0, priority=priority
        )
        if not taken:
            return 0, wait, limited_by
        self._conn_tat[host] = conn_next
        self._global_in_use += 1
        self._in_use[host] = self._in_use.get(host, 0) + 1
        return taken if want > 0 else 0, 0.0, ""

    def _take_rcpts(
        self,
        host: str,
        now: float,
        want: int,
        mx: Limits,
        commit: bool = True,
        priority: bool = False,
    ) -> tuple[int, float, str]:
        """Up to `want` RCPT tokens on both the global and the MX's rate, or none.
        `commit=False`: only say whether one is available now."""
        glob = self.policy.global_limits
        g_int, m_int = 1.0 / glob.rps, 1.0 / mx.rps
        g_burst, m_burst = self.policy.burst(glob.rps), self.policy.burst(mx.rps)
        keep = 0 if priority or now >= self._priority_until else priority_reserve(g_burst)
        mx_tat = self._tat.get(host, -math.inf)
        g_ok, _, g_wait = take_tokens(self._global_tat, now, g_int, g_burst, want, keep)
        m_ok, _, m_wait = take_tokens(mx_tat, now, m_int, m_burst, want)
        if not g_ok or not m_ok:
            if g_wait >= m_wait:
                if priority:  # the others leave it a reserve until it gets its token
                    self._priority_until = now + g_wait + 0.1
                return 0, g_wait, "global rate"
            return 0, m_wait, "per-MX rate"
        taken = min(g_ok, m_ok)
        if priority:
            self._priority_until = -math.inf
        if not commit:
            return taken, 0.0, ""
        _, self._global_tat, _ = take_tokens(self._global_tat, now, g_int, g_burst, taken, keep)
        _, self._tat[host], _ = take_tokens(mx_tat, now, m_int, m_burst, taken)
        return taken, 0.0, ""

    async def acquire(
        self, mx_host: str, *, wait: float | None = None, rcpts: int = 1, priority: bool = False
    ) -> Slot:
        host = normalize_host(mx_host)
        want = max(0, rcpts)

        def attempt(now: float) -> tuple[int, float, str]:
            return self._try_take(host, now, want, priority)

        taken = await self._wait_for(host, attempt, wait)
        token = uuid.uuid4().hex
        self._held[token] = host
        return Slot(host, token, rcpts=taken)

    async def more(
        self, slot: Slot, rcpts: int, *, wait: float | None = None, priority: bool = False
    ) -> int:
        host = slot.mx_host
        want = max(1, rcpts)

        def attempt(now: float) -> tuple[int, float, str]:
            return self._take_rcpts(host, now, want, self._limits(host, now), priority=priority)

        return await self._wait_for(host, attempt, wait, fail_fast=True)

    async def _wait_for(
        self,
        host: str,
        attempt: Callable[[float], tuple[int, float, str]],
        wait: float | None,
        fail_fast: bool = False,
    ) -> int:
        """Try until `attempt` succeeds (no cap in the way) and return what it took; sleep
        until its token is due or a release. `fail_fast`: a token due after the budget fails
        now instead of at the budget's end."""
        budget = self.policy.wait if wait is None else wait
        loop = asyncio.get_running_loop()
        start = loop.time()
        while True:
            taken, delay, limited_by = attempt(self._clock())
            if not limited_by:
                return taken
            remaining = start + budget - loop.time()
            if remaining <= 0 or (fail_fast and delay > remaining):
                retry = delay if math.isfinite(delay) else None
                raise ThrottleTimeout(host, loop.time() - start, limited_by, retry)
            if self._changed is None:
                self._changed = asyncio.Event()
            changed = self._changed
            # Woken by a release, or when the rate token is due; never a busy loop.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), min(delay, remaining))

    async def release(self, slot: Slot) -> None:
        host = self._held.pop(slot.token, None)
        if host is None:
            return
        self._global_in_use -= 1
        left = self._in_use[host] - 1
        if left:
            self._in_use[host] = left
        else:
            del self._in_use[host]
        if len(self._tat) > 1024:  # forget MXs whose rate state no longer matters
            now = self._clock()
            self._tat = {h: t for h, t in self._tat.items() if t > now}
            self._conn_tat = {h: t for h, t in self._conn_tat.items() if t > now}
        if self._changed is not None:
            self._changed.set()
            self._changed = None

    async def renew(self, slot: Slot, lease_seconds: float | None = None) -> bool:
        return slot.token in self._held  # no leases in-process: held until released

    async def penalize(self, mx_host: str, *, reason: str) -> None:
        host, now = normalize_host(mx_host), self._clock()
        level = self._penalty(host, now)
        _, since = self._penalties.get(host, (0, now))
        if level > 0 and now - since < self.policy.penalty_grace:
            return  # the same overload, reported by probes already in flight
        level = min(level + 1, self.policy.max_penalty_level)
        self._penalties[host] = (level, now)
        log.info("throttle: %s penalized (%s): %s", host, reason, self._limits(host, now))

    async def effective_limits(self, mx_host: str) -> Limits:
        return self._limits(normalize_host(mx_host), self._clock())
