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
    MICROSOFT = "microsoft"  # Outlook-like cluster: 452 4.5.3 past N rcpts, 550 5.1.10
    CATCH_ALL = "catch_all"  # accepts every unknown recipient
    GREYLIST = "greylist"  # postgrey: 450 4.2.0 for a new triplet, then answers
    GREYLIST_HINT = "greylist_hint"  # greylisting whose reply says the time left
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
    Kind.GREYLIST_HINT: 0.0,
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
    # Per-MX greylisting delays: each greylisting domain's MX draws one (by its name);
    # empty: every one uses greylist_seconds.
    greylist_delays: tuple[float, ...] = ()
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
