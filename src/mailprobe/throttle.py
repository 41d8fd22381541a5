"""Throttles (R06): global and per-MX caps on concurrency and on rate.

Probing politely means never hammering one MX, whatever the number of workers:
a server that sees too many connections, or connections too fast, answers 421
or starts refusing our IP, and that poisons every later verdict. So a probe runs
inside a *slot*, and a slot is only given when

* a global and a per-MX concurrency slot are both free, and
* a global and a per-MX rate token are both available (GCRA, i.e. a token
  bucket holding at most one token: at most `rps` starts a second and a burst
  of one, so any window of T seconds sees at most ``1 + rps * T`` starts, give
  or take the lateness tolerance of `next_tat`).

Both are taken together or not at all, so a waiter never sits on half a slot.

Two backends behind one interface (`Throttle`):

* `LocalThrottle`: in-process asyncio, the embedded default (no Redis).
* `RedisThrottle`: the same rules across every process on every machine, each
  decision one atomic Lua script on the Redis server, with the server's clock.
  Concurrency slots are *leases* that expire, so a worker killed with SIGKILL
  frees its slots within `lease_seconds`.

`penalize()` is the adaptive part: a 421 or a rate-limit reply halves that MX's
concurrency (never below 1) and rate at once, and each full cool-down period
without a further penalty restores one halving: back off fast, recover slowly.
With Redis the penalty is shared, so the whole fleet backs off together.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging
import math
import os
import random
import socket
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mailprobe.config import MXLimit, Settings
from mailprobe.redact import redact_url

if TYPE_CHECKING:
    import redis.asyncio as aioredis

log = logging.getLogger(__name__)

KEY_PREFIX = "mailprobe:throttle:"
DEFAULT_COOLDOWN = 600.0  # seconds a penalty lasts before one halving is undone
DEFAULT_PENALTY_GRACE = 5.0  # penalties closer than this count once (in-flight probes)
DEFAULT_MAX_PENALTY_LEVEL = 6  # at most 2**6 = 64 times slower
LEASE_MARGIN = 30.0  # lease = probe deadline + this, so a live probe never loses its slot
LATE_TOLERANCE = 0.05  # seconds a start may come after its token and keep the schedule
# Polling backoff while every concurrency slot is taken (Redis has no wake-up for us).
_BACKOFF_FIRST = 0.01
_BACKOFF_CAP = 0.1

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
    """A concurrency cap and a rate cap (starts per second)."""

    max_concurrency: int
    rps: float

    def penalized(self, level: int) -> Limits:
        """These limits halved `level` times (concurrency never below 1)."""
        if level <= 0:
            return self
        return Limits(max(1, self.max_concurrency >> level), self.rps / (2**level))


@dataclass(frozen=True)
class ThrottlePolicy:
    """What the caps are: global, per-MX default, and per-MX overrides by pattern."""

    global_limits: Limits
    mx_default: Limits
    overrides: tuple[MXLimit, ...] = ()
    wait: float = 30.0  # default bound on acquire()
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
            **overrides,
        )

    def limits_for(self, mx_host: str) -> Limits:
        """The configured (unpenalized) per-MX limits: the first matching override wins."""
        host = normalize_host(mx_host)
        for limit in self.overrides:
            if limit.matches(host):
                return Limits(limit.max_concurrency, limit.rps)
        return self.mx_default


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
    """How late a start may be and still count as on schedule (see `next_tat`)."""
    return min(LATE_TOLERANCE, interval / 4)


def next_tat(tat: float, now: float, interval: float) -> float:
    """GCRA: the earliest time of the start after one taken `now` (its token was due at `tat`).

    A waiter always wakes a little after its token is due (timer and event-loop latency,
    some milliseconds). Restarting the schedule from `now` would add that lateness to every
    interval: about 5% fewer starts than the cap allows on a busy MX, which is the run's
    critical path. A start that is late by at most `late_tolerance` keeps the schedule
    instead, so starts stay on a grid `interval` apart and never closer than
    ``interval - late_tolerance``: no window of T seconds holds more than
    ``1 + rps * (T + late_tolerance)`` starts, no burst is ever saved up, and after a
    longer pause (an idle MX) the schedule restarts from now.
    """
    if 0.0 <= now - tat <= late_tolerance(interval):
        return tat + interval
    return max(tat, now) + interval


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
    """A held slot; give it back with `release`. `expires_at` is the lease end (Redis only,
    server clock, seconds)."""

    mx_host: str
    token: str
    expires_at: float | None = None


class Throttle(abc.ABC):
    """Global and per-MX caps; the same contract whatever holds the state."""

    policy: ThrottlePolicy

    @abc.abstractmethod
    async def acquire(self, mx_host: str, *, wait: float | None = None) -> Slot:
        """Wait (at most `wait`, default policy.wait) for concurrency and rate on both the
        global and the MX's caps, take them together, and return the slot.

        Raises ThrottleTimeout when that does not happen in time."""

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
    async def slot(self, mx_host: str, *, wait: float | None = None) -> AsyncIterator[Slot]:
        """`async with throttle.slot(mx): probe...` - released however the body ends.

        A failed release is logged, not raised: the probe's outcome matters more,
        and a Redis lease frees the slot by itself anyway."""
        held = await self.acquire(mx_host, wait=wait)
        try:
            yield held
        finally:
            try:
                await self.release(held)
            except ThrottleError as exc:
                log.warning("could not release throttle slot for %s: %s", held.mx_host, exc)


# -- in-process backend -------------------------------------------------------


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


# -- Redis backend ------------------------------------------------------------

# Times inside the scripts are integer milliseconds: exact in Lua's doubles and
# in Redis' number-to-string conversion. `now` is the server's TIME unless the
# caller passes one (tests inject a clock); either way every machine agrees.
_LUA_PRELUDE = """
local function now_ms(arg)
  if arg ~= nil and arg ~= '' then return tonumber(arg) end
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function penalty(key, now, cooldown)
  local v = redis.call('HMGET', key, 'level', 'since')
  local stored = tonumber(v[1]) or 0
  local since = tonumber(v[2]) or now
  if stored <= 0 then return 0, since end
  local steps = math.floor((now - since) / cooldown)
  if steps < 0 then steps = 0 end
  local level = stored - steps
  if level < 0 then level = 0 end
  return level, since
end
local function extend(key, ms)
  if redis.call('PTTL', key) < ms then redis.call('PEXPIRE', key, ms) end
end
"""

# KEYS: global leases, MX leases, global rate, MX rate, MX penalty
# ARGV: token, now|'', lease ms, global conc, global interval ms, MX conc, MX interval ms,
#       cool-down ms, lateness tolerance ms (at most; see next_tat)
# -> {1, lease expiry ms} | {0, ms until a rate token, or -1 when a slot is full, reason}
_ACQUIRE = (
    _LUA_PRELUDE
    + """
local token = ARGV[1]
local now = now_ms(ARGV[2])
local lease = tonumber(ARGV[3])
local gconc, gint = tonumber(ARGV[4]), tonumber(ARGV[5])
local mconc, mint = tonumber(ARGV[6]), tonumber(ARGV[7])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
local level = penalty(KEYS[5], now, tonumber(ARGV[8]))
if level > 0 then
  mconc = math.max(1, math.floor(mconc / 2 ^ level))
  mint = mint * 2 ^ level
end
if redis.call('ZCARD', KEYS[1]) >= gconc then return {0, '-1', 'global concurrency'} end
if redis.call('ZCARD', KEYS[2]) >= mconc then return {0, '-1', 'per-MX concurrency'} end
local gtat = tonumber(redis.call('GET', KEYS[3])) or 0
local mtat = tonumber(redis.call('GET', KEYS[4])) or 0
if gtat > now or mtat > now then
  if gtat >= mtat then return {0, tostring(gtat - now), 'global rate'} end
  return {0, tostring(mtat - now), 'per-MX rate'}
end
local expires = now + lease
redis.call('ZADD', KEYS[1], expires, token)
redis.call('ZADD', KEYS[2], expires, token)
extend(KEYS[1], lease + 1000)
extend(KEYS[2], lease + 1000)
local function next_tat(tat, interval)
  local late = now - tat
  if late >= 0 and late <= math.min(tonumber(ARGV[9]), interval / 4) then
    return math.ceil(tat + interval)
  end
  return math.ceil(math.max(tat, now) + interval)
end
gtat = next_tat(gtat, gint)
mtat = next_tat(mtat, mint)
redis.call('SET', KEYS[3], gtat, 'PX', gtat - now + 1000)
redis.call('SET', KEYS[4], mtat, 'PX', mtat - now + 1000)
return {1, tostring(expires), ''}
"""
)

# KEYS: global leases, MX leases. ARGV: token.
_RELEASE = """
redis.call('ZREM', KEYS[1], ARGV[1])
return redis.call('ZREM', KEYS[2], ARGV[1])
"""

# KEYS: global leases, MX leases. ARGV: token, now|'', lease ms -> new expiry ms or -1 if lost.
_RENEW = (
    _LUA_PRELUDE
    + """
local now = now_ms(ARGV[2])
local lease = tonumber(ARGV[3])
local a = redis.call('ZSCORE', KEYS[1], ARGV[1])
local b = redis.call('ZSCORE', KEYS[2], ARGV[1])
if not a or not b or tonumber(a) <= now or tonumber(b) <= now then
  redis.call('ZREM', KEYS[1], ARGV[1])
  redis.call('ZREM', KEYS[2], ARGV[1])
  return '-1'
end
redis.call('ZADD', KEYS[1], 'XX', now + lease, ARGV[1])
redis.call('ZADD', KEYS[2], 'XX', now + lease, ARGV[1])
extend(KEYS[1], lease + 1000)
extend(KEYS[2], lease + 1000)
return tostring(now + lease)
"""
)

# KEYS: MX penalty. ARGV: now|'', cool-down ms, grace ms, max level -> level now in force
_PENALIZE = (
    _LUA_PRELUDE
    + """
local now = now_ms(ARGV[1])
local cooldown = tonumber(ARGV[2])
local level, since = penalty(KEYS[1], now, cooldown)
if level > 0 and now - since < tonumber(ARGV[3]) then return level end
level = math.min(level + 1, tonumber(ARGV[4]))
redis.call('HSET', KEYS[1], 'level', level, 'since', now)
redis.call('PEXPIRE', KEYS[1], level * cooldown + 60000)
return level
"""
)

# KEYS: MX penalty. ARGV: now|'', cool-down ms -> level in force
_LEVEL = (
    _LUA_PRELUDE
    + """
local level = penalty(KEYS[1], now_ms(ARGV[1]), tonumber(ARGV[2]))
return level
"""
)


class RedisThrottle(Throttle):
    """Caps shared by every process that talks to the same Redis.

    Each acquire is one Lua script: it purges expired leases, applies the MX's
    penalty, checks both concurrency caps and both rate tokens, and takes all
    four or nothing. Waiting is client-side polling with a short capped backoff
    (rate waits sleep exactly until the token is due).
    """

    def __init__(
        self,
        redis: str | aioredis.Redis,
        policy: ThrottlePolicy | None = None,
        *,
        lease_seconds: float | None = None,
        clock: Clock | None = None,
        socket_timeout: float = 5.0,
        operation_timeout: float | None = None,
    ) -> None:
        settings = Settings()
        self.policy = policy or ThrottlePolicy.from_settings(settings)
        self.lease_seconds = (
            settings.smtp_probe_deadline + LEASE_MARGIN if lease_seconds is None else lease_seconds
        )
        if not self.lease_seconds > 0:
            raise ValueError("lease_seconds must be positive")
        self._clock = clock  # None: the Redis server's TIME
        # One retry at most, and a hard bound per operation: a dead Redis is an error
        # within seconds, never a worker hanging on a socket.
        self._op_timeout = operation_timeout or 2 * socket_timeout + 1.0
        # Imported here: an in-process run never needs redis-py (a tenth of a second).
        from redis.asyncio import Redis
        from redis.asyncio.retry import Retry
        from redis.backoff import ExponentialBackoff
        from redis.exceptions import ConnectionError as RedisConnectionError
        from redis.exceptions import TimeoutError as RedisTimeoutError

        self._errors: tuple[type[BaseException], ...] = (
            RedisConnectionError,
            RedisTimeoutError,
            OSError,
        )
        if isinstance(redis, str):
            self.url = redact_url(redis)
            self._redis = Redis.from_url(
                redis,
                socket_connect_timeout=socket_timeout,
                socket_timeout=socket_timeout,
                retry=Retry(ExponentialBackoff(cap=0.2, base=0.05), 1),
            )
            self._owns_client = True
        else:
            kw = redis.connection_pool.connection_kwargs
            self.url = f"redis://{kw.get('host', '?')}:{kw.get('port', '?')}/{kw.get('db', 0)}"
            self._redis = redis
            self._owns_client = False
        self._acquire = self._redis.register_script(_ACQUIRE)
        self._release = self._redis.register_script(_RELEASE)
        self._renew = self._redis.register_script(_RENEW)
        self._penalize = self._redis.register_script(_PENALIZE)
        self._level = self._redis.register_script(_LEVEL)
        self._ident = f"{socket.gethostname()}:{os.getpid()}"

    @staticmethod
    def _ms(seconds: float) -> int:
        return max(1, math.ceil(seconds * 1000))

    def _now(self) -> str:
        return "" if self._clock is None else str(int(self._clock() * 1000))

    @staticmethod
    def _keys(host: str) -> list[str]:
        return [
            f"{KEY_PREFIX}conc:global",
            f"{KEY_PREFIX}conc:mx:{host}",
            f"{KEY_PREFIX}rate:global",
            f"{KEY_PREFIX}rate:mx:{host}",
            f"{KEY_PREFIX}penalty:{host}",
        ]

    async def _run(self, script: Any, keys: list[str], args: list[Any]) -> Any:
        try:
            async with asyncio.timeout(self._op_timeout):
                return await script(keys=keys, args=args)
        except self._errors as exc:
            detail = str(exc) or type(exc).__name__
            raise ThrottleUnavailable(self.url, detail) from exc

    async def acquire(self, mx_host: str, *, wait: float | None = None) -> Slot:
        host = normalize_host(mx_host)
        budget = self.policy.wait if wait is None else wait
        glob, mx = self.policy.global_limits, self.policy.limits_for(host)
        token = f"{self._ident}:{uuid.uuid4().hex}"
        keys = self._keys(host)
        loop = asyncio.get_running_loop()
        start = loop.time()
        backoff = _BACKOFF_FIRST
        while True:
            ok, value, limited_by = await self._run(
                self._acquire,
                keys,
                [
                    token,
                    self._now(),
                    self._ms(self.lease_seconds),
                    glob.max_concurrency,
                    1000.0 / glob.rps,
                    mx.max_concurrency,
                    1000.0 / mx.rps,
                    self._ms(self.policy.cooldown),
                    self._ms(LATE_TOLERANCE),
                ],
            )
            if int(ok) == 1:
                return Slot(host, token, float(value) / 1000.0)
            remaining = start + budget - loop.time()
            due = float(value) / 1000.0
            if remaining <= 0:
                reason = limited_by.decode() if isinstance(limited_by, bytes) else str(limited_by)
                raise ThrottleTimeout(host, loop.time() - start, reason, due if due >= 0 else None)
            if due >= 0:  # a rate token: sleep until it is due (a little jitter spreads waiters)
                delay = due + random.uniform(0, 0.005)
            else:  # a full slot: poll, backing off so many waiters stay cheap for Redis
                delay = backoff * random.uniform(0.5, 1.0)
                backoff = min(backoff * 2, _BACKOFF_CAP)
            await asyncio.sleep(min(delay, remaining))

    async def release(self, slot: Slot) -> None:
        keys = self._keys(slot.mx_host)[:2]
        await self._run(self._release, keys, [slot.token])

    async def renew(self, slot: Slot, lease_seconds: float | None = None) -> bool:
        lease = self.lease_seconds if lease_seconds is None else lease_seconds
        keys = self._keys(slot.mx_host)[:2]
        expiry = await self._run(self._renew, keys, [slot.token, self._now(), self._ms(lease)])
        return float(expiry) >= 0

    async def penalize(self, mx_host: str, *, reason: str) -> None:
        host = normalize_host(mx_host)
        level = await self._run(
            self._penalize,
            self._keys(host)[4:],
            [
                self._now(),
                self._ms(self.policy.cooldown),
                self._ms(self.policy.penalty_grace),
                self.policy.max_penalty_level,
            ],
        )
        log.info("throttle: %s penalized (%s): level %s", host, reason, level)

    async def effective_limits(self, mx_host: str) -> Limits:
        host = normalize_host(mx_host)
        level = await self._run(
            self._level, self._keys(host)[4:], [self._now(), self._ms(self.policy.cooldown)]
        )
        return self.policy.limits_for(host).penalized(int(level))

    async def aclose(self) -> None:
        if self._owns_client:
            await self._redis.aclose()


def make_throttle(settings: Settings) -> Throttle:
    """RedisThrottle when REDIS_URL is set (a fleet shares caps), else LocalThrottle."""
    policy = ThrottlePolicy.from_settings(settings)
    if settings.redis_url:
        return RedisThrottle(
            settings.redis_url,
            policy,
            lease_seconds=settings.smtp_probe_deadline + LEASE_MARGIN,
        )
    return LocalThrottle(policy)
