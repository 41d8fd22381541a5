"""Bulk verification against scripted SMTP servers and a DNS server on loopback."""

from __future__ import annotations

import asyncio
import csv
import io
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from mailprobe.config import Settings
from mailprobe.engine import Context
from mailprobe.engine.bulk import BulkOptions, Summary, verify
from mailprobe.inputs import InputLine, entry, read_addresses
from mailprobe.report import render_record
from mailprobe.results import LineAnswer
from mailprobe.store import Store
from mailprobe.store.models import VerificationResult
from mailprobe.store.queries import add_answers
from mailprobe.testing.dnsd import DomainSpec, SimDNSServer
from mailprobe.testing.smtpd import ACCEPT, MXBehavior, Scripted, SessionState, SimSMTPServer

pytestmark = pytest.mark.r18  # the seed's label: pytest -k r18

ROOT = Path(__file__).resolve().parents[1]
GREYLIST = Scripted(450, "4.2.0 <{rcpt}>: Recipient address rejected: Greylisted, see "
                         "http://postgrey.schweikert.ch/help/x.html")  # fmt: skip
OUTLOOK_TOO_MANY = Scripted(452, "4.5.3 Too many recipients")
UNUSED_MX = {"mx.unused.example": ("127.0.0.1", MXBehavior())}  # a world needs one SMTP port


@dataclass
class World:
    dns: SimDNSServer
    servers: dict[str, SimSMTPServer]
    port: int
    store: Store

    def settings(self, **env: str) -> Settings:
        base = {
            "DNS_NAMESERVERS": self.dns.nameserver,
            "DNS_TIMEOUT": "2",
            "SMTP_PORT": str(self.port),
            "SMTP_CONNECT_TIMEOUT": "2",
            "SMTP_COMMAND_TIMEOUT": "2",
            "SMTP_PROBE_DEADLINE": "10",
            "GLOBAL_RPS": "200",
            "PER_MX_RPS_DEFAULT": "100",
            "DATABASE_URL": self.store.url,
        }
        return Settings.from_env({**base, **env})

    def context(self, **env: str) -> Context:
        return Context.create(self.settings(**env), store=self.store)

    async def verify(self, lines: Any, sink: Any, options: BulkOptions | None = None,
                     **env: str) -> Summary:  # fmt: skip
        """`verify` with a context of this world's settings (its throttle closed after)."""
        ctx = self.context(**env)
        try:
            return await verify(lines, sink, ctx=ctx, options=options)
        finally:
            await ctx.aclose()

    async def run(self, text: str, options: BulkOptions | None = None, **env: str
                  ) -> tuple[list[dict[str, Any]], Summary]:  # fmt: skip
        records: list[dict[str, Any]] = []
        summary = await self.verify(
            read_addresses(io.StringIO(text)), lambda la: records.append(render_record(la)),
            options or BulkOptions(reuse_ttl=None), **env,
        )  # fmt: skip
        return records, summary


@pytest.fixture
async def world_factory(tmp_path: Path) -> AsyncIterator[Any]:
    """Build a world: {host: (ip, MXBehavior)} servers on one port, plus a DNS zone."""
    started: list[Any] = []

    async def make(hosts: dict[str, tuple[str, MXBehavior]], zone: dict[str, DomainSpec]
                   ) -> World:  # fmt: skip
        port = 0
        servers: dict[str, SimSMTPServer] = {}
        for host, (ip, behavior) in hosts.items():
            server = await SimSMTPServer(behavior, host=ip, port=port).start()
            port = server.port
            servers[host] = server
            zone.setdefault(host, DomainSpec(a=[ip]))
            started.append(server)
        dns = SimDNSServer(zone)
        await dns.start()
        started.append(dns)
        store = Store(f"sqlite:///{tmp_path / 'bulk.db'}")
        store.upgrade()
        return World(dns, servers, port, store)

    yield make
    for thing in reversed(started):
        await thing.stop()


def by_email(records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {r["email"]: r for r in records}


async def test_mixed_list_verdicts_and_session_reuse(world_factory) -> None:
    acme = MXBehavior(mailboxes={f"u{i}@acme.example": ACCEPT for i in range(0, 30, 3)})
    world = await world_factory(
        {"mx.acme.example": ("127.0.0.1", acme),
         "mx.catch.example": ("127.0.0.3", MXBehavior(default_rcpt=ACCEPT))},
        {"acme.example": DomainSpec(mx=[(10, "mx.acme.example")]),
         "catch.example": DomainSpec(mx=[(10, "mx.catch.example")]),
         "nomail.example": DomainSpec(null_mx=True),
         "aonly.example": DomainSpec(a=["127.0.0.1"])},
    )  # fmt: skip
    lines = [f"u{i}@acme.example" for i in range(30)]
    lines += ["boss@catch.example", "info@catch.example", "x@nomail.example", "x@gone.example",
              "not an address", "u0@aonly.example"]  # fmt: skip
    records, summary = await world.run("\n".join(lines) + "\n")
    assert sorted(r["line"] for r in records) == list(range(1, len(lines) + 1))
    got = by_email(records)
    for i in range(30):
        expected = "deliverable" if i % 3 == 0 else "undeliverable"
        assert got[f"u{i}@acme.example"]["verdict"] == expected
    assert got["u1@acme.example"]["reason"] == "mailbox_not_found"
    assert (got["boss@catch.example"]["verdict"], got["boss@catch.example"]["reason"]) == (
        "risky", "catch_all")  # fmt: skip
    assert got["info@catch.example"]["flags"]["role"] is True
    assert (got["x@nomail.example"]["verdict"], got["x@nomail.example"]["reason"]) == (
        "undeliverable", "null_mx")  # fmt: skip
    assert got["x@gone.example"]["reason"] == "no_such_domain"
    assert got["not an address"]["reason"] == "invalid_syntax"
    assert got["u0@aonly.example"]["mx_host"] == "aonly.example"  # implicit MX (A record)
    acme_server = world.servers["mx.acme.example"]
    # 31 RCPTs (30 + the aonly one, 20 of them refused) over connections carrying up to 20
    # each and at most SMTP_SESSION_MAX_REFUSALS (9) refusals each, never DATA
    assert acme_server.record.connections <= 4
    assert summary.rcpts_per_session > 5
    assert not acme_server.record.data_received
    # the catch-all probe follows the real RCPTs, inside the same transaction
    verbs = world.servers["mx.catch.example"].record.commands
    rcpts = [c for c in verbs if c.startswith("RCPT")]
    assert rcpts[-1].startswith("RCPT TO:<mp-") and len(rcpts) == 3


async def test_outlook_too_many_recipients_retried_alone(world_factory) -> None:
    def outlook(rcpt: str, state: SessionState) -> Scripted:
        if len(state.rcpts) > 1:  # a second RCPT in one transaction
            return OUTLOOK_TOO_MANY
        return ACCEPT if rcpt.startswith("yes") else Scripted(550, "5.1.10 RecipientNotFound")

    world = await world_factory(
        {"mx.o.example": ("127.0.0.1", MXBehavior(rcpt_handler=outlook))},
        {"o.example": DomainSpec(mx=[(10, "mx.o.example")])},
    )
    lines = [f"yes{i}@o.example" for i in range(5)] + [f"no{i}@o.example" for i in range(5)]
    records, _ = await world.run(
        "\n".join(lines), BulkOptions(reuse_ttl=None, catch_all_check=False)
    )
    got = by_email(records)
    assert {got[f"yes{i}@o.example"]["reason"] for i in range(5)} == {"catch_all_unknown"}
    assert {got[f"no{i}@o.example"]["verdict"] for i in range(5)} == {"undeliverable"}
    assert all(r["reason"] != "too_many_recipients" for r in records)


async def test_one_domain_per_transaction(world_factory) -> None:
    mixed: list[list[str]] = []

    def gmail(rcpt: str, state: SessionState) -> Scripted:
        domains = {r.rsplit("@", 1)[1] for r in state.rcpts}
        if len(domains) > 1:
            mixed.append(list(state.rcpts))
            return Scripted(451, "4.3.0 Multiple destination domains per transaction is "
                                 "unsupported. Please try again.")  # fmt: skip
        return ACCEPT

    world = await world_factory(
        {"mx.shared.example": ("127.0.0.1", MXBehavior(rcpt_handler=gmail))},
        {d: DomainSpec(mx=[(10, "mx.shared.example")]) for d in ("a.example", "b.example")},
    )
    lines = [f"x{i}@{d}" for i in range(4) for d in ("a.example", "b.example")]
    records, _ = await world.run("\n".join(lines))
    assert mixed == []  # transactions are per domain
    assert {r["verdict"] for r in records} == {"risky"}  # both domains accept anything


async def test_greylisting_retried_then_answered(world_factory) -> None:
    seen: set[str] = set()

    def greylist(rcpt: str, state: SessionState) -> Scripted:
        if rcpt.startswith("mp-"):
            return Scripted(550, "5.1.1 no such user")
        if rcpt not in seen:
            seen.add(rcpt)
            return GREYLIST
        return ACCEPT if rcpt.startswith("real") else Scripted(550, "5.1.1 no such user")

    world = await world_factory(
        {"mx.g.example": ("127.0.0.1", MXBehavior(rcpt_handler=greylist))},
        {"g.example": DomainSpec(mx=[(10, "mx.g.example")])},
    )
    records, _ = await world.run(
        "real@g.example\nfake@g.example\n",
        BulkOptions(reuse_ttl=None, greylist_delays=(0.2, 0.2)),
    )
    got = by_email(records)
    assert (got["real@g.example"]["verdict"], got["real@g.example"]["attempts"]) == (
        "deliverable", 2)  # fmt: skip
    assert got["fake@g.example"]["verdict"] == "undeliverable"


async def test_greylisting_that_outlives_retries_is_unknown(world_factory) -> None:
    world = await world_factory(
        {"mx.g.example": ("127.0.0.1", MXBehavior(default_rcpt=GREYLIST))},
        {"g.example": DomainSpec(mx=[(10, "mx.g.example")])},
    )
    records, _ = await world.run(
        "a@g.example\n", BulkOptions(reuse_ttl=None, greylist_delays=(0.1, 0.1))
    )
    assert (records[0]["verdict"], records[0]["reason"], records[0]["attempts"]) == (
        "unknown", "greylisted", 3)  # fmt: skip


async def test_unreachable_mx_falls_back(world_factory) -> None:
    world = await world_factory(
        {"mx2.f.example": ("127.0.0.1", MXBehavior(default_rcpt=ACCEPT))},
        {"f.example": DomainSpec(mx=[(10, "mx1.f.example"), (20, "mx2.f.example")]),
         "mx1.f.example": DomainSpec(a=["127.0.0.4"])},  # nobody listens there
    )  # fmt: skip
    records, _ = await world.run("a@f.example\nb@f.example\n")
    assert {r["mx_host"] for r in records} == {"mx2.f.example"}
    assert {r["verdict"] for r in records} == {"risky"}


async def test_tarpit_does_not_hold_up_fast_servers(world_factory) -> None:
    world = await world_factory(
        {"mx.fast.example": ("127.0.0.1", MXBehavior(default_rcpt=ACCEPT)),
         "mx.slow.example": ("127.0.0.5", MXBehavior(greeting_delay=2.5, default_rcpt=ACCEPT))},
        {"fast.example": DomainSpec(mx=[(10, "mx.fast.example")]),
         "slow.example": DomainSpec(mx=[(10, "mx.slow.example")])},
    )  # fmt: skip
    finished: dict[str, float] = {}
    started = time.monotonic()

    def sink(line: LineAnswer) -> None:
        record = render_record(line)
        finished[record["email"]] = time.monotonic() - started

    text = "s@slow.example\n" + "".join(f"f{i}@fast.example\n" for i in range(10))
    await world.verify(read_addresses(io.StringIO(text)), sink,
                       BulkOptions(reuse_ttl=None, slow_timeouts=(5.0, 5.0, 15.0)),
                       SMTP_CONNECT_TIMEOUT="1")  # fmt: skip
    fast = max(t for e, t in finished.items() if e.startswith("f"))
    assert fast < 1.0  # the fast domain did not wait for the tarpit
    assert finished["s@slow.example"] > 2.5  # answered, after the slow-lane retry


async def test_results_persisted_and_reused(world_factory) -> None:
    world = await world_factory(
        {"mx.acme.example": ("127.0.0.1", MXBehavior(mailboxes={"a@acme.example": ACCEPT}))},
        {"acme.example": DomainSpec(mx=[(10, "mx.acme.example")])},
    )
    text = "a@acme.example\nb@acme.example\n"
    first, _ = await world.run(text, BulkOptions())
    connections = world.servers["mx.acme.example"].record.connections
    again, summary = await world.run(text, BulkOptions())
    assert summary.reused == 2 and all(r["reused"] for r in again)
    verdicts = {r["email"]: r["verdict"] for r in first}
    assert verdicts == {"a@acme.example": "deliverable", "b@acme.example": "undeliverable"}
    assert {r["email"]: r["verdict"] for r in again} == verdicts
    assert world.servers["mx.acme.example"].record.connections == connections
    forced, _ = await world.run(text, BulkOptions(reuse_ttl=None))
    assert not any(r["reused"] for r in forced)
    assert world.servers["mx.acme.example"].record.connections > connections


async def test_per_mx_cap_holds(world_factory) -> None:
    world = await world_factory(
        {"mx.acme.example": ("127.0.0.1", MXBehavior(default_rcpt=ACCEPT, reply_delay=0.02))},
        {f"d{i}.example": DomainSpec(mx=[(10, "mx.acme.example")]) for i in range(20)},
    )
    text = "".join(f"user@d{i}.example\n" for i in range(20))
    records, _ = await world.run(text, BulkOptions(reuse_ttl=None, rcpts_per_session=2),
                                 PER_MX_MAX_CONCURRENCY_DEFAULT="2")  # fmt: skip
    assert len(records) == 20
    assert world.servers["mx.acme.example"].record.max_open <= 2


async def test_greeting_421_backs_off_and_retries(world_factory) -> None:
    calls = {"n": 0}
    behavior = MXBehavior(default_rcpt=ACCEPT)
    world = await world_factory(
        {"mx.busy.example": ("127.0.0.1", behavior)},
        {"busy.example": DomainSpec(mx=[(10, "mx.busy.example")])},
    )
    server = world.servers["mx.busy.example"]
    original = server._serve

    async def flaky(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        calls["n"] += 1
        if calls["n"] == 1:
            writer.write(b"421 4.7.0 Too many connections, try again later\r\n")
            await writer.drain()
            writer.close()
            return
        await original(reader, writer)

    server._serve = flaky
    await server.stop()
    await server.start()
    records, _ = await world.run(
        "a@busy.example\n", BulkOptions(reuse_ttl=None, temp_delays=(0.1,))
    )
    assert records[0]["verdict"] == "risky" and records[0]["attempts"] == 2


def test_cli_verify_formats(tmp_path: Path) -> None:
    zone = {"acme.example": DomainSpec(mx=[(10, "mx.acme.example")]),
            "mx.acme.example": DomainSpec(a=["127.0.0.1"])}  # fmt: skip
    from mailprobe.testing.smtpd import serve_in_thread

    listing = tmp_path / "in.csv"
    listing.write_text(
        "name,email\nJane,jane@acme.example\nBad,not-an-address\nBob,bob@acme.example\n"
    )
    with (
        SimDNSServer(zone) as dns,
        serve_in_thread(MXBehavior(mailboxes={"jane@acme.example": ACCEPT})) as smtp,
    ):
        env = {**os.environ, "DNS_NAMESERVERS": dns.nameserver, "SMTP_PORT": str(smtp.port),
               "MAILPROBE_RUNS_DIR": str(tmp_path / "runs")}  # fmt: skip

        def cli(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run([sys.executable, "-m", "mailprobe.cli", "verify", *args],
                                  capture_output=True, text=True, env=env, timeout=60,
                                  stdin=subprocess.DEVNULL)  # fmt: skip

        jsonl = cli(str(listing), "--format", "jsonl")
        assert jsonl.returncode == 0, jsonl.stderr
        rows = [json.loads(line) for line in jsonl.stdout.splitlines()]
        assert sorted(r["line"] for r in rows) == [2, 3, 4]
        assert {r["email"]: r["verdict"] for r in rows}["not-an-address"] == "undeliverable"
        out = tmp_path / "out.csv"
        done = cli(str(listing), "--format", "csv", "-o", str(out), "--force")
        assert done.returncode == 0, done.stderr
        table = list(csv.DictReader(out.open()))
        assert {r["email"]: r["reason"] for r in table}["bob@acme.example"] == "mailbox_not_found"
        assert {"free", "disposable", "role", "enhanced_status"} <= set(table[0])
        shown = cli(str(listing), "--format", "table")
        assert shown.returncode == 0 and "jane@acme.example" in shown.stdout


def test_demo_runs_the_whole_flow() -> None:
    done = subprocess.run([sys.executable, "-m", "mailprobe.cli", "demo"], capture_output=True,
                          text=True, timeout=120, stdin=subprocess.DEVNULL)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "DATA never sent" in done.stdout
    assert "expected" not in done.stdout.split("verdicts")[1]  # every verdict matched the truth


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupt_keeps_results_and_resume_continues(tmp_path: Path, sig: int) -> None:
    from mailprobe.testing.smtpd import serve_in_thread

    zone = {"fast.example": DomainSpec(mx=[(10, "mx.fast.example")]),
            "mx.fast.example": DomainSpec(a=["127.0.0.1"]),
            "slow.example": DomainSpec(mx=[(10, "mx.slow.example")]),
            "mx.slow.example": DomainSpec(a=["127.0.0.1"])}  # fmt: skip

    def greylist_slow_domain(rcpt: str, state: SessionState) -> Scripted:
        if rcpt.endswith("@slow.example"):
            return GREYLIST  # keeps these addresses waiting for their retries
        return ACCEPT

    listing = tmp_path / "in.txt"
    lines = [f"f{i}@fast.example" for i in range(20)] + [f"s{i}@slow.example" for i in range(3)]
    listing.write_text("\n".join(lines) + "\n")
    with (
        SimDNSServer(zone) as dns,
        serve_in_thread(MXBehavior(rcpt_handler=greylist_slow_domain)) as smtp,
    ):
        env = {**os.environ, "DNS_NAMESERVERS": dns.nameserver, "SMTP_PORT": str(smtp.port),
               "MAILPROBE_RUNS_DIR": str(tmp_path / "runs")}  # fmt: skip
        base = [sys.executable, "-m", "mailprobe.cli", "verify", str(listing), "--reuse-ttl", "0"]
        first_out = tmp_path / "first.jsonl"
        proc = subprocess.Popen([*base, "-o", str(first_out), "--greylist-delays", "60"],
                                env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)  # fmt: skip
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if first_out.exists() and len(first_out.read_text().splitlines()) >= 20:
                break
            time.sleep(0.1)
        time.sleep(0.5)  # let the writer store the batch
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 130, err
        assert "--resume" in err
        answered = [json.loads(x) for x in first_out.read_text().splitlines()]
        assert len(answered) == 20  # the greylisted ones were still waiting

        resumed = subprocess.run([*base, "--resume", "--greylist-delays", "0.2"], env=env,
                                 text=True, capture_output=True, timeout=60,
                                 stdin=subprocess.DEVNULL)  # fmt: skip
        # A run without --resume (and reuse off) probes everything again.
        fresh = subprocess.run([*base, "--greylist-delays", "0.2"], env=env, text=True,
                               capture_output=True, timeout=60,
                               stdin=subprocess.DEVNULL)  # fmt: skip
    assert fresh.returncode == 0, fresh.stderr
    assert not any(json.loads(x)["reused"] for x in fresh.stdout.splitlines())
    assert resumed.returncode == 0, resumed.stderr
    records = [json.loads(x) for x in resumed.stdout.splitlines()]
    assert sorted(r["line"] for r in records) == list(range(1, 24))
    assert sum(r["reused"] for r in records) >= 20


def test_verify_with_dead_redis_stops_at_once(tmp_path: Path) -> None:
    import socket

    listing = tmp_path / "in.txt"
    listing.write_text("a@acme.example\n")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        env = {**os.environ, "REDIS_URL": f"redis://127.0.0.1:{s.getsockname()[1]}/0",
               "MAILPROBE_RUNS_DIR": str(tmp_path / "runs")}  # fmt: skip
        started = time.monotonic()
        done = subprocess.run([sys.executable, "-m", "mailprobe.cli", "verify", str(listing)],
                              capture_output=True, text=True, env=env, timeout=60,
                              stdin=subprocess.DEVNULL)  # fmt: skip
    assert done.returncode == 2
    assert "throttle error" in done.stderr and "unavailable" in done.stderr
    assert time.monotonic() - started < 30


async def test_small_in_flight_bound_still_finishes(world_factory) -> None:
    world = await world_factory(
        {"mx.acme.example": ("127.0.0.1", MXBehavior(default_rcpt=ACCEPT))},
        {"acme.example": DomainSpec(mx=[(10, "mx.acme.example")])},
    )
    text = "".join(f"u{i}@acme.example\n" for i in range(50))
    records, _ = await asyncio.wait_for(
        world.run(text, BulkOptions(reuse_ttl=None, max_in_flight=3)), 30
    )
    assert sorted(r["line"] for r in records) == list(range(1, 51))


async def test_no_wait_leaves_greylisted_pending(world_factory) -> None:
    """--no-wait ends once only retries are left: every line still gets its record (the
    pending ones `unknown / pending_retry`), and only final answers are stored, so
    `--resume` asks the pending ones again."""
    world = await world_factory(
        {"mx.g.example": ("127.0.0.1", MXBehavior(default_rcpt=GREYLIST)),
         "mx.ok.example": ("127.0.0.3", MXBehavior(default_rcpt=ACCEPT))},
        {"g.example": DomainSpec(mx=[(10, "mx.g.example")]),
         "ok.example": DomainSpec(mx=[(10, "mx.ok.example")])},
    )  # fmt: skip
    started = time.monotonic()
    records, summary = await world.run(
        "a@g.example\nb@g.example\nc@ok.example\n",
        BulkOptions(reuse_ttl=None, greylist_delays=(60.0,), wait_for_retries=False),
    )
    assert time.monotonic() - started < 10  # did not wait the 60 s greylisting delay
    assert {r["email"]: r["reason"] for r in records} == {
        "a@g.example": "pending_retry", "b@g.example": "pending_retry",
        "c@ok.example": "catch_all",
    }  # fmt: skip
    assert {r["verdict"] for r in records if r["reason"] == "pending_retry"} == {"unknown"}
    assert summary.pending == 2
    with world.store.session() as session:
        stored = {row.email for row in session.scalars(select(VerificationResult))}
    assert stored == {"c@ok.example"}


async def test_slow_input_is_probed_as_it_comes(world_factory) -> None:
    """A pipe that stalls between lines must not hold back (or stall) what came before."""
    world = await world_factory(
        {"mx.acme.example": ("127.0.0.1", MXBehavior(default_rcpt=ACCEPT))},
        {"acme.example": DomainSpec(mx=[(10, "mx.acme.example")])},
    )
    answered: dict[str, float] = {}
    started = time.monotonic()

    def slow_pipe() -> Iterator[InputLine]:
        yield entry(1, "a@acme.example")
        time.sleep(2.0)  # a blocking read, as on a real pipe
        yield entry(2, "b@acme.example")

    def sink(line: LineAnswer) -> None:
        record = render_record(line)
        answered[record["email"]] = time.monotonic() - started

    await asyncio.wait_for(
        world.verify(slow_pipe(), sink, BulkOptions(reuse_ttl=None)), 30)  # fmt: skip
    assert answered["a@acme.example"] < 1.5  # probed while the pipe was still stalled
    assert answered["b@acme.example"] >= 2.0


async def test_input_error_ends_the_run_with_it(world_factory) -> None:
    world = await world_factory(
        {"mx.acme.example": ("127.0.0.1", MXBehavior(default_rcpt=ACCEPT))},
        {"acme.example": DomainSpec(mx=[(10, "mx.acme.example")])},
    )

    def broken() -> Iterator[InputLine]:
        yield entry(1, "a@acme.example")
        raise OSError("input device went away")

    with pytest.raises(OSError, match="went away"):
        await asyncio.wait_for(
            world.verify(broken(), lambda r: None, BulkOptions(reuse_ttl=None)), 30)  # fmt: skip


async def test_mx_host_lookups_fall_back_or_answer(world_factory) -> None:
    """An MX host without an address hands its jobs to the next MX; one whose lookup
    fails answers them as unknown (never a hang, never a verdict on the mailbox)."""
    world = await world_factory(
        {"mx.ok.example": ("127.0.0.1", MXBehavior(mailboxes={"x@a.example": ACCEPT}))},
        {"a.example": DomainSpec(mx=[(10, "mx1.gone.example"), (20, "mx.ok.example")]),
         "b.example": DomainSpec(mx=[(10, "mx.broken.example")]),
         "mx.broken.example": DomainSpec(servfail=True)},
    )  # fmt: skip
    records, _ = await asyncio.wait_for(
        world.run("x@a.example\ny@b.example\n",
                  BulkOptions(reuse_ttl=None, temp_delays=(0.1,))),
        30,
    )  # fmt: skip
    got = by_email(records)
    assert (got["x@a.example"]["verdict"], got["x@a.example"]["mx_host"]) == (
        "deliverable", "mx.ok.example")  # fmt: skip
    assert got["y@b.example"]["verdict"] == "unknown"
    assert got["y@b.example"]["reason"] == "dns_error"


async def test_slow_lanes_keep_their_share_of_global_slots(world_factory) -> None:
    """Tarpits retried in the slow lane hold at most a quarter of the global slots."""
    tarpit = MXBehavior(greeting_delay=1.0, default_rcpt=ACCEPT)
    hosts = {f"mx.t{i}.example": (f"127.0.0.{10 + i}", tarpit) for i in range(3)}
    zone = {f"t{i}.example": DomainSpec(mx=[(10, f"mx.t{i}.example")]) for i in range(3)}
    world = await world_factory(hosts, zone)
    records, _ = await asyncio.wait_for(
        world.run("".join(f"u@t{i}.example\n" for i in range(3)),
                  BulkOptions(reuse_ttl=None, slow_timeouts=(3.0, 3.0, 10.0),
                              catch_all_check=False),
                  SMTP_CONNECT_TIMEOUT="0.4", GLOBAL_MAX_CONCURRENCY="4"),
        60,
    )  # fmt: skip
    assert [r["code"] for r in records] == [250, 250, 250]  # all answered, slowly
    slow = sorted(  # the slow lane's connections: the first ones gave up before RCPT
        (c.start, c.end or c.start)
        for s in world.servers.values()
        for c in s.record.connection_log
        if c.rcpts
    )
    assert len(slow) == 3
    assert all(b[0] >= a[1] - 0.05 for a, b in itertools.pairwise(slow)), slow


def test_critical_lane_keeps_a_slot_only_when_it_is_the_bottleneck() -> None:
    """The scheduler's decisions after the critical lane's MX refused a slot for its rate:
    keep a global slot for it (Wait) only when the other lanes fit in the rest anyway."""
    from mailprobe.address import parse_address
    from mailprobe.engine.bulk import Ask, MXLane, Scheduler, Target, Wait
    from mailprobe.throttle import ThrottlePolicy

    def lane(host: str, targets: int) -> MXLane:
        made = MXLane(host, slow=False)
        address = parse_address(f"u@{host}")
        made.recipients.extend(Target(address, line_no=i) for i in range(targets))
        made.started = 1
        return made

    def after_refusal(limited_by: str, session_seconds: float, global_cap: int) -> object:
        """What the scheduler decides once the critical lane is refused, with every
        global slot but one busy."""
        settings = Settings.from_env({"GLOBAL_MAX_CONCURRENCY": str(global_cap),
                                      "PER_MX_RPS_DEFAULT": "5"})  # fmt: skip
        scheduler = Scheduler(BulkOptions(), ThrottlePolicy.from_settings(settings))
        scheduler.reading = False
        big = lane("mx.big.example", 45)  # 45 RCPTs at 5 a second: 9 s
        for made in [big, *(lane(f"mx{i}.small.example", 20) for i in range(50))]:
            scheduler.kick(made, 0.0)
        busy = MXLane("mx.busy.example", slow=False)
        for _ in range(global_cap - 1):
            scheduler.started(busy)
        scheduler.session_seconds = session_seconds
        decisions = scheduler.plan(10.0)
        assert decisions.next() == Ask(big)  # the critical path is asked first
        decisions.refused(big, limited_by, retry_after=0.1)
        return decisions.next()

    # 50 sessions of 0.1 s fit in 11 slots well within 9 s: the last slot waits for big
    assert isinstance(after_refusal("per-MX rate", 0.1, 12), Wait)
    # now the global cap binds: use every slot
    assert isinstance(after_refusal("per-MX rate", 5.0, 12), Ask)
    # too few slots to keep one back
    assert isinstance(after_refusal("per-MX rate", 0.1, 3), Ask)
    # the global rate: a slot would not help it, and every other lane would be refused on
    # that rate too (they need more of it): the pass ends, to look again when it is due
    assert isinstance(after_refusal("global rate", 0.1, 12), Wait)


async def test_reused_result_keeps_an_inconclusive_catch_all_check(world_factory) -> None:
    """The catch-all check got a policy refusal: the accepted address is risky with
    catch_all_unknown, and a later run that reuses it says exactly that, not catch_all."""
    policy = Scripted(550, "5.7.1 Service unavailable; Client host blocked using zen.spamhaus.org")
    behavior = MXBehavior(mailboxes={"a@acme.example": ACCEPT}, default_rcpt=policy)
    world = await world_factory(
        {"mx.acme.example": ("127.0.0.1", behavior)},
        {"acme.example": DomainSpec(mx=[(10, "mx.acme.example")])},
    )
    first, _ = await world.run("a@acme.example\n", BulkOptions())
    again, summary = await world.run("a@acme.example\n", BulkOptions())
    assert summary.reused == 1
    for record in (first[0], again[0]):
        assert (record["verdict"], record["reason"], record["catch_all"]) == (
            "risky", "catch_all_unknown", None)  # fmt: skip


async def test_one_rcpt_per_transaction_is_remembered_across_runs(world_factory) -> None:
    """A 452 4.5.3 teaches the engine once: the next run (a new process, here a cleared
    in-memory cache) sends that MX one RCPT per transaction from the start."""
    from mailprobe.behavior import default_cache

    refusals: list[str] = []

    def outlook(rcpt: str, state: SessionState) -> Scripted:
        if len(state.rcpts) > 1:
            refusals.append(rcpt)
            return OUTLOOK_TOO_MANY
        return ACCEPT

    world = await world_factory(
        {"mx.o.example": ("127.0.0.1", MXBehavior(rcpt_handler=outlook))},
        {"o.example": DomainSpec(mx=[(10, "mx.o.example")])},
    )
    text = "".join(f"u{i}@o.example\n" for i in range(6))
    options = BulkOptions(reuse_ttl=None, catch_all_check=False)
    first, _ = await world.run(text, options)
    assert refusals  # learnt the hard way
    refusals.clear()
    default_cache.clear()  # what a new process starts with: only the store
    again, _ = await world.run(text, options)
    assert refusals == []
    assert [r["verdict"] for r in again] == [r["verdict"] for r in first]


async def test_slow_database_holds_reading_back(world_factory) -> None:
    """Results wait for the database in a bounded queue: reading waits when it is full,
    so a database slower than the servers cannot make memory grow with the input."""
    from mailprobe.engine.bulk import BulkVerifier

    world = await world_factory(
        UNUSED_MX, {f"n{i}.example": DomainSpec(null_mx=True) for i in range(5)}
    )
    stored: list[int] = []
    waiting: list[int] = []
    records: list[dict[str, Any]] = []
    ctx = world.context()

    def slow_store(rows: list[Any]) -> None:
        waiting.append(verifier.writer.backlog + len(rows))
        time.sleep(0.02)
        with ctx.store.session() as session:
            add_answers(session, rows)
        stored.append(len(rows))

    verifier = BulkVerifier(
        ctx, sink=lambda la: records.append(render_record(la)),
        options=BulkOptions(reuse_ttl=None, max_in_flight=40),
        store_answers=slow_store, max_unstored=20,
    )  # fmt: skip
    text = "".join(f"u{i}@n{i % 5}.example\n" for i in range(600))
    try:
        await asyncio.wait_for(verifier.run(read_addresses(io.StringIO(text))), 60)
    finally:
        await ctx.aclose()
    assert len(records) == 600 and sum(stored) == 600
    assert max(waiting) <= 20 + 40 + 40  # the bound, what was in flight, one admitted batch


async def test_database_down_for_good_stops_the_run(world_factory) -> None:
    from mailprobe.engine.bulk import BulkVerifier
    from mailprobe.store import StoreError

    world = await world_factory(UNUSED_MX, {"n.example": DomainSpec(null_mx=True)})

    def broken(rows: list[Any]) -> None:
        raise StoreError("database sqlite:///x.db: disk I/O error")

    ctx = world.context()
    verifier = BulkVerifier(
        ctx, sink=lambda la: None, options=BulkOptions(reuse_ttl=None, max_in_flight=40),
        store_answers=broken, max_unstored=20,
    )  # fmt: skip
    text = "".join(f"u{i}@n.example\n" for i in range(600))
    try:
        with pytest.raises(StoreError, match="disk I/O error"):
            await asyncio.wait_for(verifier.run(read_addresses(io.StringIO(text))), 60)
    finally:
        await ctx.aclose()
