"""SPF (RFC 7208): does a domain's SPF record allow an IP to send as it?

`SPFEvaluator.check_host` is RFC 7208's check_host() for the mechanisms real
records use, asking DNS through `mailprobe.dns` (so DNS_NAMESERVERS, and the
simulated world, apply). Its result is an `SPFOutcome`: one of RFC 7208's results
(pass, fail, softfail, neutral, none, permerror, temperror) or "unsupported" for
what it does not evaluate (macros), with the reason in words.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Any, Literal

import dns.asyncresolver
import dns.exception

from mailprobe.dns import DNSLookupError, lookup, lookup_txt

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
            texts = await lookup_txt(self.resolver, domain)
        except DNSLookupError as exc:
            raise _SPFError("temperror", f"TXT lookup of {domain} failed: {exc}") from None
        except dns.exception.DNSException as exc:  # not a valid domain name
            raise _SPFError("permerror", f"{domain!r} is not a domain name: {exc}") from None
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
            return await lookup(self.resolver, name, "A" if ip.version == 4 else "AAAA")
        except DNSLookupError as exc:
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
                mxs = await lookup(self.resolver, target, "MX")
            except DNSLookupError as exc:
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
                found = await lookup(self.resolver, target, "A")
            except DNSLookupError as exc:
                raise _SPFError("temperror", f"lookup of {target} failed: {exc}") from None
            if not found:
                self._void(term)
            return bool(found)
        # ptr: deprecated (§5.5) and slow; counted, never matched (a documented gap).
        self._count(term)
        self.notes.append(f"{domain}: {term!r} not evaluated (ptr is deprecated)")
        return False
