"""The one-time warning about probing real servers under the default identity.

The default HELO and MAIL FROM (`verifier.crestwellpartners.com`) name a domain that is
not the user's: a real MX judges us by it (PTR, SPF, reputation), and its owner would
get the blame. Tests, the demo and the simulated world dial loopback or private
addresses and are left alone; the first public address dialled with the default
identity gets one warning per process, through logging (stderr in the CLI).
"""

from __future__ import annotations

import ipaddress
import logging

from mailprobe.config import DEFAULT_HELO_DOMAIN

log = logging.getLogger("mailprobe.identity")

WARNING = (
    f"warning: probing a real mail server as {DEFAULT_HELO_DOMAIN}, the default identity, "
    "which names a domain that is not yours; set SMTP_HELO_DOMAIN to a host name you own "
    "(with a matching PTR) and SMTP_MAIL_FROM to an address at your domain, then run "
    "`mailprobe doctor` to check them"
)

_warned = False


def is_public(ip: str) -> bool:
    """A globally routed address (not loopback, private, link-local or reserved)."""
    try:
        return ipaddress.ip_address(ip.split("%", 1)[0]).is_global
    except ValueError:
        return False


def uses_default_identity(helo_domain: str, mail_from: str | None = None) -> bool:
    """HELO, or MAIL FROM, still names the default domain."""
    names = [helo_domain, (mail_from or "").rpartition("@")[2]]
    return any(n.lower().rstrip(".") == DEFAULT_HELO_DOMAIN for n in names)


def check_dial(peer_ip: str | None, helo_domain: str, mail_from: str | None = None) -> bool:
    """Warn once per process when `peer_ip` is public and the identity is the default;
    True when this call warned."""
    global _warned
    if _warned or peer_ip is None or not uses_default_identity(helo_domain, mail_from):
        return False
    if not is_public(peer_ip):
        return False
    _warned = True
    log.warning("mailprobe: %s", WARNING)
    return True


def reset() -> None:
    """Forget that the warning was given (tests)."""
    global _warned
    _warned = False
