"""What a session reports to the conductor: at once, or once the session proved in step.

A session that goes one command at a time reads each reply as it comes, so a reply
that belongs to another command (a stray reply that arrived late) may only show at
the session's end, when QUIT gets something other than 221. Its answers therefore
wait here (`Deferred`) and count only when the session ended in step; otherwise
nothing it said about an address is used (see `SessionRunner._out_of_step`).
"""

from __future__ import annotations

from typing import Protocol

from mailprobe.engine.bulk.catchall import CatchAllCheck
from mailprobe.engine.bulk.state import DomainState, MXLane
from mailprobe.engine.bulk.targets import Recipient
from mailprobe.results import Outcome


class Engine(Protocol):
    """What a session reports to (the conductor)."""

    def answered(self, recipient: Recipient, outcome: Outcome) -> None: ...

    def route(self, recipient: Recipient) -> None: ...

    def domain(self, name: str) -> DomainState: ...

    def checked(self, check: CatchAllCheck, reason: str, message: str = "") -> None: ...

    def heard(self, recipient: Recipient, outcome: Outcome) -> None: ...

    def look_up(self, lane: MXLane) -> None: ...


class Deferred:
    """The engine, for one session whose answers count only once it ends in step: answers,
    catch-all findings and what the replies taught wait; routing and lookups go through."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.answers: list[tuple[Recipient, Outcome]] = []
        self.checks: list[tuple[CatchAllCheck, str, str]] = []
        self.heard_: list[tuple[Recipient, Outcome]] = []

    def answered(self, recipient: Recipient, outcome: Outcome) -> None:
        self.answers.append((recipient, outcome))

    def checked(self, check: CatchAllCheck, reason: str, message: str = "") -> None:
        self.checks.append((check, reason, message))

    def heard(self, recipient: Recipient, outcome: Outcome) -> None:
        self.heard_.append((recipient, outcome))

    def route(self, recipient: Recipient) -> None:
        self.engine.route(recipient)

    def domain(self, name: str) -> DomainState:
        return self.engine.domain(name)

    def look_up(self, lane: MXLane) -> None:
        self.engine.look_up(lane)

    def deliver(self) -> None:
        """The session ended in step: what it said counts."""
        for recipient, outcome in self.heard_:
            self.engine.heard(recipient, outcome)
        for recipient, outcome in self.answers:
            self.engine.answered(recipient, outcome)
        for check, reason, message in self.checks:
            self.engine.checked(check, reason, message)
        self.answers, self.checks, self.heard_ = [], [], []
