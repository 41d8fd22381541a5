"""What every throttle shares: errors, limits and policy, the slot, the `Throttle`
interface, and the pure helpers (GCRA's `take_tokens`, penalty levels) both backends use."""

from __future__ import annotations

import abc
import contextlib
import logging
import math
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from mailprobe.config import MXLimit, Settings
from mailprobe.egress import mx_of_key

log = logging.getLogger("mailprobe.throttle")

KEY_PREFIX = "mailprobe:throttle:"
DEFAULT_COOLDOWN = 600.0  # seconds a penalty lasts before one halving is undone
DEFAULT_PENALTY_GRACE = 5.0  # penalties closer than this count once (in-flight probes)
DEFAULT_MAX_PENALTY_LEVEL = 6  # at most 2**6 = 64 times slower
LEASE_MARGIN = 30.0  # lease = probe deadline + this, so a live probe never loses its slot
LATE_TOLERANCE = 0.05  # seconds a start may come after its token and keep the schedule
DEFAULT_BURST_SECONDS = 0.2  # a rate cap's burst: this many seconds' worth of tokens

Clock = Callable[[], float]


# -- errors -------------------------------------------------------------------


class ThrottleError(Exception):
    """Base class of throttle errors."""


class ThrottleTimeout(ThrottleError):
    """No slot within the allowed wait: reschedule the probe rather than drop it."""

    def __init__(
        self, mx_host: str, waited: float, limited_by: str = "", retry_after: float | None = None
    ) -> None:
        detail = f" ({limited_by} cap)" if limited_by else ""
        super().__init__(f"no throttle slot for {mx_host} within {waited:.2f}s{detail}")
        self.mx_host = mx_host
        self.waited = waited
        self.limited_by = limited_by
        self.retry_after = retry_after  # seconds until a rate token is due; None: a full slot


class ThrottleUnavailable(ThrottleError):
    """The shared throttle store cannot be reached: fail clearly, never hang."""

    def __init__(self, url: str, detail: str = "") -> None:
        super().__init__(f"throttle store {url} is unavailable" + (f": {detail}" if detail else ""))
        self.url = url


# -- limits and policy --------------------------------------------------------


@dataclass(frozen=True)
class Limits:
    """A concurrency cap, an RCPT rate cap (RCPT commands per second) and a new-connection
    rate cap (connections opened per second; None: the RCPT rate)."""

    max_concurrency: int
    rps: float
    connect_rps: float | None = None

    @property
    def connect_rate(self) -> float:
        return self.rps if self.connect_rps is None else self.connect_rps

    def penalized(self, level: int) -> Limits:
        """These limits halved `level` times (concurrency never below 1)."""
        if level <= 0:
            return self
        connect = None if self.connect_rps is None else self.connect_rps / (2**level)
        return Limits(max(1, self.max_concurrency >> level), self.rps / (2**level), connect)


@dataclass(frozen=True)
class ThrottlePolicy:
    """What the caps are: global, per-MX default, and per-MX overrides by pattern."""

    global_limits: Limits
    mx_default: Limits
    overrides: tuple[MXLimit, ...] = ()
    wait: float = 30.0  # default bound on acquire()
    connect_rps: float | None = None  # PER_MX_CONNECT_RPS (None: each MX's RCPT rate)
    burst_seconds: float = DEFAULT_BURST_SECONDS  # THROTTLE_BURST_SECONDS
    cooldown: float = DEFAULT_COOLDOWN
    penalty_grace: float = DEFAULT_PENALTY_GRACE
    max_penalty_level: int = DEFAULT_MAX_PENALTY_LEVEL

    def __post_init__(self) -> None:
        for limits in (self.global_limits, self.mx_default):
            if limits.max_concurrency < 1 or not limits.rps > 0:
                raise ValueError(f"throttle caps must be positive: {limits}")

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> ThrottlePolicy:
        return cls(
            global_limits=Limits(settings.global_max_concurrency, settings.global_rps),
            mx_default=Limits(settings.per_mx_max_concurrency_default, settings.per_mx_rps_default),
            overrides=settings.mx_limits,
            wait=settings.throttle_wait,
            connect_rps=settings.per_mx_connect_rps,
            burst_seconds=settings.throttle_burst_seconds,
            **overrides,
        )

    def limits_for(self, mx_host: str) -> Limits:
        """The configured (unpenalized) per-MX limits: the first matching override wins."""
        host = mx_of_key(normalize_host(mx_host))  # "route|mx" (egress_key): the MX's caps
        for limit in self.overrides:
            if limit.matches(host):
                return Limits(limit.max_concurrency, limit.rps, self.connect_rps)
        if self.connect_rps is not None and self.mx_default.connect_rps is None:
            return Limits(self.mx_default.max_concurrency, self.mx_default.rps, self.connect_rps)
        return self.mx_default

    def burst(self, rps: float) -> int:
        """RCPTs a rate cap lets go at once: `burst_seconds` worth, at least one."""
        return max(1, math.floor(rps * self.burst_seconds + 1e-9))


def normalize_host(mx_host: str) -> str:
    """One spelling per MX, so "MX.Example.COM." and "mx.example.com" share their caps."""
    return mx_host.strip().lower().rstrip(".")


def penalty_level(stored: int, since: float, now: float, cooldown: float) -> int:
    """The halvings in force now: one is undone per full cool-down since the last penalty."""
    if stored <= 0:
        return 0
    steps = max(0, math.floor((now - since) / cooldown))
    return max(0, stored - steps)


def late_tolerance(interval: float) -> float:
    """How late a take may be and still keep the grid (see `take_tokens`)."""
    return min(LATE_TOLERANCE, interval / 4)


def take_tokens(
    tat: float, now: float, interval: float, burst: int, want: int, reserve: int = 0
) -> tuple[int, float, float]:
    """GCRA with a burst: up to `want` tokens at `now` -> (taken, new tat, wait).

    `tat` is when the next token is due on the cap's grid. At most `burst` tokens conform
    at once, so any window of T seconds sees at most ``burst + (T + late_tolerance) /
    interval`` of them. A waiter always wakes a little after its token is due (timer and
    event-loop latency); restarting the grid from `now` would add that lateness to every
    interval, about 5% fewer RCPTs than the cap allows on the run's critical MX. So a take
    late by at most `late_tolerance` keeps the grid; after a longer pause (an idle MX) the
    grid restarts from now and no more than `burst` is saved up. Taking none returns the
    seconds until one is due. Taking k moves the grid k intervals on: a pipelined group of
    k RCPTs costs what k separate RCPTs cost. `reserve` tokens of the burst are left for
    others (the critical lane's, see `priority_reserve`)."""
    late = 0.0 <= now - tat <= late_tolerance(interval)
    base = tat if late else max(tat, now)  # a little late: keep the grid
    available = math.floor((now - base) / interval + burst + 1e-9) - reserve
    if available < 1:
        return 0, tat, base - (burst - 1 - reserve) * interval - now
    taken = min(available, want)
    return taken, base + taken * interval, 0.0


def priority_reserve(burst: int) -> int:
    """Global RCPT tokens the other lanes leave while the critical lane waits for one (a
    quarter of the burst, never all of it: the others always get some)."""
    return (burst - 1) // 4


def penalty_reason(result: Mapping[str, Any]) -> str | None:
    """Why a probe result should penalize its MX (421 or a rate-limit reply), else None."""
    if result.get("code") == 421:
        return "421"
    if result.get("reason") == "rate_limited":
        return "rate_limited"
    return None


# -- the interface ------------------------------------------------------------


@dataclass(frozen=True)
class Slot:
    """A held slot (one connection); give it back with `release`. `rcpts`: the RCPT tokens
    taken with it. `expires_at` is the lease end (Redis only, server clock, seconds)."""

    mx_host: str
    token: str
    expires_at: float | None = None
    rcpts: int = 1


class Throttle(abc.ABC):
    """Global and per-MX caps; the same contract whatever holds the state."""

    policy: ThrottlePolicy

    @abc.abstractmethod
    async def acquire(
        self, mx_host: str, *, wait: float | None = None, rcpts: int = 1, priority: bool = False
    ) -> Slot:
        """Wait (at most `wait`, default policy.wait) for a connection: a global and a
        per-MX concurrency slot, the MX's new-connection token, and at least one RCPT
        token on both the global and the MX's RCPT rate (up to `rcpts` of them, as many
        as are available now); take them together and return the slot. `rcpts=0`: an
        RCPT token must be available, but none is taken (the session takes its tokens
        with `more` just before it sends, so the server sees them at the pace they were
        given, not late by the connect and EHLO). `priority`: as for `more`.

        Raises ThrottleTimeout when that does not happen in time."""

    @abc.abstractmethod
    async def more(
        self, slot: Slot, rcpts: int, *, wait: float | None = None, priority: bool = False
    ) -> int:
        """RCPT tokens for a connection already open: wait (at most `wait`) until at least
        one is available on both the global and the slot's MX rate, and take up to
        `rcpts`. A wait that cannot end within `wait` fails at once. `priority`: the run's
        critical lane; while it waits on the global rate, the others leave it a reserve
        (`priority_reserve`), so the global cap does not slow the MX that bounds the run.

        Raises ThrottleTimeout (with `retry_after`) when none comes in time."""

    @abc.abstractmethod
    async def release(self, slot: Slot) -> None:
        """Give the concurrency slot back (idempotent). Rate tokens are spent, not returned."""

    @abc.abstractmethod
    async def renew(self, slot: Slot, lease_seconds: float | None = None) -> bool:
        """Extend a slot's lease; False when it was already lost (expired or released)."""

    @abc.abstractmethod
    async def penalize(self, mx_host: str, *, reason: str) -> None:
        """The MX told us to slow down (421, rate limit): halve its limits for a while."""

    @abc.abstractmethod
    async def effective_limits(self, mx_host: str) -> Limits:
        """The MX's limits in force now, penalties included."""

    async def aclose(self) -> None:  # noqa: B027 - optional hook, nothing to close by default
        """Release resources (connections)."""

    @contextlib.asynccontextmanager
    async def slot(
        self, mx_host: str, *, wait: float | None = None, rcpts: int = 1
    ) -> AsyncIterator[Slot]:
        """`async with throttle.slot(mx): probe...` - released however the body ends.

        A failed release is logged, not raised: the probe's outcome matters more,
        and a Redis lease frees the slot by itself anyway."""
        held = await self.acquire(mx_host, wait=wait, rcpts=rcpts)
        try:
            yield held
        finally:
            try:
                await self.release(held)
            except ThrottleError as exc:
                log.warning("could not release throttle slot for %s: %s", held.mx_host, exc)


class ThrottleWrapper(Throttle):
    """A throttle that is another one, for faces that add to it (metrics, draining): every
    call goes to `inner`; a subclass overrides what it adds to."""

    def __init__(self, inner: Throttle) -> None:
        self.inner = inner
        self.policy = inner.policy

    async def acquire(
        self, mx_host: str, *, wait: float | None = None, rcpts: int = 1, priority: bool = False
    ) -> Slot:
        return await self.inner.acquire(mx_host, wait=wait, rcpts=rcpts, priority=priority)

    async def more(
        self, slot: Slot, rcpts: int, *, wait: float | None = None, priority: bool = False
    ) -> int:
        return await self.inner.more(slot, rcpts, wait=wait, priority=priority)

    async def release(self, slot: Slot) -> None:
        await self.inner.release(slot)

    async def renew(self, slot: Slot, lease_seconds: float | None = None) -> bool:
        return await self.inner.renew(slot, lease_seconds)

    async def penalize(self, mx_host: str, *, reason: str) -> None:
        await self.inner.penalize(mx_host, reason=reason)

    async def effective_limits(self, mx_host: str) -> Limits:
        return await self.inner.effective_limits(mx_host)

    async def aclose(self) -> None:
        await self.inner.aclose()
