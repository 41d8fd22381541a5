"""Cap accounting over a whole world: every MX server's record added up.

Each `SimSMTPServer` keeps a `ServerRecord` (connections, transactions, RCPTs,
how many were open at once, and violations of the concurrency and rate caps it
was told to expect); `WorldStats.of` adds them up for `SimWorld.stats()`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from mailprobe.testing.records import ServerRecord, peak_in_window, window_violations


@dataclass(frozen=True)
class WorldStats:
    """All servers' records, added up (see smtpd.ServerRecord)."""

    servers: int
    connections: int
    refused_connections: int
    transactions: int
    rcpts: int
    cap_violations: int
    concurrency_violations: int
    rps_violations: int  # connection starts and RCPTs beyond the rate caps
    max_open: dict[str, int]  # per MX host
    peak_starts_per_second: dict[str, int]  # per MX host
    data_received: bool
    rcpt_rate_violations: int = 0  # RCPTs beyond burst + rps in a second, at one MX
    connect_rate_violations: int = 0
    peak_rcpts_per_second: dict[str, int] | None = None  # per MX host
    rcpt_times: tuple[float, ...] = ()  # every RCPT at every MX, in order
    error_delays: int = 0  # replies held back by an error limit (Postfix's error sleep)
    error_limit_disconnects: int = 0  # sessions cut at a hard error limit

    def global_rcpt_violations(self, rps: float, burst: int = 1, window: float = 1.0) -> int:
        """RCPTs beyond the global cap (burst + rps * window), all MX hosts together."""
        return window_violations(list(self.rcpt_times), rps, burst, window)

    @property
    def peak_rcpts_per_second_overall(self) -> int:
        """Most RCPTs to all MX hosts together in any one-second window."""
        return peak_in_window(list(self.rcpt_times), 1.0)

    @classmethod
    def of(cls, recs: Mapping[str, ServerRecord]) -> WorldStats:
        """The totals of these servers' records (by MX host name)."""
        return cls(
            servers=len(recs),
            connections=sum(r.connections for r in recs.values()),
            refused_connections=sum(r.refused_connections for r in recs.values()),
            transactions=sum(r.transactions for r in recs.values()),
            rcpts=sum(r.rcpts for r in recs.values()),
            cap_violations=sum(r.cap_violations for r in recs.values()),
            concurrency_violations=sum(r.concurrency_violations for r in recs.values()),
            rps_violations=sum(r.rps_violations for r in recs.values()),
            max_open={h: r.max_open for h, r in recs.items()},
            peak_starts_per_second={h: r.peak_starts_per_second() for h, r in recs.items()},
            data_received=any(r.data_received for r in recs.values()),
            rcpt_rate_violations=sum(r.rcpt_rate_violations for r in recs.values()),
            error_delays=sum(r.error_delays for r in recs.values()),
            error_limit_disconnects=sum(r.error_limit_disconnects for r in recs.values()),
            connect_rate_violations=sum(r.connect_rate_violations for r in recs.values()),
            peak_rcpts_per_second={h: r.peak_rcpts_per_second() for h, r in recs.items()},
            rcpt_times=tuple(sorted(t for r in recs.values() for t in r.rcpt_times)),
        )

    @property
    def rcpts_per_connection(self) -> float:
        return self.rcpts / self.connections if self.connections else 0.0

    @property
    def max_open_overall(self) -> int:
        return max(self.max_open.values(), default=0)

    def summary(self) -> str:
        return (
            f"{self.connections} connections ({self.refused_connections} refused) to "
            f"{sum(1 for v in self.max_open.values() if v)}/{self.servers} MX hosts, "
            f"{self.transactions} transactions, {self.rcpts} RCPTs "
            f"({self.rcpts_per_connection:.2f} per connection), max open per MX "
            f"{self.max_open_overall}, cap violations {self.cap_violations} "
            f"(concurrency {self.concurrency_violations}, connection rate "
            f"{self.connect_rate_violations}, RCPT rate {self.rcpt_rate_violations}), "
            f"DATA {'RECEIVED' if self.data_received else 'never'}"
        )
