"""The ground truth of a simulated world: what each domain and address is, and
the verdict a correct prober should reach for it (`AddressTruth.verdict`)."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from mailprobe.address import InvalidAddress, parse_address
from mailprobe.testing.worldconfig import GREYLIST_RETRY_WINDOW, DNSStatus, Kind, Mailbox
from mailprobe.verdict import Verdict


@dataclass(frozen=True, slots=True)
class DomainTruth:
    domain: str
    kind: Kind
    dns: DNSStatus
    mx_hosts: tuple[str, ...] = ()  # by preference; the unreachable one included
    family: str | None = None  # reply family of its MX ("postfix", "google", "microsoft")
    catch_all: bool = False
    blocked: bool = False
    greylist_seconds: float | None = None
    never_answers: bool = False  # its MX never greets
    backup_accepts_all: bool = False  # the only MX that answers accepts every RCPT
    smtputf8: bool = False  # its MX offers SMTPUTF8 (RFC 6531)


@dataclass(frozen=True, slots=True)
class AddressTruth:
    """The facts about one input line, and what a correct prober should conclude."""

    address: str  # the input line (stripped)
    valid_syntax: bool
    domain: str | None = None
    kind: Kind | None = None
    mailbox: Mailbox | None = None  # None: invalid line, or a domain that takes no mail
    catch_all: bool = False
    dns: DNSStatus | None = None
    blocked: bool = False  # the MX refuses us (blocklist) whatever the mailbox
    greylist_seconds: float | None = None
    never_answers: bool = False
    mx_hosts: tuple[str, ...] = ()
    backup_accepts_all: bool = False  # only a backup answers, and it accepts every RCPT
    # A non-ASCII local part at an MX without SMTPUTF8: nothing may be asked (RFC 6531).
    smtputf8_unsupported: bool = False

    @property
    def expected_reason(self) -> str:
        """What the final RCPT answer means (after greylisting): a classify.Reason value,
        or the DNS/syntax reason of verdict.VERDICT_TABLE."""
        if not self.valid_syntax:
            return "invalid_syntax"
        if self.dns is DNSStatus.NXDOMAIN:
            return "no_such_domain"
        if self.dns is DNSStatus.NULL_MX:
            return "null_mx"
        if self.never_answers:
            return "timeout"
        if self.blocked:
            return "policy_block"
        if self.smtputf8_unsupported:
            return "smtputf8_unsupported"
        if self.backup_accepts_all:
            return "accepted"  # whatever the mailbox: the backup sorts it out later
        if self.mailbox is Mailbox.MISSING:
            return "accepted" if self.catch_all else "mailbox_not_found"
        return {
            Mailbox.EXISTS: "accepted",
            Mailbox.FULL: "mailbox_full",
            Mailbox.DISABLED: "mailbox_disabled",
        }.get(self.mailbox or Mailbox.MISSING, "unknown")

    def verdict(self, greylist_retry_window: float = GREYLIST_RETRY_WINDOW) -> str | None:
        """deliverable / undeliverable / risky / unknown, or None: not determinable."""
        reason = self.expected_reason
        if reason in {"invalid_syntax", "no_such_domain", "null_mx"}:
            return Verdict.UNDELIVERABLE.value
        if self.never_answers:
            return None  # a tarpit that always times out: no prober can know
        if self.blocked or self.smtputf8_unsupported:
            return Verdict.UNKNOWN.value
        if self.greylist_seconds is not None and self.greylist_seconds > greylist_retry_window:
            return Verdict.UNKNOWN.value
        if reason == "accepted":
            accepts_all = self.catch_all or self.backup_accepts_all
            return (Verdict.RISKY if accepts_all else Verdict.DELIVERABLE).value
        if reason in {"mailbox_not_found", "mailbox_disabled"}:
            return Verdict.UNDELIVERABLE.value
        if reason == "mailbox_full":
            return Verdict.RISKY.value
        return Verdict.UNKNOWN.value

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["mx_hosts"] = list(self.mx_hosts)
        out["expected_reason"] = self.expected_reason
        return out


class GroundTruth(Mapping[str, AddressTruth]):
    """Truth for every input line (keyed by the stripped, lowercased line), and for
    any other address: a world domain's unknown local part is a missing mailbox,
    a domain outside the world does not exist."""

    def __init__(
        self,
        addresses: Mapping[str, AddressTruth],
        domains: Mapping[str, DomainTruth],
        greylist_retry_window: float = GREYLIST_RETRY_WINDOW,
        hosts: Iterable[str] = (),
    ) -> None:
        self._addresses = dict(addresses)
        self.domains: dict[str, DomainTruth] = dict(domains)
        self.greylist_retry_window = greylist_retry_window
        self._hosts: set[str] = set(hosts)  # MX host names: addresses there are not modelled

    def __getitem__(self, key: str) -> AddressTruth:
        return self._addresses[key.strip().lower()]

    def __iter__(self) -> Iterator[str]:
        return iter(self._addresses)

    def __len__(self) -> int:
        return len(self._addresses)

    def lookup(self, email: str) -> AddressTruth | None:
        """Facts for any address; None for names the world does not model (its MX hosts)."""
        key = email.strip().lower()
        if key in self._addresses:
            return self._addresses[key]
        try:
            parsed = parse_address(email)
        except InvalidAddress:
            return AddressTruth(address=email.strip(), valid_syntax=False)
        domain = parsed.domain.lower()
        d = self.domains.get(domain)
        if d is None:
            if domain in self._hosts:
                return None
            return AddressTruth(
                address=email.strip(), valid_syntax=True, domain=domain, dns=DNSStatus.NXDOMAIN
            )
        return address_truth(email.strip(), d, Mailbox.MISSING)

    def expected_verdict(
        self, email: str, *, greylist_retry_window: float | None = None
    ) -> str | None:
        truth = self.lookup(email)
        if truth is None:
            return None
        window = greylist_retry_window
        return truth.verdict(self.greylist_retry_window if window is None else window)

    def counts(self) -> Counter[str | None]:
        """How many input lines should end in each verdict (None: not determinable)."""
        return Counter(t.verdict(self.greylist_retry_window) for t in self._addresses.values())

    def write_jsonl(self, path: Path | str) -> None:
        with Path(path).open("w", encoding="utf-8") as fh:
            for t in self._addresses.values():
                row = t.as_dict()
                row["expected_verdict"] = t.verdict(self.greylist_retry_window)
                fh.write(json.dumps(row) + "\n")


def address_truth(address: str, d: DomainTruth, mailbox: Mailbox) -> AddressTruth:
    """The facts about `address`, at domain `d`, whose mailbox is `mailbox`."""
    takes_mail = d.dns in (DNSStatus.MX, DNSStatus.A_ONLY)
    needs_smtputf8 = parse_address(address).needs_smtputf8
    return AddressTruth(
        address=address,
        valid_syntax=True,
        domain=d.domain,
        kind=d.kind,
        mailbox=mailbox if takes_mail else None,
        catch_all=d.catch_all,
        dns=d.dns,
        blocked=d.blocked,
        greylist_seconds=d.greylist_seconds,
        never_answers=d.never_answers,
        mx_hosts=d.mx_hosts,
        backup_accepts_all=d.backup_accepts_all,
        smtputf8_unsupported=takes_mail and needs_smtputf8 and not d.smtputf8,
    )
