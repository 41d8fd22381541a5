"""Which lane gets the next session: decisions, without doing any I/O.

The scheduler is a pure object, in the manner of httpcore's connection pool
(decide, then act): given the lanes' state, the clock, the throttle's policy and
what the throttle refused, it says what to do next; the conductor does it (asks
the throttle for a slot, starts the session, sleeps) and reports back.

A scheduling pass is a `Round`. `Round.next()` returns

- `Ask(lane)`: ask the throttle for a slot for this lane, without waiting; report
  `granted(lane)` (the conductor starts a session) or `refused(lane, limited_by,
  retry_after)`;
- `Wait(seconds)`: nothing more can start now; look again after `seconds` or when
  woken (a session ended, a lane got work). `Wait(0.0)`: something started, look
  again at once.

The rules:

- the lane that needs the longest (`time_left`) is the run's critical path: it is
  asked first, busiest first after it;
- while the input is still being read, a lane waits (up to BATCH_WINDOW) for a full
  session's load: a session that carries one address spends a rate token the
  busiest MX cannot spare;
- the slow lanes hold at most a quarter of the global slots, one session each;
- a refusal on the global rate ends the pass: every lane after it waits on that rate too;
- while the critical lane waits for its MX's next rate token, one global slot is
  kept for it, but only when it is the bottleneck (`refused`): otherwise sessions
  to other MXs fill every slot meanwhile and the critical lane starts late, every
  time, for the whole run.
"""

from __future__ import annotations

from dataclasses import dataclass

from mailprobe.engine.bulk.options import BATCH_WINDOW, SCHEDULER_TICK, BulkOptions
from mailprobe.engine.bulk.state import MXLane
from mailprobe.throttle import ThrottlePolicy


@dataclass(frozen=True, slots=True)
class Ask:
    """Ask the throttle for a slot for `lane` (no wait); report granted or refused."""

    lane: MXLane


@dataclass(frozen=True, slots=True)
class Wait:
    """Nothing more to start: look again after `seconds` (0: at once) or when woken."""

    seconds: float


Decision = Ask | Wait


def slow_share(global_cap: int) -> int:
    """Global slots the slow lanes may hold together: a list full of tarpits gets its
    second chance without holding up the fast servers."""
    return max(1, global_cap // 4)


class Scheduler:
    """The lanes with work, the sessions running, and the rules to start more."""

    def __init__(self, options: BulkOptions, policy: ThrottlePolicy) -> None:
        self.options = options
        self.policy = policy
        self.global_cap = policy.global_limits.max_concurrency
        self.ready: set[MXLane] = set()  # lanes that may have recipients waiting
        self.active = 0  # sessions running
        self.active_slow = 0  # of which in slow lanes
        self.session_seconds = 0.5  # how long a session lasts (moving average, this run)
        self.reading = True  # the input is still being read
        self.critical: MXLane | None = None  # the lane with the most time left

    # -- what the conductor reports --------------------------------------------

    def kick(self, lane: MXLane, now: float) -> None:
        """The lane has work."""
        if lane not in self.ready:
            lane.waiting_since = now
        self.ready.add(lane)

    def started(self, lane: MXLane) -> None:
        lane.sessions += 1
        lane.started += 1
        self.active += 1
        self.active_slow += lane.slow

    def ended(self, lane: MXLane, seconds: float) -> None:
        """A session of the lane ended after `seconds`; its leftovers go at once."""
        if not lane.slow:  # a tarpit's minutes say nothing of a normal session
            self.session_seconds += 0.1 * (seconds - self.session_seconds)
        lane.sessions -= 1
        self.active -= 1
        self.active_slow -= lane.slow
        if lane.recipients:
            self.ready.add(lane)
            lane.waiting_since = 0.0

    # -- decisions -----------------------------------------------------------------

    def plan(self, now: float) -> Round:
        """A scheduling pass over the lanes ready at `now`."""
        candidates: list[MXLane] = []
        if self.active < self.global_cap:
            candidates = sorted(
                (lane for lane in self.ready if self.worth_starting(lane, now)),
                key=self.time_left,
                reverse=True,
            )
            self.ready = {lane for lane in self.ready if lane.recipients}
        self._mark_critical()
        return Round(self, candidates)

    def _mark_critical(self) -> None:
        """The lane that needs the longest gets the first call on global RCPT tokens (see
        `Throttle.more(priority=)`): when every MX wants tokens at once, the global rate
        would otherwise slow the one MX whose rate bounds the whole run."""
        critical = max(self.ready, key=self.time_left, default=None)
        if critical is self.critical:
            return
        if self.critical is not None:
            self.critical.critical = False
        if critical is not None:
            critical.critical = True
        self.critical = critical

    def worth_starting(self, lane: MXLane, now: float) -> bool:
        if not lane.recipients or lane.sessions >= self.cap(lane):
            return False
        if lane.addresses_pending:
            return False
        return (
            not self.reading
            or len(lane.recipients) >= self.options.rcpts_per_session
            or now - lane.waiting_since >= BATCH_WINDOW
        )

    def time_left(self, lane: MXLane) -> float:
        """A lower bound on how long this lane still needs: its RCPTs at its MX's RCPT rate,
        plus a greylisting delay if we have never talked to it (it may greylist us)."""
        left = len(lane.recipients) / self.policy.limits_for(lane.host).rps
        if lane.started == 0:
            delays = self.options.greylist_delays
            left += delays[0] if delays else self.options.greylist_first_retry
        return left

    def cap(self, lane: MXLane) -> int:
        return 1 if lane.slow else self.policy.limits_for(lane.host).max_concurrency

    def worth_reserving(self, lane: MXLane, limited_by: str) -> bool:
        """Keep a global slot for this lane until its MX's rate token is due?

        Only when the lane is the bottleneck: the other lanes' sessions, at the session
        length seen so far in this run, fit in the remaining slots within the time this
        lane needs anyway. Then the reserved slot costs nothing; otherwise the global
        concurrency cap is what bounds the run and every slot is worth filling."""
        if limited_by not in {"per-MX rate", "per-MX connection rate"} or self.global_cap < 4:
            return False
        per_session = self.options.rcpts_per_session
        others = sum(
            -(-len(other.recipients) // per_session) for other in self.ready if other is not lane
        )
        return self.time_left(lane) >= others * self.session_seconds / (self.global_cap - 1)


class Round:
    """One pass: the candidates in order, the slot kept back, the earliest rate token."""

    def __init__(self, scheduler: Scheduler, candidates: list[MXLane]) -> None:
        self._s = scheduler
        self._candidates = candidates
        self._next = 0  # index of the next candidate to consider
        self._reserved = 0  # global slots kept for the critical lane
        self._started = False
        self._due = SCHEDULER_TICK  # seconds until the earliest refused rate token

    def next(self) -> Decision:
        s = self._s
        while self._next < len(self._candidates):
            if s.active >= s.global_cap - self._reserved:
                break
            lane = self._candidates[self._next]
            self._next += 1
            if lane.slow and s.active_slow >= slow_share(s.global_cap):
                continue
            return Ask(lane)
        return Wait(0.0 if self._started else max(self._due, 0.001))

    def granted(self, lane: MXLane) -> None:
        """The throttle gave a slot: the conductor starts the session."""
        self._s.started(lane)
        self._started = True

    def refused(self, lane: MXLane, limited_by: str, retry_after: float | None) -> None:
        """The throttle had no slot now. A rate token's due time is when to look again;
        the critical lane (the first candidate) may get a global slot kept for it."""
        if retry_after is None:  # a full slot: a session's end wakes the conductor
            return
        self._due = min(self._due, retry_after)
        if limited_by == "global rate":
            # Every other lane would be refused on the same global rate (without the
            # critical lane's priority, they need more of it): the round ends here
            # rather than ask each lane in turn, every few milliseconds.
            self._next = len(self._candidates)
        first = self._candidates[0] if self._candidates else None
        if lane is first and self._s.worth_reserving(lane, limited_by):
            self._reserved = 1
