"""From what we observed to what a user should do: deliverable, undeliverable, risky, unknown.

One table, in `decide`. The costliest mistake is a false "undeliverable" (a
real lead thrown away), the next a false "deliverable" (a bounce); so only a
server's explicit "no such mailbox", or DNS saying the domain takes no mail,
is undeliverable, and an accepted RCPT is deliverable only on a domain we
checked is not catch-all. Everything we could not read is unknown.
"""

from __future__ import annotations

from enum import StrEnum


class Verdict(StrEnum):
    DELIVERABLE = "deliverable"
    UNDELIVERABLE = "undeliverable"
    RISKY = "risky"
    UNKNOWN = "unknown"


# (condition, verdict, reason shown) — the README table is generated from this.
VERDICT_TABLE: tuple[tuple[str, Verdict, str], ...] = (
    ("not a valid address", Verdict.UNDELIVERABLE, "invalid_syntax"),
    (
        "a special-use domain (IANA registry: .test, .example, .invalid, .local, .onion...)",
        Verdict.UNDELIVERABLE,
        "reserved_domain",
    ),
    # Unknown, not undeliverable: the bytes may hold a real address in an encoding we
    # could not read, and a false "undeliverable" throws a real lead away.
    (
        "an input line in no text encoding we can read",
        Verdict.UNKNOWN,
        "invalid_encoding",
    ),
    ("DNS: no such domain (NXDOMAIN)", Verdict.UNDELIVERABLE, "no_such_domain"),
    ("DNS: null MX (RFC 7505)", Verdict.UNDELIVERABLE, "null_mx"),
    ("DNS: no MX and no A/AAAA", Verdict.UNDELIVERABLE, "no_mail_host"),
    ("DNS: temporary failure", Verdict.UNKNOWN, "dns_error"),
    ("RCPT accepted, domain checked and not catch-all", Verdict.DELIVERABLE, "accepted"),
    ("RCPT accepted, domain is catch-all", Verdict.RISKY, "catch_all"),
    ("RCPT accepted, catch-all check inconclusive", Verdict.RISKY, "catch_all_unknown"),
    ("mailbox_not_found, mailbox_disabled", Verdict.UNDELIVERABLE, "(the reason)"),
    ("mailbox_full", Verdict.RISKY, "mailbox_full"),
    (
        "--no-wait: a retry was still due when the run ended (not stored)",
        Verdict.UNKNOWN,
        "pending_retry",
    ),
    (
        "anything else: policy_block, sender_rejected, rate_limited, greylisted after its "
        "retries, timeout, connection_failed, mailbox_unavailable, ...",
        Verdict.UNKNOWN,
        "(the reason)",
    ),
)

_UNDELIVERABLE_DNS = {"no_such_domain", "null_mx", "no_mail_host"}
_UNDELIVERABLE_REASONS = {"mailbox_not_found", "mailbox_disabled", "invalid_syntax"}
# Said before anything was sent: the address can never receive mail on the Internet.
_INPUT_REASONS = {"invalid_syntax", "reserved_domain"}


def decide(
    reason: str, *, catch_all: bool | None = None, dns_status: str | None = None
) -> tuple[Verdict, str]:
    """The verdict and the reason to show with it."""
    if reason in _INPUT_REASONS:
        return Verdict.UNDELIVERABLE, reason
    if dns_status in _UNDELIVERABLE_DNS:
        return Verdict.UNDELIVERABLE, dns_status or reason
    if dns_status == "dns_error":
        return Verdict.UNKNOWN, "dns_error"
    if reason == "accepted":
        if catch_all is False:
            return Verdict.DELIVERABLE, reason
        if catch_all:
            return Verdict.RISKY, "catch_all"
        return Verdict.RISKY, "catch_all_unknown"
    if reason in _UNDELIVERABLE_REASONS:
        return Verdict.UNDELIVERABLE, reason
    if reason == "mailbox_full":
        return Verdict.RISKY, reason
    return Verdict.UNKNOWN, reason
