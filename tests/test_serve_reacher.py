"""The Reacher-shaped answer (a pure function) against Reacher's own documented examples:

- README.md "JSON Output": someone@gmail.com, a disabled Gmail account, is `invalid` with
  smtp.is_disabled true (reacherhq/check-if-email-exists README.md);
- backend/openapi.json CheckEmailOutput x-examples "Example with test@gmail.com": a role
  account Gmail refuses is `invalid`, misc.is_role_account true, smtp.is_deliverable false.

and the places where we keep `unknown` where Reacher would say invalid."""

from __future__ import annotations

from mailprobe.flags import Flags
from mailprobe.results import Answer, Outcome, answer_for, invalid_answer
from mailprobe.serve.reacher import to_reacher

GMAIL_MX = [
    "alt3.gmail-smtp-in.l.google.com", "gmail-smtp-in.l.google.com",
    "alt1.gmail-smtp-in.l.google.com", "alt4.gmail-smtp-in.l.google.com",
    "alt2.gmail-smtp-in.l.google.com",
]  # fmt: skip


def reply(email: str, code: int, message: str, **kw: object) -> Answer:
    outcome = Outcome.from_reply(
        email, stage="rcpt", code=code, message=message, mx_host=GMAIL_MX[1],
        enhanced_status=message.split()[0] if message[:1].isdigit() else None,
    )  # fmt: skip
    return answer_for(outcome, dns_status="ok", **kw)  # type: ignore[arg-type]


def test_reachers_readme_example_a_disabled_gmail_account() -> None:
    answer = reply(
        "someone@gmail.com", 550,
        "5.2.1 The email account that you tried to reach is disabled. Learn more at "
        "https://support.google.com/mail/?p=DisabledUser",
        flags=Flags(free=True, disposable=False, role=False),
    )  # fmt: skip
    assert answer.reason == "mailbox_disabled"
    got = to_reacher("someone@gmail.com", answer, GMAIL_MX)
    # README.md "JSON Output", field for field (Reacher's misc.is_b2c is our `free` flag).
    assert got["input"] == "someone@gmail.com"
    assert got["is_reachable"] == "invalid"
    assert {k: got["misc"][k] for k in ("is_disposable", "is_role_account", "is_b2c")} == {
        "is_disposable": False, "is_role_account": False, "is_b2c": True,
    }  # fmt: skip
    assert got["mx"] == {"accepts_mail": True, "records": [h + "." for h in GMAIL_MX]}
    assert got["smtp"] == {
        "can_connect_smtp": True, "has_full_inbox": False, "is_catch_all": False,
        "is_deliverable": False, "is_disabled": True,
    }  # fmt: skip
    keys = ("domain", "is_valid_syntax", "username", "suggestion")
    assert {k: got["syntax"][k] for k in keys} == {
        "domain": "gmail.com", "is_valid_syntax": True, "username": "someone", "suggestion": None,
    }  # fmt: skip


def test_reachers_openapi_example_a_refused_role_account() -> None:
    answer = reply(
        "test@gmail.com", 550,
        "5.1.1 The email account that you tried to reach does not exist.",
        flags=Flags(free=True, role=True),
    )  # fmt: skip
    got = to_reacher("test@gmail.com", answer, GMAIL_MX)
    assert got["is_reachable"] == "invalid"
    assert got["misc"]["is_disposable"] is False and got["misc"]["is_role_account"] is True
    assert got["mx"]["accepts_mail"] is True
    assert got["smtp"] == {
        "can_connect_smtp": True, "has_full_inbox": False, "is_catch_all": False,
        "is_deliverable": False, "is_disabled": False,
    }  # fmt: skip
    assert got["syntax"]["username"] == "test" and got["syntax"]["is_valid_syntax"] is True


def test_reachers_rule_role_catch_all_and_full_are_risky() -> None:
    role = reply("info@x.example", 250, "2.1.5 Ok", catch_all=False, flags=Flags(role=True))
    assert (role.verdict.value, to_reacher("info@x.example", role)["is_reachable"]) == (
        "deliverable", "risky",
    )  # fmt: skip
    plain = reply("ann@x.example", 250, "2.1.5 Ok", catch_all=False, flags=Flags())
    assert to_reacher("ann@x.example", plain)["is_reachable"] == "safe"
    catch_all = reply("ann@x.example", 250, "2.1.5 Ok", catch_all=True, flags=Flags())
    shown = to_reacher("ann@x.example", catch_all)
    assert shown["is_reachable"] == "risky" and shown["smtp"]["is_catch_all"] is True
    full = reply("ann@x.example", 552, "5.2.2 Mailbox full", flags=Flags())
    shown = to_reacher("ann@x.example", full)
    assert shown["is_reachable"] == "risky" and shown["smtp"]["has_full_inbox"] is True


def test_bad_syntax_and_no_mail_domains_are_invalid_as_in_reacher() -> None:
    bad = to_reacher("not an address", invalid_answer("not an address", "no @"))
    assert bad["is_reachable"] == "invalid"
    assert bad["syntax"] == {
        "address": None, "domain": "", "is_valid_syntax": False, "username": "",
        "normalized_email": None, "suggestion": None,
    }  # fmt: skip
    nxdomain = answer_for(
        Outcome.no_mail_host("a@gone.example", "no_such_domain"), dns_status="no_such_domain"
    )
    got = to_reacher("a@gone.example", nxdomain)
    assert got["is_reachable"] == "invalid"
    assert got["mx"] == {"accepts_mail": False, "records": []}


def test_we_say_unknown_where_reacher_would_say_invalid() -> None:
    # Reacher: an MX lookup that fails is "invalid" (core/src/lib.rs); a SERVFAIL says nothing.
    servfail = answer_for(
        Outcome.no_mail_host("a@flaky.example", "dns_error"), dns_status="dns_error"
    )
    assert to_reacher("a@flaky.example", servfail)["is_reachable"] == "unknown"
    # A policy block is no word about the mailbox.
    blocked = reply("a@x.example", 554, "5.7.1 Client host blocked using zen.spamhaus.org")
    got = to_reacher("a@x.example", blocked)
    assert got["is_reachable"] == "unknown"
    assert got["smtp"] == {
        "error": {"type": "AsyncSmtpError",
                  "message": "554 5.7.1 Client host blocked using zen.spamhaus.org"}
    }  # fmt: skip
    assert got["mailprobe"]["reason"] == "policy_block"
    timeout = answer_for(
        Outcome.failure("a@x.example", kind="timeout", error="no reply in 10 s", mx_host="mx")
    )
    assert to_reacher("a@x.example", timeout)["smtp"]["error"]["type"] == "Timeout"
