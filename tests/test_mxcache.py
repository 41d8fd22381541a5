"""The MX cache: get_or_resolve_mx over domain_resolutions, against a real DNS server on loopback.

Time is a controllable clock, never a sleep.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from mailprobe.config import Settings
from mailprobe.dns import ResolutionStatus, make_resolver
from mailprobe.mxcache import MXCache
from mailprobe.store import DomainResolution, Store
from mailprobe.testing.dnsd import DomainSpec, SimDNSServer

pytestmark = pytest.mark.r15  # the seed's label: pytest -k r15


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 1, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


ZONE = {
    "acme.example": DomainSpec(mx=[(10, "mx1.acme.example"), (20, "mx2.acme.example")], ttl=30),
    "long.example": DomainSpec(mx=[(5, "mx.long.example")], ttl=10**6),
    "nomail.example": DomainSpec(null_mx=True),
    "flaky.example": DomainSpec(mx=[(10, "mx.flaky.example")], ttl=3600),
    "slow.example": DomainSpec(mx=[(10, "mx.slow.example")], delay=0.3),
}


@pytest.fixture
async def dns_server():
    async with SimDNSServer({k: DomainSpec(**vars(v)) for k, v in ZONE.items()}) as server:
        yield server


@pytest.fixture
def cache_for(tmp_path: Path, dns_server: SimDNSServer):
    store = Store(f"sqlite:///{tmp_path / 'cache.db'}")
    store.upgrade()
    settings = Settings.from_env(
        {"MX_CACHE_MIN_TTL": "300", "MX_CACHE_MAX_TTL": "86400", "MX_NEGATIVE_TTL": "600",
         "DNS_TIMEOUT": "1", "DNS_MAX_TIMEOUT": "1"}  # one try: patience is tested apart
    )  # fmt: skip
    clock = Clock()

    def make() -> MXCache:
        resolver = make_resolver([dns_server.nameserver], timeout=1.0)
        return MXCache(store, settings, resolver=resolver, clock=clock)

    return make, clock, store


def mx_queries(server: SimDNSServer, name: str) -> int:
    return len(server.queries_for(name, "MX"))


async def test_cached_until_ttl_clamped_to_minimum(cache_for, dns_server) -> None:
    make, clock, _ = cache_for
    cache = make()
    first = await cache.get("acme.example")
    assert (first.from_cache, first.lowest_mx) == (False, "mx1.acme.example")
    assert first.expires_at - first.resolved_at == timedelta(seconds=300)  # 30 s TTL, floor 300
    again = await make().get("ACME.example")  # a new process would read the same row
    assert again.from_cache and again.lowest_mx == "mx1.acme.example"
    assert mx_queries(dns_server, "acme.example") == 1
    clock.advance(299)
    assert (await cache.get("acme.example")).from_cache
    clock.advance(2)
    assert not (await cache.get("acme.example")).from_cache
    assert mx_queries(dns_server, "acme.example") == 2


async def test_ttl_clamped_to_maximum_and_force(cache_for, dns_server) -> None:
    make, _, _ = cache_for
    cache = make()
    first = await cache.get("long.example")
    assert first.expires_at - first.resolved_at == timedelta(seconds=86400)
    forced = await cache.get("long.example", force=True)
    assert not forced.from_cache
    assert mx_queries(dns_server, "long.example") == 2


async def test_negative_answers_cached_per_rfc2308(cache_for, dns_server) -> None:
    """NXDOMAIN is authoritative: kept for the SOA's negative TTL (RFC 2308 §5), at most
    MX_NEGATIVE_TTL; a null MX is a published record and keeps MX_NEGATIVE_TTL."""
    make, clock, store = cache_for
    cache = make()
    dns_server.zone["gone.example"] = DomainSpec(nxdomain=True, negative_ttl=7200)
    null = await cache.get("nomail.example")
    missing = await cache.get("missing.example")  # not in the zone: SOA minimum 60
    gone = await cache.get("gone.example")
    assert null.status is ResolutionStatus.NULL_MX and null.lowest_mx is None
    assert null.expires_at - null.resolved_at == timedelta(seconds=600)
    assert missing.status is gone.status is ResolutionStatus.NO_SUCH_DOMAIN
    assert missing.expires_at - missing.resolved_at == timedelta(seconds=60)
    assert gone.expires_at - gone.resolved_at == timedelta(seconds=600)  # capped
    assert (await cache.get("missing.example")).from_cache
    clock.advance(61)
    assert not (await cache.get("missing.example")).from_cache
    assert (await cache.get("gone.example")).from_cache
    with store.session() as session:
        row = session.scalar(
            select(DomainResolution).where(DomainResolution.domain == "nomail.example")
        )
        assert row is not None and row.status == "null_mx"


async def test_dns_failure_cached_only_briefly(cache_for, dns_server) -> None:
    """SERVFAIL is no answer: remembered MX_ERROR_TTL seconds at most (RFC 2308 §7.1,
    RFC 9520 §3.2: five minutes at most), not like NXDOMAIN."""
    make, clock, store = cache_for
    cache = make()
    dns_server.zone["broken.example"] = DomainSpec(servfail=True)
    failed = await cache.get("broken.example")
    assert failed.status is ResolutionStatus.DNS_ERROR and not failed.from_cache
    assert failed.expires_at - failed.resolved_at == timedelta(seconds=30)  # MX_ERROR_TTL
    before = mx_queries(dns_server, "broken.example")
    again = await cache.get("broken.example")
    assert again.from_cache and again.status is ResolutionStatus.DNS_ERROR
    assert mx_queries(dns_server, "broken.example") == before  # a burst does not hammer it
    dns_server.zone["broken.example"] = DomainSpec(mx=[(10, "mx.broken.example")])
    clock.advance(31)
    recovered = await cache.get("broken.example")
    assert recovered.status is ResolutionStatus.OK and not recovered.from_cache
    with store.session() as session:
        row = session.scalar(
            select(DomainResolution).where(DomainResolution.domain == "broken.example")
        )
        assert row is not None and row.status == "ok"


async def test_dns_failure_not_stored_with_zero_ttl(tmp_path: Path, dns_server) -> None:
    store = Store(f"sqlite:///{tmp_path / 'zero.db'}")
    store.upgrade()
    settings = Settings.from_env({"MX_ERROR_TTL": "0", "DNS_TIMEOUT": "1", "DNS_MAX_TIMEOUT": "1"})
    cache = MXCache(store, settings, resolver=make_resolver([dns_server.nameserver], 1.0))
    dns_server.zone["broken.example"] = DomainSpec(servfail=True)
    assert (await cache.get("broken.example")).status is ResolutionStatus.DNS_ERROR
    assert cache.read_many(["broken.example"]) == {}
    before = mx_queries(dns_server, "broken.example")
    await cache.get("broken.example")
    assert mx_queries(dns_server, "broken.example") > before  # asked again, not cached


async def test_stale_if_error_serves_only_a_good_answer(cache_for, dns_server) -> None:
    make, clock, _ = cache_for
    cache = make()
    good = await cache.get("flaky.example")
    dns_server.zone["gone.example"] = DomainSpec(nxdomain=True)
    assert (await cache.get("gone.example")).status is ResolutionStatus.NO_SUCH_DOMAIN
    dns_server.zone["flaky.example"] = DomainSpec(servfail=True)
    dns_server.zone["gone.example"] = DomainSpec(servfail=True)
    clock.advance(7200)  # both expired, and DNS now fails
    stale = await cache.get("flaky.example")
    assert stale.stale and stale.lowest_mx == good.lowest_mx == "mx.flaky.example"
    assert stale.status is ResolutionStatus.OK
    assert cache.read_many(["flaky.example"])["flaky.example"].status is ResolutionStatus.OK
    # An expired NXDOMAIN is not served as final while DNS cannot confirm it.
    assert (await cache.get("gone.example")).status is ResolutionStatus.DNS_ERROR


async def test_concurrent_callers_resolve_once(cache_for, dns_server) -> None:
    make, _, _ = cache_for
    cache = make()
    results = await asyncio.gather(*(cache.get("slow.example") for _ in range(10)))
    assert {r.lowest_mx for r in results} == {"mx.slow.example"}
    assert mx_queries(dns_server, "slow.example") == 1


async def test_flags_stored_with_resolution(cache_for, dns_server) -> None:
    make, _, _ = cache_for
    dns_server.zone["mailinator.com"] = DomainSpec(mx=[(10, "mail.mailinator.com")])
    dns_server.zone["gmail.com"] = DomainSpec(mx=[(5, "gmail-smtp-in.l.google.com")])
    cache = make()
    assert (await cache.get("mailinator.com")).flags == {"free": False, "disposable": True}
    assert (await cache.get("gmail.com")).flags == {"free": True, "disposable": False}
    assert (await make().get("gmail.com")).flags["free"] is True  # read back from the row


async def test_batched_reads_and_deferred_writes(cache_for, dns_server) -> None:
    """The bulk engine's path: one query for many domains, DNS answers kept until flush()
    writes them together; a catch-all finding for a domain not yet written is not lost."""
    make, _, _ = cache_for
    cache = make()
    await cache.get("acme.example")  # stored the usual way
    stored = cache.read_many(["acme.example", "long.example", "nomail.example"])
    assert set(stored) == {"acme.example"} and cache.fresh(stored["acme.example"])
    fresh = await cache.refresh("long.example", defer_write=True)
    await cache.refresh("nomail.example", defer_write=True)
    assert fresh.lowest_mx == "mx.long.example"
    assert set(cache.read_many(["long.example", "nomail.example"])) == set()  # not yet
    cache.save_catch_all("long.example", True)  # written with its row, at once
    assert cache.read_many(["long.example"])["long.example"].catch_all is True
    cache.flush()
    again = make().read_many(["long.example", "nomail.example"])
    assert again["nomail.example"].status is ResolutionStatus.NULL_MX
    assert again["long.example"].catch_all is True  # the flush kept the finding


async def test_flush_keeps_answers_when_the_database_fails(cache_for, dns_server) -> None:
    make, _, store = cache_for
    cache = make()
    await cache.refresh("acme.example", defer_write=True)
    with store.engine.begin() as conn:
        conn.exec_driver_sql("DROP VIEW latest_verification_results")
        conn.exec_driver_sql("ALTER TABLE domain_resolutions RENAME TO gone")
    with pytest.raises(Exception, match="domain_resolutions"):
        cache.flush()
    with store.engine.begin() as conn:
        conn.exec_driver_sql("ALTER TABLE gone RENAME TO domain_resolutions")
    cache.flush()  # the answer was kept for this one
    assert "acme.example" in make().read_many(["acme.example"])
