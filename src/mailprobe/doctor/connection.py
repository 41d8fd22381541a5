"""The SMTP connection (smtp) and what it tells about the egress IP (egress_ip).

doctor connects to an MX on port 25, reads the greeting, says EHLO and QUIT (no
MAIL, no RCPT), all through the shared wire (`mailprobe.smtp_wire`). The local end
of that connection is the egress IP the other checks look at.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket

from mailprobe.address import InvalidAddress
from mailprobe.dns import DNSLookupError, resolve_host, resolve_mx
from mailprobe.doctor.common import FIX_PORT25, MAX_SMTP_TIMEOUT, Check, Context, Egress, is_public
from mailprobe.smtp_wire import STREAM_LIMIT, SMTPWire, WireError, WireFailure, WireReply


def _route_ip(ip: str, port: int) -> str | None:
    """The local address the routing table picks for `ip` (a UDP connect sends nothing)."""
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            sock.connect((ip, port))
            return str(sock.getsockname()[0]).split("%")[0]
    except OSError:
        return None


async def _pick_mx(
    ctx: Context, mx_host: str | None, reference_domain: str
) -> tuple[str, str] | str:
    """(host, ip) to connect to, or why there is none."""
    if mx_host is None:
        if not ctx.dns_ok or ctx.resolver is None:
            return f"no MX of {reference_domain} to connect to: DNS is not working"
        result = await resolve_mx(reference_domain, resolver=ctx.resolver)
        if result.lowest_mx is None:
            return (
                f"no MX of {reference_domain} to connect to ({result.status.value}); "
                "pass --mx-host to test another"
            )
        mx_host = result.lowest_mx
    try:
        return mx_host, str(ipaddress.ip_address(mx_host))
    except ValueError:
        pass
    if not ctx.dns_ok or ctx.resolver is None:
        return f"cannot resolve {mx_host}: DNS is not working"
    try:
        addresses = await resolve_host(mx_host, resolver=ctx.resolver)
    except (DNSLookupError, InvalidAddress) as exc:
        return str(exc)
    if not addresses:
        return f"{mx_host} has no A/AAAA record"
    return mx_host, addresses[0]


async def check_smtp(
    ctx: Context, mx_host: str | None, port: int, reference_domain: str, egress: Egress
) -> Check:
    settings = ctx.settings
    source = settings.smtp_source_address
    if source:
        egress.ip, egress.how = source, "SMTP_SOURCE_ADDRESS"
    picked = await _pick_mx(ctx, mx_host, reference_domain)
    if isinstance(picked, str):
        return Check("smtp", "skip", picked)
    host, ip = picked
    target = f"{host} ({ip}) port {port}" if host != ip else f"{ip} port {port}"
    connect_timeout = min(settings.smtp_connect_timeout, MAX_SMTP_TIMEOUT)
    command_timeout = min(settings.smtp_command_timeout, MAX_SMTP_TIMEOUT)
    wire: SMTPWire | None = None
    try:
        try:
            wire, local_ip = await _connect(ip, port, source, connect_timeout)
        except TimeoutError:
            return Check(
                "smtp",
                "fail",
                f"{target}: no TCP connection within {connect_timeout:g}s",
                FIX_PORT25,
            )
        except OSError as exc:
            return Check("smtp", "fail", f"{target}: {exc.strerror or exc}", FIX_PORT25)
        finally:
            if egress.ip is None and wire is not None:
                egress.ip = local_ip
                egress.how = f"local address of the connection to {host}"
            elif egress.ip is None:
                egress.ip = _route_ip(ip, port)
                egress.how = f"local address routed to {host}; the TCP connection failed"
        greeting = await wire.read_reply(command_timeout)
        if greeting.code != 220:
            return Check(
                "smtp",
                "fail",
                f"{target} refused us at the greeting: {greeting.code} {_first(greeting)}",
                "the server refuses this IP: see the blocklist checks, or send from another IP",
            )
        await wire.send(f"EHLO {settings.smtp_helo_domain}".encode(), timeout=command_timeout)
        ehlo = await wire.read_reply(command_timeout)
        with contextlib.suppress(WireError):  # QUIT is courtesy
            await wire.send(b"QUIT", timeout=command_timeout)
            await wire.read_reply(min(command_timeout, 5.0))
        if ehlo.code != 250:
            return Check(
                "smtp",
                "warn",
                f"{target} greeted us ({greeting.code}) but refused EHLO: {ehlo.code} "
                f"{_first(ehlo)}",
                "servers refuse a HELO name that does not resolve to the sending IP: "
                "fix SMTP_HELO_DOMAIN (see helo and helo_ptr)",
            )
        return Check(
            "smtp", "pass", f"{target}: {greeting.code} {_first(greeting)}; EHLO {ehlo.code}"
        )
    except WireError as exc:
        if exc.failure is WireFailure.TIMEOUT:
            return Check(
                "smtp",
                "fail",
                f"{target}: connected, but no SMTP reply within {command_timeout:g}s",
                "the MX or a middlebox (firewall, antivirus proxy) holds port 25: "
                "try another --mx-host, or run from a host without one",
            )
        return _intercepted(target, exc)
    except OSError as exc:
        return _intercepted(target, exc)
    finally:
        if wire is not None:
            wire.abort()


async def _connect(ip: str, port: int, source: str | None, timeout: float) -> tuple[SMTPWire, str]:
    """A TCP connection to the MX on the shared SMTP wire, and our end's address.

    Opened here rather than by `SMTPWire.connect`: doctor needs the socket's local
    address (the egress IP) and the system's own words for a failed connect.
    """
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_connection(
            ip, port, limit=STREAM_LIMIT, local_addr=(source, 0) if source else None
        )
    local_ip = str(writer.get_extra_info("sockname")[0]).split("%")[0]
    return SMTPWire(reader, writer), local_ip


def _first(reply: WireReply) -> str:
    """The first line of a reply's text ("" for none)."""
    return reply.message.splitlines()[0] if reply.message else ""


def _intercepted(target: str, exc: Exception) -> Check:
    return Check(
        "smtp",
        "fail",
        f"{target}: connected, then {exc}",
        "a middlebox may intercept port 25: try another --mx-host or another host",
    )


def check_egress(egress: Egress, check_private: bool) -> Check:
    if egress.ip is None:
        return Check("egress_ip", "skip", "unknown: no MX address to route to")
    detail = f"{egress.ip} ({egress.how})"
    if is_public(egress.ip):
        return Check("egress_ip", "pass", detail)
    if check_private:
        return Check("egress_ip", "pass", f"{detail}; private/loopback, checked anyway")
    return Check(
        "egress_ip",
        "warn",
        f"{detail} is private/loopback: behind NAT the servers see another, public IP; "
        "the PTR, SPF and blocklist checks are skipped for it",
        "run doctor where the sending IP is bound, or check PTR/SPF/blocklists of the "
        "NAT's public IP by hand",
    )


def ip_ready(ctx: Context, egress: Egress, check_private: bool) -> str | None:
    """Why the IP checks cannot run, or None when they can."""
    if egress.ip is None:
        return "egress IP unknown"
    if not ctx.dns_ok or ctx.resolver is None:
        return "DNS is not working"
    if not check_private and not is_public(egress.ip):
        return f"{egress.ip} is private/loopback: only the public IP matters"
    return None
