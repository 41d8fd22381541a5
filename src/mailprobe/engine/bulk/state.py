"""Where recipients wait during a run: their domain's state, then their MX host's lane.

Plain data, no behaviour beyond naming: the conductor and the session runner move
recipients between these structures; the scheduler reads them to decide.

- `DomainState`: a domain's resolution, the targets waiting for it, its catch-all
  trackers (the domain's own, for its primary MX hosts, and one per backup MX asked).
- `MXLane`: the recipients queued at one MX host (its slow lane is a lane of its own).
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass, field

from mailprobe.engine.bulk.catchall import CatchAll, CatchAllCheck
from mailprobe.engine.bulk.targets import Recipient, Target
from mailprobe.mxcache import CachedMX


@dataclass(eq=False)
class DomainState:
    name: str
    waiting: list[Recipient] = field(default_factory=list)  # for the resolution
    resolution: CachedMX | None = None
    resolving: bool = False
    catch_all: CatchAll = field(default_factory=CatchAll)  # at its primary MX hosts
    pending: int = 0  # targets of this domain not answered yet
    # A backup MX's own finding, made in this run and never stored as the domain's:
    # backups often accept every RCPT and sort it out later (see `tracker`).
    backups: dict[str, CatchAll] = field(default_factory=dict)
    _order: tuple[CachedMX, list[str]] | None = None  # the MX order drawn for this run
    # Per resolution, whether a host's answers are the domain's own (see `tracker`).
    _own: tuple[CachedMX, dict[str, bool]] | None = None

    def mx_order(self) -> list[str]:
        """The domain's MX hosts in the order this run tries them: equal preferences
        shuffled once per resolution (RFC 5321 §5.1), then kept, so a recipient's
        hand-over from one host to the next means the same thing all run long."""
        assert self.resolution is not None
        if self._order is None or self._order[0] is not self.resolution:
            self._order = (self.resolution, self.resolution.resolution.try_order())
        return self._order[1]

    def tracker(self, host: str | None) -> CatchAll:
        """The catch-all tracker for RCPTs asked at `host`. The domain's own (found at, and
        stored for, its primary MX hosts) unless `host` is a backup MX: a backup that
        relays for the domain without its recipient list accepts every RCPT (Postfix's
        STANDARD_CONFIGURATION_README, "Configuring Postfix as primary or backup MX
        host": without relay_recipient_maps it takes mail for non-existent recipients,
        https://www.postfix.org/STANDARD_CONFIGURATION_README.html#backup), so its
        answers are weighed by a check made there, and that check's finding stays its own."""
        if not host or self.resolution is None:
            return self.catch_all
        if self._own is None or self._own[0] is not self.resolution:  # asked per answer
            self._own = (self.resolution, {})
        own = self._own[1].get(host)
        if own is None:
            mx = self.resolution.resolution
            own = self._own[1][host] = host not in mx.hosts or mx.is_primary(host)
        if own:
            return self.catch_all
        return self.backups.setdefault(host, CatchAll())

    def tracker_of(self, check: CatchAllCheck) -> tuple[str | None, CatchAll]:
        """The (backup host or None, tracker) whose check this is."""
        for host, tracker in self.backups.items():
            if tracker.check is check:
                return host, tracker
        return None, self.catch_all

    @property
    def held(self) -> int:
        """Accepted answers waiting for a catch-all finding, at every MX."""
        return len(self.catch_all.held) + sum(len(t.held) for t in self.backups.values())

    def held_targets(self) -> list[Target]:
        """The targets whose accepted answers wait for a catch-all finding, at every MX."""
        trackers = [self.catch_all, *self.backups.values()]
        return [target for tracker in trackers for target, _ in tracker.held]

    @property
    def lowest_mx(self) -> str | None:
        return self.resolution.lowest_mx if self.resolution is not None else None

    @property
    def dns_status(self) -> str | None:
        return self.resolution.status.value if self.resolution is not None else None

    @property
    def idle(self) -> bool:
        """Nothing of this domain in flight: it may be forgotten (the store keeps its MX)."""
        return (
            self.pending == 0
            and self.catch_all.check is None
            and all(t.check is None for t in self.backups.values())
            and not self.waiting
            and not self.resolving
        )


@dataclass(eq=False)
class MXLane:
    """The recipients waiting for one MX host (the slow lane of a host is a lane of its own)."""

    host: str
    slow: bool
    recipients: deque[Recipient] = field(default_factory=deque)
    sessions: int = 0  # running now
    started: int = 0  # in this run
    waiting_since: float = 0.0  # when the lane last went from empty to having recipients
    one_rcpt: bool = False  # the server refuses several RCPTs in one transaction
    no_pipelining: bool = False  # its replies fell out of step in a group: one at a time
    critical: bool = False  # the run's critical path: first call on global RCPT tokens
    ips: asyncio.Task[list[str]] | None = None  # the host's addresses, looked up ahead

    @property
    def addresses_pending(self) -> bool:
        """Its addresses are being looked up (it is kicked when they are known)."""
        return self.ips is not None and not self.ips.done()


def take(recipients: deque[Recipient], n: int) -> list[Recipient]:
    """Up to n recipients, those of the first one's domain first (fewer transactions).

    One pass, stopping once n of the first domain are found: a lane can hold thousands."""
    if not recipients:
        return []
    first = recipients[0].address.ascii_domain
    same: list[Recipient] = []
    others: list[Recipient] = []  # the rest, in order
    it = iter(recipients)
    for r in it:
        if r.address.ascii_domain == first:
            same.append(r)
            if len(same) == n:
                break
        else:
            others.append(r)
    others.extend(it)
    k = n - len(same)
    recipients.clear()
    recipients.extend(others[k:])
    return same + others[:k]


def drain(recipients: deque[Recipient]) -> list[Recipient]:
    out = list(recipients)
    recipients.clear()
    return out
