"""The resolver itself (dns) and the DNS blocklists (blocklist:<zone>)."""

from __future__ import annotations

import ipaddress
from typing import Any

from mailprobe.dns import DNSLookupError, ResolutionStatus, lookup, lookup_txt, resolve_mx
from mailprobe.doctor.common import BLOCKLIST_PAGES, FIX_DNS, Check, Context


def _shown_nameserver(nameserver: Any) -> str:
    address, port = getattr(nameserver, "address", None), getattr(nameserver, "port", 53)
    if address is None:
        return str(nameserver)
    return f"[{address}]:{port}" if ":" in str(address) else f"{address}:{port}"


async def check_dns(ctx: Context, reference_domain: str, error: str | None) -> Check:
    if ctx.resolver is None:
        return Check("dns", "fail", f"no resolver: {error}", FIX_DNS)
    servers = ", ".join(_shown_nameserver(n) for n in ctx.resolver.nameservers) or "none"
    result = await resolve_mx(reference_domain, resolver=ctx.resolver)
    if result.status is ResolutionStatus.DNS_ERROR:
        return Check(
            "dns",
            "fail",
            f"MX of {reference_domain} via {servers}: {result.error}",
            FIX_DNS,
        )
    ctx.dns_ok = True
    if result.status is ResolutionStatus.OK:
        return Check(
            "dns",
            "pass",
            f"MX of {reference_domain} via {servers}: {', '.join(result.hosts)}",
        )
    return Check(
        "dns",
        "warn",
        f"the resolver ({servers}) says {reference_domain} has {result.status.value}",
        "the resolver filters or rewrites answers: use one that answers as the Internet does",
    )


def _dnsbl_name(ip: str, zone: str) -> str:
    address = ipaddress.ip_address(ip)
    if address.version == 4:
        labels = str(address).split(".")
    else:
        labels = list(address.exploded.replace(":", ""))
    return ".".join(reversed(labels)) + "." + zone.strip(".")


async def check_blocklist(ctx: Context, ip: str, zone: str) -> Check:
    assert ctx.resolver is not None
    name = f"blocklist:{zone}"
    query = _dnsbl_name(ip, zone)
    try:
        rdatas = await lookup(ctx.resolver, query, "A")
    except DNSLookupError as exc:
        return Check(
            name,
            "warn",
            f"cannot query {zone} for {ip}: {exc}",
            "retry later; a list that does not answer may be refusing your resolver",
        )
    if not rdatas:
        return Check(name, "pass", f"{ip} is not listed on {zone}")
    codes = [ipaddress.ip_address(str(r.address)) for r in rdatas]
    shown = ", ".join(map(str, codes))
    if any(c in ipaddress.ip_network("127.255.255.0/24") for c in codes):
        return Check(
            name,
            "warn",
            f"{zone} refused the query ({shown}): it does not answer via public/open "
            "resolvers or over its free-use limit",
            "point DNS_NAMESERVERS at your own recursive resolver (not 8.8.8.8 or 1.1.1.1), "
            f"or look {ip} up at {BLOCKLIST_PAGES.get(zone, zone)}",
        )
    if all(c in ipaddress.ip_network("127.0.0.0/8") for c in codes):
        reason = ""
        try:
            texts = await lookup_txt(ctx.resolver, query)
            reason = f": {texts[0]}" if texts else ""
        except DNSLookupError:
            pass
        return Check(
            name,
            "fail",
            f"{ip} is LISTED on {zone} ({shown}){reason}",
            f"fix the cause, then request delisting at {BLOCKLIST_PAGES.get(zone, zone)} "
            "(or send from another IP)",
        )
    return Check(
        name,
        "warn",
        f"{zone} answered {shown}, not a 127.0.0.0/8 list code: the resolver rewrites "
        "NXDOMAIN answers",
        "use a resolver that returns NXDOMAIN as is (not an ISP's with search redirection)",
    )
