"""Bulk verify through egress routes, against a SOCKS5 proxy and SMTP servers on loopback:
MX_ROUTES sends matching MX hosts through the proxy and the rest direct; two proxies
each hold the per-MX caps (the throttle keys on (route, MX)); a dead proxy is
unknown / proxy_error and rests, said in the summary; --no-smtp asks no server."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from mailprobe.config import Settings
from mailprobe.egress import egress_key
from mailprobe.engine import Context
from mailprobe.engine.bulk import BulkOptions, Summary, verify
from mailprobe.inputs import read_addresses
from mailprobe.report import render_record
from mailprobe.store import Store
from mailprobe.testing.dnsd import DomainSpec, SimDNSServer
from mailprobe.testing.smtpd import ACCEPT, MXBehavior, SimSMTPServer
from mailprobe.testing.socks5 import SimSocks5Server
from mailprobe.throttle import LocalThrottle, ThrottlePolicy

pytest_plugins = ["tests.redis_server"]


@dataclass
class World:
    dns: SimDNSServer
    servers: dict[str, SimSMTPServer]
    port: int
    store: Store

    def settings(self, **env: str) -> Settings:
        base = {
            "DNS_NAMESERVERS": self.dns.nameserver, "DNS_TIMEOUT": "2",
            "SMTP_PORT": str(self.port), "SMTP_CONNECT_TIMEOUT": "2",
            "SMTP_COMMAND_TIMEOUT": "2", "SMTP_PROBE_DEADLINE": "10", "GLOBAL_RPS": "200",
            "PER_MX_RPS_DEFAULT": "100", "DATABASE_URL": self.store.url,
            "SPECIAL_USE_ALLOWED": "example",
        }  # fmt: skip
        return Settings.from_env({**base, **env})

    async def run(
        self, lines: list[str], options: BulkOptions | None = None, **env: str
    ) -> tuple[dict[str, dict[str, Any]], Summary]:
        records: list[dict[str, Any]] = []
        ctx = Context.create(self.settings(**env), store=self.store)
        try:
            summary = await verify(
                read_addresses(io.StringIO("\n".join(lines) + "\n")),
                lambda la: records.append(render_record(la)),
                ctx=ctx,
                options=options or BulkOptions(reuse_ttl=None, persist=False),
            )
        finally:
            await ctx.aclose()
        return {r["email"]: r for r in records}, summary


@pytest.fixture
async def make_world(tmp_path: Path) -> AsyncIterator[Any]:
    started: list[Any] = []

    async def make(hosts: dict[str, tuple[str, MXBehavior]], zone: dict[str, DomainSpec]):
        port = 0
        servers: dict[str, SimSMTPServer] = {}
        for host, (ip, behavior) in hosts.items():
            server = await SimSMTPServer(behavior, host=ip, port=port).start()
            started.append(server)
            port, servers[host] = server.port, server
            zone.setdefault(host, DomainSpec(a=[ip]))
        dns = await SimDNSServer(zone).start()
        started.append(dns)
        store = Store(f"sqlite:///{tmp_path / 'egress.db'}")
        store.upgrade()
        return World(dns, servers, port, store)

    yield make
    for thing in reversed(started):
        await thing.stop()


@pytest.fixture
async def proxies() -> AsyncIterator[Any]:
    started: list[SimSocks5Server] = []

    async def make(**kw: Any) -> SimSocks5Server:
        proxy = await SimSocks5Server(**kw).start()
        started.append(proxy)
        return proxy

    yield make
    for proxy in started:
        await proxy.stop()


def peers(server: SimSMTPServer) -> set[str]:
    return {c.peer.split("'")[1] for c in server.record.connection_log}


def most_at_once(server: SimSMTPServer, peer: str | None = None) -> int:
    """The most connections (from `peer`, or any) the server had open at one moment."""
    events: list[tuple[float, int]] = []
    for c in server.record.connection_log:
        if peer is None or c.peer.split("'")[1] == peer:
            events += [(c.start, 1), (c.end if c.end is not None else float("inf"), -1)]
    now = peak = 0
    for _, step in sorted(events, key=lambda e: (e[0], e[1])):
        now += step
        peak = max(peak, now)
    return peak


ACME = {f"u{i}@acme.example": ACCEPT for i in range(40)}


async def test_mx_routes_send_matching_mx_through_the_proxy_and_the_rest_direct(
    make_world, proxies
) -> None:
    world = await make_world(
        {"mx.via.example": ("127.0.0.1", MXBehavior(mailboxes=ACME)),
         "mx.plain.example": ("127.0.0.3", MXBehavior(mailboxes={"b@plain.example": ACCEPT}))},
        {"acme.example": DomainSpec(mx=[(10, "mx.via.example")]),
         "plain.example": DomainSpec(mx=[(10, "mx.plain.example")])},
    )  # fmt: skip
    proxy = await proxies(bind="127.0.0.2")
    got, _ = await world.run(
        ["u1@acme.example", "x@acme.example", "b@plain.example"],
        SMTP_PROXY=proxy.url, MX_ROUTES="mx.via.example=proxy, *=direct",
    )  # fmt: skip
    assert got["u1@acme.example"]["verdict"] == "deliverable"
    assert got["x@acme.example"]["reason"] == "mailbox_not_found"
    assert got["b@plain.example"]["verdict"] == "deliverable"
    assert peers(world.servers["mx.via.example"]) == {"127.0.0.2"}  # the proxy's side
    assert peers(world.servers["mx.plain.example"]) == {"127.0.0.1"}  # direct
    assert {ip for ip, _ in proxy.record.targets} == {"127.0.0.1"}  # only mx.via's IP


async def test_two_proxies_each_hold_the_per_mx_caps(make_world, proxies) -> None:
    world = await make_world(
        {"mx.via.example": ("127.0.0.1", MXBehavior(mailboxes=ACME, rtt=0.02))},
        {"acme.example": DomainSpec(mx=[(10, "mx.via.example")])},
    )
    one, two = await proxies(bind="127.0.0.2"), await proxies(bind="127.0.0.3")
    got, _ = await world.run(
        list(ACME),
        BulkOptions(reuse_ttl=None, persist=False, rcpts_per_session=2, catch_all_check=False),
        SMTP_PROXY=f"{one.url},{two.url}", PER_MX_MAX_CONCURRENCY_DEFAULT="1",
    )  # fmt: skip
    assert {r["reason"] for r in got.values()} == {"catch_all_unknown"}
    server = world.servers["mx.via.example"]
    assert peers(server) == {"127.0.0.2", "127.0.0.3"}  # both routes used
    assert most_at_once(server, "127.0.0.2") == 1  # each route within the MX's cap of 1
    assert most_at_once(server, "127.0.0.3") == 1
    assert most_at_once(server) == 2  # and each route had its own cap


async def test_a_dead_proxy_is_proxy_error_and_rests_said_in_the_summary(
    make_world, proxies
) -> None:
    world = await make_world(
        {"mx.via.example": ("127.0.0.1", MXBehavior(mailboxes=ACME))},
        {"acme.example": DomainSpec(mx=[(10, "mx.via.example")])},
    )
    dead = await proxies()
    port = dead.port
    await dead.stop()
    got, summary = await world.run(
        [f"u{i}@acme.example" for i in range(10)],
        SMTP_PROXY=f"socks5://carol:hunter2@127.0.0.1:{port}",
    )
    assert {(r["verdict"], r["reason"]) for r in got.values()} == {("unknown", "proxy_error")}
    assert world.servers["mx.via.example"].record.connections == 0
    assert len(summary.notes) == 1
    assert "taken out of rotation" in summary.notes[0]
    assert f"socks5://carol:***@127.0.0.1:{port}" in summary.notes[0]
    assert "hunter2" not in repr(got) + summary.notes[0]


async def test_a_failing_proxy_hands_its_addresses_to_the_other(make_world, proxies) -> None:
    world = await make_world(
        {"mx.via.example": ("127.0.0.1", MXBehavior(mailboxes=ACME))},
        {"acme.example": DomainSpec(mx=[(10, "mx.via.example")])},
    )
    good, dead = await proxies(bind="127.0.0.2"), await proxies()
    dead_url = dead.url
    await dead.stop()
    lines = [f"u{i}@acme.example" for i in range(12)]
    got, summary = await world.run(
        lines, BulkOptions(reuse_ttl=None, persist=False, rcpts_per_session=3),
        SMTP_PROXY=f"{dead_url} {good.url}", ROUTE_FAIL_LIMIT="1",
    )  # fmt: skip
    assert {r["verdict"] for r in got.values()} == {"deliverable"}
    assert peers(world.servers["mx.via.example"]) == {"127.0.0.2"}
    assert any("proxy1" in note for note in summary.notes)


async def test_no_smtp_answers_from_dns_syntax_and_lists(make_world) -> None:
    world = await make_world(
        {"mx.acme.example": ("127.0.0.1", MXBehavior(mailboxes=ACME))},
        {"acme.example": DomainSpec(mx=[(10, "mx.acme.example")]),
         "nomail.example": DomainSpec(null_mx=True)},
    )  # fmt: skip
    got, summary = await world.run(
        ["u1@acme.example", "info@acme.example", "x@nomail.example", "x@gone.example", "nope"],
        NO_SMTP="1",
    )
    assert (got["u1@acme.example"]["verdict"], got["u1@acme.example"]["reason"]) == (
        "unknown", "smtp_skipped")  # fmt: skip
    assert got["info@acme.example"]["flags"]["role"] is True
    assert got["x@nomail.example"]["reason"] == "null_mx"
    assert got["x@gone.example"]["reason"] == "no_such_domain"
    assert got["nope"]["reason"] == "invalid_syntax"
    assert world.servers["mx.acme.example"].record.connections == 0
    assert summary.sessions == 0


# -- throttle keys ---------------------------------------------------------------------


def test_egress_key_leaves_the_direct_route_alone() -> None:
    assert egress_key(None, "mx.a.example") == "mx.a.example"
    assert egress_key("direct", "mx.a.example") == "mx.a.example"
    assert egress_key("proxy1", "mx.a.example") == "proxy1|mx.a.example"


def test_mx_limits_apply_to_the_mx_part_of_a_route_key() -> None:
    settings = Settings.from_env({"MX_LIMITS": "*.google.com=5:2"})
    policy = ThrottlePolicy.from_settings(settings)
    assert policy.limits_for("proxy1|ALT1.aspmx.l.google.com.") == policy.limits_for(
        "alt1.aspmx.l.google.com"
    )
    assert policy.limits_for("proxy1|alt1.aspmx.l.google.com").max_concurrency == 5


async def test_a_penalty_lands_on_the_route_that_earned_it() -> None:
    throttle = LocalThrottle(ThrottlePolicy.from_settings(Settings.from_env({})))
    before = await throttle.effective_limits("proxy2|mx.a.example")
    await throttle.penalize("proxy1|mx.a.example", reason="421")
    assert (await throttle.effective_limits("proxy1|mx.a.example")).rps < before.rps
    assert await throttle.effective_limits("proxy2|mx.a.example") == before


async def test_route_penalties_are_shared_by_the_fleet_through_redis(redis_url: str) -> None:
    from mailprobe.throttle import RedisThrottle

    policy = ThrottlePolicy.from_settings(Settings.from_env({}))
    worker_a, worker_b = RedisThrottle(redis_url, policy), RedisThrottle(redis_url, policy)
    try:
        before = await worker_b.effective_limits("proxy2|mx.a.example")
        await worker_a.penalize("proxy1|mx.a.example", reason="rate_limited")
        assert (await worker_b.effective_limits("proxy1|mx.a.example")).rps < before.rps
        assert await worker_b.effective_limits("proxy2|mx.a.example") == before
    finally:
        await worker_a.aclose()
        await worker_b.aclose()
