"""What to do after a conversation, as a table: answer now, or ask again (when, and how).

Pure functions of the outcome's reason, the recipient's counters and the options;
the conductor applies the step (bumps the counter, sets the timer, re-routes,
penalises the MX). Keeping the policy here, in one table, is what lets a reader
check it against the README and a test pin it down without a server.

For an input address (`next_step`):

| reason                                     | step                                       |
|--------------------------------------------|--------------------------------------------|
| too_many_recipients (our batching, twice)  | `Alone`: again at once, in its own txn     |
| greylisted                                 | `Retry` after `greylist_wait`, then `Final`|
| rate_limited, service_unavailable          | penalise; `Retry` after temp_delays[n]...  |
| timeout (not yet in the slow lane)         | `Slow`: again at once, in the slow lane    |
| temp_failure, connection_failed, dns_error | `Retry` after temp_delays[n], then `Final` |
| anything else                              | `Final`                                    |

For a catch-all check (`check_step`): a finding (or a reply that tells nothing) is
`Final`; our batching refused is `Alone` (at once: its greylisting clock must run with
the real addresses'); another temporary reply is retried after `greylist_wait`, then
given up.

`greylist_wait`, the greylisting schedule: the server's own word first (a retry hint
read from the reply, `mailprobe.retry_hint`); else the delay that got through at this
MX before (the behaviour cache), else `greylist_first_retry`; each later retry at
GREYLIST_GROWTH times the previous one's time since the first refusal, the last at
`greylist_max_delay`; past that the address is unknown. When neither the reply nor
the MX's history says, one recipient of the MX (the scout) finds the delay alone, on
a finer schedule (SCOUT_GROWTH), and the others wait `Behind` it: when it passes,
they go at their own first refusal plus the delay it found. Greylisters pass a retry
after their own delay: postgrey's --delay defaults to 300 s
(github:schweikert/postgrey:postgrey), Mail-in-a-Box lowers it to 180 s
(https://github.com/mail-in-a-box/mailinabox/pull/413), milter-greylist's -w and
rspamd's greylist timeout are set to minutes too; so a retry at a fixed 60 s is
either wasted or late. `--greylist-delays` still gives a fixed schedule instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from mailprobe.classify import Reason
from mailprobe.engine.bulk.catchall import finding_for
from mailprobe.engine.bulk.options import BulkOptions

# Each retry without a hint goes at this many times the previous one's time since the
# first refusal: a greylister of delay D is passed by 1.5 x D at worst, in about 8
# retries from 30 s to 900 s (doubling would cost up to 2 x D; 1.2 twice the retries).
GREYLIST_GROWTH = 1.5
# The scout's schedule: a greylister of delay D is passed by 1.15 x D, at the cost of
# one single-RCPT session per step (about 17 from 30 s to 300 s).
SCOUT_GROWTH = 1.15
PENALISED = frozenset({Reason.RATE_LIMITED, Reason.SERVICE_UNAVAILABLE})
TEMPORARY = frozenset({Reason.TEMP_FAILURE, Reason.CONNECTION_FAILED, "dns_error"})
# A catch-all check with one of these replies is asked again (if greylist delays are left).
CHECK_RETRYABLE = frozenset({
    Reason.GREYLISTED, Reason.TEMP_FAILURE, Reason.RATE_LIMITED, Reason.SERVICE_UNAVAILABLE,
    Reason.TIMEOUT, Reason.CONNECTION_FAILED, Reason.TOO_MANY_RECIPIENTS,
})  # fmt: skip


@dataclass(frozen=True, slots=True)
class Counters:
    """What a recipient has been through so far."""

    greylists: int = 0
    temps: int = 0
    batching_retries: int = 0
    slow: bool = False
    waited: float = 0.0  # seconds since its first greylisting reply


@dataclass(frozen=True, slots=True)
class Pace:
    """What the server and its history say about when a greylisted RCPT passes."""

    hint: float | None = None  # the reply's own wait, in seconds (`retry_hint`)
    learned: float | None = None  # the delay that got through at this MX before
    scout: bool = False  # this recipient finds its MX's delay for the others
    behind: bool = False  # another recipient is finding it: wait for that one


@dataclass(frozen=True, slots=True)
class Behind:
    """Greylisted where another recipient is finding the MX's delay: wait for it."""


@dataclass(frozen=True, slots=True)
class Retry:
    """Ask again after `delay` seconds; `counter` is the one this retry uses up."""

    delay: float
    counter: Literal["greylists", "temps"]
    penalize: bool = False  # tell the throttle the MX pushed back


@dataclass(frozen=True, slots=True)
class Alone:
    """Our batching was refused, not the address: ask again at once, alone."""


@dataclass(frozen=True, slots=True)
class Slow:
    """Timed out: ask again at once in the MX's slow lane (RFC 5321-sized budgets)."""


@dataclass(frozen=True, slots=True)
class Final:
    """Answer with this outcome."""

    penalize: bool = False


Step = Retry | Alone | Slow | Final | Behind


def next_step(
    reason: str, counters: Counters, options: BulkOptions, pace: Pace | None = None
) -> Step:
    """The retry table for an input address (see the module docstring)."""
    if reason == Reason.TOO_MANY_RECIPIENTS and counters.batching_retries < 2:
        return Alone()
    if reason == Reason.GREYLISTED:
        pace = pace or Pace()
        wait = greylist_wait(counters.greylists, counters.waited, pace, options)
        if wait is None:
            return Final()
        return Behind() if pace.behind else Retry(wait, "greylists")
    if reason in PENALISED:
        return _temp(counters, options, penalize=True)
    if reason == Reason.TIMEOUT and options.slow_retry and not counters.slow:
        return Slow()
    if reason in TEMPORARY:
        return _temp(counters, options, penalize=False)
    return Final()


def _temp(counters: Counters, options: BulkOptions, *, penalize: bool) -> Step:
    if counters.temps < len(options.temp_delays):
        return Retry(options.temp_delays[counters.temps], "temps", penalize)
    return Final(penalize)


@dataclass(frozen=True, slots=True)
class Finding:
    """The check is over: catch-all (True), not (False), or no telling (None)."""

    catch_all: bool | None


def check_step(
    reason: str,
    greylists: int,
    options: BulkOptions,
    *,
    waited: float = 0.0,
    pace: Pace | None = None,
    batching_retries: int = 0,
) -> Finding | Retry | Alone | Behind:
    """The catch-all check's table: a finding, or a retry of a temporary reply."""
    found = finding_for(reason)
    if found is not None or reason not in CHECK_RETRYABLE:
        return Finding(found)
    if reason == Reason.TOO_MANY_RECIPIENTS and batching_retries < 2:
        return Alone()  # our batching, not the greylister: again now, with the others
    if reason != Reason.GREYLISTED:
        pace = Pace(learned=pace.learned) if pace else None  # only greylisting says when
    pace = pace or Pace()
    wait = greylist_wait(greylists, waited, pace, options)
    if wait is None:
        return Finding(None)
    return Behind() if pace.behind else Retry(wait, "greylists")


def greylist_wait(retries: int, waited: float, pace: Pace, options: BulkOptions) -> float | None:
    """Seconds until a greylisted RCPT's next retry, or None: give up (see the docstring).

    `retries`: greylisting retries so far; `waited`: seconds since the first refusal."""
    if options.greylist_delays:  # a fixed schedule: its length bounds the retries
        if retries >= len(options.greylist_delays):
            return None
        return _hinted(pace.hint) if pace.hint is not None else options.greylist_delays[retries]
    limit = options.greylist_max_delay
    if pace.hint is not None:
        if waited + pace.hint > limit:
            return None  # the server wants longer than we wait: unknown now, not later
        return _hinted(pace.hint)
    if waited >= limit:
        return None
    first = pace.learned if pace.learned is not None else options.greylist_first_retry
    first = min(max(first, 0.0), limit)
    growth = SCOUT_GROWTH if pace.scout else GREYLIST_GROWTH
    due = min(first * growth**retries, limit)  # time since the first refusal
    return max(due - waited, first * (growth - 1.0))


def _hinted(hint: float) -> float:
    """A little past the server's word: postgrey passes at `now - first >= delay`
    in whole seconds, so the exact hint may land a fraction early."""
    return hint + min(1.0, 0.05 * hint)
