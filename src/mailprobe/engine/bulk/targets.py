"""The units a run moves around: what a RCPT is sent for, and the input's addresses.

- `Recipient`: anything a RCPT is sent for, with where it is routed (which MX of its
  domain, fast or slow lane, alone in its transaction) and how often its session broke.
- `Target`: an input line's address under verification (a recipient with a line).
  A domain's catch-all check is the other kind of recipient (`catchall.CatchAllCheck`).

("Job" is a queue job, never one of these.)
"""

from __future__ import annotations

from dataclasses import dataclass

from mailprobe.address import EmailAddress
from mailprobe.results import Outcome


@dataclass(eq=False)
class Recipient:
    """What a RCPT is sent for: an input address, or a domain's catch-all check."""

    address: EmailAddress
    greylists: int = 0  # greylisting retries so far
    greylisted_at: float | None = None  # its first greylisting reply (monotonic clock)
    bounces: int = 0  # sessions that ended before this recipient's RCPT was answered
    slow: bool = False  # routed to its MX's slow lane (RFC 5321-sized budgets)
    alone: bool = False  # asked in a transaction of its own
    tried: tuple[str, ...] = ()  # MX hosts it could not reach: the next one takes over
    last: Outcome | None = None  # the latest outcome, answered when nothing better comes
    out_of_step: int = 0  # sessions whose replies fell out of step while it was asked
    in_session: bool = False  # taken by a session and not yet answered, re-routed or held
    egress: str = ""  # throttle key (egress.egress_key) of the session that asked it last

    @property
    def domain(self) -> str:
        return self.address.ascii_domain


@dataclass(eq=False)
class Target(Recipient):
    """An input line's address, under verification until its answer is final."""

    line_no: int = 0
    raw: str = ""
    attempts: int = 0  # conversations that answered it (our batching's refusals excluded)
    temps: int = 0  # temporary-failure retries so far
    batching_retries: int = 0  # asked again alone after a "too many recipients"
