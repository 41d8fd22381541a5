"""What SMTP replies can mean, as names: the seed's categories and mailprobe's reasons.

Pure vocabulary for `classify` (which reads replies) and everything that reports a
verdict: `Category` (the seed's accept / hard_fail / temp_fail / unknown), `Reason` and
what each reason says (`ReasonInfo`). Every name is importable from `mailprobe.classify`.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Category(StrEnum):
    ACCEPT = "accept"
    HARD_FAIL = "hard_fail"
    TEMP_FAIL = "temp_fail"
    UNKNOWN = "unknown"


def category_for_code(code: int | None) -> Category:
    """The seed's mapping, kept exactly: by reply class only."""
    if code is None:
        return Category.UNKNOWN
    if 200 <= code < 300:
        return Category.ACCEPT
    if 500 <= code < 600:
        return Category.HARD_FAIL
    if 400 <= code < 500:
        return Category.TEMP_FAIL
    return Category.UNKNOWN


class Signal(StrEnum):
    """What a reason says about the recipient address itself."""

    EXISTS = "exists"
    DOES_NOT_EXIST = "does_not_exist"
    UNDETERMINED = "undetermined"


class Reason(StrEnum):
    ACCEPTED = "accepted"
    MAILBOX_NOT_FOUND = "mailbox_not_found"
    MAILBOX_DISABLED = "mailbox_disabled"
    MAILBOX_FULL = "mailbox_full"
    MAILBOX_UNAVAILABLE = "mailbox_unavailable"
    GREYLISTED = "greylisted"
    RATE_LIMITED = "rate_limited"
    TOO_MANY_RECIPIENTS = "too_many_recipients"
    POLICY_BLOCK = "policy_block"
    SENDER_REJECTED = "sender_rejected"
    RELAY_DENIED = "relay_denied"
    TLS_REQUIRED = "tls_required"
    AUTH_REQUIRED = "auth_required"
    SERVICE_UNAVAILABLE = "service_unavailable"
    TEMP_FAILURE = "temp_failure"
    PROTOCOL_ERROR = "protocol_error"
    SMTPUTF8_UNSUPPORTED = "smtputf8_unsupported"
    TIMEOUT = "timeout"
    CONNECTION_FAILED = "connection_failed"
    TLS_FAILED = "tls_failed"
    INVALID_SYNTAX = "invalid_syntax"
    INVALID_ENCODING = "invalid_encoding"
    INTERNAL_ERROR = "internal_error"
    RESERVED_DOMAIN = "reserved_domain"
    UNKNOWN = "unknown"
    PROXY_ERROR = "proxy_error"
    SMTP_SKIPPED = "smtp_skipped"


@dataclass(frozen=True, slots=True)
class ReasonInfo:
    signal: Signal
    sisimai: str  # nearest reason in sisimai, the reference bounce classifier
    meaning: str


# The one definition of every reason; the README table is generated from it
# (`mailprobe reasons --markdown`) and a test keeps the two in step.
REASONS: dict[Reason, ReasonInfo] = {
    Reason.ACCEPTED: ReasonInfo(
        Signal.EXISTS,
        "delivered",
        "RCPT TO accepted (2xx); on a catch-all domain this proves nothing",
    ),
    Reason.MAILBOX_NOT_FOUND: ReasonInfo(
        Signal.DOES_NOT_EXIST, "userunknown", "the server says the mailbox does not exist"
    ),
    # The mailbox is there (it may come back); verdict.py still calls it undeliverable.
    Reason.MAILBOX_DISABLED: ReasonInfo(
        Signal.EXISTS, "suspend", "the mailbox exists but is disabled, suspended or closed"
    ),
    Reason.MAILBOX_FULL: ReasonInfo(
        Signal.EXISTS, "mailboxfull", "the mailbox exists but is over its quota"
    ),
    Reason.MAILBOX_UNAVAILABLE: ReasonInfo(
        Signal.UNDETERMINED,
        "undefined",
        "a permanent refusal that does not say whether the mailbox exists",
    ),
    Reason.GREYLISTED: ReasonInfo(
        Signal.UNDETERMINED, "undefined", "greylisting: try again later, the answer may change"
    ),
    Reason.RATE_LIMITED: ReasonInfo(
        Signal.UNDETERMINED, "toomanyconn", "we are sending too much or too fast to this server"
    ),
    Reason.TOO_MANY_RECIPIENTS: ReasonInfo(
        Signal.UNDETERMINED,
        "toomanyconn",
        "the server refuses our batching (recipients per transaction or session)",
    ),
    Reason.POLICY_BLOCK: ReasonInfo(
        Signal.UNDETERMINED,
        "blocked",
        "refused because of us (IP on a blocklist, reputation, PTR, HELO, SPF, 5.7.x)",
    ),
    Reason.SENDER_REJECTED: ReasonInfo(
        Signal.UNDETERMINED, "rejected", "our MAIL FROM was refused, so RCPT TO never ran"
    ),
    Reason.RELAY_DENIED: ReasonInfo(
        Signal.UNDETERMINED, "norelaying", "this server does not accept mail for that domain"
    ),
    Reason.TLS_REQUIRED: ReasonInfo(
        Signal.UNDETERMINED, "securityerror", "the server requires STARTTLS before it answers"
    ),
    Reason.AUTH_REQUIRED: ReasonInfo(
        Signal.UNDETERMINED, "securityerror", "the server requires authentication (not an MX)"
    ),
    Reason.SERVICE_UNAVAILABLE: ReasonInfo(
        Signal.UNDETERMINED, "systemerror", "421 and the like: the server is closing or busy"
    ),
    Reason.TEMP_FAILURE: ReasonInfo(
        Signal.UNDETERMINED, "systemerror", "another temporary failure (4xx)"
    ),
    Reason.PROTOCOL_ERROR: ReasonInfo(
        Signal.UNDETERMINED,
        "syntaxerror",
        "the server did not understand a command (500-504), or its reply was no SMTP reply",
    ),
    Reason.SMTPUTF8_UNSUPPORTED: ReasonInfo(
        Signal.UNDETERMINED,
        "syntaxerror",
        "the address needs SMTPUTF8 and the server does not offer it",
    ),
    Reason.TIMEOUT: ReasonInfo(
        Signal.UNDETERMINED, "expired", "no answer within the time budget (tarpit or slow server)"
    ),
    Reason.CONNECTION_FAILED: ReasonInfo(
        Signal.UNDETERMINED, "networkerror", "could not connect, or the connection dropped"
    ),
    Reason.TLS_FAILED: ReasonInfo(
        Signal.UNDETERMINED, "securityerror", "the STARTTLS handshake failed"
    ),
    Reason.INVALID_SYNTAX: ReasonInfo(
        Signal.DOES_NOT_EXIST, "syntaxerror", "not a valid address: nothing was sent"
    ),
    # The line was never read as text, so nothing is known of the address in it.
    Reason.INVALID_ENCODING: ReasonInfo(
        Signal.UNDETERMINED,
        "undefined",
        "an input line in no text encoding we can read: nothing was sent",
    ),
    Reason.RESERVED_DOMAIN: ReasonInfo(
        Signal.DOES_NOT_EXIST,
        "hostunknown",
        "a special-use domain (.test, .example, .invalid, .local...): nothing was sent",
    ),
    Reason.INTERNAL_ERROR: ReasonInfo(
        Signal.UNDETERMINED, "undefined", "mailprobe failed while asking (logged with its cause)"
    ),
    Reason.UNKNOWN: ReasonInfo(Signal.UNDETERMINED, "undefined", "nothing we can read"),
    Reason.PROXY_ERROR: ReasonInfo(
        Signal.UNDETERMINED,
        "networkerror",
        "the egress route's SOCKS proxy refused us, failed or did not answer (not the MX)",
    ),
    Reason.SMTP_SKIPPED: ReasonInfo(
        Signal.UNDETERMINED,
        "undefined",
        "--no-smtp: answered from DNS, syntax and list data alone; no server was asked",
    ),
}


# RFC 3463 enhanced status code at the start of a line; some servers write it
# "#5.1.0" (Exchange, GoDaddy), qmail appends it at the end: "... (#5.1.1)".
