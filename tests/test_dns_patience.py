"""Slow and failing DNS: a timeout or SERVFAIL is temporary, asked again with a growing
budget up to DNS_MAX_TIMEOUT, on every path (MX cache, MX host addresses, bulk verify,
one address), against a real DNS server on loopback whose answers come late."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest

from mailprobe.config import ConfigError, Settings
from mailprobe.dns import DNSLookupError, ResolutionStatus, attempt_budgets, make_resolver
from mailprobe.dns import resolve_host as resolve_host
from mailprobe.engine import Context
from mailprobe.engine.bulk import BulkOptions, verify
from mailprobe.engine.probe import probe_email
from mailprobe.inputs import read_addresses
from mailprobe.mxcache import MXCache
from mailprobe.report import render_record
from mailprobe.store import Store
from mailprobe.testing.dnsd import DomainSpec, SimDNSServer
from mailprobe.testing.smtpd import ACCEPT, MXBehavior, SimSMTPServer
from mailprobe.testing.world import SimWorld
from mailprobe.testing.worldconfig import Kind, Mailbox, WorldConfig

FIRST = 0.5  # DNS_TIMEOUT in these tests
PATIENCE = 3.0  # DNS_MAX_TIMEOUT: tries of 0.5, 1 and 1.5 s
LATE = 1.2  # a slow server's delay: more than 2 x DNS_TIMEOUT, well within the patience
ENV = {
    "DNS_TIMEOUT": str(FIRST),
    "DNS_MAX_TIMEOUT": str(PATIENCE),
    "SPECIAL_USE_ALLOWED": "example",
}


def test_budgets_grow_and_add_up_to_the_patience() -> None:
    assert attempt_budgets(5, 30) == (5, 10, 15)
    assert attempt_budgets(0.5, 4) == (0.5, 1.0, 2.0, 0.5)
    assert attempt_budgets(5, 5) == (5,)
    assert sum(attempt_budgets(2, 29)) == pytest.approx(29)


def test_max_timeout_setting() -> None:
    assert Settings.from_env({}).dns_max_timeout == 30.0
    assert Settings.from_env({"DNS_TIMEOUT": "40"}).dns_max_timeout == 40.0
    with pytest.raises(ConfigError, match="DNS_MAX_TIMEOUT"):
        Settings.from_env({"DNS_TIMEOUT": "5", "DNS_MAX_TIMEOUT": "2"})
    with pytest.raises(ConfigError, match="MX_ERROR_TTL"):
        Settings.from_env({"MX_ERROR_TTL": "301"})  # RFC 9520: five minutes at most


@pytest.fixture
async def dns_server():
    zone = {
        "snail.example": DomainSpec(mx=[(10, "mx.snail.example")], delay=LATE),
        "mx.snail.example": DomainSpec(a=["127.0.0.1"], delay=LATE),
        "flaky.example": DomainSpec(mx=[(10, "mx.flaky.example")], servfail_first=2),
        "dead.example": DomainSpec(drop=True),
        "once.example": DomainSpec(
            mx=[(10, "mx.once.example")], delay=LATE, answer_first_only=True
        ),
    }
    async with SimDNSServer(zone) as server:
        yield server


def cache(tmp_path: Path, server: SimDNSServer) -> MXCache:
    store = Store(f"sqlite:///{tmp_path / 'patience.db'}")
    store.upgrade()
    settings = Settings.from_env(ENV)
    return MXCache(store, settings, resolver=make_resolver([server.nameserver], FIRST))


async def test_slow_domain_answers_within_the_patience(tmp_path: Path, dns_server) -> None:
    """Its server answers after 2.4 x DNS_TIMEOUT: the first try times out, a later one
    waits long enough."""
    got = await cache(tmp_path, dns_server).get("snail.example")
    assert got.status is ResolutionStatus.OK and got.lowest_mx == "mx.snail.example"
    assert len(dns_server.queries_for("snail.example", "MX")) >= 2


async def test_a_late_answer_to_the_first_try_is_still_heard(tmp_path: Path, dns_server) -> None:
    """Tries overlap: the first query is not abandoned when its share of the budget runs
    out, so its answer, arriving after DNS_TIMEOUT, still counts (the server ignores the
    queries that follow it)."""
    got = await cache(tmp_path, dns_server).get("once.example")
    assert got.status is ResolutionStatus.OK and got.lowest_mx == "mx.once.example"


async def test_servfail_then_answer_in_one_lookup(tmp_path: Path, dns_server) -> None:
    got = await cache(tmp_path, dns_server).get("flaky.example")
    assert got.status is ResolutionStatus.OK and got.lowest_mx == "mx.flaky.example"
    assert len(dns_server.queries_for("flaky.example", "MX")) == 3


async def test_patience_is_bounded(tmp_path: Path, dns_server) -> None:
    """A server that never answers gets one query per budget, then the failure stands."""
    got = await cache(tmp_path, dns_server).get("dead.example")
    assert got.status is ResolutionStatus.DNS_ERROR
    assert len(dns_server.queries_for("dead.example", "MX")) == len(
        attempt_budgets(FIRST, PATIENCE)
    )


async def test_mx_host_addresses_patiently(dns_server) -> None:
    resolver = make_resolver([dns_server.nameserver], FIRST)
    with pytest.raises(DNSLookupError):  # one short try cannot wait for it
        await resolve_host("mx.snail.example", resolver=resolver)
    ips = await resolve_host("mx.snail.example", resolver=resolver, patience=PATIENCE)
    assert ips == ["127.0.0.1"]


async def test_one_address_on_a_slow_domain_is_probed(tmp_path: Path, dns_server) -> None:
    """`mailprobe probe` / queue jobs: domain and MX host both answer late."""
    smtp = await SimSMTPServer(MXBehavior(mailboxes={"joe@snail.example": ACCEPT})).start()
    try:
        settings = Settings.from_env(
            {**ENV, "DNS_NAMESERVERS": dns_server.nameserver, "SMTP_PORT": str(smtp.port),
             "DATABASE_URL": f"sqlite:///{tmp_path / 'one.db'}"}
        )  # fmt: skip
        ctx = Context.create(settings)
        ctx.store.upgrade()
        try:
            answer = await probe_email(ctx, "joe@snail.example")
        finally:
            await ctx.aclose()
    finally:
        await smtp.stop()
    assert (answer.outcome.reason, answer.dns_status) == ("accepted", "ok")


async def run_world(world: SimWorld, tmp_path: Path, text: str,
                    options: BulkOptions) -> list[dict[str, Any]]:  # fmt: skip
    settings = Settings.from_env(
        {**world.env(), **ENV, "DATABASE_URL": f"sqlite:///{tmp_path / 'world.db'}",
         "GLOBAL_RPS": "200", "PER_MX_RPS_DEFAULT": "100"}
    )  # fmt: skip
    ctx = Context.create(settings)
    ctx.store.upgrade()
    records: list[dict[str, Any]] = []
    try:
        await verify(
            read_addresses(io.StringIO(text)),
            lambda la: records.append(render_record(la)),
            ctx=ctx,
            options=options,
        )
    finally:
        await ctx.aclose()
    return records


async def test_bulk_slow_and_flaky_dns_domains_get_probed(tmp_path: Path) -> None:
    """The world's slow-DNS and flaky-DNS domains: every address gets the verdict its
    mailbox deserves, and the other domains do not wait for them."""
    boxes = (Mailbox.EXISTS, Mailbox.MISSING)
    layout = [(Kind.DNS_SLOW, boxes), (Kind.DNS_FLAKY, boxes), (Kind.POSTFIX, boxes)]
    cfg = WorldConfig(dns_slow_delay=LATE, dns_flaky_failures=2)
    async with SimWorld(seed=3, layout=layout, config=cfg) as world:
        emails = world.addresses()
        options = BulkOptions(reuse_ttl=None, dns_concurrency=1)
        records = await run_world(world, tmp_path, "\n".join(emails) + "\n", options)
    got = {r["email"]: r for r in records}
    assert len(got) == len(emails)
    for email in emails:
        assert got[email]["verdict"] == world.expected_verdict(email), got[email]
    kinds = [world.truth[r["email"]].kind for r in records]
    assert kinds.index(Kind.POSTFIX) < kinds.index(Kind.DNS_SLOW)  # not held up by it


def test_world_kinds_are_opt_in_and_determinable() -> None:
    assert WorldConfig().mix[Kind.DNS_SLOW] == WorldConfig().mix[Kind.DNS_FLAKY] == 0
    cfg = WorldConfig(mix={Kind.DNS_SLOW: 1, Kind.DNS_FLAKY: 1})
    world = SimWorld(4, 20, seed=1, config=cfg)
    assert set(world.kinds()) == {"dns_slow", "dns_flaky"}
    assert None not in world.truth.counts()  # the patient answer is the truth
    slow = next(d for d in world.truth.domains.values() if d.kind is Kind.DNS_SLOW)
    assert world.zone[slow.domain].delay == world.zone[slow.mx_hosts[0]].delay == 8.0
