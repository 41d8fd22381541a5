"""A dead primary MX: the next MX by preference takes over (RFC 5321 §5.1), in bulk verify
and in the single-address path; the dead host is remembered; a backup MX that accepts
every RCPT is weighed by a catch-all check made there, never by the domain's finding.

The simulated world's silent MX (`testing.deadmx.SynDropper`) drops our SYNs, so a
connect times out as it does against a dead host on the Internet.
"""

from __future__ import annotations

import asyncio
import random
import time
from pathlib import Path
from typing import Any

import pytest

from mailprobe.behavior import BehaviorCache
from mailprobe.config import Settings
from mailprobe.dns import MXRecord, MXResolution, ResolutionStatus
from mailprobe.engine import Context
from mailprobe.engine.bulk import BulkOptions, Summary, verify
from mailprobe.engine.probe import probe_email
from mailprobe.inputs import entry
from mailprobe.report import render_record
from mailprobe.results import LineAnswer
from mailprobe.store import Store
from mailprobe.testing import Kind, Mailbox, SimWorld, WorldConfig
from mailprobe.testing.deadmx import SynDropper
from mailprobe.testing.worldconfig import DEAD_PRIMARY_MX

ALL_BOXES = (Mailbox.EXISTS, Mailbox.MISSING, Mailbox.FULL, Mailbox.DISABLED)
# Retries short, and the slow lane's connect timeout long enough that a run which waits
# there (the code before failover) shows it in its answers, not in a timed assertion.
OPTIONS = BulkOptions(
    reuse_ttl=None, temp_delays=(0.1,), greylist_delays=(0.1,), slow_timeouts=(1.0, 1.0, 3.0)
)


def world_of(*layout: tuple[Kind, tuple[Mailbox, ...]], seed: int = 3) -> SimWorld:
    cfg = WorldConfig(invalid_fraction=0.0, expect_rps=None, expect_max_concurrency=None)
    return SimWorld(seed=seed, layout=[(k.value, boxes) for k, boxes in layout], config=cfg)


def context(world: SimWorld, store: Store, behavior: BehaviorCache | None = None) -> Context:
    env = {
        **world.env(),
        "DATABASE_URL": store.url,
        "DNS_TIMEOUT": "2",
        "SMTP_CONNECT_TIMEOUT": "0.5",
        "SMTP_COMMAND_TIMEOUT": "2",
        "SMTP_PROBE_DEADLINE": "5",
        "GLOBAL_RPS": "200",
        "PER_MX_RPS_DEFAULT": "100",
    }
    return Context.create(Settings.from_env(env), store=store, behavior=behavior or BehaviorCache())


@pytest.fixture
def store(tmp_path: Path) -> Store:
    s = Store(f"sqlite:///{tmp_path / 'failover.db'}")
    s.upgrade()
    return s


async def run(ctx: Context, emails: list[str]) -> tuple[dict[str, dict[str, Any]], Summary]:
    records: dict[str, dict[str, Any]] = {}

    def sink(line: LineAnswer) -> None:
        record = render_record(line)
        records[record["email"]] = record

    lines = [entry(i, e) for i, e in enumerate(emails, start=1)]
    try:
        summary = await verify(lines, sink, ctx=ctx, options=OPTIONS)
    finally:
        await ctx.aclose()
    return records, summary


def of_kind(world: SimWorld, kind: Kind) -> list[str]:
    return [e for e in world.addresses() if world.truth[e].kind is kind]


# -- the world's silent MX -------------------------------------------------------------


async def test_a_silent_mx_times_out_rather_than_refusing() -> None:
    async with SynDropper("127.0.0.1") as dropper:
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.3):
                await asyncio.open_connection("127.0.0.1", dropper.port)
        assert time.monotonic() - started >= 0.25  # it waited: no RST came back


# -- bulk verify -------------------------------------------------------------------------


async def test_bulk_answers_a_dead_primarys_domains_from_the_next_mx(store: Store) -> None:
    world = world_of(
        (Kind.DEAD_PRIMARY, ALL_BOXES),
        (Kind.DEAD_PRIMARY, (Mailbox.EXISTS, Mailbox.MISSING)),
        (Kind.BACKUP_ACCEPTS_ALL, ALL_BOXES),
    )
    async with world:
        ctx = context(world, store)
        records, _ = await run(ctx, world.addresses())
        dead, live = DEAD_PRIMARY_MX
        for email in of_kind(world, Kind.DEAD_PRIMARY):
            record = records[email]
            assert record["mx_host"] == live, record
            assert record["verdict"] == world.expected_verdict(email), record
        for email in of_kind(world, Kind.BACKUP_ACCEPTS_ALL):
            record = records[email]
            assert record["mx_host"] == world.truth[email].mx_hosts[1], record
            assert (record["verdict"], record["reason"]) == ("risky", "catch_all"), record
            assert world.expected_verdict(email) == "risky"
        assert ctx.behavior.dead(dead)


async def test_a_backup_mx_finding_is_never_the_domains(store: Store) -> None:
    world = world_of((Kind.BACKUP_ACCEPTS_ALL, ALL_BOXES))
    async with world:
        domain = next(iter(world.domains))
        ctx = context(world, store)
        # The domain's own finding (made at its primary, say): not catch-all.
        await ctx.mx_cache.get(domain)
        await asyncio.to_thread(ctx.mx_cache.save_catch_all, domain, False)
        records, _ = await run(ctx, world.addresses())
        assert {r["verdict"] for r in records.values()} == {"risky"}  # never deliverable
        cached = await ctx.mx_cache.get(domain)
        assert cached.catch_all is False  # the backup's finding did not replace it
        backup = world.domains[domain].mx_hosts[1]
        hint = ctx.behavior.hint(backup)
        assert hint is not None and hint["catch_all"] is True  # the backup's own, per host


async def test_a_dead_mx_is_skipped_at_once_by_a_later_domain(store: Store) -> None:
    world = world_of(
        (Kind.DEAD_PRIMARY, (Mailbox.EXISTS, Mailbox.MISSING)),
        (Kind.DEAD_PRIMARY, (Mailbox.EXISTS, Mailbox.MISSING)),
    )
    async with world:
        first, second = list(world.domains)
        _, live = DEAD_PRIMARY_MX
        emails = world.addresses()
        records, _ = await run(
            context(world, store), [e for e in emails if e.endswith("@" + first)]
        )
        assert {r["mx_host"] for r in records.values()} == {live}
        # A new process: it learns the dead host from the store, and never dials it.
        before = world.servers[live].record.connections
        ctx = context(world, store, BehaviorCache())
        records, summary = await run(ctx, [e for e in emails if e.endswith("@" + second)])
        assert {r["mx_host"] for r in records.values()} == {live}
        assert summary.sessions == world.servers[live].record.connections - before
        for email, record in records.items():
            assert record["verdict"] == world.expected_verdict(email)


# -- the single-address path -----------------------------------------------------------


async def test_single_probe_hands_over_on_a_connect_timeout(store: Store) -> None:
    world = world_of((Kind.DEAD_PRIMARY, (Mailbox.EXISTS,)))
    async with world:
        ctx = context(world, store)
        email = world.addresses()[0]
        answer = await probe_email(ctx, email, persist=False)
        dead, live = DEAD_PRIMARY_MX
        # Accepted at the secondary (no catch-all check on a single probe: catch_all_unknown)
        assert (answer.outcome.reason, answer.mx_host) == ("accepted", live)
        assert ctx.behavior.dead(dead)
        assert ctx.behavior.live_first([dead, live], ctx.settings.mx_dead_ttl) == [live, dead]


async def test_single_probe_at_a_backup_ignores_the_domains_finding(store: Store) -> None:
    world = world_of((Kind.BACKUP_ACCEPTS_ALL, (Mailbox.EXISTS,)))
    async with world:
        ctx = context(world, store)
        email = world.addresses()[0]
        domain = email.split("@")[1]
        await ctx.mx_cache.get(domain)
        await asyncio.to_thread(ctx.mx_cache.save_catch_all, domain, False)
        answer = await probe_email(ctx, email, persist=False)
        assert answer.mx_host == world.domains[domain].mx_hosts[1]
        assert answer.verdict.value == "risky"  # accepted at a backup: never deliverable


# -- ordering and memory -----------------------------------------------------------------


def test_equal_preferences_are_drawn_afresh_lowest_first() -> None:
    records = tuple(MXRecord(10, h) for h in ("a.example", "b.example", "c.example"))
    mx = MXResolution("d.example", ResolutionStatus.OK, (*records, MXRecord(20, "z.example")))
    orders = {tuple(mx.try_order(random.Random(seed))) for seed in range(30)}
    assert len(orders) > 1  # not one order fixed for the cache's lifetime
    assert all(order[-1] == "z.example" for order in orders)
    assert mx.is_primary("b.example") and not mx.is_primary("z.example")


def test_dead_hosts_go_last_for_their_ttl_and_persist(monkeypatch: pytest.MonkeyPatch) -> None:
    cache = BehaviorCache()
    cache.mark_dead("MX1.example")
    assert cache.live_first(["mx1.example", "mx2.example"]) == ["mx2.example", "mx1.example"]
    assert cache.live_first(["mx1.example"]) == ["mx1.example"]  # all dead: tried anyway
    later = time.time() + 301
    monkeypatch.setattr("mailprobe.behavior.time.time", lambda: later)
    assert not cache.dead("mx1.example", ttl=300)
    monkeypatch.undo()
    other = BehaviorCache()
    other.load(cache.dirty())  # through the store, as mx_hosts rows
    assert other.dead("mx1.example", ttl=300)
    other.mark_alive("mx1.example")
    assert not other.dead("mx1.example", ttl=300)


def test_mx_dead_ttl_setting() -> None:
    assert Settings.from_env({}).mx_dead_ttl == 300.0
    assert Settings.from_env({"MX_DEAD_TTL": "60"}).mx_dead_ttl == 60.0
