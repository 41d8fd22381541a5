"""`mailprobe doctor`: is this host fit to probe from?

The most common reason a verifier gives wrong answers is the prober itself:
outbound port 25 blocked by the provider, a HELO name whose DNS does not match
the sending IP, a MAIL FROM domain whose SPF does not allow that IP, or an IP
on a blocklist, so that servers answer 5.7.x to everything. `run_checks` looks
at each of these and returns one `Check` apiece (pass/warn/fail/skip, with the
fix in one line):

* dns        — the resolver answers (MX of a well-known domain);
* helo       — SMTP_HELO_DOMAIN is a host name (not an IP) and resolves;
* mail_from  — SMTP_MAIL_FROM's domain can receive bounces (MX, or A/AAAA);
* smtp       — TCP to port 25 of an MX, greeting, EHLO, QUIT (no MAIL/RCPT);
* egress_ip  — the local address of that connection (or SMTP_SOURCE_ADDRESS):
               no "what is my IP" service is asked. A private or loopback
               address means NAT: the world sees another IP, so the IP checks
               below are skipped (`check_private=True` runs them anyway);
* ptr        — the egress IP has a PTR whose name resolves back to it (FCrDNS);
* helo_ptr   — SMTP_HELO_DOMAIN is that PTR name (or at least resolves to the IP);
* spf        — the MAIL FROM domain's SPF allows the egress IP;
* blocklist:<zone> — the egress IP is not on the DNS blocklist <zone>;
* redis, database — reachable, when configured;
* route:<name>, route:<name>:ip, :ptr, :blocklist:<zone> — each egress route other
  than the plain direct one (SMTP_PROXY, SMTP_ROUTES, several SMTP_SOURCE_ADDRESS IPs):
  the test MX reached through it, its public IP where it can be learnt, PTR, listings.

Every network step is bounded: DNS by the resolver's lifetime (DNS_TIMEOUT),
SMTP by SMTP_CONNECT_TIMEOUT / SMTP_COMMAND_TIMEOUT, Redis by REDIS_TIMEOUT.
When DNS does not answer, the checks that need it are skipped rather than
each waiting out its own timeout.

The checks live by concern in `identity` (helo, mail_from, ptr, helo_ptr, spf),
`connection` (smtp, egress_ip), `dns_checks` (dns, blocklists) and `services`
(redis, database), `egress` (the routes; verify's port 25 check); `common` holds
`Check` and the constants. SPF itself is
`mailprobe.spf`, DNS is `mailprobe.dns`, SMTP is `mailprobe.smtp_wire`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Sequence

import dns.asyncresolver
import dns.exception

from mailprobe.config import Settings
from mailprobe.dns import default_resolver
from mailprobe.doctor.common import (
    BLOCKLIST_PAGES,
    DEFAULT_BLOCKLISTS,
    DEFAULT_REFERENCE_DOMAIN,
    FIX_DNS,
    FIX_PORT25,
    MAX_SMTP_TIMEOUT,
    REDIS_TIMEOUT,
    Check,
    Context,
    Egress,
    Status,
    is_public,
)
from mailprobe.doctor.connection import check_egress, check_smtp, ip_ready
from mailprobe.doctor.dns_checks import check_blocklist, check_dns
from mailprobe.doctor.egress import check_routes
from mailprobe.doctor.identity import (
    check_helo,
    check_helo_ptr,
    check_mail_from,
    check_ptr,
    check_spf,
)
from mailprobe.doctor.services import check_database, check_redis

__all__ = [
    "BLOCKLIST_PAGES",
    "DEFAULT_BLOCKLISTS",
    "DEFAULT_REFERENCE_DOMAIN",
    "FIX_DNS",
    "FIX_PORT25",
    "MAX_SMTP_TIMEOUT",
    "REDIS_TIMEOUT",
    "Check",
    "Status",
    "doctor_exit_status",
    "format_checks",
    "run_checks",
]


async def run_checks(
    settings: Settings,
    *,
    mx_host: str | None = None,
    port: int | None = None,
    resolver: dns.asyncresolver.Resolver | None = None,
    blocklists: Sequence[str] = DEFAULT_BLOCKLISTS,
    check_private: bool = False,
    reference_domain: str = DEFAULT_REFERENCE_DOMAIN,
) -> list[Check]:
    """Every check, in a fixed order. Never raises for what it finds.

    `mx_host` (a name or IP) is the MX to connect to; default: the lowest MX of
    `reference_domain`. `port` defaults to SMTP_PORT. `resolver` defaults to the
    one DNS_NAMESERVERS/DNS_TIMEOUT describe. `check_private` runs the IP checks
    even for a private/loopback egress IP (tests; a lab with its own DNS).
    """
    error: str | None = None
    if resolver is None:
        try:
            resolver = default_resolver(settings)
        except (dns.exception.DNSException, ValueError, OSError) as exc:
            error = f"{type(exc).__name__}: {exc}"
    ctx = Context(settings, resolver)
    # DNS first: when it does not answer, the checks that need it are skipped.
    dns_check = await _guarded("dns", check_dns(ctx, reference_domain, error))

    egress = Egress()
    helo, mail_from, smtp, redis_check, database = await asyncio.gather(
        _guarded("helo", check_helo(ctx)),
        _guarded("mail_from", check_mail_from(ctx)),
        _guarded(
            "smtp", check_smtp(ctx, mx_host, port or settings.smtp_port, reference_domain, egress)
        ),
        _guarded("redis", check_redis(settings)),
        _guarded("database", check_database(settings)),
    )
    checks = [dns_check, helo, mail_from, smtp, check_egress(egress, check_private)]

    why_not = ip_ready(ctx, egress, check_private)
    if why_not is not None or egress.ip is None:
        note = f"skipped: {why_not}"
        checks += [Check("ptr", "skip", note), Check("helo_ptr", "skip", note)]
        checks.append(Check("spf", "skip", note))
        if egress.ip is not None and ctx.dns_ok and not is_public(egress.ip):
            note = f"skipped: {egress.ip} is private/loopback: blocklists list only public IPs"
        checks += [Check(f"blocklist:{zone}", "skip", note) for zone in blocklists]
    else:
        ip = egress.ip
        ip_checks = [_guarded("ptr", check_ptr(ctx, ip)), _guarded("spf", check_spf(ctx, ip))]
        ip_checks += [
            _guarded(f"blocklist:{zone}", check_blocklist(ctx, ip, zone)) for zone in blocklists
        ]
        ptr, spf, *listed = await asyncio.gather(*ip_checks)
        checks += [ptr, check_helo_ptr(ctx, ip), spf, *listed]
    try:
        routes = await check_routes(
            settings, mx_host=mx_host, port=port, resolver=ctx.resolver, blocklists=blocklists,
            check_private=check_private, reference_domain=reference_domain,
        )  # fmt: skip
    except Exception as exc:  # a crashed check is that check's failure, not doctor's
        routes = [await _guarded("routes", _raise(exc))]
    return [*checks, *routes, redis_check, database]


async def _raise(exc: Exception) -> Check:
    raise exc


async def _guarded(name: str, check: Awaitable[Check]) -> Check:
    """A check that crashed is reported as a failure of that check, not of the doctor."""
    try:
        return await check
    except Exception as exc:
        return Check(
            name,
            "fail",
            f"the check itself failed: {type(exc).__name__}: {exc}",
            "report this as a mailprobe bug",
        )


_LABELS: dict[Status, str] = {"pass": "PASS", "warn": "WARN", "fail": "FAIL", "skip": "SKIP"}


def format_checks(checks: Sequence[Check]) -> str:
    """One line a check: STATUS  name  detail[  fix: ...] (the fix for warn and fail)."""
    width = max((len(c.name) for c in checks), default=0)
    lines = []
    for c in checks:
        line = f"{_LABELS[c.status]}  {c.name:<{width}}  {c.detail}"
        if c.status in ("warn", "fail") and c.fix:
            line += f"  fix: {c.fix}"
        lines.append(line)
    return "\n".join(lines)


def doctor_exit_status(checks: Sequence[Check]) -> int:
    """0 when everything passed or was skipped, 1 for any warn, 2 for any fail."""
    statuses = {c.status for c in checks}
    return 2 if "fail" in statuses else 1 if "warn" in statuses else 0
