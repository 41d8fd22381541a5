"""One path per address: `mailprobe probe`, the queue job and bulk verify decide the same way
and store the same row, and a row reads back the same whoever wrote it.

Each address is written through one face, then read through the others: the stored
row (`answer_from_row`), a `verify` run that reuses it, and a fresh `verify`.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mailprobe import config, engine, queue
from mailprobe.engine.bulk import BulkOptions, verify
from mailprobe.inputs import entry
from mailprobe.report import render_record
from mailprobe.results import LineAnswer
from mailprobe.store import queries as q
from mailprobe.testing.dnsd import DomainSpec, SimDNSServer
from mailprobe.testing.smtpd import ACCEPT, MXBehavior, serve_in_thread

ROOT = Path(__file__).resolve().parents[1]
ADDRESSES = (
    "jane@acme.example",  # 250: accepted (no catch-all check on a single probe)
    "ghost@acme.example",  # 550 5.1.1: mailbox_not_found
    "jane@nomail.example",  # null MX (RFC 7505): undeliverable from DNS
)


@pytest.fixture
def world(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    zone = {
        "acme.example": DomainSpec(mx=[(10, "mx.acme.example")]),
        "mx.acme.example": DomainSpec(a=["127.0.0.1"]),
        "nomail.example": DomainSpec(null_mx=True),
    }
    mx = MXBehavior(mailboxes={"jane@acme.example": ACCEPT})
    with SimDNSServer(zone) as dns, serve_in_thread(mx) as smtp:
        monkeypatch.setenv("DNS_NAMESERVERS", dns.nameserver)
        monkeypatch.setenv("DNS_TIMEOUT", "2")
        monkeypatch.setenv("SMTP_PORT", str(smtp.port))
        config.get_settings.cache_clear()
        yield


def shown(record: dict[str, Any]) -> tuple[str, str]:
    return record["verdict"], record["reason"]


async def verify_records(emails: list[str], *, reuse: bool) -> dict[str, dict[str, Any]]:
    records: list[dict[str, Any]] = []

    def sink(line: LineAnswer) -> None:
        records.append(render_record(line))

    ctx = engine.Context.create()
    try:
        options = BulkOptions(reuse_ttl=86400.0 if reuse else None, catch_all_check=False)
        await verify(
            [entry(i + 1, e) for i, e in enumerate(emails)], sink, ctx=ctx, options=options
        )
    finally:
        await ctx.aclose()
    return {r["email"]: r for r in records}


def stored(email: str) -> tuple[str, str]:
    with engine.Context.create().store.session() as session:
        row = q.latest_result(session, email)
        assert row is not None, f"no row for {email}"
        answer = q.answer_from_row(row)
    return answer.verdict.value, answer.reason


def write_with_probe_cli(email: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "mailprobe.cli", "probe", "--email", email],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode in {0, 1, 4}, done.stderr


def write_with_queue_job(email: str) -> None:
    queue.task_probe_email(None, email, email.rpartition("@")[2])


async def test_probe_then_verify_answers_like_a_fresh_verify(world: None) -> None:
    """The issue's case: a null-MX address probed first, then verified, answers as a fresh
    verify does (undeliverable / null_mx), not unknown / null_mx."""
    fresh = await verify_records(["jane@nomail.example"], reuse=False)
    assert shown(fresh["jane@nomail.example"]) == ("undeliverable", "null_mx")
    write_with_probe_cli("jane@nomail.example")
    reused = await verify_records(["jane@nomail.example"], reuse=True)
    assert reused["jane@nomail.example"]["reused"] is True
    assert shown(reused["jane@nomail.example"]) == ("undeliverable", "null_mx")


@pytest.mark.parametrize("writer", ["probe_cli", "queue_job", "verify"])
async def test_a_row_reads_back_the_same_whoever_wrote_it(world: None, writer: str) -> None:
    if writer == "probe_cli":
        for email in ADDRESSES:
            write_with_probe_cli(email)
    elif writer == "queue_job":
        for email in ADDRESSES:
            write_with_queue_job(email)
    else:
        await verify_records(list(ADDRESSES), reuse=False)
    expected = {
        "jane@acme.example": ("risky", "catch_all_unknown"),  # accepted, catch-all not checked
        "ghost@acme.example": ("undeliverable", "mailbox_not_found"),
        "jane@nomail.example": ("undeliverable", "null_mx"),
    }
    for email in ADDRESSES:
        assert stored(email) == expected[email], (writer, email)
    reused = await verify_records(list(ADDRESSES), reuse=True)
    for email in ADDRESSES:
        assert reused[email]["reused"] is True, (writer, email)
        assert shown(reused[email]) == expected[email], (writer, email)
