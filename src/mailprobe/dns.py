"""MX resolution (RFC 5321 §5.1, RFC 7505) on dnspython's async resolver.

`resolve_mx` never raises for a DNS problem: every outcome is an `MXResolution`
whose status says what to do next — probe the hosts (OK), give up for good
(NULL_MX, NO_SUCH_DOMAIN, NO_MAIL_HOST) or try again later (DNS_ERROR). Only a
domain that is not a valid host name raises (InvalidAddress), since no lookup
could help it. The TTL travels with the answer so the store can cache it.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import ipaddress
import random
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, TypeVar

import dns.asyncresolver
import dns.exception
import dns.message
import dns.name
import dns.nameserver
import dns.rdatatype
import dns.resolver
import dns.reversename
import dns.rrset

from mailprobe.address import InvalidAddress, check_hostname
from mailprobe.config import Settings, get_settings, parse_nameserver

# Extra seconds the outer asyncio.timeout allows beyond the resolver's own lifetime:
# the lifetime should always fire first; this only guards against a resolver bug.
_BELT_SLACK = 1.0
_DEFAULT_RNG = random.Random()
T = TypeVar("T")


class ResolutionStatus(StrEnum):
    OK = "ok"
    NULL_MX = "null_mx"  # RFC 7505 "MX 0 .": the domain accepts no mail
    NO_SUCH_DOMAIN = "no_such_domain"  # NXDOMAIN
    NO_MAIL_HOST = "no_mail_host"  # no MX and no A/AAAA to fall back on
    DNS_ERROR = "dns_error"  # SERVFAIL, timeout, refused, no server answered: temporary


@dataclass(frozen=True, slots=True)
class MXRecord:
    preference: int
    host: str  # lowercase ASCII, no trailing dot


@dataclass(frozen=True, slots=True)
class MXResolution:
    """The outcome for one domain, in the order hosts should be tried."""

    domain: str  # ASCII (IDNA) form
    status: ResolutionStatus
    records: tuple[MXRecord, ...] = ()
    ttl: int = 0  # seconds: answer TTL, or the negative TTL from the SOA, or 0
    implicit: bool = False  # no MX: the domain's own A/AAAA serves as MX (RFC 5321 §5.1)
    error: str | None = None

    @property
    def lowest_mx(self) -> str | None:
        return self.records[0].host if self.records else None

    @property
    def hosts(self) -> list[str]:
        return [r.host for r in self.records]

    def try_order(self, rng: random.Random | None = None) -> list[str]:
        """The hosts in the order to try them now: lowest preference first, equal
        preferences in a fresh random order. The stored order was shuffled once, when
        the answer came; RFC 5321 §5.1 (https://www.rfc-editor.org/rfc/rfc5321#section-5.1)
        says the sender MUST randomize equal preferences to spread the load, so every
        run (and every worker) draws its own order rather than reusing the cached one."""
        return [r.host for r in _order(list(self.records), rng or _DEFAULT_RNG)]

    def is_primary(self, host: str) -> bool:
        """`host` is one of the lowest-preference MX hosts: the domain's own, not a backup.
        A backup MX may accept every RCPT and sort it out later, so what it says about
        a recipient (or a catch-all check) is not what the primary would say."""
        if not self.records:
            return False
        lowest = min(r.preference for r in self.records)
        return any(r.host == host and r.preference == lowest for r in self.records)

    @property
    def is_temporary(self) -> bool:
        return self.status is ResolutionStatus.DNS_ERROR

    @property
    def deliverable(self) -> bool:
        return self.status is ResolutionStatus.OK

    def to_dict(self) -> dict[str, Any]:
        return {
            "domain": self.domain,
            "status": self.status.value,
            "records": [{"preference": r.preference, "host": r.host} for r in self.records],
            "ttl": self.ttl,
            "implicit": self.implicit,
            "error": self.error,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MXResolution:
        return cls(
            domain=str(data["domain"]),
            status=ResolutionStatus(data["status"]),
            records=tuple(
                MXRecord(int(r["preference"]), str(r["host"])) for r in data.get("records") or ()
            ),
            ttl=int(data.get("ttl") or 0),
            implicit=bool(data.get("implicit", False)),
            error=data.get("error"),
        )


def _parse_nameserver(entry: str) -> dns.nameserver.Do53Nameserver:
    """ "10.0.0.53", "127.0.0.1:5353", "[::1]:53" or "::1" -> a plain-DNS nameserver."""
    return dns.nameserver.Do53Nameserver(*parse_nameserver(entry))


def make_resolver(
    nameservers: Sequence[str] = (), timeout: float = 5.0
) -> dns.asyncresolver.Resolver:
    """A resolver whose `lifetime` (all tries, all servers) is `timeout` seconds.

    With no `nameservers` it reads the system's resolv.conf; otherwise it asks
    only the given "host[:port]" / "[v6]:port" servers, so tests and the simulated
    world can point it at a loopback server on a random port.
    """
    if nameservers:
        resolver = dns.asyncresolver.Resolver(configure=False)
        resolver.nameservers = [_parse_nameserver(n) for n in nameservers]
    else:
        resolver = dns.asyncresolver.Resolver(configure=True)
    resolver.lifetime = timeout
    resolver.timeout = min(resolver.timeout, timeout)  # one try never outlives the lookup
    resolver.cache = None  # TTLs must be the server's, not a countdown; the store caches
    return resolver


def default_resolver(settings: Settings | None = None) -> dns.asyncresolver.Resolver:
    """The resolver DNS_NAMESERVERS and DNS_TIMEOUT describe."""
    settings = settings or get_settings()
    return make_resolver(settings.dns_nameservers, settings.dns_timeout)


# -- patience: a slow or failing domain is asked again with a growing budget -----------


def attempt_budgets(first: float, total: float) -> tuple[float, ...]:
    """Seconds for each try of a patient lookup: `first`, then doubling, the last one
    cut so the tries add up to `total` (5 and 30 give 5, 10, 15).

    A domain whose servers take longer than DNS_TIMEOUT to answer is not broken, only
    slow: a single short try would call it a failure, a single long one would hold
    every lookup of a broken domain for the whole budget."""
    budgets: list[float] = []
    spent, budget = 0.0, first
    while total - spent > 1e-9:
        budgets.append(min(budget, total - spent))
        spent += budgets[-1]
        budget *= 2
    return tuple(budgets) or (first,)


def with_budget(resolver: dns.asyncresolver.Resolver, seconds: float) -> dns.asyncresolver.Resolver:
    """A copy of `resolver` whose lookup and each try may last `seconds`: a retry of a
    slow server must wait for its answer, not resend after the usual 2 s and give up.

    dnspython bounds each try by min(lifetime left, `timeout`), `timeout` 2.0 by default
    (dns/resolver.py, BaseResolver.__init__ and _compute_timeout, dnspython 2.9)."""
    patient = copy.copy(resolver)
    patient.lifetime = seconds
    patient.timeout = seconds
    return patient


async def patiently(
    attempt: Callable[[dns.asyncresolver.Resolver], Awaitable[T]],
    failed: Callable[[T], bool],
    *,
    resolver: dns.asyncresolver.Resolver,
    total: float,
    slots: asyncio.Semaphore | None = None,
) -> T:
    """Run `attempt` until one does not fail or `total` seconds are spent.

    Tries overlap (hedged): a try that stays silent for its share of `attempt_budgets`
    is not abandoned, another starts beside it, and every try may wait until the whole
    budget is spent, so a server that always answers after 8 s is heard after 8 s, not
    after the 5 s try, the 10 s try and a second 8 s. A try that fails at once (SERVFAIL)
    is followed after a short backoff (1 s, then doubling, within the budget's schedule),
    never in a loop. `slots` (the bulk engine's DNS concurrency) is held only while a try
    runs, so other domains proceed while this one waits."""
    loop = asyncio.get_running_loop()
    first = float(resolver.lifetime)
    total = max(total, first)
    deadline = loop.time() + total
    budgets = attempt_budgets(first, total)
    gaps = iter(budgets)  # as many tries as the budgets, never more
    running: set[asyncio.Task[T]] = set()
    last: T | None = None
    backoff = 1.0

    async def one(lifetime: float, original: bool) -> T:
        async with slots or contextlib.nullcontext():
            return await attempt(resolver if original else with_budget(resolver, lifetime))

    next_start: float | None = loop.time()
    started = 0
    try:
        while True:
            now = loop.time()
            if next_start is not None and now >= next_start and now < deadline:
                left = deadline - now
                running.add(asyncio.ensure_future(one(left, started == 0 and left <= first)))
                started += 1
                gap = next(gaps, None)
                more = gap is not None and started < len(budgets)
                next_start = now + gap if more and gap is not None else None
            if not running:
                if next_start is None or loop.time() >= deadline:
                    assert last is not None
                    return last
                await asyncio.sleep(max(0.0, next_start - loop.time()))
                continue
            wake = deadline if next_start is None else min(next_start, deadline)
            done, running = await asyncio.wait(
                running, timeout=max(0.0, wake - loop.time()), return_when=asyncio.FIRST_COMPLETED
            )
            for task in done:
                result = task.result()
                if not failed(result):
                    return result
                last = result
                # A quick failure: ask again soon, but not sooner than the backoff.
                soon = loop.time() + backoff
                backoff *= 2
                if not running and next_start is not None and soon < next_start:
                    next_start = soon
            if not running and next_start is None and last is not None:
                return last
    finally:
        for task in running:
            task.cancel()


def _soa_ttl(response: dns.message.Message | None) -> int | None:
    """RFC 2308 §5: min(SOA TTL, SOA MINIMUM) from the authority section, if there is an SOA."""
    if response is None:
        return None
    for rrset in response.authority:
        if rrset.rdtype == dns.rdatatype.SOA and len(rrset):
            return int(min(rrset.ttl, rrset[0].minimum))
    return None


def _negative_ttl(*responses: dns.message.Message | None) -> int:
    """The shortest negative TTL among `responses`; 0 (do not rely on it) when none has an SOA."""
    ttls = [t for t in map(_soa_ttl, responses) if t is not None]
    return min(ttls) if ttls else 0


def _order(records: list[MXRecord], rng: random.Random) -> tuple[MXRecord, ...]:
    """Lowest preference first; hosts of equal preference shuffled (RFC 5321 §5.1)."""
    best: dict[str, int] = {}
    for r in records:  # a host listed twice keeps its best preference
        best[r.host] = min(r.preference, best.get(r.host, r.preference))
    groups: dict[int, list[str]] = {}
    for host, pref in best.items():
        groups.setdefault(pref, []).append(host)
    out: list[MXRecord] = []
    for pref in sorted(groups):
        hosts = sorted(groups[pref])  # a fixed start, so a seeded rng reproduces the order
        rng.shuffle(hosts)
        out.extend(MXRecord(pref, h) for h in hosts)
    return tuple(out)


class _Lookup:
    """Queries for one resolution, sharing one deadline so MX + A + AAAA fit in the lifetime."""

    def __init__(self, resolver: dns.asyncresolver.Resolver, name: dns.name.Name) -> None:
        self.resolver = resolver
        self.name = name
        loop = asyncio.get_running_loop()
        self.deadline = loop.time() + float(resolver.lifetime)

    async def query(self, rdtype: dns.rdatatype.RdataType) -> dns.resolver.Answer:
        remaining = self.deadline - asyncio.get_running_loop().time()
        if remaining <= 0:
            raise TimeoutError("the lookup's lifetime ran out between queries")
        return await self.resolver.resolve(
            self.name, rdtype, raise_on_no_answer=False, lifetime=remaining, search=False
        )


def _error(domain: str, exc: BaseException) -> MXResolution:
    text = str(exc) or type(exc).__name__
    return MXResolution(domain, ResolutionStatus.DNS_ERROR, error=f"{type(exc).__name__}: {text}")


async def resolve_mx(
    domain: str,
    *,
    resolver: dns.asyncresolver.Resolver | None = None,
    rng: random.Random | None = None,
) -> MXResolution:
    """Find where mail for `domain` goes, in the order to try the hosts.

    Unicode domains are IDNA-encoded first; an invalid name raises InvalidAddress.
    Every DNS failure comes back as DNS_ERROR (temporary), never as an exception,
    and the whole call is bounded by the resolver's lifetime.
    """
    ascii_domain = check_hostname(domain, "domain")
    name = dns.name.from_text(ascii_domain)  # absolute: no search-list suffixes
    if resolver is None:
        try:
            resolver = default_resolver()
        except dns.exception.DNSException as exc:  # e.g. no resolv.conf
            return _error(ascii_domain, exc)
    rng = rng or _DEFAULT_RNG
    try:
        async with asyncio.timeout(float(resolver.lifetime) + _BELT_SLACK):
            return await _resolve(ascii_domain, _Lookup(resolver, name), rng)
    except dns.resolver.NXDOMAIN as exc:
        responses: dict[dns.name.Name, dns.message.Message] = exc.kwargs.get("responses") or {}
        response = responses.get(name)
        return MXResolution(
            ascii_domain, ResolutionStatus.NO_SUCH_DOMAIN, ttl=_negative_ttl(response)
        )
    except TimeoutError as exc:
        return MXResolution(
            ascii_domain,
            ResolutionStatus.DNS_ERROR,
            error=f"Timeout: no answer within {float(resolver.lifetime):g}s ({exc})",
        )
    except (dns.exception.DNSException, OSError, ValueError) as exc:
        return _error(ascii_domain, exc)


async def _resolve(domain: str, lookup: _Lookup, rng: random.Random) -> MXResolution:
    answer = await lookup.query(dns.rdatatype.MX)
    if answer.rrset is not None and len(answer.rrset):
        return _from_mx(domain, answer, rng)
    responses = [answer.response]
    # No MX: RFC 5321 §5.1 treats the domain's own address as an implicit MX.
    for rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
        address = await lookup.query(rdtype)
        if address.rrset is not None and len(address.rrset):
            ttl = int(address.chaining_result.minimum_ttl)
            return MXResolution(
                domain, ResolutionStatus.OK, (MXRecord(0, domain),), ttl=ttl, implicit=True
            )
        responses.append(address.response)
    return MXResolution(
        domain,
        ResolutionStatus.NO_MAIL_HOST,
        ttl=_negative_ttl(*responses),
        error="no MX and no A/AAAA record",
    )


def _from_mx(domain: str, answer: dns.resolver.Answer, rng: random.Random) -> MXResolution:
    ttl = int(answer.chaining_result.minimum_ttl)
    records: list[MXRecord] = []
    null_mx = False
    invalid: list[str] = []
    for rdata in answer:
        exchange: dns.name.Name = rdata.exchange
        if exchange == dns.name.root:
            null_mx = True
            continue
        text = exchange.to_text(omit_final_dot=True)
        try:
            host = check_hostname(text, "MX host")
        except InvalidAddress:
            invalid.append(text)  # never hand an unsafe name to the SMTP layer
            continue
        records.append(MXRecord(int(rdata.preference), host))
    if not records and null_mx:
        return MXResolution(domain, ResolutionStatus.NULL_MX, ttl=ttl)
    # A "." mixed with real hosts breaks RFC 7505 §3; the real hosts still say where mail goes.
    if not records:
        return MXResolution(
            domain,
            ResolutionStatus.NO_MAIL_HOST,
            ttl=ttl,
            error=f"MX records name no valid host: {', '.join(invalid)}",
        )
    return MXResolution(domain, ResolutionStatus.OK, _order(records, rng), ttl=ttl)


async def resolve_host(
    host: str,
    *,
    resolver: dns.asyncresolver.Resolver | None = None,
    patience: float | None = None,
) -> list[str]:
    """The IP addresses to dial for an MX host (A, then AAAA), through *our* resolver.

    Connecting by name would ask the operating system's resolver, which may not
    be the one DNS_NAMESERVERS names (and cannot see a simulated world). An IP
    literal is returned as is; no answer gives [] and a DNS failure raises
    DNSLookupError, so the caller can tell "no address" from "ask again later".
    With `patience` (seconds, DNS_MAX_TIMEOUT) a failure is retried as `patiently` does.
    """
    try:
        return [str(ipaddress.ip_address(host))]
    except ValueError:
        pass
    name = dns.name.from_text(check_hostname(host, "MX host"))
    resolver = resolver or default_resolver()
    if patience is None:
        return await _host_addresses(host, name, resolver)

    async def attempt(r: dns.asyncresolver.Resolver) -> list[str] | DNSLookupError:
        try:
            return await _host_addresses(host, name, r)
        except DNSLookupError as exc:
            return exc

    outcome = await patiently(
        attempt, lambda o: isinstance(o, DNSLookupError), resolver=resolver, total=patience
    )
    if isinstance(outcome, DNSLookupError):
        raise outcome
    return outcome


async def _host_addresses(
    host: str, name: dns.name.Name, resolver: dns.asyncresolver.Resolver
) -> list[str]:
    lookup = _Lookup(resolver, name)
    addresses: list[str] = []
    try:
        async with asyncio.timeout(float(resolver.lifetime) + _BELT_SLACK):
            for rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
                answer = await lookup.query(rdtype)
                if answer.rrset is not None:
                    addresses.extend(rdata.address for rdata in answer.rrset)
                if addresses:
                    break
    except dns.resolver.NXDOMAIN:
        return []
    except (TimeoutError, dns.exception.DNSException, OSError) as exc:
        raise DNSLookupError(
            f"cannot resolve MX host {host}: {type(exc).__name__}: {exc}"
        ) from None
    return addresses


# -- single lookups (doctor, SPF) -------------------------------------------------


async def lookup(
    resolver: dns.asyncresolver.Resolver, name: str | dns.name.Name, rdtype: str
) -> list[Any] | None:
    """The rdatas of one query: [] for NODATA, None for NXDOMAIN.

    A temporary failure (timeout, SERVFAIL, REFUSED, no server answered) raises
    DNSLookupError; a `name` that is not a domain name raises dnspython's error
    (bad input, not a DNS failure). Bounded by the resolver's lifetime; absolute
    names only (no search list).
    """
    qname = name if isinstance(name, dns.name.Name) else dns.name.from_text(name)
    try:
        async with asyncio.timeout(float(resolver.lifetime) + _BELT_SLACK):
            answer = await resolver.resolve(
                qname, dns.rdatatype.from_text(rdtype), raise_on_no_answer=False, search=False
            )
    except dns.resolver.NXDOMAIN:
        return None
    except TimeoutError:
        raise DNSLookupError(f"no answer within {float(resolver.lifetime):g}s") from None
    except (dns.exception.DNSException, OSError, ValueError) as exc:
        raise DNSLookupError(f"{type(exc).__name__}: {exc}") from None
    return list(answer.rrset) if answer.rrset is not None else []


async def lookup_addresses(resolver: dns.asyncresolver.Resolver, host: str) -> list[str]:
    """Every A and AAAA address of `host` ([] when it has none or does not exist).

    Unlike `resolve_host` (which stops at the first family that answers) this asks
    both, for checks that compare addresses; DNSLookupError on a temporary failure.
    """
    out: list[str] = []
    for rdtype in ("A", "AAAA"):
        rdatas = await lookup(resolver, host, rdtype)
        if rdatas is None:
            return []
        out.extend(str(r.address) for r in rdatas)
    return out


async def lookup_txt(resolver: dns.asyncresolver.Resolver, name: str) -> list[str]:
    """The TXT records of `name`, each one's strings joined and decoded ([] for none);
    DNSLookupError on a temporary failure."""
    rdatas = await lookup(resolver, name, "TXT")
    return [b"".join(r.strings).decode("utf-8", "replace") for r in rdatas or []]


async def lookup_ptr(resolver: dns.asyncresolver.Resolver, ip: str) -> list[str]:
    """The PTR names of `ip`, lowercase without the final dot ([] for none);
    DNSLookupError on a temporary failure."""
    rdatas = await lookup(resolver, dns.reversename.from_address(ip), "PTR")
    return [r.target.to_text(omit_final_dot=True).lower() for r in rdatas or []]


class DNSLookupError(Exception):
    """A temporary DNS failure (timeout, SERVFAIL, no server answered): try again later."""
