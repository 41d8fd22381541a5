"""What to do after a conversation, as a table: answer now, or ask again (when, and how).

Pure functions of the outcome's reason, the recipient's counters and the options;
the conductor applies the step (bumps the counter, sets the timer, re-routes,
penalises the MX). Keeping the policy here, in one table, is what lets a reader
check it against the README and a test pin it down without a server.

For an input address (`next_step`):

| reason                                     | step                                       |
|--------------------------------------------|--------------------------------------------|
| too_many_recipients (our batching, twice)  | `Alone`: again at once, in its own txn     |
| greylisted                                 | `Retry` after greylist_delays[n], `Final`  |
| rate_limited, service_unavailable          | penalise; `Retry` after temp_delays[n]...  |
| timeout (not yet in the slow lane)         | `Slow`: again at once, in the slow lane    |
| temp_failure, connection_failed, dns_error | `Retry` after temp_delays[n], then `Final` |
| anything else                              | `Final`                                    |

For a catch-all check (`check_step`): a finding (or a reply that tells nothing) is
`Final`; a temporary reply is retried after greylist_delays[n], then given up.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from mailprobe.classify import Reason
from mailprobe.engine.bulk.catchall import finding_for
from mailprobe.engine.bulk.options import BulkOptions

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


Step = Retry | Alone | Slow | Final


def next_step(reason: str, counters: Counters, options: BulkOptions) -> Step:
    """The retry table for an input address (see the module docstring)."""
    if reason == Reason.TOO_MANY_RECIPIENTS and counters.batching_retries < 2:
        return Alone()
    if reason == Reason.GREYLISTED and counters.greylists < len(options.greylist_delays):
        return Retry(options.greylist_delays[counters.greylists], "greylists")
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


def check_step(reason: str, greylists: int, options: BulkOptions) -> Finding | Retry:
    """The catch-all check's table: a finding, or a retry of a temporary reply."""
    found = finding_for(reason)
    if found is None and reason in CHECK_RETRYABLE and greylists < len(options.greylist_delays):
        return Retry(options.greylist_delays[greylists], "greylists")
    return Finding(found)
