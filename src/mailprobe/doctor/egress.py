"""The egress routes under doctor's eye, and verify's quick port 25 check before a run.

`check_routes`: for each route other than the plain direct one (a SOCKS proxy, a
source address), doctor connects to the test MX through it (greeting, EHLO, QUIT),
learns the route's public IP where it can (a source address is its own; through a
proxy, the IP the MX says it sees in its EHLO reply, in brackets as Exim writes it:
"250-myhost.test.ex Hello CALLER at x.y.z [1.2.3.4]", Exim's own test suite,
https://git.exim.org/exim.git/blob/HEAD:/test/stdout/0485), then checks that IP's
PTR, forward-confirmed, and the DNS blocklists.

`port25_blocked`: the doctor's `smtp` check, bounded to a few seconds, run by `verify`
before a run whose MX hosts are all reached directly: when port 25 does not connect,
verify says so in one line at once instead of letting every address time out.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import re
from collections.abc import Sequence

from mailprobe.config import Settings
from mailprobe.dns import default_resolver
from mailprobe.doctor.common import (
    DEFAULT_BLOCKLISTS,
    DEFAULT_REFERENCE_DOMAIN,
    FIX_PORT25,
    MAX_SMTP_TIMEOUT,
    Check,
    Context,
    Egress,
    is_public,
)
from mailprobe.doctor.connection import _pick_mx, check_smtp
from mailprobe.doctor.dns_checks import check_blocklist, check_dns
from mailprobe.doctor.identity import check_ptr
from mailprobe.egress import Route, RouteTable
from mailprobe.smtp_wire import SMTPWire, WireError, WireFailure

PRECHECK_LIMIT = 8.0  # seconds verify's port 25 check may take in all
PRECHECK_CONNECT = 4.0  # seconds it waits for the TCP connection
# An IP in brackets in the EHLO reply's first line: "myhost.test.ex Hello CALLER at x.y.z [1.2.3.4]"
_SEEN_IP = re.compile(r"\[([0-9a-fA-F:.]+)\]")
FIX_PROXY = (
    "check the proxy's URL, credentials and that it is up; a proxy whose own network "
    "blocks port 25 fails here too: ask its provider, or use one that allows SMTP"
)


async def port25_blocked(
    settings: Settings, reference_domain: str = DEFAULT_REFERENCE_DOMAIN
) -> str | None:
    """One line saying direct port 25 does not work here, or None (it works, a route
    goes through a proxy, or the check could not tell: no DNS, no MX)."""
    if RouteTable.from_settings(settings).proxied:
        return None
    try:
        resolver = default_resolver(settings)
    except Exception:
        return None
    quick = settings.smtp_connect_timeout
    ctx = Context(
        _quick(settings, min(quick, PRECHECK_CONNECT)), resolver
    )  # the check's own limits
    try:
        async with asyncio.timeout(PRECHECK_LIMIT):
            await check_dns(ctx, reference_domain, None)
            if not ctx.dns_ok:
                return None
            smtp = await check_smtp(ctx, None, settings.smtp_port, reference_domain, Egress())
    except TimeoutError:
        return None
    if smtp.status != "fail" or smtp.fix != FIX_PORT25:
        return None
    return (
        f"direct SMTP does not connect from here ({smtp.detail}): outbound port "
        f"{settings.smtp_port} looks blocked, so every address would time out. Set "
        "SMTP_PROXY (or --proxy socks5://host:port) to a proxy whose network allows it, "
        "or answer from DNS and lists alone with --no-smtp (PORT25_CHECK=0 skips this check; "
        "`mailprobe doctor` tells more)"
    )


def _quick(settings: Settings, connect: float) -> Settings:
    from dataclasses import replace

    return replace(settings, smtp_connect_timeout=connect, smtp_command_timeout=connect)


async def check_routes(
    settings: Settings,
    *,
    mx_host: str | None = None,
    port: int | None = None,
    resolver: object | None = None,
    blocklists: Sequence[str] = DEFAULT_BLOCKLISTS,
    check_private: bool = False,
    reference_domain: str = DEFAULT_REFERENCE_DOMAIN,
) -> list[Check]:
    """The checks of every route but the plain direct one (doctor's own checks cover it)."""
    routes = [r for r in RouteTable.from_settings(settings).routes() if not r.plain and not r.skip]
    if not routes:
        return []
    base = Context(settings, resolver or default_resolver(settings))  # type: ignore[arg-type]
    await check_dns(base, reference_domain, None)
    checks: list[Check] = []
    for route in routes:
        ctx = Context(settings, base.resolver, dns_ok=base.dns_ok)
        checks += await _check_route(
            ctx, route, mx_host, port or settings.smtp_port, reference_domain, blocklists,
            check_private,
        )  # fmt: skip
    return checks


async def _check_route(
    ctx: Context,
    route: Route,
    mx_host: str | None,
    port: int,
    reference_domain: str,
    blocklists: Sequence[str],
    check_private: bool,
) -> list[Check]:
    name = f"route:{route.name}"
    picked = await _pick_mx(ctx, mx_host, reference_domain)
    if isinstance(picked, str):
        return [Check(name, "skip", f"{route.describe()}: {picked}")]
    host, ip = picked
    reach, seen = await _reach(ctx, route, host, ip, port)
    checks = [reach]
    public = route.source_address or seen
    if public is None:
        note = "the MX did not say which IP it sees" if reach.status == "pass" else "unreachable"
        checks.append(Check(f"{name}:ip", "skip", f"public IP unknown: {note}"))
        return checks
    how = "its source address" if route.source_address else f"as {host} sees it"
    checks.append(Check(f"{name}:ip", "pass", f"{public} ({how})"))
    if not ctx.dns_ok or ctx.resolver is None:
        return [*checks, Check(f"{name}:ptr", "skip", "DNS is not working")]
    if not check_private and not is_public(public):
        note = f"{public} is private/loopback: only a public IP has PTR and listings"
        return [*checks, Check(f"{name}:ptr", "skip", note)]
    ptr = await check_ptr(ctx, public)
    checks.append(Check(f"{name}:ptr", ptr.status, ptr.detail, ptr.fix))
    for zone in blocklists:
        listed = await check_blocklist(ctx, public, zone)
        checks.append(Check(f"{name}:blocklist:{zone}", listed.status, listed.detail, listed.fix))
    return checks


async def _reach(
    ctx: Context, route: Route, host: str, ip: str, port: int
) -> tuple[Check, str | None]:
    """Greeting and EHLO through the route; the IP the MX says it sees, if it says."""
    name = f"route:{route.name}"
    target = f"{host} ({ip}) port {port} via {route.describe()}"
    timeout = min(ctx.settings.smtp_connect_timeout, MAX_SMTP_TIMEOUT)
    command = min(ctx.settings.smtp_command_timeout, MAX_SMTP_TIMEOUT)
    wire: SMTPWire | None = None
    try:
        wire = await SMTPWire.connect(
            ip, port, timeout=timeout, source_address=route.source_address,
            proxy=route.proxy, server_name=host,
        )  # fmt: skip
        greeting = await wire.read_reply(command)
        if greeting.code != 220:
            detail = f"{target}: refused at the greeting: {greeting.code} {greeting.message}"
            return Check(name, "fail", detail, "the MX refuses this route's IP"), None
        await wire.send(f"EHLO {ctx.settings.smtp_helo_domain}".encode(), timeout=command)
        ehlo = await wire.read_reply(command)
        with contextlib.suppress(WireError):
            await wire.send(b"QUIT", timeout=command)
            await wire.read_reply(min(command, 5.0))
    except WireError as exc:
        fix = FIX_PROXY if exc.failure is WireFailure.PROXY or route.proxy else FIX_PORT25
        return Check(name, "fail", f"{target}: {exc}", fix), None
    finally:
        if wire is not None:
            wire.abort()
    return Check(name, "pass", f"{target}: {greeting.code}; EHLO {ehlo.code}"), _seen_ip(ehlo.lines)


def _seen_ip(lines: Sequence[str]) -> str | None:
    """The client IP an EHLO reply's first line names in brackets, if any."""
    match = _SEEN_IP.search(lines[0]) if lines else None
    if match is None:
        return None
    try:
        return str(ipaddress.ip_address(match.group(1)))
    except ValueError:
        return None
