"""What a run is waiting for, at one moment: for progress displays (`BulkVerifier.status`).

Read-only: computed from the run's own structures (the targets in retry timers, the
retry timers themselves, the domains being looked up, the MX lanes), never changing
them. A face renders it (the CLI's status line under the progress bar).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass

from mailprobe.dns import ResolutionStatus
from mailprobe.engine.bulk.state import DomainState, MXLane
from mailprobe.engine.bulk.targets import Target


@dataclass(frozen=True, slots=True)
class SlowServer:
    """An MX host whose second-chance (slow) lane has sessions running: it timed out at
    normal budgets and is being asked again with RFC 5321-sized ones."""

    host: str
    sessions: int


@dataclass(frozen=True, slots=True)
class RunStatus:
    in_flight: int  # lines counted in and not answered yet
    sessions: int  # SMTP sessions running
    queued: int  # recipients in MX lanes, waiting for a session
    resolving: int  # domains whose MX lookup is under way
    greylisted: int  # addresses waiting for a greylisting retry
    retrying: int  # addresses waiting for a retry after another temporary failure
    dns_failing: int  # domains whose MX lookup failed, their addresses waiting to retry
    next_retry: float | None  # seconds until the next retry timer fires
    catch_all_wait: int  # accepted addresses held while their domain's catch-all check waits
    slow_servers: tuple[SlowServer, ...] = ()
    throttle_down: float | None = None  # seconds the shared throttle has been unreachable
    reading: bool = True  # the input is still being read


def run_status(
    *,
    in_flight: int,
    waiting: Iterable[Target],
    parked: Iterable[DomainState],
    domains: Iterable[DomainState],
    lanes: Iterable[MXLane],
    timers: Iterable[asyncio.TimerHandle],
    now: float,
    throttle_down: float | None,
    reading: bool,
) -> RunStatus:
    """The status from the run's structures (`now`: the loop clock of the timers)."""
    greylisted = retrying = 0
    dns_domains: set[str] = set()
    for target in waiting:
        if target.last is not None and target.last.reason == ResolutionStatus.DNS_ERROR.value:
            dns_domains.add(target.domain)
        elif target.greylists or target.greylisted_at is not None:
            greylisted += 1
        else:
            retrying += 1
    dues = [t.when() - now for t in timers if not t.cancelled()]
    lanes = list(lanes)
    slow = sorted(
        (SlowServer(lane.host, lane.sessions) for lane in lanes if lane.slow and lane.sessions),
        key=lambda s: -s.sessions,
    )
    return RunStatus(
        in_flight=in_flight,
        sessions=sum(lane.sessions for lane in lanes),
        queued=sum(len(lane.recipients) for lane in lanes),
        resolving=sum(1 for d in domains if d.resolving),
        greylisted=greylisted,
        retrying=retrying,
        dns_failing=len(dns_domains),
        next_retry=max(0.0, min(dues)) if dues else None,
        catch_all_wait=sum(d.held for d in parked),
        slow_servers=tuple(slow),
        throttle_down=throttle_down,
        reading=reading,
    )
