"""`LocalThrottle`: the caps within one process (one event loop), the default without Redis."""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
import uuid

from mailprobe.config import Settings
from mailprobe.throttle.base import (
    Clock,
    Limits,
    Slot,
    Throttle,
    ThrottlePolicy,
    ThrottleTimeout,
    log,
    next_tat,
    normalize_host,
    penalty_level,
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
        self._tat: dict[str, float] = {}
        self._penalties: dict[str, tuple[int, float]] = {}  # host -> (level, since)
        self._changed: asyncio.Event | None = None

    def _penalty(self, host: str, now: float) -> int:
        stored, since = self._penalties.get(host, (0, now))
        level = penalty_level(stored, since, now, self.policy.cooldown)
        if level == 0:
            self._penalties.pop(host, None)
        return level

    def _limits(self, host: str, now: float) -> Limits:
        return self.policy.limits_for(host).penalized(self._penalty(host, now))

    def _try_take(self, host: str, now: float) -> tuple[float, str]:
        """Take a slot now (returns 0) or say how long to wait and which cap is in the way."""
        glob, mx = self.policy.global_limits, self._limits(host, now)
        if self._global_in_use >= glob.max_concurrency:
            return math.inf, "global concurrency"
        if self._in_use.get(host, 0) >= mx.max_concurrency:
            return math.inf, "per-MX concurrency"
        mx_tat = self._tat.get(host, -math.inf)
        delay = max(self._global_tat - now, mx_tat - now, 0.0)
        if delay > 0:
            return delay, "global rate" if self._global_tat > mx_tat else "per-MX rate"
        self._global_tat = next_tat(self._global_tat, now, 1.0 / glob.rps)
        self._tat[host] = next_tat(mx_tat, now, 1.0 / mx.rps)
        self._global_in_use += 1
        self._in_use[host] = self._in_use.get(host, 0) + 1
        return 0.0, ""

    async def acquire(self, mx_host: str, *, wait: float | None = None) -> Slot:
        host = normalize_host(mx_host)
        budget = self.policy.wait if wait is None else wait
        loop = asyncio.get_running_loop()
        start = loop.time()
        while True:
            delay, limited_by = self._try_take(host, self._clock())
            if not limited_by:
                token = uuid.uuid4().hex
                self._held[token] = host
                return Slot(host, token)
            remaining = start + budget - loop.time()
            if remaining <= 0:
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
