"""Throttles: global and per-MX caps on concurrency and on rate.

Probing politely means never hammering one MX, whatever the number of workers:
a server that sees too many connections, or RCPTs too fast, answers 421 or starts
refusing our IP, and that poisons every later verdict. Mailbox providers count
recipients (directory-harvest detection, per-client recipient rates) at least as
much as connections, so the rate caps count RCPT commands:

* a connection (a *slot*) is only given when a global and a per-MX concurrency slot
  are both free, the MX's new-connection rate has a token (PER_MX_CONNECT_RPS, by
  default the MX's RCPT rate), and at least one RCPT token is available on both the
  global and the MX's RCPT rate (`acquire(..., rcpts=n)` takes up to n of them);
* every further RCPT on that connection takes its token with `more()`, so a
  pipelined group is sized by the tokens available now: batching saves connections
  and round trips, never raises the RCPT rate.

Rates are GCRA token buckets holding `burst` tokens (THROTTLE_BURST_SECONDS worth of
the rate, at least one): any window of T seconds sees at most ``burst + rps * T``
RCPTs at one MX, and the same globally, give or take the lateness tolerance of
`take_tokens`.

A slot's parts are taken together or not at all, so a waiter never sits on half a slot.

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

The package: `base` (errors, limits, policy, the interface, pure helpers), `local`
(LocalThrottle), `redis_backend` (RedisThrottle and its Lua scripts). Every public
name is importable from `mailprobe.throttle`.
"""

from __future__ import annotations

from mailprobe.config import Settings
from mailprobe.throttle.base import (
    DEFAULT_BURST_SECONDS,
    DEFAULT_COOLDOWN,
    DEFAULT_MAX_PENALTY_LEVEL,
    DEFAULT_PENALTY_GRACE,
    KEY_PREFIX,
    LATE_TOLERANCE,
    LEASE_MARGIN,
    Clock,
    Limits,
    Slot,
    Throttle,
    ThrottleError,
    ThrottlePolicy,
    ThrottleTimeout,
    ThrottleUnavailable,
    ThrottleWrapper,
    late_tolerance,
    normalize_host,
    penalty_level,
    penalty_reason,
    take_tokens,
)
from mailprobe.throttle.local import LocalThrottle
from mailprobe.throttle.redis_backend import RedisThrottle  # redis-py itself loads lazily

__all__ = [
    "DEFAULT_BURST_SECONDS",
    "DEFAULT_COOLDOWN",
    "DEFAULT_MAX_PENALTY_LEVEL",
    "DEFAULT_PENALTY_GRACE",
    "KEY_PREFIX",
    "LATE_TOLERANCE",
    "LEASE_MARGIN",
    "Clock",
    "Limits",
    "LocalThrottle",
    "RedisThrottle",
    "Slot",
    "Throttle",
    "ThrottleError",
    "ThrottlePolicy",
    "ThrottleTimeout",
    "ThrottleUnavailable",
    "ThrottleWrapper",
    "late_tolerance",
    "make_throttle",
    "normalize_host",
    "penalty_level",
    "penalty_reason",
    "take_tokens",
]


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
