"""What each MX has shown us (the seed's behaviour cache), to tune later probes.

`record_mx_probe` is the hook every probe calls; `behavior_hint` turns what
was recorded into the hint `probe_rcpt` adapts its timeouts to. Figures are
kept per MX host (many domains share one MX) in memory, where the hot path
only touches a dict under a lock. Persistence belongs to the engine: it takes
`dirty()` snapshots in batches and writes them to the mx_hosts table, and
`load()`s them back, so this module needs no database.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

# A probe whose average latency exceeds this counts as "slow".
SLOW_LATENCY_MS = 5000
TARPIT_TIMEOUTS = 2  # consecutive timeouts before we call an MX a tarpit
# How long "refuses several RCPTs per transaction" is believed: long enough that
# later runs skip the refused batch and its retries, short enough that a server
# whose limits changed is asked again within the week.
ONE_RCPT_MEMORY = 7 * 86400.0
LATENCY_WINDOW = 50  # recent latencies kept for the percentile
# How long an MX we could not connect to is tried last (MX_DEAD_TTL sets it per run).
# Postfix keeps "an unreachable destination ... in the short-term, in-memory,
# destination status cache" for minimal_backoff_time, 300 s by default (postconf(5),
# https://www.postfix.org/postconf.5.html#minimal_backoff_time); Exim keeps a failed
# host in its retry database and skips it until its retry time, per host rather than
# per message (https://www.exim.org/exim-html-current/doc/html/spec_html/ch32.html).
DEAD_MEMORY = 300.0


@dataclass
class MXStats:
    probes: int = 0
    timeouts: int = 0
    consecutive_timeouts: int = 0
    avg_latency_ms: float = 0.0
    tarpit: bool = False
    greylisting_seen: bool = False
    rate_limited_seen: bool = False
    catch_all_seen: bool = False
    one_rcpt_since: float | None = None  # when it last refused a second RCPT (time.time)
    dead_since: float | None = None  # when a connection to it last failed (time.time)
    no_pipelining_since: float | None = None  # when its replies fell out of step twice
    greylist_passed_after: float | None = None  # seconds from greylisted to let through
    last_code: int | None = None
    last_reason: str | None = None
    last_seen: float = field(default_factory=time.time)
    recent: deque[float] = field(default_factory=lambda: deque(maxlen=LATENCY_WINDOW))

    @property
    def p95_latency_ms(self) -> float:
        """Over the last LATENCY_WINDOW replies; sorted when read (a snapshot), not at
        every reply."""
        ordered = sorted(self.recent)
        return ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))] if ordered else 0.0

    def add(
        self, latency_ms: float, error_kind: str | None, code: int | None, reason: str | None
    ) -> None:
        self.probes += 1
        # Exponential moving average: recent behaviour matters most.
        alpha = 0.2 if self.probes > 1 else 1.0
        self.avg_latency_ms += alpha * (latency_ms - self.avg_latency_ms)
        self.recent.append(latency_ms)
        if error_kind == "timeout":
            self.timeouts += 1
            self.consecutive_timeouts += 1
        else:
            self.consecutive_timeouts = 0
        self.tarpit = self.consecutive_timeouts >= TARPIT_TIMEOUTS
        self.greylisting_seen |= reason == "greylisted"
        self.rate_limited_seen |= reason in {"rate_limited", "too_many_recipients"} or code == 421
        self.last_code, self.last_reason, self.last_seen = code, reason, time.time()

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["recent"] = list(self.recent)
        data["avg_latency_ms"] = round(self.avg_latency_ms, 1)
        data["p95_latency_ms"] = self.p95_latency_ms  # (read back from `recent`)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MXStats:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        known["recent"] = deque(known.get("recent", []), maxlen=LATENCY_WINDOW)
        return cls(**known)


class BehaviorCache:
    """Per-MX figures, keyed by lowercased MX host. Thread-safe; cheap to record."""

    def __init__(self) -> None:
        self._stats: dict[str, MXStats] = {}
        self._dirty: set[str] = set()
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
        key = mx_host.lower()
        with self._lock:
            stats = self._stats.get(key)
            if stats is None:  # (setdefault would build an MXStats for every reply)
                stats = self._stats[key] = MXStats()
            stats.add(latency_ms, error_kind, code, reason)
            self._dirty.add(key)

    def mark_catch_all(self, mx_host: str, seen: bool = True) -> None:
        key = mx_host.lower()
        with self._lock:
            self._stats.setdefault(key, MXStats()).catch_all_seen |= seen
            self._dirty.add(key)

    def mark_one_rcpt(self, mx_host: str) -> None:
        """The MX refused a second RCPT in one transaction (452 4.5.3 and the like)."""
        key = mx_host.lower()
        with self._lock:
            self._stats.setdefault(key, MXStats()).one_rcpt_since = time.time()
            self._dirty.add(key)

    def mark_greylist_passed(self, mx_host: str, seconds: float, *, first_retry: bool) -> None:
        """A greylisted RCPT got through `seconds` after its first refusal: the next
        greylisting of this MX (this run, or the next) waits that long first. Passing at
        the first retry only ever lowers it (no creep by scheduling delays); needing more
        retries means the old figure was too short."""
        key = mx_host.lower()
        with self._lock:
            stats = self._stats.setdefault(key, MXStats())
            old = stats.greylist_passed_after
            if first_retry and old is not None:
                seconds = min(old, seconds)
            stats.greylist_passed_after = round(seconds, 3)
            self._dirty.add(key)

    def greylist_delay(self, mx_host: str) -> float | None:
        """The delay that got a greylisted RCPT through at this MX before, if any."""
        stats = self.stats(mx_host)
        return stats.greylist_passed_after if stats is not None else None

    def mark_no_pipelining(self, mx_host: str) -> None:
        """Its replies fell out of step even without pipelining's groups: do not pipeline."""
        key = mx_host.lower()
        with self._lock:
            self._stats.setdefault(key, MXStats()).no_pipelining_since = time.time()
            self._dirty.add(key)

    def no_pipelining(self, mx_host: str) -> bool:
        """Talk to this MX one command at a time (its replies fell out of step, not long ago)?"""
        stats = self.stats(mx_host)
        since = stats.no_pipelining_since if stats is not None else None
        return since is not None and time.time() - since < ONE_RCPT_MEMORY

    def one_rcpt(self, mx_host: str) -> bool:
        """Send this MX one RCPT per transaction (it refused more, not long ago)?"""
        stats = self.stats(mx_host)
        since = stats.one_rcpt_since if stats is not None else None
        return since is not None and time.time() - since < ONE_RCPT_MEMORY

    def mark_dead(self, mx_host: str) -> None:
        """No connection: refused, reset, unreachable or no SYN-ACK within the timeout."""
        key = mx_host.lower()
        with self._lock:
            self._stats.setdefault(key, MXStats()).dead_since = time.time()
            self._dirty.add(key)

    def mark_alive(self, mx_host: str) -> None:
        """The MX answered a connection: forget that it was dead (cheap when it was not)."""
        key = mx_host.lower()
        with self._lock:
            stats = self._stats.get(key)
            if stats is not None and stats.dead_since is not None:
                stats.dead_since = None
                self._dirty.add(key)

    def dead(self, mx_host: str, ttl: float = DEAD_MEMORY) -> bool:
        """Could we not connect to this MX within the last `ttl` seconds?"""
        stats = self.stats(mx_host)
        since = stats.dead_since if stats is not None else None
        return since is not None and time.time() - since < ttl

    def live_first(self, hosts: list[str], ttl: float = DEAD_MEMORY) -> list[str]:
        """`hosts` in their order, those remembered dead moved last: other domains that
        share a dead MX go to their next one at once, and a domain whose MX hosts are
        all dead still gets them tried (last is not never)."""
        dead = [h for h in hosts if self.dead(h, ttl)]
        return [h for h in hosts if h not in dead] + dead

    def stats(self, mx_host: str) -> MXStats | None:
        with self._lock:
            return self._stats.get(mx_host.lower())

    def hint(self, mx_host: str) -> dict[str, Any] | None:
        stats = self.stats(mx_host)
        if stats is None:
            return None
        return {
            "tarpit": stats.tarpit,
            "slow": stats.avg_latency_ms >= SLOW_LATENCY_MS,
            "greylisting": stats.greylisting_seen,
            "rate_limited": stats.rate_limited_seen,
            "catch_all": stats.catch_all_seen,
            "avg_latency_ms": round(stats.avg_latency_ms),
            "p95_latency_ms": round(stats.p95_latency_ms),
            "probes": stats.probes,
        }

    def unsaved(self, hosts: Iterable[str]) -> None:
        """A write of these hosts' snapshots failed: keep them for the next flush."""
        with self._lock:
            self._dirty.update(h for h in hosts if h in self._stats)

    def dirty(self) -> dict[str, dict[str, Any]]:
        """Snapshots of every MX changed since the last call, for a batched write."""
        with self._lock:
            out = {host: self._stats[host].to_dict() for host in self._dirty}
            self._dirty.clear()
        return out

    def load(self, snapshots: dict[str, dict[str, Any]]) -> None:
        """Adopt persisted figures for MX hosts this process has not seen yet."""
        with self._lock:
            for host, data in snapshots.items():
                self._stats.setdefault(host.lower(), MXStats.from_dict(data))

    def clear(self) -> None:
        with self._lock:
            self._stats.clear()
            self._dirty.clear()


default_cache = BehaviorCache()


def record_mx_probe(
    mx_host: str,
    *,
    latency_ms: float,
    error_kind: str | None = None,
    code: int | None = None,
    **details: Any,
) -> None:
    """The seed's O06 hook: called after every probe with what the MX did."""
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
