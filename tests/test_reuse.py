"""Stored answers reused by `verify`: final verdicts for --reuse-ttl, an `unknown` only for
its short TTL (REUSE_UNKNOWN_TTL), on a plain rerun and on --resume: nothing temporary
is remembered as final."""

from __future__ import annotations

import io
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from mailprobe.config import Settings
from mailprobe.engine import Context
from mailprobe.engine.bulk import BulkOptions, verify
from mailprobe.engine.bulk.reader import reuse_window, stored_answers
from mailprobe.inputs import read_addresses
from mailprobe.report import render_record
from mailprobe.results import Answer, Outcome, answer_for
from mailprobe.store import DomainResolution, Store
from mailprobe.store.models import VerificationResult, utcnow
from mailprobe.store.queries import add_answer
from mailprobe.testing.dnsd import DomainSpec, SimDNSServer
from mailprobe.testing.smtpd import ACCEPT, MXBehavior, SimSMTPServer

HOUR = 3600.0
OPTIONS = BulkOptions(catch_all_check=False, temp_delays=())  # default reuse; no DNS retries


def final(email: str) -> Answer:
    text = "5.1.1 <x>: Recipient address rejected: User unknown"
    reply = Outcome.from_reply(email, stage="rcpt", code=550, mx_host="mx.x", message=text)
    return answer_for(reply, catch_all=False, dns_status="ok")


def unknown(email: str) -> Answer:
    return answer_for(Outcome.no_mail_host(email, "dns_error"), dns_status="dns_error")


@pytest.fixture
def ctx(tmp_path: Path) -> Context:
    store = Store(f"sqlite:///{tmp_path / 'reuse.db'}")
    store.upgrade()
    return Context.create(Settings.from_env({"DATABASE_URL": store.url}), store=store)


def store_at(ctx: Context, answer: Answer, age: float) -> None:
    """Store `answer` as if written `age` seconds ago."""
    with ctx.store.session() as session:
        row_id = add_answer(session, answer)
        row = session.get(VerificationResult, row_id)
        assert row is not None
        row.created_at = utcnow() - timedelta(seconds=age)


def reused(ctx: Context, options: BulkOptions, emails: list[str]) -> dict[str, str]:
    """email -> verdict of the stored answers that stand."""
    window = reuse_window(options, ctx.settings.reuse_unknown_ttl, utcnow())
    if window is None:
        return {}
    return {e: a.verdict.value for e, a in stored_answers(ctx, emails, window).items()}


def test_unknown_has_its_own_short_ttl(ctx: Context) -> None:
    store_at(ctx, unknown("fresh@d.example"), 60)
    store_at(ctx, unknown("old@d.example"), 400)  # past REUSE_UNKNOWN_TTL (300)
    store_at(ctx, final("final@d.example"), HOUR)
    store_at(ctx, final("stale@d.example"), 25 * HOUR)  # past --reuse-ttl
    store_at(ctx, final("both@d.example"), HOUR)
    store_at(ctx, unknown("both@d.example"), 60)  # later, but says nothing of the mailbox
    emails = ["fresh@d.example", "old@d.example", "final@d.example", "stale@d.example",
              "both@d.example"]  # fmt: skip
    assert reused(ctx, BulkOptions(), emails) == {
        "fresh@d.example": "unknown",
        "final@d.example": "undeliverable",
        "both@d.example": "undeliverable",
    }
    never = BulkOptions(reuse_unknown_ttl=0)
    assert "fresh@d.example" not in reused(ctx, never, emails)
    short = BulkOptions(reuse_ttl=30)  # an unknown never outlives a final verdict
    assert reused(ctx, short, emails) == {}
    assert reused(ctx, BulkOptions(reuse_ttl=None), emails) == {}
    longer = BulkOptions(reuse_unknown_ttl=500)
    assert reused(ctx, longer, emails)["old@d.example"] == "unknown"


def test_resume_reuses_final_verdicts_not_old_unknowns(ctx: Context) -> None:
    """--resume (reuse_since: the interrupted run's start, here 2 h ago): its final
    verdicts stand whatever --reuse-ttl says; its unknowns only within their short TTL."""
    store_at(ctx, final("done@d.example"), HOUR)
    store_at(ctx, unknown("failed@d.example"), 400)
    store_at(ctx, unknown("just@d.example"), 60)
    since: datetime = utcnow() - timedelta(seconds=2 * HOUR)
    emails = ["done@d.example", "failed@d.example", "just@d.example"]
    resume = BulkOptions(reuse_ttl=60, reuse_since=since)
    assert reused(ctx, resume, emails) == {"done@d.example": "undeliverable"}
    forced = BulkOptions(reuse_ttl=None, reuse_since=since, reuse_unknown_ttl=0)  # --force
    assert reused(ctx, forced, emails) == {"done@d.example": "undeliverable"}
    plain = BulkOptions(reuse_since=since)
    assert set(reused(ctx, plain, emails)) == {"done@d.example", "just@d.example"}


def age_everything(store: Store, seconds: float) -> None:
    """Minutes pass: stored results and MX cache entries become `seconds` older."""
    shift = timedelta(seconds=seconds)
    with store.session() as session:
        for row in session.scalars(select(VerificationResult)):
            row.created_at -= shift
        for res in session.scalars(select(DomainResolution)):
            res.resolved_at -= shift
            res.expires_at -= shift


async def test_rerun_after_dns_recovers_probes_again(tmp_path: Path) -> None:
    """DNS failed (SERVFAIL), then recovered: once the unknown's short TTL is over, a
    plain rerun (no --force) asks DNS and the server again."""
    smtp = await SimSMTPServer(MXBehavior(mailboxes={"joe@acme.example": ACCEPT})).start()
    zone = {"acme.example": DomainSpec(servfail=True),
            "mx.acme.example": DomainSpec(a=["127.0.0.1"])}  # fmt: skip
    try:
        async with SimDNSServer(zone) as dns:
            store = Store(f"sqlite:///{tmp_path / 'rerun.db'}")
            store.upgrade()
            settings = Settings.from_env(
                {"DNS_NAMESERVERS": dns.nameserver, "DNS_TIMEOUT": "0.5",
                 "DNS_MAX_TIMEOUT": "0.5", "SMTP_PORT": str(smtp.port),
                 "DATABASE_URL": store.url}
            )  # fmt: skip

            async def run() -> dict[str, Any]:
                records: list[dict[str, Any]] = []
                ctx = Context.create(settings, store=store)
                try:
                    await verify(read_addresses(io.StringIO("joe@acme.example\n")),
                                 lambda la: records.append(render_record(la)),
                                 ctx=ctx, options=OPTIONS)  # fmt: skip
                finally:
                    await ctx.aclose()
                return records[0]

            first = await run()
            assert (first["verdict"], first["reason"]) == ("unknown", "dns_error")
            dns.zone["acme.example"] = DomainSpec(mx=[(10, "mx.acme.example")])
            age_everything(store, 301)  # past REUSE_UNKNOWN_TTL and MX_ERROR_TTL
            again = await run()
    finally:
        await smtp.stop()
    assert not again["reused"]
    assert (again["verdict"], again["reason"]) == ("risky", "catch_all_unknown")
    assert smtp.record.connections == 1
