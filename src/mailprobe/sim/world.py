"""A simulated mail world on loopback: many MX hosts, their DNS, and the truth.

For tests, benchmarks and `mailprobe demo`. One asyncio loop serves every MX host
of the world, each a `SimSMTPServer` on its own loopback address 127.0.x.y (Linux
routes all of 127.0.0.0/8 to lo) on ONE shared port, plus a `SimDNSServer` that
answers MX / A / null MX / NXDOMAIN for the world's domains. Point mailprobe at
it with `world.env()` (DNS_NAMESERVERS, SMTP_PORT, SMTP_HELO_DOMAIN, SMTP_MAIL_FROM).

The world is generated deterministically from a seed: N domains under ".example"
(e.g. "acme-17.example"), each of one behaviour `Kind` drawn from a configurable
mix, and M addresses with a mailbox fact each (exists / missing / full /
disabled). Provider clusters serve many domains, as real hosting does
(aspmx.google-like.example, mx.outlook-like.example, mx1.hosting-like.example);
other domains have their own MX. `world.truth` holds the ground truth for every
address and `expected_verdict(email)` the verdict a correct prober should reach.

Reply texts are real ones, taken from tests/data/smtp_replies.jsonl at build time
by corpus id (see `reply_families`), with the corpus' example addresses, hosts
and IPs replaced by the recipient, the MX host name and the client IP. Corpus ids:

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
* policies: postgrey-rcpt-450-420-greylisted-see-help (greylisting),
  postscreen-rcpt-550-571-blocked-zen-spamhaus (blocklist refusal).

Outlook.com's bare "550 Requested action not taken: mailbox unavailable" is not
used: it means "no such user" only at Microsoft's own host names, which a world
under ".example" cannot have, so a correct prober could not read it.

    async with SimWorld(domains=40, addresses=200, seed=1) as world: ...
    with SimWorld(...) as world: ...  # served from a background thread
    python -m mailprobe.sim.world --domains 300 --addresses 5000 --seed 1 --addresses-out FILE
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import json
import random
import signal
import socket
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from mailprobe.address import InvalidAddress, parse_address
from mailprobe.sim.background import ThreadedServer
from mailprobe.sim.dnsd import DomainSpec, SimDNSServer
from mailprobe.sim.smtpd import (
    MULTIPLE_DOMAINS,
    TOO_MANY_CONNECTIONS,
    MXBehavior,
    Scripted,
    SimSMTPServer,
)
from mailprobe.verdict import Verdict

CORPUS_PATH = Path(__file__).resolve().parents[3] / "tests" / "data" / "smtp_replies.jsonl"
GREYLIST_RETRY_WINDOW = 60.0 + 300.0 + 900.0  # the bulk engine's default greylist retries


# -- the corpus ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CorpusReply:
    """One entry of tests/data/smtp_replies.jsonl (the fields the world uses)."""

    id: str
    provider: str
    stage: str
    code: int
    enhanced: str | None
    text: str
    reason: str


# The entries the world uses, verbatim, for when the corpus file is not around
# (an installed package); a test checks they still equal the corpus.
FALLBACK_CORPUS: tuple[CorpusReply, ...] = (
    CorpusReply(
        "postfix-greeting-220",
        "postfix",
        "greeting",
        220,
        None,
        ("mx22.example.com ESMTP MAIL SYSTEM"),
        "accepted",
    ),
    CorpusReply(
        "postfix-ehlo-250-capabilities",
        "postfix",
        "ehlo",
        250,
        None,
        (
            "mx22.example.com\nPIPELINING\nSIZE 33554432\nETRN\nSTARTTLS\nAUTH"
            " PLAIN LOGIN DIGEST-MD5 CRAM-MD5\nAUTH=PLAIN LOGIN DIGEST-MD5"
            " CRAM-MD5\nXFORWARD NAME ADDR PROTO HELO SOURCE PORT IDENT\nEN"
            "HANCEDSTATUSCODES\n8BITMIME\nDSN\nCHUNKING"
        ),
        "accepted",
    ),
    CorpusReply(
        "postfix-mail-250-210-ok",
        "postfix",
        "mail",
        250,
        "2.1.0",
        ("2.1.0 Ok"),
        "accepted",
    ),
    CorpusReply(
        "postfix-rcpt-250-215-ok",
        "postfix",
        "rcpt",
        250,
        "2.1.5",
        ("2.1.5 Ok"),
        "accepted",
    ),
    CorpusReply(
        "postfix-rcpt-550-511-unknown-local-recipient-table",
        "postfix",
        "rcpt",
        550,
        "5.1.1",
        (
            "5.1.1 <user@example.net>: Recipient address rejected: User u"
            "nknown in local recipient table"
        ),
        "mailbox_not_found",
    ),
    CorpusReply(
        "postfix-rcpt-552-522-recipient-rejected-mailbox-full",
        "postfix",
        "rcpt",
        552,
        "5.2.2",
        (
            "5.2.2 <mailboxfull@libsisimai.net>: Recipient address reject"
            "ed: Mailbox full. See https://libsisimai.org/en/reason/#mail"
            "boxfull"
        ),
        "mailbox_full",
    ),
    CorpusReply(
        "lycos-rcpt-550-account-closed",
        "lycos",
        "rcpt",
        550,
        None,
        (": Recipient address rejected: Account Closed"),
        "mailbox_disabled",
    ),
    CorpusReply(
        "exchange-onprem-rcpt-452-453-too-many-recipients",
        "exchange-onprem",
        "rcpt",
        452,
        "4.5.3",
        ("4.5.3 Too many recipients"),
        "too_many_recipients",
    ),
    CorpusReply(
        "exim-greeting-421-too-many-concurrent",
        "exim",
        "greeting",
        421,
        None,
        ("mx.example.com: Too many concurrent SMTP connections; please try again later"),
        "rate_limited",
    ),
    CorpusReply(
        "gmail-greeting-220",
        "google",
        "greeting",
        220,
        None,
        ("mx.google.com ESMTP he11-20020a1709073d8b00b006e862100d5bsi2937572ejc.396 - gsmtp"),
        "accepted",
    ),
    CorpusReply(
        "gmail-ehlo-250-capabilities",
        "google",
        "ehlo",
        250,
        None,
        (
            "mx.google.com at your service, [192.0.2.1]\nSIZE 157286400\n8B"
            "ITMIME\nSTARTTLS\nENHANCEDSTATUSCODES\nPIPELINING\nCHUNKING\nSMTP"
            "UTF8"
        ),
        "accepted",
    ),
    CorpusReply(
        "gmail-mail-250-210-ok",
        "google",
        "mail",
        250,
        "2.1.0",
        ("2.1.0 OK he11-20020a1709073d8b00b006e862100d5bsi2937572ejc.396 - gsmtp"),
        "accepted",
    ),
    CorpusReply(
        "gmail-rcpt-550-511-nosuchuser-wire",
        "google",
        "rcpt",
        550,
        "5.1.1",
        (
            "5.1.1 The email account that you tried to reach does not exi"
            "st. Please try\n double-checking the recipient's email addres"
            "s for typos or\n unnecessary spaces. Learn more at\n  https://"
            "support.google.com/mail/?p=NoSuchUser he11-20020a1709073d8b0"
            "0b006e862100d5bsi2937572ejc.396 - gsmtp"
        ),
        "mailbox_not_found",
    ),
    CorpusReply(
        "gmail-rcpt-550-521-disableduser-ml",
        "google",
        "rcpt",
        550,
        "5.2.1",
        (
            "5.2.1 The email account that you tried to reach is disabled."
            " Learn more at\n https://support.google.com/mail/?p=DisabledU"
            "ser 000000000000eee.000 - gsmtp"
        ),
        "mailbox_disabled",
    ),
    CorpusReply(
        "gmail-rcpt-552-522-overquota-inactive",
        "google",
        "rcpt",
        552,
        "5.2.2",
        (
            "5.2.2 The recipient's inbox is out of storage space and inac"
            "tive. Please\n direct the recipient to\n https://support.googl"
            "e.com/mail/?p=OverQuotaPerm c2-202229zmZBNM3agi23.222 - gsmt"
            "p"
        ),
        "mailbox_full",
    ),
    CorpusReply(
        "gmail-rcpt-451-430-multiple-domains-wire",
        "google",
        "rcpt",
        451,
        "4.3.0",
        (
            "4.3.0 Multiple destination domains per transaction is unsupp"
            "orted.  Please\n try again.  random.string"
        ),
        "too_many_recipients",
    ),
    CorpusReply(
        "gmail-rcpt-452-453-too-many-recipients",
        "google",
        "rcpt",
        452,
        "4.5.3",
        (
            "4.5.3 Your message has too many recipients. For more informa"
            "tion regarding Google's sending limits, visit https://suppor"
            "t.google.com/mail/answer/6592"
        ),
        "too_many_recipients",
    ),
    CorpusReply(
        "gmail-ehlo-421-470-try-again-later-dos",
        "google",
        "ehlo",
        421,
        "4.7.0",
        ("4.7.0 Try again later, closing connection."),
        "service_unavailable",
    ),
    CorpusReply(
        "m365-mail-250-210-sender-ok",
        "microsoft365",
        "mail",
        250,
        "2.1.0",
        ("2.1.0 Sender OK"),
        "accepted",
    ),
    CorpusReply(
        "m365-rcpt-250-215-recipient-ok",
        "microsoft365",
        "rcpt",
        250,
        "2.1.5",
        ("2.1.5 Recipient OK"),
        "accepted",
    ),
    CorpusReply(
        "m365-rcpt-550-5110-recipientnotfound",
        "microsoft365",
        "rcpt",
        550,
        "5.1.10",
        ("5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP address lookup"),
        "mailbox_not_found",
    ),
    CorpusReply(
        "generic-rcpt-552-disk-quota-exceeded",
        "other",
        "rcpt",
        552,
        None,
        ("Error: disk quota exceeded"),
        "mailbox_full",
    ),
    CorpusReply(
        "generic-rcpt-525-5713-disabled-recipient",
        "other",
        "rcpt",
        525,
        "5.7.13",
        ("5.7.13 Disabled recipient address"),
        "mailbox_disabled",
    ),
    CorpusReply(
        "postgrey-rcpt-450-420-greylisted-see-help",
        "postgrey",
        "rcpt",
        450,
        "4.2.0",
        (
            "4.2.0 <user@aful.org>: Recipient address rejected: Greyliste"
            "d, see http://postgrey.schweikert.ch/help/aful.org.html"
        ),
        "greylisted",
    ),
    CorpusReply(
        "postscreen-rcpt-550-571-blocked-zen-spamhaus",
        "spamhaus",
        "rcpt",
        550,
        "5.7.1",
        ("5.7.1 Service unavailable; client [187.127.191.207] blocked using zen.spamhaus.org"),
        "policy_block",
    ),
)


def load_corpus(path: Path | str | None = None) -> dict[str, CorpusReply]:
    """The reply corpus by id; the built-in subset when the file is missing."""
    file = Path(path) if path is not None else CORPUS_PATH
    if not file.is_file():
        if path is not None:
            raise FileNotFoundError(file)
        return {r.id: r for r in FALLBACK_CORPUS}
    out: dict[str, CorpusReply] = {}
    with file.open(encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                row = json.loads(line)
                out[row["id"]] = CorpusReply(
                    row["id"],
                    row["provider"],
                    row["stage"],
                    int(row["code"]),
                    row["enhanced"],
                    row["text"],
                    row["reason"],
                )
    return out


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
_NO_TLS = ("\nSTARTTLS", "")  # the simulated servers speak no TLS

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


def blocked_reply(corpus: Mapping[str, CorpusReply]) -> Scripted:
    return corpus_reply(
        corpus, "postscreen-rcpt-550-571-blocked-zen-spamhaus", ("[187.127.191.207]", "[{client}]")
    )


# -- what the world is made of ------------------------------------------------


class Kind(StrEnum):
    """A domain's behaviour."""

    POSTFIX = "postfix"  # its own Postfix-like MX: 550 5.1.1 User unknown
    HOSTED = "hosted"  # on a shared Postfix hosting cluster (two MXes)
    GOOGLE = "google"  # Gmail-like cluster: multi-line 550-5.1.1, one domain per transaction
    MICROSOFT = "microsoft"  # Outlook-like cluster: 452 4.5.3 past N rcpts, 550 5.1.10
    CATCH_ALL = "catch_all"  # accepts every unknown recipient
    GREYLIST = "greylist"  # postgrey: 450 4.2.0 for a new triplet, then answers
    SLOW = "slow"  # slow greeting and replies, within a prober's timeouts
    BLOCKED = "blocked"  # refuses us at RCPT with a Spamhaus listing
    BACKUP_MX = "backup_mx"  # first MX unreachable (nobody listens), second works
    A_ONLY = "a_only"  # no MX: mail goes to the domain's A record (RFC 5321 §5.1)
    NULL_MX = "null_mx"  # "MX 0 ." (RFC 7505): takes no mail
    NXDOMAIN = "nxdomain"  # the domain does not exist
    BLACKHOLE = "blackhole"  # MX accepts TCP and never greets: not determinable


class Mailbox(StrEnum):
    EXISTS = "exists"
    MISSING = "missing"
    FULL = "full"
    DISABLED = "disabled"


class DNSStatus(StrEnum):
    MX = "mx"
    A_ONLY = "a_only"
    NULL_MX = "null_mx"
    NXDOMAIN = "nxdomain"


DEFAULT_MIX: dict[str, float] = {
    Kind.POSTFIX: 0.24,
    Kind.HOSTED: 0.14,
    Kind.GOOGLE: 0.18,
    Kind.MICROSOFT: 0.12,
    Kind.CATCH_ALL: 0.07,
    Kind.GREYLIST: 0.05,
    Kind.SLOW: 0.04,
    Kind.BLOCKED: 0.02,
    Kind.BACKUP_MX: 0.04,
    Kind.A_ONLY: 0.03,
    Kind.NULL_MX: 0.03,
    Kind.NXDOMAIN: 0.04,
    Kind.BLACKHOLE: 0.0,  # every probe of it waits out the connect/greeting timeout
}
DEFAULT_MAILBOX_MIX: dict[str, float] = {
    Mailbox.EXISTS: 0.62,
    Mailbox.MISSING: 0.28,
    Mailbox.FULL: 0.04,
    Mailbox.DISABLED: 0.06,
}

GOOGLE_MX = ("aspmx.google-like.example", "alt1.aspmx.google-like.example")
MICROSOFT_MX = ("mx.outlook-like.example",)
HOSTING_MX = ("mx1.hosting-like.example", "mx2.hosting-like.example")


@dataclass(frozen=True)
class WorldConfig:
    """Knobs of a world; the defaults are a plausible mix with small delays."""

    mix: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_MIX))
    mailbox_mix: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_MAILBOX_MIX))
    invalid_fraction: float = 0.01  # extra invalid input lines, per valid address
    greylist_seconds: float = 2.0
    greylist_retry_window: float = GREYLIST_RETRY_WINDOW  # longer greylisting: truth unknown
    slow_greeting_delay: float = 0.3
    slow_reply_delay: float = 0.05
    blackhole_greeting_delay: float = 3600.0
    google_max_rcpts: int = 100  # per transaction
    microsoft_max_rcpts: int = 4  # per transaction (below the engine's 5, to be exercised)
    cluster_max_connections: int | None = 10  # provider clusters refuse more at the greeting
    expect_max_concurrency: int | None = 2  # PER_MX_MAX_CONCURRENCY_DEFAULT
    expect_rps: float | None = 1.0  # PER_MX_RPS_DEFAULT
    helo_domain: str = "probe.mailprobe.example"
    mail_from: str = "bounce@probe.mailprobe.example"
    dns_ttl: int = 300
    rtt: float = 0.0  # network round-trip time to every MX (see MXBehavior.rtt)


# -- ground truth ---------------------------------------------------------------


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
        if self.blocked:
            return Verdict.UNKNOWN.value
        if self.greylist_seconds is not None and self.greylist_seconds > greylist_retry_window:
            return Verdict.UNKNOWN.value
        if reason == "accepted":
            return (Verdict.RISKY if self.catch_all else Verdict.DELIVERABLE).value
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
        return _address_truth(email.strip(), d, Mailbox.MISSING)

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


def _address_truth(address: str, d: DomainTruth, mailbox: Mailbox) -> AddressTruth:
    takes_mail = d.dns in (DNSStatus.MX, DNSStatus.A_ONLY)
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
    )


# -- building a world -----------------------------------------------------------

_DOMAIN_WORDS = (
    "acme", "globex", "initech", "umbrella", "hooli", "vandelay", "wayne", "stark",
    "tyrell", "cyberdyne", "soylent", "wonka", "monarch", "oscorp", "nakatomi",
    "prestige", "sterling", "dunder", "gekko", "massive", "pied-piper", "aperture",
)  # fmt: skip
_FIRST = (
    "jane", "john", "maria", "li", "ahmed", "olga", "pierre", "yuki", "sam", "ana",
    "noah", "emma", "lucas", "mia", "omar", "zoe", "ivan", "chloe", "ravi", "ines",
)  # fmt: skip
_LAST = (
    "smith", "garcia", "chen", "mueller", "rossi", "kowalski", "silva", "tanaka",
    "novak", "dubois", "kim", "jones", "haddad", "larsen", "okafor", "petrov",
)  # fmt: skip
_ROLES = ("info", "sales", "support", "billing", "admin", "contact", "hr", "office")

_OWN_MX_KINDS = {Kind.POSTFIX, Kind.CATCH_ALL, Kind.GREYLIST, Kind.SLOW, Kind.BLOCKED}


def _apportion(weights: Mapping[str, float], n: int) -> list[Kind]:
    """n kinds in proportion to `weights` (largest remainder); each weighted kind at
    least once when n allows."""
    kinds = [(Kind(k), float(w)) for k, w in weights.items() if w > 0]
    if n <= 0 or not kinds:
        return []
    total = sum(w for _, w in kinds)
    exact = {k: w / total * n for k, w in kinds}
    counts = {k: int(x) for k, x in exact.items()}
    for k in sorted(exact, key=lambda k: counts[k] - exact[k])[: n - sum(counts.values())]:
        counts[k] += 1
    if n >= len(kinds):
        for k in counts:
            if counts[k] == 0:
                donor = max(counts, key=lambda d: counts[d])
                counts[donor] -= 1
                counts[k] = 1
    return [k for k, _ in kinds for _ in range(counts[k])]


def _local_part(rng: random.Random, used: set[str]) -> str:
    while True:
        first, last = rng.choice(_FIRST), rng.choice(_LAST)
        form = rng.randrange(6)
        if form == 0:
            local = f"{first}.{last}"
        elif form == 1:
            local = f"{first[0]}{last}"
        elif form == 2:
            local = f"{first}{last[0]}"
        elif form == 3:
            local = f"{first}.{last}{rng.randrange(1, 100)}"
        elif form == 4:
            local = f"{first}_{last}"
        else:
            local = rng.choice(_ROLES)
        if local in used:
            local = f"{local}{rng.randrange(100, 10000)}"
        if local not in used:
            used.add(local)
            return local


def _invalid_line(rng: random.Random, email: str) -> str:
    """A line that is not an address (mailprobe.address.parse_address refuses it)."""
    local, _, domain = email.partition("@")
    return rng.choice(
        (
            f"{local}@@{domain}",
            f"{local}.{domain}",
            f"{local}@",
            f"@{domain}",
            f"{local} {local}@{domain}",
            f"{local}..x@{domain}",
            f"{local}@{domain}@{domain}",
        )
    )


def _free_port() -> int:
    """A TCP port nobody uses on any IPv4 address (a wildcard bind conflicts with all)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class WorldStats:
    """All servers' records, added up (see smtpd.ServerRecord)."""

    servers: int
    connections: int
    refused_connections: int
    transactions: int
    rcpts: int
    cap_violations: int
    concurrency_violations: int
    rps_violations: int
    max_open: dict[str, int]  # per MX host
    peak_starts_per_second: dict[str, int]  # per MX host
    data_received: bool

    @property
    def rcpts_per_connection(self) -> float:
        return self.rcpts / self.connections if self.connections else 0.0

    @property
    def max_open_overall(self) -> int:
        return max(self.max_open.values(), default=0)

    def summary(self) -> str:
        return (
            f"{self.connections} connections ({self.refused_connections} refused) to "
            f"{sum(1 for v in self.max_open.values() if v)}/{self.servers} MX hosts, "
            f"{self.transactions} transactions, {self.rcpts} RCPTs "
            f"({self.rcpts_per_connection:.2f} per connection), max open per MX "
            f"{self.max_open_overall}, cap violations {self.cap_violations} "
            f"(concurrency {self.concurrency_violations}, rps {self.rps_violations}), "
            f"DATA {'RECEIVED' if self.data_received else 'never'}"
        )


class SimWorld(ThreadedServer):
    """N domains, M addresses, their MX hosts and DNS, and the truth; see the module doc.

    `async with` serves on the current loop, `with` from a background thread. A
    `layout` ((kind, (mailbox, ...)), ...) fixes the domains and their addresses
    instead of drawing them from `config.mix` (see `demo_world`). `clock` is the
    greylisting clock of every greylisting MX (tests inject one).
    """

    thread_name = "sim-world"

    def __init__(
        self,
        domains: int = 300,
        addresses: int = 5000,
        seed: int = 1,
        *,
        config: WorldConfig | None = None,
        layout: Sequence[tuple[str, Sequence[str]]] | None = None,
        port: int = 0,
        clock: Callable[[], float] = time.monotonic,
        corpus_path: Path | str | None = None,
        dns_host: str = "127.0.0.1",
    ) -> None:
        self.config = cfg = config or WorldConfig()
        self.seed = seed
        self.clock = clock
        self.smtp_port = port
        self._port_wanted = port
        self.corpus = load_corpus(corpus_path)
        self.families = reply_families(self.corpus)
        self._greylisted = greylist_reply(self.corpus)
        self._blocked = blocked_reply(self.corpus)
        self.zone: dict[str, DomainSpec] = {}
        self.dns = SimDNSServer(self.zone, host=dns_host)
        self.servers: dict[str, SimSMTPServer] = {}  # MX host name -> server
        self.host_ips: dict[str, str] = {}  # every MX host, the unreachable ones too
        self.unreachable: set[str] = set()  # MX hosts nobody listens on
        self._next_ip = 0

        rng = random.Random(seed)
        if layout is None:
            kinds = _apportion(cfg.mix, domains)
            rng.shuffle(kinds)
            per_domain = [0] * len(kinds)
            for j in range(addresses if kinds else 0):
                per_domain[j if j < len(kinds) else rng.randrange(len(kinds))] += 1
            boxes = [Mailbox(m) for m, w in cfg.mailbox_mix.items() if w > 0]
            weights = [float(cfg.mailbox_mix[m]) for m in boxes]
            plan = [
                (k, rng.choices(boxes, weights, k=c))
                for k, c in zip(kinds, per_domain, strict=True)
            ]
        else:
            plan = [(Kind(k), [Mailbox(m) for m in ms]) for k, ms in layout]

        domain_truth: dict[str, DomainTruth] = {}
        address_truth: dict[str, AddressTruth] = {}
        valid: list[str] = []
        for i, (kind, mailboxes) in enumerate(plan, start=1):
            domain = f"{rng.choice(_DOMAIN_WORDS)}-{i}.example"
            used: set[str] = set()
            emails = [f"{_local_part(rng, used)}@{domain}" for _ in mailboxes]
            facts = list(zip(emails, mailboxes, strict=True))
            d = self._add_domain(domain, kind, facts)
            domain_truth[domain] = d
            for email, mailbox in facts:
                address_truth[email] = _address_truth(email, d, mailbox)
                valid.append(email)
        rng.shuffle(valid)
        lines = list(valid)
        n_invalid = round(len(valid) * cfg.invalid_fraction) if valid else 0
        for _ in range(n_invalid):
            line = _invalid_line(rng, rng.choice(valid))
            if line.lower() in address_truth:
                continue
            address_truth[line.lower()] = AddressTruth(address=line, valid_syntax=False)
            lines.insert(rng.randrange(len(lines) + 1), line)
        self._valid, self._lines = valid, lines
        self.truth = GroundTruth(
            address_truth, domain_truth, cfg.greylist_retry_window, hosts=self.host_ips
        )

    # -- construction -------------------------------------------------------------

    def _ip(self) -> str:
        i = self._next_ip
        self._next_ip += 1
        if i >= 254 * 254:
            raise ValueError("out of loopback addresses for MX hosts")
        return f"127.0.{1 + i // 254}.{1 + i % 254}"

    def _host(self, host: str, behavior: MXBehavior | None) -> str:
        """Give `host` an address (A record) and, unless unreachable, a server."""
        ip = self._ip()
        self.host_ips[host] = ip
        if host not in self.zone:
            self.zone[host] = DomainSpec(a=[ip], ttl=self.config.dns_ttl)
        else:
            self.zone[host].a = [ip]
        if behavior is None:
            self.unreachable.add(host)
        else:
            self.servers[host] = SimSMTPServer(behavior, host=ip, port=self._port_wanted)
        return host

    def _behavior(self, host: str, family: ReplyFamily, **kw: Any) -> MXBehavior:
        cfg = self.config
        return MXBehavior(
            hostname=host,
            banner=family.banner,
            ehlo=family.ehlo,
            mail=family.mail,
            default_rcpt=family.missing,
            too_many_rcpts=family.too_many_rcpts,
            too_many_rcpts_session=family.too_many_rcpts,
            too_many_connections=family.too_many_connections,
            multiple_domains=family.multiple_domains,
            catch_all_reply=family.accept,
            greylist_reply=self._greylisted,
            clock=self.clock,
            expect_max_concurrency=cfg.expect_max_concurrency,
            expect_rps=cfg.expect_rps,
            rtt=cfg.rtt,
            **kw,
        )

    def _cluster(self, hosts: Sequence[str], family: ReplyFamily, **kw: Any) -> tuple[str, ...]:
        for host in hosts:
            if host not in self.servers:
                kw.setdefault("max_connections", self.config.cluster_max_connections)
                self._host(host, self._behavior(host, family, **kw))
        return tuple(hosts)

    def _add_domain(
        self, domain: str, kind: Kind, facts: Sequence[tuple[str, Mailbox]]
    ) -> DomainTruth:
        cfg, fams = self.config, self.families
        ttl = cfg.dns_ttl
        family = "postfix"
        extra: dict[str, Any] = {}
        if kind is Kind.NXDOMAIN:
            self.zone[domain] = DomainSpec(nxdomain=True, ttl=ttl)
            return DomainTruth(domain, kind, DNSStatus.NXDOMAIN)
        if kind is Kind.NULL_MX:
            self.zone[domain] = DomainSpec(null_mx=True, ttl=ttl)
            return DomainTruth(domain, kind, DNSStatus.NULL_MX)
        if kind is Kind.GOOGLE:
            family = "google"
            hosts = self._cluster(
                GOOGLE_MX,
                fams["google"],
                one_domain_per_transaction=True,
                max_rcpts_per_transaction=cfg.google_max_rcpts,
            )
            self.zone[domain] = DomainSpec(mx=[(1, hosts[0]), (5, hosts[1])], ttl=ttl)
        elif kind is Kind.MICROSOFT:
            family = "microsoft"
            hosts = self._cluster(
                MICROSOFT_MX, fams["microsoft"], max_rcpts_per_transaction=cfg.microsoft_max_rcpts
            )
            self.zone[domain] = DomainSpec(mx=[(0, hosts[0])], ttl=ttl)
        elif kind is Kind.HOSTED:
            hosts = self._cluster(HOSTING_MX, fams["postfix"])
            self.zone[domain] = DomainSpec(mx=[(10, hosts[0]), (20, hosts[1])], ttl=ttl)
        elif kind is Kind.A_ONLY:
            self.zone[domain] = DomainSpec(ttl=ttl)
            hosts = (self._host(domain, self._behavior(domain, fams["postfix"])),)
        elif kind is Kind.BACKUP_MX:
            dead = self._host(f"mx1.{domain}", None)
            mx2 = f"mx2.{domain}"
            hosts = (dead, self._host(mx2, self._behavior(mx2, fams["postfix"])))
            self.zone[domain] = DomainSpec(mx=[(10, hosts[0]), (20, hosts[1])], ttl=ttl)
        else:
            if kind is Kind.CATCH_ALL:
                extra["catch_all"] = True
            elif kind is Kind.GREYLIST:
                extra["greylist_seconds"] = cfg.greylist_seconds
            elif kind is Kind.SLOW:
                extra["greeting_delay"] = cfg.slow_greeting_delay
                extra["reply_delay"] = cfg.slow_reply_delay
            elif kind is Kind.BLOCKED:
                extra["blocked"] = self._blocked
            elif kind is Kind.BLACKHOLE:
                extra["greeting_delay"] = cfg.blackhole_greeting_delay
            mx1 = f"mx1.{domain}"
            hosts = (self._host(mx1, self._behavior(mx1, fams["postfix"], **extra)),)
            self.zone[domain] = DomainSpec(mx=[(10, hosts[0])], ttl=ttl)
        fam = fams[family or "postfix"]
        for host in hosts:
            server = self.servers.get(host)
            if server is None:
                continue
            for email, mailbox in facts:
                if mailbox is not Mailbox.MISSING:
                    server.behavior.mailboxes[email.lower()] = fam.mailbox_reply(mailbox)
        return DomainTruth(
            domain,
            kind,
            DNSStatus.A_ONLY if kind is Kind.A_ONLY else DNSStatus.MX,
            mx_hosts=hosts,
            family=family,
            catch_all=kind is Kind.CATCH_ALL,
            blocked=kind is Kind.BLOCKED,
            greylist_seconds=cfg.greylist_seconds if kind is Kind.GREYLIST else None,
            never_answers=kind is Kind.BLACKHOLE,
        )

    # -- what a caller reads --------------------------------------------------------

    @property
    def nameserver(self) -> str:
        """For DNS_NAMESERVERS ("127.0.0.1:PORT"); valid once started."""
        return self.dns.nameserver

    @property
    def domains(self) -> dict[str, DomainTruth]:
        return self.truth.domains

    def addresses(self, include_invalid: bool = False) -> list[str]:
        """The input list (shuffled; with `include_invalid`, some lines that are not addresses)."""
        return list(self._lines if include_invalid else self._valid)

    def expected_verdict(self, email: str) -> str | None:
        return self.truth.expected_verdict(email)

    def ip_of(self, host: str) -> str:
        return self.host_ips[host.rstrip(".").lower()]

    def env(self) -> dict[str, str]:
        """Environment that points mailprobe at this world."""
        return {
            "DNS_NAMESERVERS": self.nameserver,
            "SMTP_PORT": str(self.smtp_port),
            "SMTP_HELO_DOMAIN": self.config.helo_domain,
            "SMTP_MAIL_FROM": self.config.mail_from,
        }

    def kinds(self) -> Counter[str]:
        return Counter(d.kind.value for d in self.truth.domains.values())

    def stats(self) -> WorldStats:
        recs = {host: s.record for host, s in self.servers.items()}
        return WorldStats(
            servers=len(recs),
            connections=sum(r.connections for r in recs.values()),
            refused_connections=sum(r.refused_connections for r in recs.values()),
            transactions=sum(r.transactions for r in recs.values()),
            rcpts=sum(r.rcpts for r in recs.values()),
            cap_violations=sum(r.cap_violations for r in recs.values()),
            concurrency_violations=sum(r.concurrency_violations for r in recs.values()),
            rps_violations=sum(r.rps_violations for r in recs.values()),
            max_open={h: r.max_open for h, r in recs.items()},
            peak_starts_per_second={h: r.peak_starts_per_second() for h, r in recs.items()},
            data_received=any(r.data_received for r in recs.values()),
        )

    def describe(self) -> str:
        kinds = ", ".join(f"{k} {n}" for k, n in sorted(self.kinds().items()))
        verdicts = ", ".join(
            f"{v or 'not determinable'} {n}"
            for v, n in sorted(self.truth.counts().items(), key=lambda kv: str(kv[0]))
        )
        return (
            f"{len(self.truth.domains)} domains ({kinds}); {len(self._valid)} addresses "
            f"+ {len(self._lines) - len(self._valid)} invalid lines; "
            f"{len(self.servers)} MX servers on port {self.smtp_port}, "
            f"{len(self.unreachable)} unreachable MX hosts; expected: {verdicts}"
        )

    # -- lifecycle -------------------------------------------------------------------

    async def start(self) -> SimWorld:
        await self.dns.start()
        try:
            await self._start_smtp()
        except BaseException:
            await self.dns.stop()
            raise
        return self

    async def _start_smtp(self) -> None:
        servers = list(self.servers.values())
        for _ in range(30):
            port = self._port_wanted or _free_port()
            started: list[SimSMTPServer] = []
            try:
                for server in servers:
                    server.port = port
                    await server.start()
                    started.append(server)
            except OSError as exc:
                for server in started:
                    await server.stop()
                if self._port_wanted or exc.errno != errno.EADDRINUSE:
                    raise
                continue
            self.smtp_port = port
            return
        raise OSError(errno.EADDRINUSE, "no port free on every MX address of the world")

    async def stop(self) -> None:
        await asyncio.gather(*(s.stop() for s in self.servers.values()), return_exceptions=True)
        await self.dns.stop()

    async def __aenter__(self) -> SimWorld:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


# -- the demo ---------------------------------------------------------------------

DEMO_LAYOUT: tuple[tuple[str, tuple[str, ...]], ...] = (
    (Kind.POSTFIX, (Mailbox.EXISTS, Mailbox.MISSING, Mailbox.FULL, Mailbox.DISABLED)),
    (Kind.GOOGLE, (Mailbox.EXISTS, Mailbox.MISSING, Mailbox.DISABLED)),
    (Kind.MICROSOFT, (Mailbox.EXISTS, Mailbox.MISSING, Mailbox.FULL)),
    (Kind.CATCH_ALL, (Mailbox.EXISTS, Mailbox.MISSING)),
    (Kind.GREYLIST, (Mailbox.EXISTS, Mailbox.MISSING)),
    (Kind.SLOW, (Mailbox.EXISTS,)),
    (Kind.BLOCKED, (Mailbox.EXISTS,)),
    (Kind.BACKUP_MX, (Mailbox.EXISTS, Mailbox.MISSING)),
    (Kind.A_ONLY, (Mailbox.EXISTS,)),
    (Kind.NULL_MX, (Mailbox.EXISTS,)),
    (Kind.NXDOMAIN, (Mailbox.EXISTS,)),
)


def demo_world(
    *,
    seed: int = 0,
    port: int = 0,
    clock: Callable[[], float] = time.monotonic,
    config: WorldConfig | None = None,
) -> SimWorld:
    """A small world (11 domains, 21 addresses and one invalid line) showing every
    behaviour except the blackhole, with short greylisting and delays."""
    cfg = config or WorldConfig(
        greylist_seconds=1.0, slow_greeting_delay=0.2, slow_reply_delay=0.02, invalid_fraction=0.05
    )
    return SimWorld(seed=seed, layout=DEMO_LAYOUT, config=cfg, port=port, clock=clock)


# -- python -m mailprobe.sim.world ------------------------------------------------


async def _serve(world: SimWorld, args: argparse.Namespace) -> None:
    async with world:
        if args.addresses_out:
            lines = world.addresses(include_invalid=args.invalid)
            Path(args.addresses_out).write_text("\n".join(lines) + "\n", encoding="utf-8")
        if args.truth_out:
            world.truth.write_jsonl(args.truth_out)
        for name, value in world.env().items():
            print(f"export {name}={value}")
        print(f"# {world.describe()}", file=sys.stderr)
        print("# serving until Ctrl-C", file=sys.stderr, flush=True)
        sys.stdout.flush()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        print(f"# {world.stats().summary()}", file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m mailprobe.sim.world",
        description="Serve a simulated mail world (DNS + MX hosts on loopback) until Ctrl-C.",
    )
    p.add_argument("--domains", type=int, default=300)
    p.add_argument("--addresses", type=int, default=5000)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--port", type=int, default=0, help="SMTP port for every MX (0: a free one)")
    p.add_argument("--demo", action="store_true", help="the small demo world instead")
    p.add_argument("--addresses-out", metavar="FILE", help="write the address list here")
    p.add_argument("--invalid", action="store_true", help="include invalid lines in the list")
    p.add_argument("--truth-out", metavar="FILE", help="write the ground truth here (JSONL)")
    p.add_argument("--greylist-seconds", type=float, default=None)
    args = p.parse_args(argv)
    cfg = WorldConfig()
    if args.greylist_seconds is not None:
        cfg = WorldConfig(greylist_seconds=args.greylist_seconds)
    if args.demo:
        world = demo_world(seed=args.seed, port=args.port)
    else:
        world = SimWorld(args.domains, args.addresses, args.seed, config=cfg, port=args.port)
    asyncio.run(_serve(world, args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
