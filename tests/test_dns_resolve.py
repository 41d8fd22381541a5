"""MX resolution against a real DNS server on loopback (UDP and TCP), no network."""

from __future__ import annotations

import asyncio
import json
import random
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import dns.nameserver
import pytest

from mailprobe import config
from mailprobe.address import InvalidAddress
from mailprobe.config import Settings
from mailprobe.dns import (
    MXRecord,
    MXResolution,
    ResolutionStatus,
    default_resolver,
    make_resolver,
    resolve_mx,
)
from mailprobe.testing.dnsd import DomainSpec, SimDNSServer

pytestmark = pytest.mark.r15  # the seed's label: pytest -k r15

MakeDNS = Callable[..., Awaitable[SimDNSServer]]


@pytest.fixture
async def dns_server() -> AsyncIterator[MakeDNS]:
    """Factory: `await dns_server({name: DomainSpec(...)})` serves a zone on 127.0.0.1."""
    started: list[SimDNSServer] = []

    async def make(zone: dict[str, DomainSpec], negative_ttl: int = 60) -> SimDNSServer:
        server = await SimDNSServer(zone, negative_ttl=negative_ttl).start()
        started.append(server)
        return server

    yield make
    for server in started:
        await server.stop()


async def _resolve(
    server: SimDNSServer, domain: str, timeout: float = 2.0, rng: random.Random | None = None
) -> MXResolution:
    resolver = make_resolver([server.nameserver], timeout=timeout)
    return await resolve_mx(domain, resolver=resolver, rng=rng)


async def test_equal_preferences_shuffled_lowest_first(dns_server: MakeDNS) -> None:
    server = await dns_server(
        {
            "acme.example": DomainSpec(
                mx=[
                    (20, "backup.acme.example"),
                    (10, "mx-a.acme.example"),
                    (10, "mx-b.acme.example"),
                    (5, "primary.acme.example"),
                ],
            )
        }
    )
    rng = random.Random(20240515)
    orders = set()
    for _ in range(30):
        result = await _resolve(server, "acme.example", rng=rng)
        assert result.status is ResolutionStatus.OK and result.deliverable
        prefs = [r.preference for r in result.records]
        assert prefs == [5, 10, 10, 20]
        assert result.lowest_mx == "primary.acme.example"
        assert result.hosts[-1] == "backup.acme.example"
        orders.add(tuple(result.hosts[1:3]))
    assert orders == {
        ("mx-a.acme.example", "mx-b.acme.example"),
        ("mx-b.acme.example", "mx-a.acme.example"),
    }
    # The same seed gives the same order: the shuffle is driven by `rng` alone.
    first = await _resolve(server, "acme.example", rng=random.Random(7))
    again = await _resolve(server, "acme.example", rng=random.Random(7))
    assert first.hosts == again.hosts
    assert first.ttl == 300 and not first.implicit and first.error is None


@pytest.mark.parametrize("family", ["a", "aaaa"])
async def test_address_only_domain_is_implicit_mx(dns_server: MakeDNS, family: str) -> None:
    spec = (
        DomainSpec(a=["192.0.2.10"], ttl=123)
        if family == "a"
        else DomainSpec(aaaa=["2001:db8::10"], ttl=123)
    )
    server = await dns_server({"bare.example": spec})
    result = await _resolve(server, "Bare.Example.")
    assert result.status is ResolutionStatus.OK
    assert result.implicit is True
    assert result.records == (MXRecord(0, "bare.example"),)
    assert result.ttl == 123
    asked = [q.qtype for q in server.queries_for("bare.example")]
    assert asked == (["MX", "A"] if family == "a" else ["MX", "A", "AAAA"])


async def test_null_mx(dns_server: MakeDNS) -> None:
    server = await dns_server({"nomail.example": DomainSpec(null_mx=True, a=["192.0.2.1"])})
    result = await _resolve(server, "nomail.example")
    assert result.status is ResolutionStatus.NULL_MX
    assert not result.deliverable and not result.is_temporary
    assert result.hosts == [] and result.lowest_mx is None
    # A null MX is final: no fallback to the A record.
    assert [q.qtype for q in server.queries_for("nomail.example")] == ["MX"]


async def test_null_mx_mixed_with_real_host_uses_the_host(dns_server: MakeDNS) -> None:
    server = await dns_server({"odd.example": DomainSpec(mx=[(0, "."), (10, "mx.odd.example")])})
    result = await _resolve(server, "odd.example")
    assert result.status is ResolutionStatus.OK
    assert result.hosts == ["mx.odd.example"]


async def test_nxdomain_carries_negative_ttl(dns_server: MakeDNS) -> None:
    server = await dns_server(
        {"real.example": DomainSpec(mx=[(1, "mx.real.example")])}, negative_ttl=77
    )
    result = await _resolve(server, "ghost.example")
    assert result.status is ResolutionStatus.NO_SUCH_DOMAIN
    assert not result.deliverable and not result.is_temporary
    assert result.ttl == 77
    explicit = await dns_server({"gone.example": DomainSpec(nxdomain=True, negative_ttl=33)})
    assert (await _resolve(explicit, "gone.example")).ttl == 33


async def test_no_mx_no_address_is_no_mail_host(dns_server: MakeDNS) -> None:
    server = await dns_server({"empty.example": DomainSpec(negative_ttl=42)})
    result = await _resolve(server, "empty.example")
    assert result.status is ResolutionStatus.NO_MAIL_HOST
    assert result.ttl == 42
    assert result.records == () and not result.implicit
    assert [q.qtype for q in server.queries_for("empty.example")] == ["MX", "A", "AAAA"]


async def test_invalid_mx_hosts_are_dropped(dns_server: MakeDNS) -> None:
    server = await dns_server(
        {
            "mixed.example": DomainSpec(mx=[(5, "bad_host.example"), (10, "good.example")]),
            "allbad.example": DomainSpec(mx=[(5, "bad_host.example")]),
        }
    )
    assert (await _resolve(server, "mixed.example")).hosts == ["good.example"]
    allbad = await _resolve(server, "allbad.example")
    assert allbad.status is ResolutionStatus.NO_MAIL_HOST
    assert allbad.error is not None and "bad_host.example" in allbad.error


@pytest.mark.parametrize("failure", ["servfail", "refused"])
async def test_server_failure_is_temporary(dns_server: MakeDNS, failure: str) -> None:
    spec = DomainSpec(servfail=failure == "servfail", refused=failure == "refused")
    server = await dns_server({"broken.example": spec})
    result = await _resolve(server, "broken.example")
    assert result.status is ResolutionStatus.DNS_ERROR
    assert result.is_temporary and not result.deliverable
    assert result.error is not None and failure.upper() in result.error.upper()


@pytest.mark.parametrize(
    "spec",
    [
        DomainSpec(mx=[(1, "mx.slow.example")], delay=5.0),
        DomainSpec(mx=[(1, "mx.slow.example")], drop=True),
    ],
    ids=["slow", "silent"],
)
async def test_slow_answer_times_out_bounded(dns_server: MakeDNS, spec: DomainSpec) -> None:
    server = await dns_server({"slow.example": spec})
    timeout = 1.0
    start = time.monotonic()
    result = await _resolve(server, "slow.example", timeout=timeout)
    elapsed = time.monotonic() - start
    assert result.status is ResolutionStatus.DNS_ERROR and result.is_temporary
    assert result.error is not None and "time" in result.error.lower()
    assert elapsed < timeout + 1.0
    assert server.queries_for("slow.example", "MX")  # it did ask, and waited


async def test_unreachable_nameserver_is_temporary() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again below: nobody listens there
    start = time.monotonic()
    resolver = make_resolver([f"127.0.0.1:{port}"], timeout=1.0)
    result = await resolve_mx("acme.example", resolver=resolver)
    assert result.status is ResolutionStatus.DNS_ERROR
    assert time.monotonic() - start < 2.0


async def test_truncated_udp_retried_over_tcp(dns_server: MakeDNS) -> None:
    server = await dns_server(
        {
            "tc.example": DomainSpec(mx=[(10, "mx.tc.example")], truncate_udp=True),
            "plain.example": DomainSpec(mx=[(10, "mx.plain.example")]),
            # Too many MX records for 512 octets: the server truncates on its own.
            "big.example": DomainSpec(
                mx=[(i, f"mx{i:02d}.a-rather-long-mail-host-name.big.example") for i in range(30)]
            ),
        }
    )
    result = await _resolve(server, "tc.example")
    assert result.hosts == ["mx.tc.example"]
    assert [q.transport for q in server.queries_for("tc.example")] == ["udp", "tcp"]
    await _resolve(server, "plain.example")
    assert server.transports("plain.example") == {"udp"}
    big = await _resolve(server, "big.example")
    assert (
        len(big.records) == 30 and big.lowest_mx == "mx00.a-rather-long-mail-host-name.big.example"
    )
    assert "tcp" in server.transports("big.example")


async def test_unicode_domain_sent_as_idna(dns_server: MakeDNS) -> None:
    server = await dns_server(
        {"xn--bcher-kva.example": DomainSpec(mx=[(10, "mx.buecher.example")])}
    )
    result = await _resolve(server, "Bücher.example")
    assert result.domain == "xn--bcher-kva.example"
    assert result.hosts == ["mx.buecher.example"]
    assert {q.name for q in server.queries} == {"xn--bcher-kva.example"}


@pytest.mark.parametrize(
    "bad", ["bad_domain.example", "a..b.example", "exa mple.com", "evil.example\r\nRCPT TO:<x>", ""]
)
async def test_invalid_domain_raises_before_any_query(dns_server: MakeDNS, bad: str) -> None:
    server = await dns_server({})
    with pytest.raises(InvalidAddress):
        await _resolve(server, bad)
    assert server.queries == []


async def test_cname_followed(dns_server: MakeDNS) -> None:
    server = await dns_server(
        {
            "alias.example": DomainSpec(cname="target.example", ttl=60),
            "target.example": DomainSpec(mx=[(10, "mx.target.example")], ttl=600),
        }
    )
    result = await _resolve(server, "alias.example")
    assert result.hosts == ["mx.target.example"]
    assert result.ttl == 60  # the shortest TTL along the chain


def test_make_resolver_host_port_strings() -> None:
    resolver = make_resolver(["127.0.0.1:5353", "[::1]:5300", "10.0.0.53", "::1"], timeout=3.5)
    pairs = [
        (ns.address, ns.port)
        for ns in resolver.nameservers
        if isinstance(ns, dns.nameserver.Do53Nameserver)
    ]
    assert pairs == [("127.0.0.1", 5353), ("::1", 5300), ("10.0.0.53", 53), ("::1", 53)]
    assert resolver.lifetime == 3.5 and resolver.timeout <= 3.5
    for bad in ["mx.example.com", "127.0.0.1:0", "[::1]x", "1.2.3.4:99999"]:
        with pytest.raises(ValueError):
            make_resolver([bad])


async def test_settings_nameservers_end_to_end(
    dns_server: MakeDNS, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = await dns_server({"acme.example": DomainSpec(mx=[(10, "mx.acme.example")])})
    settings = Settings.from_env({"DNS_NAMESERVERS": server.nameserver, "DNS_TIMEOUT": "2.5"})
    resolver = default_resolver(settings)
    assert resolver.lifetime == 2.5
    assert (await resolve_mx("acme.example", resolver=resolver)).hosts == ["mx.acme.example"]
    # With no resolver given, resolve_mx builds one from the environment.
    monkeypatch.setenv("DNS_NAMESERVERS", server.nameserver)
    config.get_settings.cache_clear()
    before = len(server.queries)
    result = await resolve_mx("acme.example")
    assert result.lowest_mx == "mx.acme.example"
    assert len(server.queries) == before + 1


def test_sync_context_manager_serves_from_a_thread() -> None:
    zone = {"sync.example": DomainSpec(mx=[(10, "mx.sync.example")])}
    with SimDNSServer(zone) as server:
        assert server.nameserver == f"127.0.0.1:{server.port}" and server.port > 0
        result = asyncio.run(
            resolve_mx("sync.example", resolver=make_resolver([server.nameserver], 2.0))
        )
        assert result.hosts == ["mx.sync.example"]
        # The zone is live: a change is seen by the next query.
        zone["sync.example"] = DomainSpec(nxdomain=True)
        again = asyncio.run(
            resolve_mx("sync.example", resolver=make_resolver([server.nameserver], 2.0))
        )
        assert again.status is ResolutionStatus.NO_SUCH_DOMAIN
    # Stopped: the port is free again for both transports.
    for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
        with socket.socket(socket.AF_INET, kind) as sock:
            sock.bind(("127.0.0.1", server.port))


def test_resolution_round_trips_through_json() -> None:
    original = MXResolution(
        "acme.example",
        ResolutionStatus.OK,
        (MXRecord(5, "a.acme.example"), MXRecord(10, "b.acme.example")),
        ttl=300,
        implicit=False,
    )
    restored = MXResolution.from_dict(json.loads(json.dumps(original.to_dict())))
    assert restored == original
    failed = MXResolution("x.example", ResolutionStatus.DNS_ERROR, error="Timeout")
    back = MXResolution.from_dict(json.loads(json.dumps(failed.to_dict())))
    assert back == failed and back.is_temporary and back.hosts == []
