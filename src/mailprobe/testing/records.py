"""What a simulated SMTP server saw: each connection, and everything across them (the
evidence politeness is measured by: connection starts, concurrency, RCPT times)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass
class ConnectionRecord:
    """One TCP connection as the server saw it (times from time.monotonic)."""

    peer: str
    start: float
    open_at_start: int  # connections open at that moment, this one included
    end: float | None = None
    refused: bool = False  # turned away at the greeting by max_connections
    transactions: int = 0  # MAIL commands answered 2xx
    rcpts: int = 0  # RCPT commands inside a transaction
    violations: tuple[str, ...] = ()  # "concurrency" and/or "rps"


@dataclass
class ServerRecord:
    """Everything the server saw, across connections."""

    connections: int = 0
    open_now: int = 0
    max_open: int = 0
    connect_times: list[float] = field(default_factory=list)
    commands: list[str] = field(default_factory=list)
    data_received: bool = False
    connection_log: list[ConnectionRecord] = field(default_factory=list)
    open_counts: list[int] = field(default_factory=list)  # open at each start, parallel to times
    refused_connections: int = 0  # turned away by max_connections
    transactions: int = 0
    rcpts: int = 0
    cap_violations: int = 0  # connections and RCPTs that broke a promised cap
    concurrency_violations: int = 0
    connect_rate_violations: int = 0  # connection starts beyond expect_connect_rps
    rcpt_rate_violations: int = 0  # RCPTs beyond expect_burst + expect_rps in a second
    rcpt_times: list[float] = field(default_factory=list)
    error_delays: int = 0  # replies held back by a soft error limit (Postfix's error sleep)
    error_limit_disconnects: int = 0  # sessions ended at the hard error limit

    @property
    def rps_violations(self) -> int:
        """Breaches of either rate cap (connection starts, RCPTs)."""
        return self.connect_rate_violations + self.rcpt_rate_violations

    def peak_rcpts_per_second(self) -> int:
        """Most RCPTs inside any sliding one-second window."""
        return peak_in_window(self.rcpt_times, 1.0)

    def verbs(self) -> list[str]:
        return [c.split(" ", 1)[0].upper() for c in self.commands]

    def rcpts_per_connection(self) -> list[int]:
        return [c.rcpts for c in self.connection_log]

    def mean_rcpts_per_connection(self) -> float:
        return self.rcpts / self.connections if self.connections else 0.0

    def peak_starts_per_second(self) -> int:
        """Most connection starts inside any sliding one-second window."""
        return peak_in_window(self.connect_times, 1.0)


def peak_in_window(times: list[float], window: float) -> int:
    """Most events inside any sliding half-open window [t, t + window)."""
    ordered, peak, lo = sorted(times), 0, 0
    for hi, t in enumerate(ordered):
        while t - ordered[lo] >= window:
            lo += 1
        peak = max(peak, hi - lo + 1)
    return peak


def window_violations(times: list[float], rate: float, burst: int, window: float) -> int:
    """Events beyond `burst + rate * window` (plus a GCRA start's lateness tolerance) in
    any sliding window of `window` seconds: 0 for a prober that kept its caps."""
    allowed = burst + math.floor(rate * (window + 0.05) + 1e-9)
    ordered, over, lo = sorted(times), 0, 0
    for hi, t in enumerate(ordered):
        while t - ordered[lo] >= window:
            lo += 1
        if hi - lo + 1 > allowed:
            over += 1
    return over
