"""What a simulated world is made of: domain kinds, mailbox facts, and the knobs.

A world has N domains, each of one behaviour `Kind` drawn from `WorldConfig.mix`
(or fixed by a layout, see `world.demo_world`), and M addresses, each with a
`Mailbox` fact drawn from `WorldConfig.mailbox_mix`. Provider clusters serve many
domains, as real hosting does (GOOGLE_MX, MICROSOFT_MX, HOSTING_MX); other
domains have their own MX.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum

GREYLIST_RETRY_WINDOW = 900.0  # the bulk engine's GREYLIST_MAX_DELAY: longer is unknown


class Kind(StrEnum):
    """A domain's behaviour."""

    POSTFIX = "postfix"  # its own Postfix-like MX: 550 5.1.1 User unknown
    HOSTED = "hosted"  # on a shared Postfix hosting cluster (two MXes)
    GOOGLE = "google"  # Gmail-like cluster: multi-line 550-5.1.1, one domain per transaction
    MICROSOFT = "microsoft"  # Outlook-like clusters: 452 4.5.3 past N rcpts; 5.1.10/5.4.1/5.5.0
    CATCH_ALL = "catch_all"  # accepts every unknown recipient
    GREYLIST = "greylist"  # postgrey: 450 4.2.0 for a new triplet, then answers
    GREYLIST_HINT = "greylist_hint"  # greylisting whose reply says the time left
    SLOW = "slow"  # slow greeting and replies, within a prober's timeouts
    BLOCKED = "blocked"  # refuses us at RCPT with a Spamhaus listing
    BACKUP_MX = "backup_mx"  # first MX unreachable (nobody listens), second works
    # A shared first MX that drops our SYNs (connect timeout), and a shared second that works
    DEAD_PRIMARY = "dead_primary"
    # First MX drops our SYNs; the second is a backup that accepts every RCPT (it relays
    # without the domain's recipient list): existence cannot be told there, so risky
    BACKUP_ACCEPTS_ALL = "backup_accepts_all"
    A_ONLY = "a_only"  # no MX: mail goes to the domain's A record (RFC 5321 §5.1)
    NULL_MX = "null_mx"  # "MX 0 ." (RFC 7505): takes no mail
    NXDOMAIN = "nxdomain"  # the domain does not exist
    BLACKHOLE = "blackhole"  # MX accepts TCP and never greets: not determinable
    # RFC 5321 quoted local parts, plus tags and SMTPUTF8 (non-ASCII) local parts, at an
    # MX that offers SMTPUTF8 (INTL) or does not (INTL_LEGACY: its non-ASCII addresses
    # are not determinable, unknown / smtputf8_unsupported; the rest answer as usual).
    INTL = "intl"
    INTL_LEGACY = "intl_legacy"
    DNS_FLAKY = "dns_flaky"  # its DNS answers SERVFAIL a few times, then answers
    DNS_SLOW = "dns_slow"  # its DNS (domain and MX host) answers after several seconds


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
    Kind.GREYLIST_HINT: 0.0,
    Kind.SLOW: 0.04,
    Kind.BLOCKED: 0.02,
    Kind.BACKUP_MX: 0.04,
    Kind.A_ONLY: 0.03,
    Kind.NULL_MX: 0.03,
    Kind.NXDOMAIN: 0.04,
    Kind.BLACKHOLE: 0.0,  # every probe of it waits out the connect/greeting timeout
    Kind.DEAD_PRIMARY: 0.0,  # each costs a connect timeout: in worlds that ask for them
    Kind.BACKUP_ACCEPTS_ALL: 0.0,
    Kind.INTL: 0.0,
    Kind.INTL_LEGACY: 0.0,
    Kind.DNS_FLAKY: 0.0,  # opt in through WorldConfig(mix=...)
    Kind.DNS_SLOW: 0.0,  # opt in: each lookup of it takes dns_slow_delay seconds
}
DEFAULT_MAILBOX_MIX: dict[str, float] = {
    Mailbox.EXISTS: 0.62,
    Mailbox.MISSING: 0.28,
    Mailbox.FULL: 0.04,
    Mailbox.DISABLED: 0.06,
}

GOOGLE_MX = ("aspmx.google-like.example", "alt1.aspmx.google-like.example")
MICROSOFT_MX = ("mx.outlook-like.example",)
# Microsoft 365 tenants and Outlook.com refuse unknown users in words that mean "no such
# user" only at Microsoft's own MX names (classify's o365-dbeb, outlookcom-* rules); the
# world's DNS answers for these names on loopback. Kind.MICROSOFT domains take turns:
# (reply family, MX host), see replies.FAMILY_REPLIES.
M365_TENANT_MX = "tenant-example.mail.protection.outlook.com"
OUTLOOK_COM_MX = "outlook-example.olc.protection.outlook.com"
MICROSOFT_VARIANTS: tuple[tuple[str, str], ...] = (
    ("microsoft", MICROSOFT_MX[0]),  # 550 5.1.10 RecipientNotFound: readable anywhere
    ("m365-tenant", M365_TENANT_MX),  # 550 5.4.1 DBEB, untagged: only at a tenant MX
    ("outlook-com", OUTLOOK_COM_MX),  # 550 5.5.0 mailbox unavailable (S2017062302)
)
HOSTING_MX = ("mx1.hosting-like.example", "mx2.hosting-like.example")
DEAD_PRIMARY_MX = ("mx1.deadprimary-like.example", "mx2.deadprimary-like.example")


@dataclass(frozen=True)
class WorldConfig:
    """Knobs of a world; the defaults are a plausible mix with small delays."""

    mix: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_MIX))
    mailbox_mix: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_MAILBOX_MIX))
    invalid_fraction: float = 0.01  # extra invalid input lines, per valid address
    greylist_seconds: float = 2.0
    # Per-MX greylisting delays: each greylisting domain's MX draws one (by its name);
    # empty: every one uses greylist_seconds.
    greylist_delays: tuple[float, ...] = ()
    greylist_retry_window: float = GREYLIST_RETRY_WINDOW  # longer greylisting: truth unknown
    slow_greeting_delay: float = 0.3
    slow_reply_delay: float = 0.05
    blackhole_greeting_delay: float = 3600.0
    dns_flaky_failures: int = 2  # SERVFAILs before a DNS_FLAKY domain answers
    # A DNS_SLOW domain answers after this long: past the default DNS_TIMEOUT (5 s),
    # within DNS_MAX_TIMEOUT (30 s), so a patient prober gets the truth.
    dns_slow_delay: float = 8.0
    google_max_rcpts: int = 100  # per transaction
    microsoft_max_rcpts: int = 4  # per transaction (below the engine's 5, to be exercised)
    cluster_max_connections: int | None = 10  # provider clusters refuse more at the greeting
    expect_max_concurrency: int | None = 2  # PER_MX_MAX_CONCURRENCY_DEFAULT
    expect_rps: float | None = 1.0  # PER_MX_RPS_DEFAULT: RCPTs a second per MX
    expect_burst: int = 1  # RCPTs at once (THROTTLE_BURST_SECONDS worth of expect_rps)
    expect_connect_rps: float | None = None  # PER_MX_CONNECT_RPS (None: expect_rps)
    helo_domain: str = "probe.mailprobe.example"
    mail_from: str = "bounce@probe.mailprobe.example"
    dns_ttl: int = 300
    rtt: float = 0.0  # network round-trip time to every MX (see MXBehavior.rtt)
    # Every MX offers STARTTLS, as nearly all real ones do: Google reported 2% of the mail
    # it sends as unencrypted in 2024, Cloudflare 6% of what it receives
    # (https://alexsci.com/blog/is-email-confidential-in-transit-yet/); MailChannels saw
    # 72% of 17,000 servers advertise it as early as 2015
    # (https://blog.mailchannels.com/starttls-adoption-update/). Off by default: the
    # handshakes cost the world's own CPU; the CPU benchmark turns it on.
    starttls: bool = False
    # Postfix-family servers keep Postfix's default error limits (postconf(5):
    # smtpd_soft_error_limit 10, smtpd_hard_error_limit 20, smtpd_error_sleep_time 1s; see
    # testing.smtpd.MXBehavior.soft_error_limit); None: none.
    postfix_error_limits: tuple[int, int] | None = (10, 20)
    postfix_error_sleep: float = 1.0
