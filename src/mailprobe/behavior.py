"""What each MX has shown us (the seed's O06 behaviour cache), to tune later probes.

`record_mx_probe` is the hook every probe calls; `behavior_hint` turns what
was recorded into the hint `probe_rcpt` adapts its timeouts to. This is the
in-process cache; a persisted, fleet-wide one replaces it behind the same two
functions.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

# A probe slower than this, or one that timed out, counts towards "slow".
SLOW_LATENCY_MS = 5000
TARPIT_TIMEOUTS = 2  # consecutive timeouts before we call an MX a tarpit


@dataclass
class MXStats:
    probes: int = 0
    timeouts: int = 0
    consecutive_timeouts: int = 0
    avg_latency_ms: float = 0.0
    greylisting_seen: bool = False
    rate_limited_seen: bool = False
    last_code: int | None = None
    last_reason: str | None = None
    last_seen: float = field(default_factory=time.time)

    def add(
        self, latency_ms: float, error_kind: str | None, code: int | None, reason: str | None
    ) -> None:
        self.probes += 1
        # Exponential moving average: recent behaviour matters most.
        alpha = 0.2 if self.probes > 1 else 1.0
        self.avg_latency_ms += alpha * (latency_ms - self.avg_latency_ms)
        if error_kind == "timeout":
            self.timeouts += 1
            self.consecutive_timeouts += 1
        else:
            self.consecutive_timeouts = 0
        self.greylisting_seen |= reason == "greylisted"
        self.rate_limited_seen |= reason == "rate_limited"
        self.last_code, self.last_reason, self.last_seen = code, reason, time.time()


class BehaviorCache:
    """Per-MX figures, keyed by MX host (many domains share one MX)."""

    def __init__(self) -> None:
        self._stats: dict[str, MXStats] = {}
        self._lock = threading.Lock()

    def record(
        self,
        mx_host: str,
        *,
        latency_ms: float,
        error_kind: str | None = None,
        code: int | None = None,
        reason: str | None = None,
    ) -> None:
        with self._lock:
            self._stats.setdefault(mx_host.lower(), MXStats()).add(
                latency_ms, error_kind, code, reason
            )

    def stats(self, mx_host: str) -> MXStats | None:
        with self._lock:
            return self._stats.get(mx_host.lower())

    def hint(self, mx_host: str) -> dict[str, Any] | None:
        stats = self.stats(mx_host)
        if stats is None:
            return None
        return {
            "tarpit": stats.consecutive_timeouts >= TARPIT_TIMEOUTS,
            "slow": stats.avg_latency_ms >= SLOW_LATENCY_MS,
            "greylisting": stats.greylisting_seen,
            "rate_limited": stats.rate_limited_seen,
            "avg_latency_ms": round(stats.avg_latency_ms),
            "probes": stats.probes,
        }

    def clear(self) -> None:
        with self._lock:
            self._stats.clear()


default_cache = BehaviorCache()


def record_mx_probe(
    mx_host: str,
    *,
    latency_ms: float,
    error_kind: str | None = None,
    code: int | None = None,
    **details: Any,
) -> None:
    """The O06 hook: called after every probe with what the MX did."""
    default_cache.record(
        mx_host,
        latency_ms=latency_ms,
        error_kind=error_kind,
        code=code,
        reason=details.get("reason"),
    )


def behavior_hint(mx_host: str) -> dict[str, Any] | None:
    """The hint for `probe_rcpt(behavior_hint=...)`, or None for an MX never seen."""
    return default_cache.hint(mx_host)
