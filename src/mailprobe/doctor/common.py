"""What every doctor check shares: the `Check` finding, the fixes and limits, the context."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import dns.asyncresolver

from mailprobe.config import Settings
from mailprobe.identity import is_public as is_public

Status = Literal["pass", "warn", "fail", "skip"]

DEFAULT_REFERENCE_DOMAIN = "gmail.com"  # a domain whose MX answers from anywhere
DEFAULT_BLOCKLISTS: tuple[str, ...] = (
    "zen.spamhaus.org",
    "b.barracudacentral.org",
    "bl.spamcop.net",
)
# Where a listed IP is looked up (and delisted), per well-known list.
BLOCKLIST_PAGES = {
    "zen.spamhaus.org": "https://check.spamhaus.org/",
    "b.barracudacentral.org": "https://www.barracudacentral.org/lookups",
    "bl.spamcop.net": "https://www.spamcop.net/bl.shtml",
}
REDIS_TIMEOUT = 3.0  # seconds, connect and PING each
MAX_SMTP_TIMEOUT = 30.0  # doctor never waits longer than this for one SMTP step
BELT_SLACK = 1.0  # beyond a client's own timeouts, in case it overruns them

FIX_PORT25 = (
    "your provider probably blocks outbound port 25: ask them to open it "
    "or run mailprobe from a host that allows it"
)
FIX_DNS = (
    "check DNS_NAMESERVERS (or /etc/resolv.conf) and that the resolver is reachable "
    "on UDP and TCP port 53"
)


@dataclass
class Check:
    """One finding: `fix` says in one line what to do about a warn or fail."""

    name: str
    status: Status
    detail: str
    fix: str = ""


@dataclass
class Egress:
    """The IP the world sees us send from, and how doctor learnt it."""

    ip: str | None = None
    how: str = ""


@dataclass
class Context:
    """What the checks learn and pass on to each other within one run."""

    settings: Settings
    resolver: dns.asyncresolver.Resolver | None
    dns_ok: bool = False
    helo_addresses: list[str] | None = None  # None = not known
    ptr_names: list[str] = field(default_factory=list)  # forward-confirmed PTR names
