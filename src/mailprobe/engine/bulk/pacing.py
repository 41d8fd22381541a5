"""When retries go out: together per MX, and at the greylister's own pace.

The retry table (`retry`) says how long a recipient waits; this module keeps the
run's timing state that the table needs and the conductor should not carry:

- `Pacer.later`: the retries of one MX due within a small window (a tenth of their
  delay, at most RETRY_COALESCE_MAX seconds) go together, at the latest one's time
  (never early for any): one timer routes them all, so the MX's lane batches them
  into sessions within its caps instead of one session per timer, a burst that
  servers answer with "421 too many connections".
- `Pacer.greylisting`: the recipient's time since its first greylisting reply, and
  its `retry.Pace`: the reply's hint (`retry_hint`), the MX's learned delay (the
  behaviour cache), and, when neither says, whether it is the MX's scout (it finds
  the delay alone on a finer schedule) or waits `Behind` the scout.
- `Pacer.learn`: a greylisted recipient got a word on the address: its MX's delay is
  learned (`behavior.mark_greylist_passed`), and if it was the scout, the ones
  behind it go, each at its own first refusal plus the delay found.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from mailprobe.behavior import BehaviorCache
from mailprobe.classify import Reason
from mailprobe.engine.bulk import retry
from mailprobe.engine.bulk.options import BulkOptions
from mailprobe.engine.bulk.targets import Recipient
from mailprobe.retry_hint import retry_hint

RETRY_COALESCE = 0.1  # share of the delay within which retries of one MX go together
RETRY_COALESCE_MAX = 2.0  # seconds

Action = Callable[[], None]


@dataclass(eq=False)
class _DueTogether:
    """Retries of one MX that are routed together when the latest of them is due."""

    first: float  # the earliest member's due time (loop clock)
    at: float  # when they go: the latest member's due time
    window: float
    actions: list[Action] = field(default_factory=list)
    handle: asyncio.TimerHandle | None = None


@dataclass(eq=False)
class _Scout:
    """A recipient finding its greylisting MX's delay alone (`retry.SCOUT_GROWTH`); the
    MX's other greylisted recipients wait behind it, each with how to send it again."""

    recipient: Recipient
    behind: list[tuple[Recipient, Action]] = field(default_factory=list)


class Pacer:
    """The run's retry timers, per-MX groups and greylisting scouts."""

    def __init__(self, behavior: BehaviorCache, options: BulkOptions) -> None:
        self.behavior = behavior
        self.options = options
        self._timers: set[asyncio.TimerHandle] = set()
        self._due: dict[str, _DueTogether] = {}  # per MX host: the retries it may join
        self._scouts: dict[str, _Scout] = {}  # per greylisting MX with no known delay

    def cancel(self) -> None:
        """The run is over: no retry fires any more."""
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()

    def later(self, delay: float, action: Action, host: str) -> None:
        """Run `action` after `delay`, with the other retries of `host` due about then."""
        loop = asyncio.get_running_loop()
        due = loop.time() + delay
        group = self._due.get(host)
        if group is None or group.handle is None or abs(due - group.first) > group.window:
            window = min(RETRY_COALESCE_MAX, RETRY_COALESCE * delay)
            group = self._due[host] = _DueTogether(first=due, at=due, window=window)
        group.actions.append(action)
        if group.handle is not None and due <= group.at:
            return
        if group.handle is not None:  # a later member: the group goes at its time
            group.handle.cancel()
            self._timers.discard(group.handle)
        group.at = due
        member = group

        def fire() -> None:
            if member.handle is not None:
                self._timers.discard(member.handle)
            member.handle = None
            if self._due.get(host) is member:
                del self._due[host]
            for act in member.actions:
                act()

        member.handle = loop.call_at(due, fire)
        self._timers.add(member.handle)

    # -- greylisting ------------------------------------------------------------------

    def greylisting(
        self, r: Recipient, reason: str, message: str, host: str
    ) -> tuple[float, retry.Pace | None]:
        """Seconds since the recipient's first greylisting, and what says when to retry."""
        if reason != Reason.GREYLISTED and r.greylisted_at is None:
            return 0.0, None
        now = time.monotonic()
        if r.greylisted_at is None:
            r.greylisted_at = now
        hint = retry_hint(message) if reason == Reason.GREYLISTED else None
        learned = self.behavior.greylist_delay(host) if host else None
        scout = behind = False
        unknown = hint is None and learned is None and not self.options.greylist_delays
        if reason == Reason.GREYLISTED and unknown and host:
            current = self._scouts.setdefault(host, _Scout(r))
            scout = current.recipient is r
            behind = not scout
        return now - r.greylisted_at, retry.Pace(hint, learned, scout, behind)

    def learn(self, r: Recipient, said: bool, host: str | None) -> None:
        """`said`: the reply was a word on the address (2xx/5xx), not another refusal."""
        if r.greylisted_at is None or not said or not host:
            return
        passed = time.monotonic() - r.greylisted_at
        self.behavior.mark_greylist_passed(host, passed, first_retry=r.greylists <= 1)
        r.greylisted_at = None
        scout = self._scouts.get(host)
        if scout is not None and scout.recipient is r:
            self._scout_over(host, passed)

    def stepped(self, host: str, r: Recipient, step: object) -> None:
        """The scout's answer ended its search without a delay (given up, or another
        reply): the ones behind it are asked again now, and one of them scouts."""
        scout = self._scouts.get(host)
        if scout is None or scout.recipient is not r:
            return
        if not (isinstance(step, retry.Retry) and step.counter == "greylists"):
            self._scout_over(host, None)

    def wait_behind(self, host: str, r: Recipient, again: Action) -> None:
        """`again` sends the recipient when its MX's scout has found the delay."""
        scout = self._scouts.get(host)
        if scout is None:  # cannot happen: `Behind` needs a scout
            again()
            return
        scout.behind.append((r, again))

    def _scout_over(self, host: str, passed: float | None) -> None:
        scout = self._scouts.pop(host)
        now = time.monotonic()
        for r, again in scout.behind:
            r.greylists += 1
            since = r.greylisted_at if r.greylisted_at is not None else now
            delay = 0.0 if passed is None else max(0.0, since + passed - now)
            self.later(delay, again, host)
