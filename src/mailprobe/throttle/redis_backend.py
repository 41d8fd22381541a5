"""`RedisThrottle`: the same caps shared by every process that talks to one Redis.

Each decision is one Lua script run on the Redis server with the server's clock.
redis-py is imported only when a RedisThrottle is built: importing this module (and
`mailprobe.throttle`) costs an in-process run nothing.
"""

from __future__ import annotations

import asyncio
import math
import os
import random
import socket
import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from mailprobe.config import Settings
from mailprobe.redact import redact_url
from mailprobe.throttle.base import (
    KEY_PREFIX,
    LATE_TOLERANCE,
    LEASE_MARGIN,
    Clock,
    Limits,
    Slot,
    Throttle,
    ThrottlePolicy,
    ThrottleTimeout,
    ThrottleUnavailable,
    log,
    normalize_host,
)

if TYPE_CHECKING:
    import redis.asyncio as aioredis

# Polling backoff while every concurrency slot is taken (Redis has no wake-up for us).
_BACKOFF_FIRST = 0.01
_BACKOFF_CAP = 0.1

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

# GCRA with a burst (see base.take_tokens), in milliseconds.
_LUA_TAKE = """
local function take(tat, now, interval, burst_ms, want, tol, keep)
  local burst = math.max(1, math.floor(burst_ms / interval + 1e-9))
  local reserve = 0
  if keep then reserve = math.floor((burst - 1) / 4) end
  local base = math.max(tat, now)
  local late = now - tat
  if late >= 0 and late <= math.min(tol, interval / 4) then base = tat end
  local available = math.floor((now - base) / interval + burst + 1e-9) - reserve
  if available < 1 then return 0, tat, base - (burst - 1 - reserve) * interval - now end
  local taken = math.min(available, want)
  return taken, base + taken * interval, 0
end
-- want 0: only whether one is available now (1), nothing taken. `prio`: the key that
-- says a critical-lane RCPT waits on the global rate; the others then leave a reserve.
local function rcpt_tokens(gkey, mkey, prio, priority, now, gint, mint, burst_ms, want, tol)
  local keep = (not priority) and redis.call('EXISTS', prio) == 1
  local gtat = tonumber(redis.call('GET', gkey)) or 0
  local mtat = tonumber(redis.call('GET', mkey)) or 0
  local gok, _, gwait = take(gtat, now, gint, burst_ms, math.max(want, 1), tol, keep)
  local mok, _, mwait = take(mtat, now, mint, burst_ms, math.max(want, 1), tol, false)
  if gok < 1 or mok < 1 then
    if gwait >= mwait then
      if priority then redis.call('SET', prio, '1', 'PX', math.ceil(gwait) + 100) end
      return 0, gwait, 'global rate'
    end
    return 0, mwait, 'per-MX rate'
  end
  if want == 0 then return 1, 0, '' end
  local n = math.min(gok, mok)
  local _a, gnext = take(gtat, now, gint, burst_ms, n, tol, keep)
  local _b, mnext = take(mtat, now, mint, burst_ms, n, tol, false)
  redis.call('SET', gkey, gnext, 'PX', math.ceil(gnext - now) + 1000)
  redis.call('SET', mkey, mnext, 'PX', math.ceil(mnext - now) + 1000)
  if priority then redis.call('DEL', prio) end
  return n, 0, ''
end
"""

# KEYS: global leases, MX leases, global rate, MX rate, MX penalty, MX connection rate,
#       critical lane waiting
# ARGV: token, now|'', lease ms, global conc, global interval ms, MX conc, MX interval ms,
#       cool-down ms, lateness tolerance ms (at most; see take_tokens), RCPTs wanted,
#       burst ms, MX connection interval ms, priority (1|0)
# -> {RCPT tokens, lease expiry ms} | {0, ms until a rate token, or -1 when a slot is full,
#    reason}
_ACQUIRE = (
    _LUA_PRELUDE
    + _LUA_TAKE
    + """
local token = ARGV[1]
local now = now_ms(ARGV[2])
local lease = tonumber(ARGV[3])
local gconc, gint = tonumber(ARGV[4]), tonumber(ARGV[5])
local mconc, mint = tonumber(ARGV[6]), tonumber(ARGV[7])
local tol, want, burst_ms = tonumber(ARGV[9]), tonumber(ARGV[10]), tonumber(ARGV[11])
local cint = tonumber(ARGV[12])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
local level = penalty(KEYS[5], now, tonumber(ARGV[8]))
if level > 0 then
  mconc = math.max(1, math.floor(mconc / 2 ^ level))
  mint = mint * 2 ^ level
  cint = cint * 2 ^ level
end
if redis.call('ZCARD', KEYS[1]) >= gconc then return {0, '-1', 'global concurrency'} end
if redis.call('ZCARD', KEYS[2]) >= mconc then return {0, '-1', 'per-MX concurrency'} end
local ctat = tonumber(redis.call('GET', KEYS[6])) or 0
local cok, cnext, cwait = take(ctat, now, cint, 0, 1, tol, false)
if cok < 1 then return {0, tostring(cwait), 'per-MX connection rate'} end
local n, wait, reason = rcpt_tokens(KEYS[3], KEYS[4], KEYS[7], ARGV[13] == '1', now, gint,
                                    mint, burst_ms, want, tol)
if n < 1 then return {0, tostring(wait), reason} end
redis.call('SET', KEYS[6], cnext, 'PX', math.ceil(cnext - now) + 1000)
local expires = now + lease
redis.call('ZADD', KEYS[1], expires, token)
redis.call('ZADD', KEYS[2], expires, token)
extend(KEYS[1], lease + 1000)
extend(KEYS[2], lease + 1000)
return {n, tostring(expires), ''}
"""
)

# KEYS: global rate, MX rate, MX penalty, critical lane waiting
# ARGV: now|'', global interval ms, MX interval ms, cool-down ms, tolerance ms, RCPTs wanted,
#       burst ms, priority (1|0) -> {RCPT tokens, ms until one is due, reason}
_MORE = (
    _LUA_PRELUDE
    + _LUA_TAKE
    + """
local now = now_ms(ARGV[1])
local gint, mint = tonumber(ARGV[2]), tonumber(ARGV[3])
local level = penalty(KEYS[3], now, tonumber(ARGV[4]))
if level > 0 then mint = mint * 2 ^ level end
local n, wait, reason = rcpt_tokens(KEYS[1], KEYS[2], KEYS[4], ARGV[8] == '1', now, gint,
                                    mint, tonumber(ARGV[7]), tonumber(ARGV[6]),
                                    tonumber(ARGV[5]))
return {n, tostring(wait), reason}
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


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


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
        self._more = self._redis.register_script(_MORE)
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
            f"{KEY_PREFIX}conn:mx:{host}",
            f"{KEY_PREFIX}priority:global",
        ]

    async def _run(self, script: Any, keys: list[str], args: list[Any]) -> Any:
        try:
            async with asyncio.timeout(self._op_timeout):
                return await script(keys=keys, args=args)
        except self._errors as exc:
            detail = str(exc) or type(exc).__name__
            raise ThrottleUnavailable(self.url, detail) from exc

    async def acquire(
        self, mx_host: str, *, wait: float | None = None, rcpts: int = 1, priority: bool = False
    ) -> Slot:
        host = normalize_host(mx_host)
        glob, mx = self.policy.global_limits, self.policy.limits_for(host)
        token = f"{self._ident}:{uuid.uuid4().hex}"
        keys = self._keys(host)
        args = [
            token,
            "",
            self._ms(self.lease_seconds),
            glob.max_concurrency,
            1000.0 / glob.rps,
            mx.max_concurrency,
            1000.0 / mx.rps,
            self._ms(self.policy.cooldown),
            self._ms(LATE_TOLERANCE),
            max(0, rcpts),
            1000.0 * self.policy.burst_seconds,
            1000.0 / mx.connect_rate,
            "1" if priority else "0",
        ]

        async def attempt() -> tuple[int, float, str]:
            args[1] = self._now()
            taken, value, limited_by = await self._run(self._acquire, keys, args)
            return int(taken), float(value), _text(limited_by)

        taken, expires = await self._poll(host, attempt, wait)
        return Slot(host, token, expires / 1000.0, rcpts=taken if rcpts > 0 else 0)

    async def more(
        self, slot: Slot, rcpts: int, *, wait: float | None = None, priority: bool = False
    ) -> int:
        host = slot.mx_host
        glob, mx = self.policy.global_limits, self.policy.limits_for(host)
        keys = [self._keys(host)[i] for i in (2, 3, 4, 6)]
        args: list[Any] = [
            "",
            1000.0 / glob.rps,
            1000.0 / mx.rps,
            self._ms(self.policy.cooldown),
            self._ms(LATE_TOLERANCE),
            max(1, rcpts),
            1000.0 * self.policy.burst_seconds,
            "1" if priority else "0",
        ]

        async def attempt() -> tuple[int, float, str]:
            args[0] = self._now()
            taken, value, limited_by = await self._run(self._more, keys, args)
            return int(taken), float(value), _text(limited_by)

        taken, _ = await self._poll(host, attempt, wait, fail_fast=True)
        return taken

    async def _poll(
        self,
        host: str,
        attempt: Callable[[], Awaitable[tuple[int, float, str]]],
        wait: float | None,
        fail_fast: bool = False,
    ) -> tuple[int, float]:
        """Run `attempt` until it takes tokens -> (taken, its value); sleep until a rate
        token is due, or poll with backoff while a slot is full (Redis wakes no one)."""
        budget = self.policy.wait if wait is None else wait
        loop = asyncio.get_running_loop()
        start = loop.time()
        backoff = _BACKOFF_FIRST
        while True:
            taken, value, limited_by = await attempt()
            if taken > 0:
                return taken, value
            remaining = start + budget - loop.time()
            due = value / 1000.0
            if remaining <= 0 or (fail_fast and due > remaining):
                retry = due if due >= 0 else None
                raise ThrottleTimeout(host, loop.time() - start, limited_by, retry)
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
            self._keys(host)[4:5],
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
            self._level, self._keys(host)[4:5], [self._now(), self._ms(self.policy.cooldown)]
        )
        return self.policy.limits_for(host).penalized(int(level))

    async def aclose(self) -> None:
        if self._owns_client:
            await self._redis.aclose()
