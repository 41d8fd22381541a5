"""How the world's kinds of real server talk: reply families taken from the corpus.

Reply texts are real ones, taken from the corpus (`corpus`, data/smtp_replies.jsonl)
when a world is built, by corpus id (see `reply_families`), with the corpus'
example addresses, hosts and IPs replaced by the recipient, the MX host name and
the client IP. Corpus ids:

* postfix family (own MXes, hosting cluster, catch-all/greylist/slow/blocked/
  backup/A-only domains): postfix-greeting-220, postfix-ehlo-250-capabilities,
  postfix-mail-250-210-ok, postfix-rcpt-250-215-ok,
  postfix-rcpt-550-511-unknown-local-recipient-table,
  postfix-rcpt-552-522-recipient-rejected-mailbox-full,
  lycos-rcpt-550-account-closed (disabled), exchange-onprem-rcpt-452-453-too-many-recipients,
  exim-greeting-421-too-many-concurrent (hosting cluster's connection cap);
* google family: gmail-greeting-220, gmail-ehlo-250-capabilities, gmail-mail-250-210-ok
  (its RCPT "2.1.5 OK" is this reply with 2.1.5), gmail-rcpt-550-511-nosuchuser-wire,
  gmail-rcpt-550-521-disableduser-ml, gmail-rcpt-552-522-overquota-inactive,
  gmail-rcpt-451-430-multiple-domains-wire, gmail-rcpt-452-453-too-many-recipients,
  gmail-ehlo-421-470-try-again-later-dos;
* microsoft family: m365-mail-250-210-sender-ok, m365-rcpt-250-215-recipient-ok,
  m365-rcpt-550-5110-recipientnotfound, generic-rcpt-552-disk-quota-exceeded,
  generic-rcpt-525-5713-disabled-recipient, exchange-onprem-rcpt-452-453-too-many-recipients;
* m365-tenant and outlook-com families (Microsoft 365 tenant and Outlook.com MX names):
  the microsoft family with m365-rcpt-550-541-access-denied-dated (DBEB, no AS tag)
  and outlookcom-rcpt-550-550-mailbox-unavailable-s2017062302 as "missing";
* policies: postgrey-rcpt-450-420-greylisted-see-help (greylisting),
  postscreen-rcpt-550-571-blocked-zen-spamhaus (blocklist refusal).

Microsoft's unknown-user wordings that mean "no such user" only at Microsoft's own
host names are served from such names (worldconfig.MICROSOFT_VARIANTS), which the
world's DNS resolves to loopback.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from mailprobe.testing.corpus import CorpusReply
from mailprobe.testing.smtpd import MULTIPLE_DOMAINS, TOO_MANY_CONNECTIONS, MXBehavior, Scripted
from mailprobe.testing.worldconfig import Mailbox


def corpus_reply(
    corpus: Mapping[str, CorpusReply], reply_id: str, *subs: tuple[str, str]
) -> Scripted:
    """A Scripted template from a corpus entry.

    `subs` replace the corpus' example values (old, new) — new may use {rcpt},
    {domain}, {hostname}, {client}; each old must still be in the text. A
    multi-line reply gets its enhanced code back on every continuation line, as
    on the wire ("550-5.1.1 double-checking ...").
    """
    row = corpus[reply_id]
    text = row.text.replace("{", "{{").replace("}", "}}")
    for old, new in subs:
        if old not in text:
            raise ValueError(f"corpus entry {reply_id} no longer contains {old!r}")
        text = text.replace(old, new)
    lines = text.split("\n")
    if row.enhanced and len(lines) > 1:
        lines[1:] = [
            ln
            if ln.startswith(row.enhanced)
            else f"{row.enhanced}{'' if ln[:1] == ' ' else ' '}{ln}"
            for ln in lines[1:]
        ]
    return Scripted(row.code, "\n".join(lines))


@dataclass(frozen=True, slots=True)
class ReplyFamily:
    """How one kind of real server talks."""

    name: str
    banner: Scripted
    ehlo: Scripted | None
    mail: Scripted
    accept: Scripted
    missing: Scripted
    full: Scripted
    disabled: Scripted
    too_many_rcpts: Scripted
    too_many_connections: Scripted
    multiple_domains: Scripted

    def mailbox_reply(self, mailbox: Mailbox) -> Scripted:
        return {
            Mailbox.EXISTS: self.accept,
            Mailbox.MISSING: self.missing,
            Mailbox.FULL: self.full,
            Mailbox.DISABLED: self.disabled,
        }[mailbox]


Subs = tuple[tuple[str, str], ...]
_HOST = ("mx22.example.com", "{hostname}")
# STARTTLS is offered (smtpd adds it) only by servers with a certificate: WorldConfig.starttls
_NO_TLS = ("\nSTARTTLS", "")

# family -> role -> (corpus id, substitutions): the texts each kind of server uses.
FAMILY_REPLIES: dict[str, dict[str, tuple[str, Subs]]] = {
    "postfix": {
        "banner": ("postfix-greeting-220", (_HOST,)),
        "ehlo": ("postfix-ehlo-250-capabilities", (_HOST, _NO_TLS)),
        "mail": ("postfix-mail-250-210-ok", ()),
        "accept": ("postfix-rcpt-250-215-ok", ()),
        "missing": (
            "postfix-rcpt-550-511-unknown-local-recipient-table",
            (("<user@example.net>", "<{rcpt}>"),),
        ),
        "full": (
            "postfix-rcpt-552-522-recipient-rejected-mailbox-full",
            (("<mailboxfull@libsisimai.net>", "<{rcpt}>"),),
        ),
        # The corpus lost the address before the colon; Postfix puts "<rcpt>" there.
        "disabled": ("lycos-rcpt-550-account-closed", ((": Recipient", "<{rcpt}>: Recipient"),)),
        "too_many_rcpts": ("exchange-onprem-rcpt-452-453-too-many-recipients", ()),
        "too_many_connections": (
            "exim-greeting-421-too-many-concurrent",
            (("mx.example.com", "{hostname}"),),
        ),
    },
    "google": {
        "banner": ("gmail-greeting-220", (("mx.google.com", "{hostname}"),)),
        "ehlo": (
            "gmail-ehlo-250-capabilities",
            (("mx.google.com", "{hostname}"), ("[192.0.2.1]", "[{client}]"), _NO_TLS),
        ),
        "mail": ("gmail-mail-250-210-ok", ()),
        "missing": ("gmail-rcpt-550-511-nosuchuser-wire", ()),
        "full": ("gmail-rcpt-552-522-overquota-inactive", ()),
        "disabled": ("gmail-rcpt-550-521-disableduser-ml", ()),
        "too_many_rcpts": ("gmail-rcpt-452-453-too-many-recipients", ()),
        "too_many_connections": ("gmail-ehlo-421-470-try-again-later-dos", ()),
        "multiple_domains": ("gmail-rcpt-451-430-multiple-domains-wire", ()),
    },
    "microsoft": {
        "mail": ("m365-mail-250-210-sender-ok", ()),
        "accept": ("m365-rcpt-250-215-recipient-ok", ()),
        "missing": ("m365-rcpt-550-5110-recipientnotfound", ()),
        "full": ("generic-rcpt-552-disk-quota-exceeded", ()),
        "disabled": ("generic-rcpt-525-5713-disabled-recipient", ()),
        "too_many_rcpts": ("exchange-onprem-rcpt-452-453-too-many-recipients", ()),
    },
}
FAMILY_REPLIES["m365-tenant"] = {
    **FAMILY_REPLIES["microsoft"],
    "missing": ("m365-rcpt-550-541-access-denied-dated", ()),
}
FAMILY_REPLIES["outlook-com"] = {
    **FAMILY_REPLIES["microsoft"],
    "missing": ("outlookcom-rcpt-550-550-mailbox-unavailable-s2017062302", ()),
}
# What the corpus must say each role's reply means (guards against a corpus edit).
ROLE_REASONS: dict[str, set[str]] = {
    "banner": {"accepted"},
    "ehlo": {"accepted"},
    "mail": {"accepted"},
    "accept": {"accepted"},
    "missing": {"mailbox_not_found"},
    "full": {"mailbox_full"},
    "disabled": {"mailbox_disabled"},
    "too_many_rcpts": {"too_many_recipients"},
    "multiple_domains": {"too_many_recipients"},
    "too_many_connections": {"rate_limited", "service_unavailable"},
}


def reply_families(corpus: Mapping[str, CorpusReply]) -> dict[str, ReplyFamily]:
    """Postfix-like, Gmail-like and Outlook/M365-like servers, from the corpus.

    Where the corpus has nothing for a role the smtpd defaults stand in: the
    Microsoft banner/EHLO and connection cap, and "multiple domains" for the
    servers that do not enforce it. Gmail's RCPT "250 2.1.5 OK <id> - gsmtp" is
    its MAIL reply (gmail-mail-250-210-ok) with 2.1.5.
    """
    out: dict[str, ReplyFamily] = {}
    for name, roles in FAMILY_REPLIES.items():
        replies: dict[str, Scripted] = {}
        for role, (reply_id, subs) in roles.items():
            if corpus[reply_id].reason not in ROLE_REASONS[role]:
                raise ValueError(f"corpus entry {reply_id} no longer reads as a {role} reply")
            replies[role] = corpus_reply(corpus, reply_id, *subs)
        if "accept" not in replies:
            mail = replies["mail"]
            replies["accept"] = Scripted(250, mail.text.replace("2.1.0", "2.1.5", 1))
        out[name] = ReplyFamily(
            name=name,
            banner=replies.get("banner", MXBehavior().banner),
            ehlo=replies.get("ehlo"),
            mail=replies["mail"],
            accept=replies["accept"],
            missing=replies["missing"],
            full=replies["full"],
            disabled=replies["disabled"],
            too_many_rcpts=replies["too_many_rcpts"],
            too_many_connections=replies.get("too_many_connections", TOO_MANY_CONNECTIONS),
            multiple_domains=replies.get("multiple_domains", MULTIPLE_DOMAINS),
        )
    return out


def greylist_reply(corpus: Mapping[str, CorpusReply]) -> Scripted:
    return corpus_reply(
        corpus,
        "postgrey-rcpt-450-420-greylisted-see-help",
        ("<user@aful.org>", "<{rcpt}>"),
        ("help/aful.org.html", "help/{domain}.html"),
    )


def greylist_hint_replies(corpus: Mapping[str, CorpusReply]) -> tuple[Scripted, ...]:
    """Greylisting replies that say the time left (filled in by the server: `with_wait`)."""
    return (
        corpus_reply(corpus, "milter-greylist-rcpt-451-471-come-back-in-hms",
                     ("00:04:59", "{wait_hms}")),
        corpus_reply(corpus, "hosting-rcpt-451-greylisted-try-again-in-900-seconds",
                     ("900", "{wait}")),
    )  # fmt: skip


def blocked_reply(corpus: Mapping[str, CorpusReply]) -> Scripted:
    return corpus_reply(
        corpus, "postscreen-rcpt-550-571-blocked-zen-spamhaus", ("[187.127.191.207]", "[{client}]")
    )
