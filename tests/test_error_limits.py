"""Postfix's error limits: a session that collects refusals is slowed, then cut.

postconf(5): smtpd_soft_error_limit (10), smtpd_hard_error_limit (20),
smtpd_error_sleep_time (1 s), https://www.postfix.org/postconf.5.html. Postfix counts
every refused command of a session, RCPTs included (smtpd.c), holds every reply back
once the count reaches the soft limit (smtpd_chat.c), and at the hard limit answers
"421 4.7.0 <host> Error: too many errors" and hangs up. A list of guessed addresses
refused by the dozen would be slowed by a second a reply, then cut; a session carries
no more RCPTs than it can still see refused (SMTP_SESSION_MAX_REFUSALS, 9), and the rest
go to a new one."""

from __future__ import annotations

import io
import smtplib
import time
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
from mailprobe.testing.records import ServerRecord
from mailprobe.testing.smtpd import ACCEPT, MXBehavior, SimSMTPServer, serve_in_thread

ZONE = {"acme.example": DomainSpec(mx=[(10, "mx.acme.example")]),
        "mx.acme.example": DomainSpec(a=["127.0.0.1"])}  # fmt: skip


def test_the_simulated_postfix_slows_then_cuts_a_session_of_refusals() -> None:
    behavior = MXBehavior(soft_error_limit=3, hard_error_limit=5, error_sleep=0.2)
    with serve_in_thread(behavior) as server, smtplib.SMTP("127.0.0.1", server.port) as s:
        s.ehlo("probe.example")
        s.mail("bounce@probe.example")
        took = []
        for i in range(5):
            start = time.monotonic()
            assert s.rcpt(f"nobody{i}@acme.example")[0] == 550
            took.append(time.monotonic() - start)
        assert max(took[:3]) < 0.15 and min(took[3:]) >= 0.2  # slowed from the 3rd error on
        with pytest.raises(smtplib.SMTPServerDisconnected):
            code, text = s.rset()  # read the 421, then the server hangs up
            assert (code, b"too many errors" in text) == (421, True)
            s.noop()
    assert server.record.error_limit_disconnects == 1


async def _verify(
    tmp_path: Path, exists_every: int, count: int, env: dict[str, str]
) -> tuple[dict[str, str], ServerRecord]:
    """`count` guesses at acme.example (every `exists_every`-th exists) verified against a
    server with Postfix's limits (its 1 s sleep scaled down): verdicts and the record."""
    exists = {f"u{i}@acme.example": ACCEPT for i in range(0, count, exists_every)}
    behavior = MXBehavior(mailboxes=exists, soft_error_limit=10, hard_error_limit=20,
                          error_sleep=0.05)  # fmt: skip
    records: list[dict[str, Any]] = []
    async with SimSMTPServer(behavior) as server, SimDNSServer(ZONE) as dns:
        store = Store(f"sqlite:///{tmp_path / 'limits.db'}")
        store.upgrade()
        settings = Settings.from_env({
            "GLOBAL_RPS": "1000", "PER_MX_RPS_DEFAULT": "1000", **env,
            "DNS_NAMESERVERS": dns.nameserver, "SMTP_PORT": str(server.port),
            "DATABASE_URL": store.url,
        })  # fmt: skip
        ctx = Context.create(settings, store=store)
        text = "".join(f"u{i}@acme.example\n" for i in range(count))
        try:
            await verify(read_addresses(io.StringIO(text)),
                         lambda line: records.append(render_record(line)),
                         ctx=ctx, options=BulkOptions(reuse_ttl=None))  # fmt: skip
        finally:
            await ctx.aclose()
    expected = {f"u{i}@acme.example": "deliverable" if i % exists_every == 0 else "undeliverable"
                for i in range(count)}  # fmt: skip
    assert {r["email"]: r["verdict"] for r in records} == expected
    return expected, server.record


@pytest.mark.parametrize("max_refusals", [None, 0])
async def test_a_list_of_guesses_never_meets_the_error_limits(
    tmp_path: Path, max_refusals: int | None
) -> None:
    env = {} if max_refusals is None else {"SMTP_SESSION_MAX_REFUSALS": str(max_refusals)}
    _, rec = await _verify(tmp_path, 8, 80, env)  # 10 of 80 exist
    if max_refusals is None:  # the default: no reply held back, no session cut
        assert (rec.error_delays, rec.error_limit_disconnects) == (0, 0)
    else:  # 0: no limit, as before: the same list is held back reply after reply
        assert rec.error_delays > 0


async def test_one_command_at_a_time_keeps_under_the_limits_too(tmp_path: Path) -> None:
    """Without PIPELINING (SMTP_PIPELINING=0) the same budget holds, counted from the
    session's transcript."""
    _, rec = await _verify(tmp_path, 8, 40, {"SMTP_PIPELINING": "0"})
    assert (rec.error_delays, rec.error_limit_disconnects) == (0, 0)
    assert rec.connections > 2  # (20 RCPTs a session would have taken 2)
