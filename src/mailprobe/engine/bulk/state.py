"""Where recipients wait during a run: their domain's state, then their MX host's lane.

Plain data, no behaviour beyond naming: the conductor and the session runner move
recipients between these structures; the scheduler reads them to decide.

- `DomainState`: a domain's resolution, the targets waiting for it, its catch-all tracker.
- `MXLane`: the recipients queued at one MX host (its slow lane is a lane of its own).
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass, field

from mailprobe.engine.bulk.catchall import CatchAll
from mailprobe.engine.bulk.targets import Recipient
from mailprobe.mxcache import CachedMX


@dataclass(eq=False)
class DomainState:
    name: str
    waiting: list[Recipient] = field(default_factory=list)  # for the resolution
    resolution: CachedMX | None = None
    resolving: bool = False
    catch_all: CatchAll = field(default_factory=CatchAll)
    pending: int = 0  # targets of this domain not answered yet

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
    ips: asyncio.Task[list[str]] | None = None  # the host's addresses, looked up ahead

    @property
    def addresses_pending(self) -> bool:
        """Its addresses are being looked up (it is kicked when they are known)."""
        return self.ips is not None and not self.ips.done()


def take(recipients: deque[Recipient], n: int) -> list[Recipient]:
    """Up to n recipients, those of the first one's domain first (fewer transactions)."""
    if not recipients:
        return []
    first = recipients[0].domain
    same = [r for r in recipients if r.domain == first][:n]
    taken = set(map(id, same))
    rest = [r for r in recipients if id(r) not in taken]
    batch = same + rest[: n - len(same)]
    taken |= set(map(id, batch))
    remaining = [r for r in recipients if id(r) not in taken]
    recipients.clear()
    recipients.extend(remaining)
    return batch


def drain(recipients: deque[Recipient]) -> list[Recipient]:
    out = list(recipients)
    recipients.clear()
    return out
