"""Who we say we are: the HELO name, the MAIL FROM domain, the egress IP's PTR, SPF."""

from __future__ import annotations

import ipaddress

from mailprobe.address import InvalidAddress, check_hostname, parse_address
from mailprobe.dns import DNSLookupError, ResolutionStatus, lookup_addresses, lookup_ptr, resolve_mx
from mailprobe.doctor.common import FIX_DNS, Check, Context
from mailprobe.spf import SPFEvaluator


async def check_helo(ctx: Context) -> Check:
    helo = ctx.settings.smtp_helo_domain
    fix = "set SMTP_HELO_DOMAIN to a host name whose A record is the egress IP (its PTR name)"
    try:
        ipaddress.ip_address(helo.strip("[]"))
        return Check("helo", "fail", f"SMTP_HELO_DOMAIN {helo!r} is an IP address", fix)
    except ValueError:
        pass
    try:
        host = check_hostname(helo, "SMTP_HELO_DOMAIN")
    except InvalidAddress as exc:
        return Check("helo", "fail", str(exc), fix)
    if "." not in host:
        return Check("helo", "fail", f"SMTP_HELO_DOMAIN {helo!r} is not fully qualified", fix)
    if not ctx.dns_ok or ctx.resolver is None:
        return Check("helo", "skip", f"{host} is a host name; not resolved: DNS is not working")
    try:
        addresses = await lookup_addresses(ctx.resolver, host)
    except DNSLookupError as exc:
        return Check("helo", "warn", f"cannot resolve {host}: {exc}", FIX_DNS)
    ctx.helo_addresses = addresses
    if not addresses:
        return Check(
            "helo",
            "fail",
            f"{host} has no A/AAAA record: many servers refuse an unknown HELO name",
            f"publish an A record for {host} pointing to the egress IP",
        )
    return Check("helo", "pass", f"{host} resolves to {', '.join(addresses)}")


async def check_mail_from(ctx: Context) -> Check:
    raw = ctx.settings.smtp_mail_from
    fix = "set SMTP_MAIL_FROM to an address in a domain with an MX you can read bounces from"
    try:
        address = parse_address(raw)
    except InvalidAddress as exc:
        return Check("mail_from", "fail", f"SMTP_MAIL_FROM: {exc}", fix)
    domain = address.ascii_domain
    if not ctx.dns_ok or ctx.resolver is None:
        return Check("mail_from", "skip", f"{raw}: not resolved: DNS is not working")
    result = await resolve_mx(domain, resolver=ctx.resolver)
    if result.status is ResolutionStatus.OK:
        how = "A/AAAA (no MX)" if result.implicit else f"MX {', '.join(result.hosts)}"
        return Check("mail_from", "pass", f"{domain} can receive bounces: {how}")
    if result.status is ResolutionStatus.DNS_ERROR:
        return Check("mail_from", "warn", f"cannot resolve {domain}: {result.error}", FIX_DNS)
    what = {
        ResolutionStatus.NULL_MX: "publishes a null MX (accepts no mail)",
        ResolutionStatus.NO_SUCH_DOMAIN: "does not exist",
        ResolutionStatus.NO_MAIL_HOST: "has no MX and no A/AAAA record",
    }[result.status]
    return Check(
        "mail_from",
        "fail",
        f"{domain} {what}: bounces are lost and many servers refuse such a sender",
        fix,
    )


async def check_ptr(ctx: Context, ip: str) -> Check:
    assert ctx.resolver is not None
    helo = ctx.settings.smtp_helo_domain
    try:
        names = await lookup_ptr(ctx.resolver, ip)
    except DNSLookupError as exc:
        return Check("ptr", "warn", f"cannot look up the PTR of {ip}: {exc}", FIX_DNS)
    if not names:
        return Check(
            "ptr",
            "fail",
            f"{ip} has no PTR record: many servers refuse mail from IPs without reverse DNS",
            f"ask the owner of {ip} (your hosting provider) to set its PTR to {helo}",
        )
    mismatched: list[str] = []
    for name in names:
        try:
            forward = await lookup_addresses(ctx.resolver, name)
        except DNSLookupError as exc:
            return Check("ptr", "warn", f"PTR {name}: cannot resolve it back: {exc}", FIX_DNS)
        if ipaddress.ip_address(ip) in {ipaddress.ip_address(a) for a in forward}:
            ctx.ptr_names.append(name)
        else:
            mismatched.append(f"{name} -> {', '.join(forward) or 'nothing'}")
    if ctx.ptr_names:
        return Check("ptr", "pass", f"{ip} -> {ctx.ptr_names[0]} -> {ip} (forward-confirmed)")
    return Check(
        "ptr",
        "fail",
        f"PTR of {ip} is not forward-confirmed: {'; '.join(mismatched)}",
        f"publish an A/AAAA record {names[0]} -> {ip}, or point the PTR at a name that has one",
    )


def check_helo_ptr(ctx: Context, ip: str) -> Check:
    helo = ctx.settings.smtp_helo_domain.lower().rstrip(".")
    if not ctx.ptr_names:
        return Check(
            "helo_ptr", "skip", "no forward-confirmed PTR to compare SMTP_HELO_DOMAIN with"
        )
    if helo in ctx.ptr_names:
        return Check("helo_ptr", "pass", f"SMTP_HELO_DOMAIN {helo} is the PTR name of {ip}")
    helo_ips = {ipaddress.ip_address(a) for a in ctx.helo_addresses or []}
    if ipaddress.ip_address(ip) in helo_ips:
        return Check(
            "helo_ptr",
            "pass",
            f"SMTP_HELO_DOMAIN {helo} is not the PTR name ({ctx.ptr_names[0]}) "
            f"but resolves to {ip}",
        )
    return Check(
        "helo_ptr",
        "warn",
        f"SMTP_HELO_DOMAIN {helo} differs from the PTR name {ctx.ptr_names[0]} "
        f"and does not resolve to {ip}",
        f"set SMTP_HELO_DOMAIN={ctx.ptr_names[0]} (or point {helo} at {ip})",
    )


async def check_spf(ctx: Context, ip: str) -> Check:
    assert ctx.resolver is not None
    try:
        domain = parse_address(ctx.settings.smtp_mail_from).ascii_domain
    except InvalidAddress:
        return Check("spf", "skip", "SMTP_MAIL_FROM is not a valid address")
    outcome = await SPFEvaluator(ctx.resolver).check_host(ip, domain)
    record = f' ("{outcome.record}")' if outcome.record else ""
    add = f"add ip{ipaddress.ip_address(ip).version}:{ip} to the SPF record of {domain}"
    if outcome.result == "pass":
        return Check("spf", "pass", f"{domain} allows {ip}: {outcome.detail}")
    if outcome.result == "none":
        return Check(
            "spf",
            "warn",
            f"{domain} publishes no SPF record: some servers refuse or distrust the sender",
            f'publish TXT "v=spf1 ip{ipaddress.ip_address(ip).version}:{ip} -all" at {domain}',
        )
    if outcome.result == "fail":
        return Check("spf", "fail", f"{domain} forbids {ip}: {outcome.detail}{record}", add)
    if outcome.result in ("softfail", "neutral"):
        return Check(
            "spf",
            "warn",
            f"{domain} does not vouch for {ip} ({outcome.result}): {outcome.detail}{record}",
            add,
        )
    if outcome.result == "permerror":
        return Check(
            "spf",
            "fail",
            f"the SPF record of {domain} is broken: {outcome.detail}",
            f"fix the SPF record of {domain} (check it with an SPF validator)",
        )
    if outcome.result == "unsupported":
        return Check(
            "spf",
            "warn",
            f"cannot evaluate: {outcome.detail}",
            f"check {ip} against the SPF of {domain} with a full SPF validator",
        )
    return Check("spf", "warn", f"SPF of {domain}: temporary error: {outcome.detail}", FIX_DNS)
