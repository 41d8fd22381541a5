"""`mailprobe doctor` against a loopback DNS + SMTP world (no Internet).

The egress IP is 127.0.0.1 here, so the zone holds its PTR
(1.0.0.127.in-addr.arpa), the HELO name's A record, the MAIL FROM domain's MX
and SPF, and a test blocklist zone; `check_private=True` lets the IP checks run
for a loopback address, and `reference_domain` / `mx_host` keep every lookup
inside the zone.
"""

from __future__ import annotations

import socket
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from mailprobe.config import Settings
from mailprobe.dns import make_resolver
from mailprobe.doctor import (
    DEFAULT_BLOCKLISTS,
    FIX_PORT25,
    Check,
    doctor_exit_status,
    format_checks,
    run_checks,
)
from mailprobe.spf import SPFEvaluator
from mailprobe.store.database import Store
from mailprobe.testing.dnsd import DomainSpec, SimDNSServer
from mailprobe.testing.smtpd import MXBehavior, Scripted, SimSMTPServer

pytestmark = pytest.mark.r20  # the seed's label: pytest -k r20

pytest_plugins = ["tests.redis_server"]

HELO = "probe.mailprobe.example"
MAIL_DOMAIN = "mailprobe.example"
MAIL_FROM = f"bounce@{MAIL_DOMAIN}"
REVERSE = "1.0.0.127.in-addr.arpa"
BL = "bl.test-dnsbl.example"
BL2 = "bl2.test-dnsbl.example"
LISTED = f"1.0.0.127.{BL}"


def good_zone() -> dict[str, DomainSpec]:
    return {
        REVERSE: DomainSpec(ptr=[HELO]),
        HELO: DomainSpec(a=["127.0.0.1"]),
        MAIL_DOMAIN: DomainSpec(
            mx=[(10, f"mx.{MAIL_DOMAIN}")],
            txt=["google-site-verification=abc", "v=spf1 ip4:127.0.0.1 -all"],
        ),
        f"mx.{MAIL_DOMAIN}": DomainSpec(a=["127.0.0.1"]),
        # the default reference domain, so the default MX choice runs inside the zone too
        "gmail.com": DomainSpec(mx=[(5, "gmail-smtp-in.l.google.com")]),
        "gmail-smtp-in.l.google.com": DomainSpec(a=["127.0.0.1"]),
        # BL and BL2 hold no entry for 127.0.0.1: NXDOMAIN = not listed
    }


@dataclass
class World:
    dns: SimDNSServer
    smtp: SimSMTPServer
    settings: Settings

    async def run(self, **kwargs: Any) -> dict[str, Check]:
        kwargs.setdefault("blocklists", (BL, BL2))
        kwargs.setdefault("check_private", True)
        checks = await run_checks(self.settings, **kwargs)
        names = [c.name for c in checks]
        assert len(names) == len(set(names)), names
        return {c.name: c for c in checks}


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    async with (
        SimDNSServer(good_zone()) as dns,
        SimSMTPServer(MXBehavior(hostname="gmail-smtp-in.l.google.com")) as smtp,
    ):
        settings = Settings(
            smtp_helo_domain=HELO,
            smtp_mail_from=MAIL_FROM,
            smtp_port=smtp.port,
            smtp_connect_timeout=2,
            smtp_command_timeout=2,
            dns_nameservers=(dns.nameserver,),
            dns_timeout=2,
            database_url=f"sqlite:///{tmp_path / 'doctor.db'}",
        )
        yield World(dns, smtp, settings)


def statuses(checks: dict[str, Check]) -> dict[str, str]:
    return {name: c.status for name, c in checks.items()}


def closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.fixture
def blackhole_dns() -> Iterator[str]:
    """A UDP port that receives queries and never answers."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"127.0.0.1:{sock.getsockname()[1]}"


# -- the passing world -----------------------------------------------------------------


async def test_passing_world_every_check_passes(world: World) -> None:
    checks = await world.run()  # default MX: the lowest MX of gmail.com, served by the zone
    assert statuses(checks) == {
        "dns": "pass",
        "helo": "pass",
        "mail_from": "pass",
        "smtp": "pass",
        "egress_ip": "pass",
        "ptr": "pass",
        "helo_ptr": "pass",
        "spf": "pass",
        f"blocklist:{BL}": "pass",
        f"blocklist:{BL2}": "pass",
        "redis": "skip",  # REDIS_URL not set
        "database": "pass",
    }, format_checks(list(checks.values()))
    assert doctor_exit_status(list(checks.values())) == 0
    assert "gmail-smtp-in.l.google.com" in checks["smtp"].detail
    assert checks["egress_ip"].detail.startswith("127.0.0.1 (local address of the connection")
    assert "127.0.0.1 -> probe.mailprobe.example -> 127.0.0.1" in checks["ptr"].detail
    # greeting, EHLO with our HELO name, QUIT: no MAIL, no RCPT, no DATA
    assert world.smtp.record.commands == [f"EHLO {HELO}", "QUIT"]
    assert world.dns.queries_for(REVERSE, "PTR")
    assert world.dns.queries_for(LISTED, "A")
    assert not (Path(world.settings.database_url[len("sqlite:///") :])).exists()


async def test_loopback_egress_warns_and_skips_ip_checks(world: World) -> None:
    checks = await world.run(check_private=False, mx_host="127.0.0.1")
    assert checks["smtp"].status == "pass"
    assert checks["egress_ip"].status == "warn"
    assert "NAT" in checks["egress_ip"].detail and checks["egress_ip"].fix
    for name in ("ptr", "helo_ptr", "spf", f"blocklist:{BL}", f"blocklist:{BL2}"):
        assert checks[name].status == "skip", name
        assert "private/loopback" in checks[name].detail
    assert not world.dns.queries_for(LISTED)  # blocklists are never asked about 127.0.0.1
    assert doctor_exit_status(list(checks.values())) == 1


async def test_source_address_is_the_egress_ip(world: World) -> None:
    world.settings = replace(world.settings, smtp_source_address="127.0.0.1")
    checks = await world.run(mx_host=f"mx.{MAIL_DOMAIN}")
    assert checks["egress_ip"].detail.startswith("127.0.0.1 (SMTP_SOURCE_ADDRESS)")
    assert checks["smtp"].status == "pass"


# -- PTR and HELO ------------------------------------------------------------------------


async def test_no_ptr_fails(world: World) -> None:
    del world.dns.zone[REVERSE]
    checks = await world.run()
    assert checks["ptr"].status == "fail"
    assert "no PTR record" in checks["ptr"].detail
    assert HELO in checks["ptr"].fix
    assert checks["helo_ptr"].status == "skip"
    assert doctor_exit_status(list(checks.values())) == 2


async def test_ptr_not_forward_confirmed_fails(world: World) -> None:
    world.dns.zone[REVERSE] = DomainSpec(ptr=["other.mailprobe.example"])
    world.dns.zone["other.mailprobe.example"] = DomainSpec(a=["127.0.0.9"])
    checks = await world.run()
    assert checks["ptr"].status == "fail"
    assert "other.mailprobe.example -> 127.0.0.9" in checks["ptr"].detail
    assert "other.mailprobe.example -> 127.0.0.1" in checks["ptr"].fix


async def test_ptr_name_differs_from_helo(world: World) -> None:
    world.dns.zone[REVERSE] = DomainSpec(ptr=["host.mailprobe.example"])
    world.dns.zone["host.mailprobe.example"] = DomainSpec(a=["127.0.0.1"])
    world.dns.zone[HELO] = DomainSpec(a=["127.0.0.5"])  # resolves, but elsewhere
    checks = await world.run()
    assert checks["ptr"].status == "pass"
    assert checks["helo_ptr"].status == "warn"
    assert "SMTP_HELO_DOMAIN=host.mailprobe.example" in checks["helo_ptr"].fix
    # consistent: not the PTR name, but the HELO name points at the egress IP
    world.dns.zone[HELO] = DomainSpec(a=["127.0.0.1"])
    checks = await world.run()
    assert checks["helo_ptr"].status == "pass"
    assert "resolves to 127.0.0.1" in checks["helo_ptr"].detail


@pytest.mark.parametrize(
    ("helo", "expected"),
    [
        ("127.0.0.1", "is an IP address"),
        ("localhost", "not fully qualified"),
        ("bad_name.example", "not a valid host name"),
        ("nowhere.mailprobe.example", "has no A/AAAA record"),
    ],
)
async def test_bad_helo_config_fails(world: World, helo: str, expected: str) -> None:
    world.settings = replace(world.settings, smtp_helo_domain=helo)
    checks = await world.run(mx_host="127.0.0.1", blocklists=())
    assert checks["helo"].status == "fail"
    assert expected in checks["helo"].detail
    assert "SMTP_HELO_DOMAIN" in checks["helo"].fix or "A record" in checks["helo"].fix


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (DomainSpec(null_mx=True), "null MX"),
        (DomainSpec(nxdomain=True), "does not exist"),
        (DomainSpec(), "no MX and no A/AAAA"),
    ],
)
async def test_mail_from_domain_without_mail_host_fails(
    world: World, spec: DomainSpec, expected: str
) -> None:
    world.dns.zone[MAIL_DOMAIN] = spec
    checks = await world.run(mx_host="127.0.0.1", blocklists=())
    assert checks["mail_from"].status == "fail"
    assert expected in checks["mail_from"].detail


async def test_mail_from_with_only_an_a_record_passes(world: World) -> None:
    world.dns.zone[MAIL_DOMAIN] = DomainSpec(a=["127.0.0.1"], txt=["v=spf1 a -all"])
    checks = await world.run(mx_host="127.0.0.1", blocklists=())
    assert checks["mail_from"].status == "pass" and "no MX" in checks["mail_from"].detail
    assert checks["spf"].status == "pass"


# -- SPF -----------------------------------------------------------------------------


async def test_spf_without_our_ip_fails_softfail_and_none_warn(world: World) -> None:
    zone = world.dns.zone
    zone[MAIL_DOMAIN].txt = ["v=spf1 ip4:192.0.2.0/24 -all"]
    checks = await world.run(mx_host="127.0.0.1", blocklists=())
    assert checks["spf"].status == "fail"
    assert "'-all' matched" in checks["spf"].detail
    assert checks["spf"].fix == f"add ip4:127.0.0.1 to the SPF record of {MAIL_DOMAIN}"
    zone[MAIL_DOMAIN].txt = ["v=spf1 ip4:192.0.2.0/24 ~all"]
    checks = await world.run(mx_host="127.0.0.1", blocklists=())
    assert checks["spf"].status == "warn" and "softfail" in checks["spf"].detail
    zone[MAIL_DOMAIN].txt = ["some other text"]
    checks = await world.run(mx_host="127.0.0.1", blocklists=())
    assert checks["spf"].status == "warn" and "no SPF record" in checks["spf"].detail
    assert "v=spf1 ip4:127.0.0.1 -all" in checks["spf"].fix


def spf_zone() -> dict[str, DomainSpec]:
    zone = {
        "inc.example": DomainSpec(txt=["v=spf1 include:provider.example -all"]),
        "provider.example": DomainSpec(txt=["v=spf1 ip4:10.0.0.0/8 a:relay.example/24 ~all"]),
        "relay.example": DomainSpec(a=["127.0.1.200"]),
        "redir.example": DomainSpec(txt=["v=spf1 redirect=provider.example"]),
        "mxspf.example": DomainSpec(mx=[(10, "mx.mxspf.example")], txt=["v=spf1 mx -all"]),
        "mx.mxspf.example": DomainSpec(a=["127.0.0.1"]),
        "v6.example": DomainSpec(txt=["v=spf1 ip6:2001:db8::/32 -all"]),
        "two.example": DomainSpec(txt=["v=spf1 -all", "v=spf1 +all"]),
        "macro.example": DomainSpec(txt=["v=spf1 exists:%{i}.spf.example -all"]),
        "badinc.example": DomainSpec(txt=["v=spf1 include:nothing.example -all"]),
        "slow.example": DomainSpec(txt=["v=spf1 include:dead.example -all"]),
        "dead.example": DomainSpec(servfail=True),
        "plain.example": DomainSpec(txt=["v=spf1 ip4:192.0.2.1"]),
        "loop.example": DomainSpec(txt=["v=spf1 include:loop.example -all"]),
    }
    # a chain of 11 includes: one over the §4.6.4 limit of 10
    for i in range(12):
        zone[f"c{i}.example"] = DomainSpec(txt=[f"v=spf1 include:c{i + 1}.example -all"])
    zone["c12.example"] = DomainSpec(txt=["v=spf1 +all"])
    zone["ok9.example"] = DomainSpec(txt=["v=spf1 include:c3.example -all"])  # 10 lookups
    # flat records: 11 and 10 `a` terms, none matching and none void
    zone["many.example"] = DomainSpec(txt=["v=spf1" + " a:relay.example" * 11 + " -all"])
    zone["ten.example"] = DomainSpec(txt=["v=spf1" + " a:relay.example" * 10 + " -all"])
    # void lookups: 3 names that do not exist, one over the limit of 2
    zone["badspec.example"] = DomainSpec(txt=["v=spf1 a:foo..example -all"])
    zone["void.example"] = DomainSpec(txt=["v=spf1 a:n1.example a:n2.example a:n3.example -all"])
    return zone


@pytest.mark.parametrize(
    ("ip", "domain", "result"),
    [
        ("127.0.0.1", "inc.example", "fail"),
        ("10.1.2.3", "inc.example", "pass"),
        ("127.0.1.77", "inc.example", "pass"),  # a:relay.example/24
        ("127.0.0.1", "redir.example", "softfail"),
        ("10.9.9.9", "redir.example", "pass"),
        ("127.0.0.1", "mxspf.example", "pass"),
        ("127.0.0.2", "mxspf.example", "fail"),
        ("2001:db8::25", "v6.example", "pass"),
        ("127.0.0.1", "v6.example", "fail"),
        ("127.0.0.1", "two.example", "permerror"),
        ("127.0.0.1", "macro.example", "unsupported"),
        ("127.0.0.1", "badinc.example", "permerror"),
        ("127.0.0.1", "slow.example", "temperror"),
        ("127.0.0.1", "plain.example", "neutral"),
        ("127.0.0.1", "nothing.example", "none"),
        ("127.0.0.1", "loop.example", "permerror"),
        ("127.0.0.1", "c0.example", "permerror"),  # 12 includes
        ("127.0.0.1", "ok9.example", "pass"),  # exactly 10 lookups is allowed
        ("127.0.0.1", "many.example", "permerror"),
        ("127.0.0.1", "ten.example", "fail"),
        ("127.0.0.1", "void.example", "permerror"),
        ("127.0.0.1", "badspec.example", "permerror"),
    ],
)
async def test_spf_evaluator(ip: str, domain: str, result: str) -> None:
    async with SimDNSServer(spf_zone()) as dns:
        evaluator = SPFEvaluator(make_resolver([dns.nameserver], 2))
        outcome = await evaluator.check_host(ip, domain)
    assert outcome.result == result, outcome


# -- blocklists ---------------------------------------------------------------------


async def test_listed_on_a_blocklist_fails(world: World) -> None:
    world.dns.zone[LISTED] = DomainSpec(a=["127.0.0.2"], txt=["Listed: see https://bl.example"])
    checks = await world.run()
    listed = checks[f"blocklist:{BL}"]
    assert listed.status == "fail"
    assert BL in listed.detail and "127.0.0.2" in listed.detail
    assert "Listed: see https://bl.example" in listed.detail
    assert "delisting" in listed.fix
    assert checks[f"blocklist:{BL2}"].status == "pass"
    assert doctor_exit_status(list(checks.values())) == 2
    line = next(x for x in format_checks(list(checks.values())).splitlines() if BL in x)
    assert line.startswith("FAIL") and "fix: " in line


async def test_spamhaus_refusal_code_warns(world: World) -> None:
    world.dns.zone[LISTED] = DomainSpec(a=["127.255.255.254"])
    checks = await world.run()
    assert checks[f"blocklist:{BL}"].status == "warn"
    assert "refused the query" in checks[f"blocklist:{BL}"].detail
    world.dns.zone[LISTED] = DomainSpec(a=["198.51.100.7"])  # an ISP's NXDOMAIN rewriting
    checks = await world.run()
    assert checks[f"blocklist:{BL}"].status == "warn"
    assert "rewrites" in checks[f"blocklist:{BL}"].detail


async def test_a_crashing_check_is_reported_not_raised(world: World) -> None:
    checks = await world.run(blocklists=("bad..zone",))
    assert checks["blocklist:bad..zone"].status == "fail"
    assert "the check itself failed" in checks["blocklist:bad..zone"].detail
    assert checks["ptr"].status == "pass"


def test_default_blocklists() -> None:
    assert DEFAULT_BLOCKLISTS == ("zen.spamhaus.org", "b.barracudacentral.org", "bl.spamcop.net")


# -- SMTP and DNS failures ---------------------------------------------------------------


async def test_smtp_port_closed_fails_fast(world: World) -> None:
    start = time.monotonic()
    checks = await world.run(mx_host="127.0.0.1", port=closed_port())
    assert time.monotonic() - start < 5
    assert checks["smtp"].status == "fail"
    assert checks["smtp"].fix == FIX_PORT25
    # the egress IP still comes from the route to the MX
    assert checks["egress_ip"].detail.startswith("127.0.0.1 (local address routed to")
    assert checks["ptr"].status == "pass"


async def test_smtp_greeting_refusal_fails(world: World) -> None:
    world.smtp.behavior.banner = Scripted(554, "5.7.1 Service unavailable; client host blocked")
    checks = await world.run(mx_host="127.0.0.1")
    assert checks["smtp"].status == "fail"
    assert "554" in checks["smtp"].detail and "blocklist" in checks["smtp"].fix


async def test_smtp_ehlo_refusal_warns(world: World) -> None:
    world.smtp.behavior.ehlo = Scripted(550, "5.7.1 Helo command rejected: Host not found")
    checks = await world.run(mx_host="127.0.0.1")
    assert checks["smtp"].status == "warn" and "refused EHLO: 550" in checks["smtp"].detail


async def test_silent_smtp_server_is_bounded(world: World) -> None:
    world.smtp.behavior.greeting_delay = 30
    start = time.monotonic()
    checks = await world.run(mx_host="127.0.0.1")
    assert time.monotonic() - start < 6
    assert checks["smtp"].status == "fail" and "no SMTP reply" in checks["smtp"].detail


async def test_dns_not_answering_is_bounded(world: World, blackhole_dns: str) -> None:
    world.settings = replace(world.settings, dns_nameservers=(blackhole_dns,), dns_timeout=1)
    start = time.monotonic()
    checks = await world.run(mx_host="127.0.0.1")
    assert time.monotonic() - start < 5
    assert checks["dns"].status == "fail"
    assert "no answer within 1s" in checks["dns"].detail or "Timeout" in checks["dns"].detail
    assert "DNS_NAMESERVERS" in checks["dns"].fix
    for name in ("helo", "mail_from", "ptr", "helo_ptr", "spf", f"blocklist:{BL}"):
        assert checks[name].status == "skip", name
    assert checks["smtp"].status == "pass"  # an IP literal needs no DNS
    # without --mx-host there is no MX to try
    checks = await world.run()
    assert checks["smtp"].status == "skip" and "DNS is not working" in checks["smtp"].detail
    assert checks["egress_ip"].status == "skip"


# -- Redis and the database -------------------------------------------------------------


async def test_redis_unreachable_fails_database_ok_passes(world: World, tmp_path: Path) -> None:
    db = tmp_path / "real.db"
    Store(f"sqlite:///{db}").check()  # creates the file
    world.settings = replace(
        world.settings,
        redis_url=f"redis://:secret@127.0.0.1:{closed_port()}/0",
        database_url=f"sqlite:///{db}",
    )
    start = time.monotonic()
    checks = await world.run(mx_host="127.0.0.1", blocklists=())
    assert time.monotonic() - start < 8
    assert checks["redis"].status == "fail"
    assert "secret" not in checks["redis"].detail and ":***@" in checks["redis"].detail
    assert "REDIS_URL" in checks["redis"].fix
    assert checks["database"].status == "pass"
    assert "answered" in checks["database"].detail


async def test_redis_reachable_passes(world: World, redis_url: str) -> None:
    world.settings = replace(world.settings, redis_url=redis_url)
    checks = await world.run(mx_host="127.0.0.1", blocklists=())
    assert checks["redis"].status == "pass"


async def test_database_unusable_fails(world: World, tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    world.settings = replace(world.settings, database_url=f"sqlite:///{blocker}/x/m.db")
    checks = await world.run(mx_host="127.0.0.1", blocklists=())
    assert checks["database"].status == "fail"
    assert "DATABASE_URL" in checks["database"].fix


# -- output ------------------------------------------------------------------------------


def test_format_and_exit_status() -> None:
    checks = [
        Check("dns", "pass", "ok"),
        Check("redis", "skip", "not configured"),
        Check("spf", "warn", "softfail", "add ip4:1.2.3.4"),
    ]
    assert doctor_exit_status(checks[:2]) == 0
    assert doctor_exit_status(checks) == 1
    assert doctor_exit_status([*checks, Check("smtp", "fail", "closed", FIX_PORT25)]) == 2
    lines = format_checks(checks).splitlines()
    assert lines == [
        "PASS  dns    ok",
        "SKIP  redis  not configured",
        "WARN  spf    softfail  fix: add ip4:1.2.3.4",
    ]


async def test_dnsd_serves_ptr_and_long_txt() -> None:
    long_spf = "v=spf1 " + " ".join(f"ip4:192.0.2.{i}" for i in range(40)) + " -all"
    assert len(long_spf) > 255
    zone = {REVERSE: DomainSpec(ptr=[HELO]), MAIL_DOMAIN: DomainSpec(txt=[long_spf])}
    async with SimDNSServer(zone) as dns:
        resolver = make_resolver([dns.nameserver], 2)
        ptr = await resolver.resolve(REVERSE, "PTR")
        assert [r.target.to_text() for r in ptr] == [HELO + "."]
        txt = await resolver.resolve(MAIL_DOMAIN, "TXT")
        assert [b"".join(r.strings).decode() for r in txt] == [long_spf]
        outcome = await SPFEvaluator(resolver).check_host("192.0.2.39", MAIL_DOMAIN)
        assert outcome.result == "pass"
