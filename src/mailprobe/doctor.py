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
* redis, database — reachable, when configured.

Every network step is bounded: DNS by the resolver's lifetime (DNS_TIMEOUT),
SMTP by SMTP_CONNECT_TIMEOUT / SMTP_COMMAND_TIMEOUT, Redis by REDIS_TIMEOUT.
When DNS does not answer, the checks that need it are skipped rather than
each waiting out its own timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import re
import socket
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import dns.asyncresolver
import dns.exception
import dns.name
import dns.rdatatype
import dns.resolver
import dns.reversename

from mailprobe.address import InvalidAddress, check_hostname, parse_address
from mailprobe.config import Settings
from mailprobe.dns import (
    DNSLookupError,
    ResolutionStatus,
    default_resolver,
    resolve_host,
    resolve_mx,
)
from mailprobe.redact import redact_url

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
_BELT_SLACK = 1.0  # beyond the resolver's lifetime, in case the resolver overruns it

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


# -- DNS plumbing ----------------------------------------------------------------


class _LookupFailed(Exception):
    """A temporary DNS failure: timeout, SERVFAIL, REFUSED, no server answered."""


async def _lookup(
    resolver: dns.asyncresolver.Resolver, name: str | dns.name.Name, rdtype: str
) -> list[Any] | None:
    """The rdatas for `name`/`rdtype`: [] for NODATA, None for NXDOMAIN; _LookupFailed else."""
    qname = name if isinstance(name, dns.name.Name) else dns.name.from_text(name)
    try:
        async with asyncio.timeout(float(resolver.lifetime) + _BELT_SLACK):
            answer = await resolver.resolve(
                qname, dns.rdatatype.from_text(rdtype), raise_on_no_answer=False, search=False
            )
    except dns.resolver.NXDOMAIN:
        return None
    except TimeoutError:
        raise _LookupFailed(f"no answer within {float(resolver.lifetime):g}s") from None
    except (dns.exception.DNSException, OSError, ValueError) as exc:
        raise _LookupFailed(f"{type(exc).__name__}: {exc}") from None
    return list(answer.rrset) if answer.rrset is not None else []


async def _addresses(resolver: dns.asyncresolver.Resolver, host: str) -> list[str]:
    """A and AAAA of `host` ([] when it has none or does not exist); _LookupFailed else."""
    out: list[str] = []
    for rdtype in ("A", "AAAA"):
        rdatas = await _lookup(resolver, host, rdtype)
        if rdatas is None:
            return []
        out.extend(str(r.address) for r in rdatas)
    return out


def _is_public(ip: str) -> bool:
    return ipaddress.ip_address(ip).is_global


# -- SPF ---------------------------------------------------------------------------

SPFResultName = Literal[
    "pass", "fail", "softfail", "neutral", "none", "permerror", "temperror", "unsupported"
]
_QUALIFIERS: dict[str, SPFResultName] = {
    "+": "pass",
    "-": "fail",
    "~": "softfail",
    "?": "neutral",
}
_MODIFIER = re.compile(r"^([a-z][a-z0-9_.-]*)=(.*)$", re.IGNORECASE)
_MECHANISM = re.compile(
    r"^([+?~-]?)(all|include|a|mx|ptr|ip4|ip6|exists)(?::([^/]*))?"
    r"(?:/(\d{1,3}))?(?://(\d{1,3}))?$",
    re.IGNORECASE,
)


@dataclass
class SPFOutcome:
    result: SPFResultName
    detail: str
    record: str | None = None


class _SPFError(Exception):
    def __init__(self, result: SPFResultName, detail: str) -> None:
        super().__init__(detail)
        self.result = result
        self.detail = detail


class SPFEvaluator:
    """RFC 7208 check_host() for the mechanisms real records use, on our own resolver.

    Why not pyspf: it is synchronous, last released in 2020, and asks DNS through
    its own layer, which would not see DNS_NAMESERVERS (nor the simulated world)
    without monkeypatching. This evaluator covers ip4, ip6, a, mx, include, exists,
    all and redirect (with /cidr lengths), the §4.6.4 limits of 10 DNS-querying
    terms and 2 void lookups, and more than one record = permerror.

    Known gaps, each reported rather than guessed: macros (%{i}, %{d}...) give
    "unsupported"; `ptr` (deprecated by §5.5) never matches; `exp=` is ignored.
    """

    MAX_LOOKUPS = 10
    MAX_VOID_LOOKUPS = 2
    MAX_MX_HOSTS = 10

    def __init__(self, resolver: dns.asyncresolver.Resolver) -> None:
        self.resolver = resolver
        self.lookups = 0
        self.void_lookups = 0
        self.notes: list[str] = []

    async def check_host(self, ip: str, domain: str) -> SPFOutcome:
        """The SPF result for `ip` sending as `domain`."""
        self.lookups = self.void_lookups = 0
        self.notes = []
        try:
            return await self._check(ipaddress.ip_address(ip), domain.rstrip(".").lower(), 0)
        except _SPFError as exc:
            return SPFOutcome(exc.result, exc.detail)
        except (dns.exception.DNSException, ValueError) as exc:  # e.g. a malformed domain-spec
            return SPFOutcome("permerror", f"{domain}: {type(exc).__name__}: {exc}")

    async def _record(self, domain: str) -> str | None:
        try:
            rdatas = await _lookup(self.resolver, domain, "TXT")
        except _LookupFailed as exc:
            raise _SPFError("temperror", f"TXT lookup of {domain} failed: {exc}") from None
        except dns.exception.DNSException as exc:  # not a valid domain name
            raise _SPFError("permerror", f"{domain!r} is not a domain name: {exc}") from None
        texts = [b"".join(r.strings).decode("utf-8", "replace") for r in rdatas or []]
        spf = [t for t in texts if t.lower() == "v=spf1" or t.lower().startswith("v=spf1 ")]
        if len(spf) > 1:
            raise _SPFError("permerror", f"{domain} publishes {len(spf)} SPF records (§4.5)")
        return spf[0] if spf else None

    def _count(self, term: str) -> None:
        self.lookups += 1
        if self.lookups > self.MAX_LOOKUPS:
            raise _SPFError(
                "permerror", f"more than {self.MAX_LOOKUPS} DNS-querying terms (§4.6.4) at {term}"
            )

    def _void(self, term: str) -> None:
        self.void_lookups += 1
        if self.void_lookups > self.MAX_VOID_LOOKUPS:
            raise _SPFError(
                "permerror", f"more than {self.MAX_VOID_LOOKUPS} void lookups (§4.6.4) at {term}"
            )

    async def _hosts(self, name: str, ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> Any:
        try:
            return await _lookup(self.resolver, name, "A" if ip.version == 4 else "AAAA")
        except _LookupFailed as exc:
            raise _SPFError("temperror", f"lookup of {name} failed: {exc}") from None

    async def _check(
        self, ip: ipaddress.IPv4Address | ipaddress.IPv6Address, domain: str, depth: int
    ) -> SPFOutcome:
        record = await self._record(domain)
        if record is None:
            return SPFOutcome("none", f"{domain} publishes no SPF record")
        redirect: str | None = None
        for term in record.split()[1:]:
            modifier = _MODIFIER.match(term)
            if modifier:
                if modifier.group(1).lower() == "redirect":
                    if redirect is not None:
                        raise _SPFError("permerror", f"{domain}: two redirect= modifiers")
                    redirect = modifier.group(2)
                continue  # exp= and unknown modifiers are ignored (§6)
            mech = _MECHANISM.match(term)
            if not mech:
                raise _SPFError("permerror", f"{domain}: unknown term {term!r}")
            if "%" in term:
                raise _SPFError(
                    "unsupported", f"{domain}: {term!r} uses SPF macros, which doctor cannot expand"
                )
            qualifier = _QUALIFIERS[mech.group(1) or "+"]
            if await self._matches(ip, domain, term, mech, depth):
                return SPFOutcome(qualifier, f"{domain}: {term!r} matched", record)
        if redirect is not None:
            if "%" in redirect:
                raise _SPFError("unsupported", f"{domain}: redirect uses SPF macros")
            self._count(f"redirect={redirect}")
            target = redirect.rstrip(".").lower()
            sub = await self._check(ip, target, depth + 1)
            if sub.result == "none":
                raise _SPFError("permerror", f"{domain}: redirect to {target}, which has no SPF")
            return sub
        return SPFOutcome("neutral", f"{domain}: no term matched (default ?all)", record)

    async def _matches(
        self,
        ip: ipaddress.IPv4Address | ipaddress.IPv6Address,
        domain: str,
        term: str,
        mech: re.Match[str],
        depth: int,
    ) -> bool:
        kind = mech.group(2).lower()
        target = (mech.group(3) or domain).rstrip(".").lower()
        if kind == "all":
            return True
        if kind in ("ip4", "ip6"):
            if not mech.group(3):
                raise _SPFError("permerror", f"{domain}: {term!r} names no network")
            length = mech.group(4) if kind == "ip4" else (mech.group(4) or mech.group(5))
            try:
                net = ipaddress.ip_network(
                    mech.group(3) + (f"/{length}" if length else ""), strict=False
                )
            except ValueError:
                raise _SPFError("permerror", f"{domain}: bad network in {term!r}") from None
            if net.version != (4 if kind == "ip4" else 6):
                raise _SPFError("permerror", f"{domain}: {term!r} has the wrong address family")
            return ip.version == net.version and ip in net
        cidr4 = int(mech.group(4)) if mech.group(4) else 32
        cidr6 = int(mech.group(5)) if mech.group(5) else 128
        if cidr4 > 32 or cidr6 > 128:
            raise _SPFError("permerror", f"{domain}: bad CIDR length in {term!r}")
        prefix = cidr4 if ip.version == 4 else cidr6

        def within(address: str) -> bool:
            net = ipaddress.ip_network(f"{address}/{prefix}", strict=False)
            return ip.version == net.version and ip in net

        if kind == "include":
            if depth >= self.MAX_LOOKUPS or not mech.group(3):
                raise _SPFError("permerror", f"{domain}: bad or too deep {term!r}")
            self._count(term)
            sub = await self._check(ip, target, depth + 1)
            if sub.result in ("temperror", "unsupported"):
                raise _SPFError(sub.result, sub.detail)
            if sub.result in ("permerror", "none"):
                raise _SPFError("permerror", f"{term!r}: {sub.detail}")
            if sub.result == "pass":
                self.notes.append(sub.detail)
            return sub.result == "pass"
        if kind == "a":
            self._count(term)
            rdatas = await self._hosts(target, ip)
            if not rdatas:
                self._void(term)
            return any(within(str(r.address)) for r in rdatas or [])
        if kind == "mx":
            self._count(term)
            try:
                mxs = await _lookup(self.resolver, target, "MX")
            except _LookupFailed as exc:
                raise _SPFError("temperror", f"MX lookup of {target} failed: {exc}") from None
            if not mxs:
                self._void(term)
                return False
            if len(mxs) > self.MAX_MX_HOSTS:
                raise _SPFError("permerror", f"{term!r}: more than {self.MAX_MX_HOSTS} MX (§4.6.4)")
            for mx in mxs:
                exchange = mx.exchange.to_text(omit_final_dot=True)
                if exchange in ("", "."):
                    continue
                if any(within(str(r.address)) for r in await self._hosts(exchange, ip) or []):
                    return True
            return False
        if kind == "exists":
            if not mech.group(3):
                raise _SPFError("permerror", f"{domain}: exists names no domain")
            self._count(term)
            try:
                found = await _lookup(self.resolver, target, "A")
            except _LookupFailed as exc:
                raise _SPFError("temperror", f"lookup of {target} failed: {exc}") from None
            if not found:
                self._void(term)
            return bool(found)
        # ptr: deprecated (§5.5) and slow; counted, never matched (a documented gap).
        self._count(term)
        self.notes.append(f"{domain}: {term!r} not evaluated (ptr is deprecated)")
        return False


# -- the checks --------------------------------------------------------------------


@dataclass
class _Egress:
    ip: str | None = None
    how: str = ""


@dataclass
class _Context:
    settings: Settings
    resolver: dns.asyncresolver.Resolver | None
    dns_ok: bool = False
    helo_addresses: list[str] | None = None  # None = not known
    ptr_names: list[str] = field(default_factory=list)  # forward-confirmed PTR names


def _shown_nameserver(nameserver: Any) -> str:
    address, port = getattr(nameserver, "address", None), getattr(nameserver, "port", 53)
    if address is None:
        return str(nameserver)
    return f"[{address}]:{port}" if ":" in str(address) else f"{address}:{port}"


async def _check_dns(ctx: _Context, reference_domain: str, error: str | None) -> Check:
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


async def _check_helo(ctx: _Context) -> Check:
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
        addresses = await _addresses(ctx.resolver, host)
    except _LookupFailed as exc:
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


async def _check_mail_from(ctx: _Context) -> Check:
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


async def _read_reply(reader: asyncio.StreamReader, timeout: float) -> tuple[int, str]:
    """One SMTP reply (multi-line joined by newlines), within `timeout` seconds."""
    lines: list[str] = []
    async with asyncio.timeout(timeout):
        while len(lines) < 100:
            raw = await reader.readline()
            if not raw:
                raise ConnectionError("the server closed the connection")
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            if len(line) < 3 or not line[:3].isdigit():
                raise ConnectionError(f"not an SMTP reply: {line[:80]!r}")
            lines.append(line[4:])
            if line[3:4] != "-":
                return int(line[:3]), "\n".join(lines)
    raise ConnectionError("reply of more than 100 lines")


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
    ctx: _Context, mx_host: str | None, reference_domain: str
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


async def _check_smtp(
    ctx: _Context, mx_host: str | None, port: int, reference_domain: str, egress: _Egress
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
    writer: asyncio.StreamWriter | None = None
    try:
        try:
            async with asyncio.timeout(connect_timeout):
                reader, writer = await asyncio.open_connection(
                    ip, port, local_addr=(source, 0) if source else None
                )
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
            if egress.ip is None and writer is not None:
                egress.ip = str(writer.get_extra_info("sockname")[0]).split("%")[0]
                egress.how = f"local address of the connection to {host}"
            elif egress.ip is None:
                egress.ip = _route_ip(ip, port)
                egress.how = f"local address routed to {host}; the TCP connection failed"
        code, text = await _read_reply(reader, command_timeout)
        first = text.splitlines()[0] if text else ""
        if code != 220:
            return Check(
                "smtp",
                "fail",
                f"{target} refused us at the greeting: {code} {first}",
                "the server refuses this IP: see the blocklist checks, or send from another IP",
            )
        writer.write(f"EHLO {settings.smtp_helo_domain}\r\n".encode())
        await writer.drain()
        ehlo_code, ehlo_text = await _read_reply(reader, command_timeout)
        writer.write(b"QUIT\r\n")
        await writer.drain()
        with contextlib.suppress(TimeoutError, ConnectionError, OSError):  # QUIT is courtesy
            await _read_reply(reader, min(command_timeout, 5.0))
        if ehlo_code != 250:
            return Check(
                "smtp",
                "warn",
                f"{target} greeted us ({code}) but refused EHLO: {ehlo_code} "
                f"{ehlo_text.splitlines()[0] if ehlo_text else ''}",
                "servers refuse a HELO name that does not resolve to the sending IP: "
                "fix SMTP_HELO_DOMAIN (see helo and helo_ptr)",
            )
        return Check("smtp", "pass", f"{target}: {code} {first}; EHLO {ehlo_code}")
    except TimeoutError:
        return Check(
            "smtp",
            "fail",
            f"{target}: connected, but no SMTP reply within {command_timeout:g}s",
            "the MX or a middlebox (firewall, antivirus proxy) holds port 25: "
            "try another --mx-host, or run from a host without one",
        )
    except (ConnectionError, OSError) as exc:
        return Check(
            "smtp",
            "fail",
            f"{target}: connected, then {exc}",
            "a middlebox may intercept port 25: try another --mx-host or another host",
        )
    finally:
        if writer is not None:
            writer.transport.abort()


def _check_egress(egress: _Egress, check_private: bool) -> Check:
    if egress.ip is None:
        return Check("egress_ip", "skip", "unknown: no MX address to route to")
    detail = f"{egress.ip} ({egress.how})"
    if _is_public(egress.ip):
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


def _ip_ready(ctx: _Context, egress: _Egress, check_private: bool) -> str | None:
    """Why the IP checks cannot run, or None when they can."""
    if egress.ip is None:
        return "egress IP unknown"
    if not ctx.dns_ok or ctx.resolver is None:
        return "DNS is not working"
    if not check_private and not _is_public(egress.ip):
        return f"{egress.ip} is private/loopback: only the public IP matters"
    return None


async def _check_ptr(ctx: _Context, ip: str) -> Check:
    assert ctx.resolver is not None
    helo = ctx.settings.smtp_helo_domain
    try:
        rdatas = await _lookup(ctx.resolver, dns.reversename.from_address(ip), "PTR")
    except _LookupFailed as exc:
        return Check("ptr", "warn", f"cannot look up the PTR of {ip}: {exc}", FIX_DNS)
    names = [r.target.to_text(omit_final_dot=True).lower() for r in rdatas or []]
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
            forward = await _addresses(ctx.resolver, name)
        except _LookupFailed as exc:
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


def _check_helo_ptr(ctx: _Context, ip: str) -> Check:
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


async def _check_spf(ctx: _Context, ip: str) -> Check:
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


def _dnsbl_name(ip: str, zone: str) -> str:
    address = ipaddress.ip_address(ip)
    if address.version == 4:
        labels = str(address).split(".")
    else:
        labels = list(address.exploded.replace(":", ""))
    return ".".join(reversed(labels)) + "." + zone.strip(".")


async def _check_blocklist(ctx: _Context, ip: str, zone: str) -> Check:
    assert ctx.resolver is not None
    name = f"blocklist:{zone}"
    query = _dnsbl_name(ip, zone)
    try:
        rdatas = await _lookup(ctx.resolver, query, "A")
    except _LookupFailed as exc:
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
            txt = await _lookup(ctx.resolver, query, "TXT")
            texts = [b"".join(r.strings).decode("utf-8", "replace") for r in txt or []]
            reason = f": {texts[0]}" if texts else ""
        except _LookupFailed:
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


async def _check_redis(settings: Settings) -> Check:
    url = settings.redis_url
    if not url:
        return Check("redis", "skip", "REDIS_URL not set: queueing runs in-process")
    import redis.asyncio
    import redis.exceptions

    client = redis.asyncio.Redis.from_url(
        url, socket_connect_timeout=REDIS_TIMEOUT, socket_timeout=REDIS_TIMEOUT
    )
    try:
        async with asyncio.timeout(2 * REDIS_TIMEOUT + _BELT_SLACK):
            await client.ping()
    except (redis.exceptions.RedisError, OSError, TimeoutError) as exc:
        return Check(
            "redis",
            "fail",
            f"cannot reach {redact_url(url)}: {type(exc).__name__}: {exc}",
            "start Redis or correct REDIS_URL (unset it to run without a queue)",
        )
    finally:
        await client.aclose()
    return Check("redis", "pass", f"{redact_url(url)} answered PING")


def _sqlite_pending(url: str) -> str | None:
    """For a SQLite file that does not exist yet, why that is fine (or None)."""
    from mailprobe.store.database import normalise_url

    parsed = normalise_url(url)
    path = parsed.database
    if parsed.get_backend_name() != "sqlite" or not path or path == ":memory:":
        return None
    if path.startswith("file:") or os.path.exists(path):
        return None
    parent = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if os.path.isdir(parent) and os.access(parent, os.W_OK | os.X_OK):
        return f"{path} does not exist yet; it will be created on first use"
    return None


async def _check_database(settings: Settings) -> Check:
    from mailprobe.store.database import Store, StoreError

    url = settings.database_url
    fix = (
        "check DATABASE_URL, that the server is up and the credentials; then `mailprobe db upgrade`"
    )

    def check() -> str:
        pending = _sqlite_pending(url)
        if pending is not None:  # do not create files just to look at them
            return pending
        store = Store(url)
        try:
            store.check()
            return f"{store.shown_url} answered"
        finally:
            store.dispose()

    try:
        detail = await asyncio.to_thread(check)
    except StoreError as exc:
        return Check("database", "fail", str(exc), fix)
    except Exception as exc:  # a driver error the store does not wrap
        return Check("database", "fail", f"{type(exc).__name__}: {exc}", fix)
    return Check("database", "pass", detail)


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
    ctx = _Context(settings, resolver)
    # DNS first: when it does not answer, the checks that need it are skipped.
    dns_check = await _guarded("dns", _check_dns(ctx, reference_domain, error))

    egress = _Egress()
    helo, mail_from, smtp, redis_check, database = await asyncio.gather(
        _guarded("helo", _check_helo(ctx)),
        _guarded("mail_from", _check_mail_from(ctx)),
        _guarded(
            "smtp", _check_smtp(ctx, mx_host, port or settings.smtp_port, reference_domain, egress)
        ),
        _guarded("redis", _check_redis(settings)),
        _guarded("database", _check_database(settings)),
    )
    checks = [dns_check, helo, mail_from, smtp, _check_egress(egress, check_private)]

    why_not = _ip_ready(ctx, egress, check_private)
    if why_not is not None or egress.ip is None:
        note = f"skipped: {why_not}"
        checks += [Check("ptr", "skip", note), Check("helo_ptr", "skip", note)]
        checks.append(Check("spf", "skip", note))
        if egress.ip is not None and ctx.dns_ok and not _is_public(egress.ip):
            note = f"skipped: {egress.ip} is private/loopback: blocklists list only public IPs"
        checks += [Check(f"blocklist:{zone}", "skip", note) for zone in blocklists]
    else:
        ip = egress.ip
        ip_checks = [_guarded("ptr", _check_ptr(ctx, ip)), _guarded("spf", _check_spf(ctx, ip))]
        ip_checks += [
            _guarded(f"blocklist:{zone}", _check_blocklist(ctx, ip, zone)) for zone in blocklists
        ]
        ptr, spf, *listed = await asyncio.gather(*ip_checks)
        checks += [ptr, _check_helo_ptr(ctx, ip), spf, *listed]
    return [*checks, redis_check, database]


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
