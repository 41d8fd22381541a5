"""A bulk run's knobs (`BulkOptions`), its tally (`Summary`), its sink and its fixed limits."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime

from mailprobe.results import LineAnswer

SCHEDULER_TICK = 0.05  # seconds between looks when no rate token's due time is known
BATCH_WINDOW = 1.0  # seconds a lane waits for more addresses while the input is read
BEHAVIOR_FLUSH_INTERVAL = 2.0  # seconds between writes of the MX behaviour cache
MAX_UNSTORED_ROWS = 2000  # answers waiting for the database before reading waits
MAX_DOMAIN_STATES = 20_000  # past this many, domains with nothing in flight are forgotten

# Where each input line's answer goes, as soon as it is final (the CLI renders it).
Sink = Callable[[LineAnswer], Awaitable[None] | None]


@dataclass(frozen=True, slots=True)
class BulkOptions:
    rcpts_per_session: int = 20
    rcpts_per_transaction: int = 5
    catch_all_check: bool = True
    catch_all_ttl: float = 7 * 86400.0
    # Greylisting (see retry.greylist_wait): a hint in the reply is followed; otherwise the
    # first retry goes after the MX's learned delay or greylist_first_retry, later ones grow
    # toward greylist_max_delay (counted from the first refusal), then the address is unknown.
    greylist_first_retry: float = 30.0  # GREYLIST_FIRST_RETRY
    greylist_max_delay: float = 900.0  # GREYLIST_MAX_DELAY: the longest greylisting waited out
    greylist_delays: tuple[float, ...] = ()  # --greylist-delays: a fixed schedule instead
    temp_delays: tuple[float, ...] = (30.0, 120.0)
    slow_retry: bool = True
    slow_timeouts: tuple[float, float, float] = (60.0, 60.0, 300.0)  # connect, command, deadline
    reuse_ttl: float | None = 86400.0  # seconds; None never reuses
    reuse_since: datetime | None = None  # --resume: reuse final verdicts stored since then
    reuse_unknown_ttl: float | None = None  # seconds an `unknown` may stand; None: setting
    wait_for_retries: bool = True
    max_in_flight: int = 5000  # targets between reading and answering: bounds memory
    persist: bool = True
    dns_concurrency: int = 32  # MX lookups at once: a burst of new domains must not flood DNS


@dataclass
class Summary:
    total: int = 0
    by_verdict: dict[str, int] = field(default_factory=dict)
    reused: int = 0
    sessions: int = 0
    rcpts: int = 0
    pending: int = 0  # retries left unfinished when stopped
    elapsed: float = 0.0
    notes: list[str] = field(default_factory=list)  # egress routes taken out of rotation

    @property
    def rcpts_per_session(self) -> float:
        return self.rcpts / self.sessions if self.sessions else 0.0
