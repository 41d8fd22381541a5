"""A tarpit counts our connections until it notices they are gone.

A server that is slow on purpose (here: a greeting later than our timeout) keeps
counting a connection we gave up on until it next reads or writes (Postfix's anvil
counts a client's connections until its smtpd process is done with them:
postconf(5) smtpd_client_connection_count_limit, "421 4.7.0 Error: too many
connections from <ip>"). If our slot were free the moment we time out, the slow
lane's second chance would be one connection too many, and the 421 would turn the
addresses into `unknown`. So a timed-out connection is half-closed and its slot kept
until the server hangs up.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest

from mailprobe.config import Settings
from mailprobe.engine import Context
from mailprobe.engine.bulk import BulkOptions, verify
from mailprobe.inputs import read_addresses
from mailprobe.report import render_record
from mailprobe.store import Store
from mailprobe.testing.dnsd import DomainSpec, SimDNSServer
from mailprobe.testing.smtpd import ACCEPT, MXBehavior, Scripted, SimSMTPServer

pytestmark = pytest.mark.r18

TOO_MANY = Scripted(421, "4.7.0 mx.tarpit.example Error: too many connections from 127.0.0.1")


async def test_a_timed_out_connection_keeps_its_slot_until_the_tarpit_lets_go(
    tmp_path: Path,
) -> None:
    behavior = MXBehavior(
        greeting_delay=1.5,  # later than our 1 s timeouts: every first session times out
        max_connections=2,  # anvil's limit for our IP, our per-MX cap too
        too_many_connections=TOO_MANY,
        mailboxes={f"u{i}@tarpit.example": ACCEPT for i in range(0, 6, 2)},
        expect_max_concurrency=2,
    )
    zone = {
        "tarpit.example": DomainSpec(mx=[(10, "mx.tarpit.example")]),
        "mx.tarpit.example": DomainSpec(a=["127.0.0.1"]),
    }
    async with SimSMTPServer(behavior) as server, SimDNSServer(zone) as dns:
        store = Store(f"sqlite:///{tmp_path / 'tarpit.db'}")
        store.upgrade()
        settings = Settings.from_env({
            "DNS_NAMESERVERS": dns.nameserver, "SMTP_PORT": str(server.port),
            "SMTP_CONNECT_TIMEOUT": "1", "SMTP_COMMAND_TIMEOUT": "1", "SMTP_PROBE_DEADLINE": "5",
            "PER_MX_MAX_CONCURRENCY_DEFAULT": "2", "GLOBAL_RPS": "100",
            "PER_MX_RPS_DEFAULT": "100", "DATABASE_URL": store.url,
        })  # fmt: skip
        records: list[dict[str, Any]] = []
        ctx = Context.create(settings, store=store)
        text = "".join(f"u{i}@tarpit.example\n" for i in range(6))
        try:
            await verify(
                read_addresses(io.StringIO(text)),
                lambda la: records.append(render_record(la)),
                ctx=ctx,
                # one address a session: several sessions time out at once
                options=BulkOptions(
                    reuse_ttl=None, rcpts_per_session=1, slow_timeouts=(5.0, 5.0, 20.0)
                ),
            )
        finally:
            await ctx.aclose()
    rec = server.record
    assert rec.refused_connections == 0, [c.open_at_start for c in rec.connection_log]
    assert rec.max_open <= 2 and rec.concurrency_violations == 0
    verdicts = {r["email"]: r["verdict"] for r in records}
    assert len(verdicts) == 6
    assert verdicts["u0@tarpit.example"] in {"deliverable", "risky"}
    assert verdicts["u1@tarpit.example"] == "undeliverable"
