"""Reacher's response shape, from our `Answer`: a pure function, so a Reacher client can switch
by changing its base URL.

Field names and their meaning come from Reacher's public code (reacherhq/check-if-email-exists):
- the response's keys and order, and `{"error": {"type", "message"}}` for a failed part:
  core/src/util/input_output.rs (`impl Serialize for CheckEmailOutput`);
- `is_reachable` (safe | risky | invalid | unknown): core/src/util/input_output.rs `Reachable`,
  decided by core/src/lib.rs `calculate_reachable`: an SMTP error is unknown; else
  disposable, role account, catch-all or full inbox is risky; else not deliverable, not
  connectable or disabled is invalid; else safe. Bad syntax and a domain without MX are
  invalid (core/src/lib.rs `check_email`);
- `misc` {is_disposable, is_role_account, is_b2c, gravatar_url, haveibeenpwned}:
  core/src/misc/mod.rs `MiscDetails`;
- `mx` {accepts_mail, records}: core/src/mx/mod.rs `impl Serialize for MxDetails`
  (a failed lookup is no records, accepts_mail false);
- `smtp` {can_connect_smtp, has_full_inbox, is_catch_all, is_deliverable, is_disabled}:
  core/src/smtp/mod.rs `SmtpDetails`; error types: core/src/smtp/error.rs `SmtpError`
  (AsyncSmtpError, IOError, Timeout...);
- `syntax` {address, domain, is_valid_syntax, username, normalized_email, suggestion}:
  core/src/syntax/mod.rs `SyntaxDetails`;
- the request (`to_email`, `from_email`, `hello_name`, `proxy`, `smtp_timeout`, `smtp_port`):
  backend/src/http/v0/check_email/post.rs `CheckEmailRequest`; backend/openapi.json.

Where we know less than Reacher's rule would claim, we say `unknown`: a DNS failure
(SERVFAIL, timeout: Reacher's lookup error is `invalid`), a policy block or any refusal
that does not say the mailbox is missing. A catch-all check that could not be made is
`risky` (Reacher would say safe). Our own verdict and reason ride along under `mailprobe`,
which Reacher clients ignore.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from mailprobe.results import Answer

REACHABLE = ("safe", "risky", "invalid", "unknown")
# Our verdicts that keep their own word whatever the flags say.
_NO_MAIL_DOMAIN = {"no_such_domain", "null_mx", "no_mail_host", "reserved_domain"}
_SMTP_ERROR_TYPE = {  # core/src/smtp/error.rs SmtpError variants
    "timeout": "Timeout",
    "connection_failed": "IOError",
    "tls_failed": "IOError",
}


def syntax_details(answer: Answer) -> dict[str, Any]:
    """`syntax`: an address we refused to parse has empty parts, like Reacher's default."""
    if answer.reason == "invalid_syntax":
        return {
            "address": None,
            "domain": "",
            "is_valid_syntax": False,
            "username": "",
            "normalized_email": None,
            "suggestion": None,
        }
    username, _, domain = answer.email.rpartition("@")
    return {
        "address": answer.email,
        "domain": domain,
        "is_valid_syntax": True,
        "username": username,
        "normalized_email": answer.email,
        "suggestion": None,
    }


def smtp_details(answer: Answer) -> dict[str, Any]:
    """`smtp`: the five booleans when a reply told us something, else Reacher's error shape."""
    outcome, reason = answer.outcome, answer.reason
    if outcome.stage in {"input", "dns"} or answer.dns_status in _NO_MAIL_DOMAIN:
        return _smtp(False, False, False, False, False)  # nothing was dialled
    if answer.verdict.value == "unknown":
        kind = _SMTP_ERROR_TYPE.get(outcome.reason, "AsyncSmtpError" if outcome.code else "IOError")
        if outcome.code is not None:
            message = f"{outcome.code} {outcome.message}".strip()
        else:
            message = outcome.error or reason
        return {"error": {"type": kind, "message": message}}
    accepted = outcome.reason == "accepted"
    return _smtp(
        can_connect=True,
        full=reason == "mailbox_full",
        catch_all=bool(answer.catch_all) and accepted,
        deliverable=accepted,
        disabled=reason == "mailbox_disabled",
    )


def _smtp(
    can_connect: bool, full: bool, catch_all: bool, deliverable: bool, disabled: bool
) -> dict[str, Any]:
    return {
        "can_connect_smtp": can_connect,
        "has_full_inbox": full,
        "is_catch_all": catch_all,
        "is_deliverable": deliverable,
        "is_disabled": disabled,
    }


def is_reachable(answer: Answer) -> str:
    """Our verdict in Reacher's word (README: "Reacher compatibility")."""
    verdict = answer.verdict.value
    flags = answer.flags
    if verdict == "undeliverable":
        return "invalid"
    if verdict == "unknown":
        return "unknown"
    if verdict == "risky":
        return "risky"
    # deliverable: Reacher calls a role account or a disposable domain risky
    if flags is not None and (flags.role or flags.disposable):
        return "risky"
    return "safe"


def to_reacher(to_email: str, answer: Answer, mx_records: Sequence[str] = ()) -> dict[str, Any]:
    """The whole `POST /v0/check_email` response for one answer."""
    flags = answer.flags
    records = (
        [] if answer.dns_status in _NO_MAIL_DOMAIN else [h.rstrip(".") + "." for h in mx_records]
    )
    return {
        "input": to_email,
        "is_reachable": is_reachable(answer),
        "misc": {
            "is_disposable": bool(flags and flags.disposable),
            "is_role_account": bool(flags and flags.role),
            "is_b2c": bool(flags and flags.free),
            "gravatar_url": None,
            "haveibeenpwned": None,
        },
        "mx": {"accepts_mail": bool(records), "records": records},
        "smtp": smtp_details(answer),
        "syntax": syntax_details(answer),
        "mailprobe": {
            "verdict": answer.verdict.value,
            "reason": answer.reason,
            "code": answer.outcome.code,
            "enhanced_status": answer.outcome.enhanced_status,
            "message": answer.outcome.message or answer.outcome.error or "",
            "mx_host": answer.outcome.mx_host,
        },
    }
