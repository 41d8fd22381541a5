"""A domain's catch-all finding, and the check that makes it.

An accepted RCPT means something only once we know whether the domain accepts any
local part. The check is one RCPT for a local part that cannot exist (`mp-` and 16
random hex digits, drawn once per domain and run: a retry asks for the same one, so a
greylister's clock for it keeps running), sent in a transaction of its own after a
domain's first real RCPTs, so that it can neither spoil nor be spoilt by them, and
so that its greylisting clock starts with theirs. Until the check answers,
the domain's accepted answers are held here; the check's answer (or its failure)
releases them with the finding.

`CatchAll` is the per-domain tracker: the finding, the check under way (a
`CatchAllCheck`, which travels through the lanes like any recipient when it must be
asked again) and the held answers. It does no I/O: the conductor and the session
runner tell it what happened.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field

from mailprobe.address import EmailAddress
from mailprobe.classify import Reason
from mailprobe.engine.bulk.targets import Recipient, Target
from mailprobe.results import Outcome

# What the check's RCPT said about the domain; any other reply is inconclusive.
_FINDINGS: dict[str, bool] = {
    Reason.ACCEPTED: True,
    Reason.MAILBOX_NOT_FOUND: False,
    Reason.MAILBOX_DISABLED: False,
    Reason.MAILBOX_UNAVAILABLE: False,
}

Accepted = tuple[Target, Outcome]  # an accepted RCPT waiting for its domain's finding


@dataclass(eq=False)
class CatchAllCheck(Recipient):
    """The RCPT of a domain's catch-all check (no input line: it only settles its domain)."""

    batching_retries: int = 0  # asked again at once after our batching was refused

    @classmethod
    def for_domain(cls, domain: str, local: str | None = None) -> CatchAllCheck:
        return cls(EmailAddress(local or random_local(), domain, domain))


def random_local() -> str:
    """A local part no one has: `mp-` and 16 random hex digits."""
    return f"mp-{secrets.token_hex(8)}"


def finding_for(reason: str) -> bool | None:
    """Catch-all (True), not (False), or no telling (None) from the check's reply."""
    return _FINDINGS.get(reason)


@dataclass(eq=False)
class CatchAll:
    """One domain's catch-all finding, its check under way and the answers held for it."""

    finding: bool | None = None  # known (from the MX cache, or found in this run)
    check: CatchAllCheck | None = None  # the check under way, if any
    held: list[Accepted] = field(default_factory=list)  # accepted, waiting for the finding
    local: str | None = None  # the check's local part, the same for the whole run

    def needs_check(self, enabled: bool) -> bool:
        """No finding and no check under way: the next session of the domain asks."""
        return enabled and self.finding is None and self.check is None

    def start(self, domain: str) -> CatchAllCheck:
        """A check begins (its RCPT goes out in this session), for the run's local part."""
        if self.local is None:
            self.local = random_local()
        self.check = CatchAllCheck.for_domain(domain, self.local)
        return self.check

    def hold(self, accepted: list[Accepted], enabled: bool) -> list[Accepted]:
        """A transaction's accepted answers: kept while a check is under way; the rest
        (returned) go now, with the finding if there is one, else catch-all unknown."""
        for target, _ in accepted:
            target.in_session = False  # held here, or answered by the caller
        if enabled and self.finding is None and self.check is not None:
            self.held.extend(accepted)
            return []
        return accepted

    def settle(self, found: bool | None) -> list[Accepted]:
        """The check is over (found, or inconclusive for good): release what it held."""
        self.check = None
        if found is not None:
            self.finding = found
        held, self.held = self.held, []
        return held

    def abandon(self) -> list[Accepted]:
        """The session broke before the check was answered: the next session checks
        again, and the held answers are asked again (see the conductor's `ask_again`)."""
        self.check = None
        held, self.held = self.held, []
        return held
