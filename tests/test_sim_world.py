"""The simulated mail world (mailprobe.testing.world) and the SMTP server's new behaviours.

Everything is checked with real protocol clients on loopback: dnspython against
the world's DNS server, mailprobe's own RCPT probe and a raw SMTP client against
its MX hosts (each on its own 127.0.x.y address, all on one port).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import smtplib
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import dns.asyncresolver
import dns.resolver
import pytest

from mailprobe.address import InvalidAddress, parse_address
from mailprobe.smtp import aprobe_rcpt
from mailprobe.testing import (
    DEMO_LAYOUT,
    FAMILY_REPLIES,
    AddressTruth,
    DNSStatus,
    Kind,
    Mailbox,
    MXBehavior,
    Scripted,
    SimWorld,
    WorldConfig,
    demo_world,
    load_corpus,
    reply_families,
)
from mailprobe.verdict import decide

from .conftest import MakeServer

pytestmark = pytest.mark.r18  # the seed's label: pytest -k r18

HELO = "probe.mailprobe.example"
MAIL_FROM = "bounce@probe.mailprobe.example"
ALL_BOXES = (Mailbox.EXISTS, Mailbox.MISSING, Mailbox.FULL, Mailbox.DISABLED)
CORPUS = load_corpus()


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# A world with every behaviour, every mailbox fact on each mail-taking domain.
FULL_LAYOUT = [(kind.value, ALL_BOXES) for kind in Kind if kind is not Kind.BLACKHOLE]


@pytest.fixture
async def world() -> AsyncIterator[SimWorld]:
    clock = FakeClock()
    cfg = WorldConfig(
        greylist_seconds=30.0,
        microsoft_max_rcpts=3,
        cluster_max_connections=3,
        slow_greeting_delay=0.1,
        slow_reply_delay=0.01,
    )
    w = SimWorld(seed=7, layout=FULL_LAYOUT, config=cfg, clock=clock)
    async with w:
        yield w


def first_live_mx(w: SimWorld, email: str) -> str:
    truth = w.truth.lookup(email)
    assert truth is not None
    return next(h for h in truth.mx_hosts if h not in w.unreachable)


async def probe(w: SimWorld, email: str, host: str | None = None, **kw: Any) -> dict[str, Any]:
    host = host or first_live_mx(w, email)
    kw.setdefault("mail_from", MAIL_FROM)
    kw.setdefault("connect_timeout", 3.0)
    kw.setdefault("command_timeout", 3.0)
    return await aprobe_rcpt(
        email, host, helo_domain=HELO, port=w.smtp_port, connect_to=w.ip_of(host), **kw
    )


def addresses_of(w: SimWorld, kind: Kind, mailbox: Mailbox | None = None) -> list[str]:
    out = []
    for email in w.addresses():
        t = w.truth[email]
        if t.kind is kind and (mailbox is None or t.mailbox is mailbox):
            out.append(email)
    return out


class RawSMTP:
    """A minimal real SMTP client: one command, one (possibly multi-line) reply."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def connect(cls, ip: str, port: int) -> tuple[RawSMTP, int, str]:
        reader, writer = await asyncio.open_connection(ip, port)
        client = cls(reader, writer)
        code, text = await client.reply()
        return client, code, text

    async def reply(self) -> tuple[int, str]:
        lines: list[str] = []
        while True:
            raw = await asyncio.wait_for(self.reader.readline(), 5)
            if not raw:
                return 0, "\n".join(lines)
            line = raw.decode().rstrip("\r\n")
            lines.append(line[4:])
            if line[3:4] != "-":
                return int(line[:3]), "\n".join(lines)

    async def cmd(self, line: str) -> tuple[int, str]:
        self.writer.write(line.encode() + b"\r\n")
        await self.writer.drain()
        return await self.reply()

    def close(self) -> None:
        self.writer.close()


# -- the corpus and the generation -----------------------------------------------


def test_world_replies_are_in_the_shipped_corpus() -> None:
    # The corpus ships once, as package data: there is no built-in fallback copy.
    used = {rid for roles in FAMILY_REPLIES.values() for rid, _ in roles.values()}
    assert used < set(CORPUS)
    assert set(reply_families(CORPUS)) == set(FAMILY_REPLIES)  # enough to build every family
    with pytest.raises(FileNotFoundError):
        load_corpus("/nonexistent/smtp_replies.jsonl")


def test_world_is_deterministic_and_shaped() -> None:
    a, b = SimWorld(40, 200, seed=3), SimWorld(40, 200, seed=3)
    assert a.addresses(include_invalid=True) == b.addresses(include_invalid=True)
    assert dict(a.truth) == dict(b.truth)
    c = SimWorld(40, 200, seed=4)
    assert c.addresses() != a.addresses()

    assert len(a.truth.domains) == 40
    assert len(a.addresses()) == 200 == len(set(a.addresses()))
    invalid = set(a.addresses(include_invalid=True)) - set(a.addresses())
    assert len(invalid) == 2  # 1% of 200
    weighted = {Kind(k) for k, w in WorldConfig().mix.items() if w > 0}
    assert {d.kind for d in a.truth.domains.values()} == weighted
    for d in a.truth.domains:
        assert d.endswith(".example")
    for email in a.addresses():
        parse_address(email)
        assert a.truth[email].valid_syntax
    for line in invalid:
        with pytest.raises(InvalidAddress):
            parse_address(line)
        assert a.expected_verdict(line) == "undeliverable"
    # provider clusters serve many domains; per-domain MXes have distinct loopback IPs
    google = [d for d in a.truth.domains.values() if d.kind is Kind.GOOGLE]
    assert len(google) >= 2 and len({d.mx_hosts for d in google}) == 1
    ips = list(a.host_ips.values())
    assert len(ips) == len(set(ips)) and all(ip.startswith("127.0.") for ip in ips)
    assert set(a.env()) == {
        "DNS_NAMESERVERS", "SMTP_PORT", "SMTP_HELO_DOMAIN", "SMTP_MAIL_FROM", "SPECIAL_USE_ALLOWED"
    }  # fmt: skip
    assert a.env()["SPECIAL_USE_ALLOWED"] == "example"  # the world lives under .example
    assert a.env()["SMTP_MAIL_FROM"].endswith(".example")


def test_expected_verdict_table() -> None:
    def truth(**kw: Any) -> AddressTruth:
        base: dict[str, Any] = dict(
            address="x@d.example", valid_syntax=True, domain="d.example", dns=DNSStatus.MX
        )
        return AddressTruth(**(base | kw))

    assert truth(mailbox=Mailbox.EXISTS).verdict() == "deliverable"
    assert truth(mailbox=Mailbox.MISSING).verdict() == "undeliverable"
    assert truth(mailbox=Mailbox.DISABLED).verdict() == "undeliverable"
    assert truth(mailbox=Mailbox.FULL).verdict() == "risky"
    assert truth(mailbox=Mailbox.EXISTS, catch_all=True).verdict() == "risky"
    assert truth(mailbox=Mailbox.MISSING, catch_all=True).verdict() == "risky"
    assert truth(mailbox=Mailbox.EXISTS, blocked=True).verdict() == "unknown"
    assert truth(mailbox=Mailbox.EXISTS, greylist_seconds=30).verdict(60) == "deliverable"
    assert truth(mailbox=Mailbox.EXISTS, greylist_seconds=30).verdict(10) == "unknown"
    assert truth(dns=DNSStatus.NULL_MX).verdict() == "undeliverable"
    assert truth(dns=DNSStatus.NXDOMAIN).verdict() == "undeliverable"
    assert truth(valid_syntax=False, domain=None, dns=None).verdict() == "undeliverable"
    assert truth(mailbox=Mailbox.EXISTS, never_answers=True).verdict() is None

    w = SimWorld(seed=5, layout=[("catch_all", ["exists"]), ("postfix", ["exists"])])
    catch_all, plain = (d for d in w.truth.domains)
    assert w.expected_verdict(f"nobody-{random.randrange(10**9)}@{catch_all}") == "risky"
    assert w.expected_verdict(f"nobody@{plain}") == "undeliverable"
    assert w.expected_verdict("someone@not-in-this-world.example") == "undeliverable"
    assert w.expected_verdict("not an address") == "undeliverable"
    assert w.expected_verdict(f"postmaster@mx1.{plain}") is None  # an MX host: not modelled


def test_demo_world_shows_every_behaviour() -> None:
    w = demo_world()
    assert len(w.truth.domains) == len(DEMO_LAYOUT)
    assert {d.kind for d in w.truth.domains.values()} == {Kind(k) for k, _ in DEMO_LAYOUT}
    assert 15 <= len(w.addresses()) <= 25
    assert len(w.addresses(include_invalid=True)) == len(w.addresses()) + 1
    counts = w.truth.counts()
    assert {"deliverable", "undeliverable", "risky", "unknown"} <= set(counts)


# -- DNS ---------------------------------------------------------------------------


async def test_dns_answers_as_the_truth_says() -> None:
    async with SimWorld(40, 120, seed=11) as w:
        host, port = w.nameserver.rsplit(":", 1)
        res = dns.asyncresolver.Resolver(configure=False)
        res.nameservers, res.port, res.lifetime = [host], int(port), 3.0
        seen: set[DNSStatus] = set()
        for domain, d in w.truth.domains.items():
            seen.add(d.dns)
            if d.dns is DNSStatus.NXDOMAIN:
                with pytest.raises(dns.resolver.NXDOMAIN):
                    await res.resolve(domain, "MX")
            elif d.dns is DNSStatus.NULL_MX:
                mx = list(await res.resolve(domain, "MX"))
                assert [(r.preference, r.exchange.to_text()) for r in mx] == [(0, ".")]
            elif d.dns is DNSStatus.A_ONLY:
                with pytest.raises(dns.resolver.NoAnswer):
                    await res.resolve(domain, "MX")
                a = await res.resolve(domain, "A")
                assert [r.address for r in a] == [w.ip_of(domain)]
                assert domain in w.servers
            else:
                mx = sorted(await res.resolve(domain, "MX"), key=lambda r: r.preference)
                names = tuple(r.exchange.to_text().rstrip(".") for r in mx)
                assert names == d.mx_hosts
                for name in names:
                    a = await res.resolve(name, "A")
                    assert [r.address for r in a] == [w.ip_of(name)]
                    assert (name in w.servers) != (name in w.unreachable)
        assert seen == set(DNSStatus)


# -- probes against the world ------------------------------------------------------


async def test_probes_match_the_truth(world: SimWorld) -> None:
    checked: set[Kind | None] = set()
    for email in world.addresses():
        t = world.truth[email]
        if t.dns in (DNSStatus.NXDOMAIN, DNSStatus.NULL_MX) or t.greylist_seconds is not None:
            continue
        result = await probe(world, email)
        # a non-ASCII local part at an MX without SMTPUTF8 is never asked (RFC 6531)
        asked = "ehlo" if t.smtputf8_unsupported else "rcpt"
        assert result["stage"] == asked, (email, result)
        assert result["reason"] == t.expected_reason, (t.kind, t.mailbox, result["message"])
        verdict, _ = decide(result["reason"], catch_all=t.catch_all)
        assert verdict.value == world.expected_verdict(email), email
        checked.add(t.kind)
    greylisting = {Kind.GREYLIST, Kind.GREYLIST_HINT}
    assert checked == set(Kind) - {Kind.NXDOMAIN, Kind.NULL_MX, Kind.BLACKHOLE} - greylisting
    stats = world.stats()
    unasked = sum(world.truth[e].smtputf8_unsupported for e in world.addresses())
    assert unasked > 0  # the INTL_LEGACY domain's non-ASCII addresses: a connection, no MAIL
    assert stats.rcpts == stats.transactions == stats.connections - unasked > 0
    assert not stats.data_received


async def test_replies_are_corpus_texts(world: SimWorld) -> None:
    google_missing = addresses_of(world, Kind.GOOGLE, Mailbox.MISSING)[0]
    result = await probe(world, google_missing)
    assert result["code"] == 550
    wire = [line for line in result["transcript"] if line.startswith("S: 550")]
    assert wire[0] == "S: 550-5.1.1 The email account that you tried to reach does not exist. " + (
        "Please try"
    )
    assert wire[1] == "S: 550-5.1.1 double-checking the recipient's email address for typos or"
    assert "NoSuchUser" in result["message"]

    ms_missing = addresses_of(world, Kind.MICROSOFT, Mailbox.MISSING)[0]
    result = await probe(world, ms_missing)
    assert result["message"] == CORPUS["m365-rcpt-550-5110-recipientnotfound"].text

    postfix_missing = addresses_of(world, Kind.POSTFIX, Mailbox.MISSING)[0]
    result = await probe(world, postfix_missing)
    assert result["message"] == (
        f"5.1.1 <{postfix_missing}>: Recipient address rejected: "
        "User unknown in local recipient table"
    )
    blocked = addresses_of(world, Kind.BLOCKED)[0]
    result = await probe(world, blocked)
    assert result["message"] == (
        "5.7.1 Service unavailable; client [127.0.0.1] blocked using zen.spamhaus.org"
    )


async def test_backup_mx_first_is_unreachable(world: SimWorld) -> None:
    email = addresses_of(world, Kind.BACKUP_MX, Mailbox.EXISTS)[0]
    dead, live = world.truth[email].mx_hosts
    assert dead in world.unreachable
    result = await probe(world, email, host=dead, connect_timeout=1.0)
    assert result["reason"] == "connection_failed"
    assert (await probe(world, email, host=live))["reason"] == "accepted"


async def test_catch_all_accepts_any_local_part(world: SimWorld) -> None:
    domain = next(d for d, t in world.truth.domains.items() if t.kind is Kind.CATCH_ALL)
    plain = next(d for d, t in world.truth.domains.items() if t.kind is Kind.POSTFIX)
    local = f"zz-{random.randrange(10**9)}"
    result = await probe(world, f"{local}@{domain}")
    assert result["reason"] == "accepted"
    assert world.expected_verdict(f"{local}@{domain}") == "risky"
    result = await probe(world, f"{local}@{plain}")
    assert result["reason"] == "mailbox_not_found"
    assert world.expected_verdict(f"{local}@{plain}") == "undeliverable"


async def test_greylisting_on_the_injected_clock(world: SimWorld) -> None:
    clock = world.clock
    assert isinstance(clock, FakeClock)
    email = addresses_of(world, Kind.GREYLIST, Mailbox.EXISTS)[0]
    domain = email.split("@")[1]
    first = await probe(world, email)
    assert (first["code"], first["reason"]) == (450, "greylisted")
    assert first["message"] == (
        f"4.2.0 <{email}>: Recipient address rejected: Greylisted, "
        f"see http://postgrey.schweikert.ch/help/{domain}.html"
    )
    clock.now += 29.0
    assert (await probe(world, email))["reason"] == "greylisted"  # too early
    clock.now += 1.0
    assert (await probe(world, email))["reason"] == "accepted"  # the period has passed
    # another triplet (another sender) starts its own period
    other = await probe(world, email, mail_from="other@probe.mailprobe.example")
    assert other["reason"] == "greylisted"
    missing = addresses_of(world, Kind.GREYLIST, Mailbox.MISSING)[0]
    assert (await probe(world, missing))["reason"] == "greylisted"
    clock.now += 30.0
    assert (await probe(world, missing))["reason"] == "mailbox_not_found"
    assert world.expected_verdict(email) == "deliverable"
    assert world.truth.expected_verdict(email, greylist_retry_window=10) == "unknown"


async def test_blackhole_times_out_and_is_not_determinable() -> None:
    cfg = WorldConfig(blackhole_greeting_delay=60)
    async with SimWorld(seed=2, layout=[("blackhole", ["exists"])], config=cfg) as w:
        (email,) = w.addresses()
        result = await probe(w, email, connect_timeout=0.3, command_timeout=0.3)
        assert result["reason"] == "timeout"
        assert w.expected_verdict(email) is None


async def test_microsoft_variants_refuse_in_their_own_words() -> None:
    """Microsoft-like domains take turns between the EOP-like cluster, a Microsoft 365
    tenant MX name and an Outlook.com one; each refuses unknown users in its own words,
    which mailprobe reads by the MX host name (DBEB untagged) or the text."""
    layout = [(Kind.MICROSOFT.value, (Mailbox.EXISTS, Mailbox.MISSING))] * 3
    missing: dict[str, str] = {}
    async with SimWorld(seed=9, layout=layout) as w:
        for email in w.addresses():
            t = w.truth[email]
            result = await probe(w, email)
            assert result["reason"] == t.expected_reason, (t.mx_hosts, result["message"])
            verdict, _ = decide(result["reason"], catch_all=False)
            assert verdict.value == w.expected_verdict(email), email
            if t.mailbox is Mailbox.MISSING:
                missing[t.mx_hosts[0]] = result["message"]
    assert missing == {
        "mx.outlook-like.example": CORPUS["m365-rcpt-550-5110-recipientnotfound"].text,
        "tenant-example.mail.protection.outlook.com": CORPUS[
            "m365-rcpt-550-541-access-denied-dated"
        ].text,
        "outlook-example.olc.protection.outlook.com": CORPUS[
            "outlookcom-rcpt-550-550-mailbox-unavailable-s2017062302"
        ].text,
    }


# -- limits ----------------------------------------------------------------------------


async def test_outlook_rcpt_limit_gives_452_453(world: SimWorld) -> None:
    host = "mx.outlook-like.example"
    domain = next(d for d, t in world.truth.domains.items() if t.kind is Kind.MICROSOFT)
    client, code, _ = await RawSMTP.connect(world.ip_of(host), world.smtp_port)
    try:
        assert code == 220
        assert (await client.cmd(f"EHLO {HELO}"))[0] == 250
        assert (await client.cmd(f"MAIL FROM:<{MAIL_FROM}>")) == (250, "2.1.0 Sender OK")
        replies = [await client.cmd(f"RCPT TO:<u{i}@{domain}>") for i in range(4)]
        assert [c for c, _ in replies[:3]] == [550, 550, 550]
        assert replies[3] == (452, "4.5.3 Too many recipients")
        assert (await client.cmd("RSET"))[0] == 250
        assert (await client.cmd(f"MAIL FROM:<{MAIL_FROM}>"))[0] == 250
        assert (await client.cmd(f"RCPT TO:<u9@{domain}>"))[0] == 550  # a new transaction
        await client.cmd("QUIT")
    finally:
        client.close()
    await asyncio.sleep(0.05)
    rec = world.servers[host].record
    assert (rec.transactions, rec.rcpts) == (2, 5)
    assert rec.rcpts_per_connection() == [5]


async def test_gmail_one_domain_per_transaction(world: SimWorld) -> None:
    host = "aspmx.google-like.example"
    google = [d for d, t in world.truth.domains.items() if t.kind is Kind.GOOGLE]
    assert len(google) == 1
    client, _, banner = await RawSMTP.connect(world.ip_of(host), world.smtp_port)
    try:
        assert banner.startswith(f"{host} ESMTP ") and banner.endswith(" - gsmtp")
        await client.cmd(f"EHLO {HELO}")
        await client.cmd(f"MAIL FROM:<{MAIL_FROM}>")
        assert (await client.cmd(f"RCPT TO:<a@{google[0]}>"))[0] == 550
        code, text = await client.cmd("RCPT TO:<b@second-domain.example>")
        assert code == 451
        assert text.splitlines() == [
            "4.3.0 Multiple destination domains per transaction is unsupported.  Please",
            "4.3.0 try again.  random.string",
        ]
        assert (await client.cmd(f"RCPT TO:<c@{google[0]}>"))[0] == 550
    finally:
        client.close()


async def test_session_limit_catch_all_and_block(smtp_server: MakeServer) -> None:
    over = Scripted(452, "4.5.3 Too many recipients")
    server = await smtp_server(
        MXBehavior(
            max_rcpts_per_session=2,
            too_many_rcpts_session=over,
            catch_all=True,
            mailboxes={"full@d.example": Scripted(552, "5.2.2 full")},
        )
    )
    client, _, _ = await RawSMTP.connect("127.0.0.1", server.port)
    try:
        await client.cmd("EHLO x.example")
        await client.cmd("MAIL FROM:<a@x.example>")
        assert (await client.cmd("RCPT TO:<anyone@d.example>"))[0] == 250  # catch-all
        assert (await client.cmd("RCPT TO:<full@d.example>"))[0] == 552  # a real mailbox still
        await client.cmd("RSET")
        await client.cmd("MAIL FROM:<a@x.example>")
        assert (await client.cmd("RCPT TO:<third@d.example>")) == (452, over.text)
    finally:
        client.close()

    blocked = Scripted(554, "5.7.1 blocked using zen.spamhaus.org")
    server = await smtp_server(MXBehavior(blocked=blocked, catch_all=True))
    client, _, _ = await RawSMTP.connect("127.0.0.1", server.port)
    try:
        await client.cmd("EHLO x.example")
        await client.cmd("MAIL FROM:<a@x.example>")
        assert (await client.cmd("RCPT TO:<anyone@d.example>"))[0] == 554
    finally:
        client.close()


async def test_max_connections_refuses_at_the_greeting(world: SimWorld) -> None:
    host = "mx1.hosting-like.example"  # cluster_max_connections=3 in this world
    clients = []
    try:
        for _ in range(3):
            client, code, _ = await RawSMTP.connect(world.ip_of(host), world.smtp_port)
            clients.append(client)
            assert code == 220
        extra, code, text = await RawSMTP.connect(world.ip_of(host), world.smtp_port)
        clients.append(extra)
        assert code == 421
        assert text == f"{host}: Too many concurrent SMTP connections; please try again later"
        assert await extra.reply() == (0, "")  # and the server hung up
    finally:
        for c in clients:
            c.close()
    assert world.servers[host].record.refused_connections == 1


# -- politeness accounting ----------------------------------------------------------------


async def test_server_counts_cap_violations(world: SimWorld) -> None:
    host = next(d.mx_hosts[0] for d in world.domains.values() if d.kind is Kind.POSTFIX)
    record = world.servers[host].record
    ip, port = world.ip_of(host), world.smtp_port
    # within caps: two at once (max concurrency 2), two starts in the window (rps 1 + 1)
    pair = [await RawSMTP.connect(ip, port) for _ in range(2)]
    assert record.max_open == 2 and record.cap_violations == 0
    for c, _, _ in pair:
        await c.cmd("QUIT")
        c.close()
    await asyncio.sleep(1.05)  # let the 1-second window pass
    # deliberately too many at once: connections 3 and 4 break both caps
    four = await asyncio.gather(*(RawSMTP.connect(ip, port) for _ in range(4)))
    for c, code, _ in four:
        assert code == 220
        c.close()
    await asyncio.sleep(0.05)
    assert record.max_open == 4
    assert record.concurrency_violations == 2
    assert record.rps_violations == 2
    assert record.cap_violations == 2  # per connection, whatever it broke
    assert record.open_counts[:2] == [1, 2] and sorted(record.open_counts[2:]) == [1, 2, 3, 4]
    assert [c.violations for c in record.connection_log if c.violations] == [
        ("concurrency", "rps"),
        ("concurrency", "rps"),
    ]
    assert record.peak_starts_per_second() == 4
    assert world.stats().cap_violations == 2


async def test_sequential_bursts_break_the_rate_cap_only(smtp_server: MakeServer) -> None:
    server = await smtp_server(MXBehavior(expect_max_concurrency=1, expect_rps=1.0))
    for _ in range(4):
        client, _, _ = await RawSMTP.connect("127.0.0.1", server.port)
        await client.cmd("QUIT")
        client.close()
        await asyncio.sleep(0.02)
    rec = server.record
    assert (rec.concurrency_violations, rec.rps_violations, rec.cap_violations) == (0, 2, 2)
    assert rec.max_open == 1


# -- sync use and the command line ------------------------------------------------------


def test_sync_world_serves_from_a_thread() -> None:
    with demo_world() as w:
        email = next(e for e in w.addresses() if w.truth[e].kind is Kind.POSTFIX)
        host = first_live_mx(w, email)
        with smtplib.SMTP(w.ip_of(host), w.smtp_port, timeout=5) as s:
            s.ehlo(HELO)
            s.mail(MAIL_FROM)
            code, _ = s.rcpt(email)
        expected = {"accepted": 250, "mailbox_not_found": 550}.get(w.truth[email].expected_reason)
        assert expected is None or code == expected
        assert w.stats().connections == 1


def test_command_line_serves_until_interrupted(tmp_path: Path) -> None:
    out, truth = tmp_path / "addresses.txt", tmp_path / "truth.jsonl"
    src = Path(__file__).resolve().parents[1] / "src"
    env = os.environ | {"PYTHONPATH": str(src)}
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "mailprobe.testing.world"),
            *("--domains", "12", "--addresses", "100"),
            *("--seed", "1", "--invalid", "--addresses-out", str(out), "--truth-out", str(truth)),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None
        exports = dict(
            proc.stdout.readline().removeprefix("export ").strip().split("=", 1)
            for _ in range(len(SimWorld(1, 1).env()))
        )
        assert set(exports) == set(SimWorld(1, 1).env())
        lines = out.read_text().splitlines()
        world = SimWorld(12, 100, seed=1)  # the same world, not started
        assert len(lines) == 101  # 1% invalid
        assert lines == world.addresses(include_invalid=True)
        rows = [json.loads(x) for x in truth.read_text().splitlines()]
        assert {r["address"] for r in rows} == set(lines)
        assert {r["expected_verdict"] for r in rows} >= {"deliverable", "undeliverable"}
        host = next(d.mx_hosts[0] for d in world.domains.values() if d.kind is Kind.POSTFIX)
        with smtplib.SMTP(timeout=5) as s:  # the world answers while the command runs
            assert s.connect(world.ip_of(host), int(exports["SMTP_PORT"]))[0] == 220
            assert s.ehlo(HELO)[0] == 250
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err
    assert "connections" in err


async def test_a_starttls_world_offers_tls_everywhere_and_answers_the_same() -> None:
    """WorldConfig(starttls=True): every MX offers STARTTLS (as nearly every real one
    does), mailprobe and smtplib take it, and the answers are the world's truth."""
    config = WorldConfig(mix={Kind.POSTFIX: 0.5, Kind.GOOGLE: 0.25, Kind.MICROSOFT: 0.25},
                         expect_rps=None, starttls=True)  # fmt: skip
    async with SimWorld(4, 12, seed=3, config=config) as w:
        for email in w.addresses():
            result = await probe(w, email)
            assert result["tls"] is True, result
            verdict, _ = decide(result["reason"], catch_all=w.truth[email].catch_all)
            assert verdict.value == w.expected_verdict(email), email
        email = w.addresses()[0]
        host = first_live_mx(w, email)

        def naive() -> int:
            with smtplib.SMTP(w.ip_of(host), w.smtp_port, timeout=5) as s:
                s.ehlo(HELO)
                assert s.has_extn("starttls")
                s.starttls()
                s.ehlo(HELO)
                assert not s.has_extn("starttls")  # offered once, before TLS
                s.mail(MAIL_FROM)
                return s.rcpt(email)[0]

        assert await asyncio.to_thread(naive) in {250, 550}
