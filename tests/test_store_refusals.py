"""A row the database refuses never blocks the rows beside it, and text bound for the database
never holds what a database refuses (NUL, lone surrogates, more than its column)."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import func, select

from mailprobe.config import Settings
from mailprobe.engine import Context
from mailprobe.engine.bulk import BulkOptions, BulkVerifier
from mailprobe.inputs import read_addresses
from mailprobe.report import render_record
from mailprobe.results import Outcome, answer_for, invalid_answer
from mailprobe.store import Store, StoreError
from mailprobe.store import queries as q
from mailprobe.store.models import VerificationResult
from mailprobe.testing.dnsd import DomainSpec, SimDNSServer
from tests.pg_server import pg_server, pg_url  # noqa: F401  (fixtures)


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[Store]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'refusals.db'}"
    else:
        url = request.getfixturevalue("pg_url")
    s = Store(url)
    s.upgrade()
    yield s
    s.dispose()


def test_nul_surrogates_and_long_text_are_stored_escaped(store: Store) -> None:
    raw = "jane\x00@acme.example" + "x" * 400  # an input line no address can be
    bad_line = invalid_answer(raw, "contains NUL")
    reply = Outcome.from_reply(
        "bob@acme.example", stage="rcpt", code=550, message="5.1.1 no\x00body \udcff here",
        mx_host="mx.acme.example", transcript=("S: 550 5.1.1 no\x00body",),
    )  # fmt: skip
    with store.session() as session:
        q.add_answers(session, [(bad_line, None), (answer_for(reply), None)])
    with store.session() as session:
        rows = {r.reason: r for r in session.scalars(select(VerificationResult))}
    stored_line = rows["invalid_syntax"]
    assert stored_line.email.startswith("jane\\x00@acme.example") and len(stored_line.email) == 320
    assert rows["mailbox_not_found"].message == "5.1.1 no\\x00body \\xff here"
    assert rows["mailbox_not_found"].transcript == ["S: 550 5.1.1 no\\x00body"]


async def test_a_row_the_database_refuses_is_set_aside_alone(tmp_path: Any) -> None:
    """A database that refuses one row (alone too) still stores every other row of its batch,
    and the run ends with one record per line."""
    dns = SimDNSServer({f"n{i}.example": DomainSpec(null_mx=True) for i in range(3)})
    await dns.start()
    store = Store(f"sqlite:///{tmp_path / 'aside.db'}")
    store.upgrade()
    settings = Settings.from_env({"DNS_NAMESERVERS": dns.nameserver, "DATABASE_URL": store.url})
    ctx = Context.create(settings, store=store)

    def picky(rows: list[Any]) -> None:
        if any(answer.email.startswith("poison") for answer, _ in rows):
            raise StoreError("database: value refused")
        with store.session() as session:
            q.add_answers(session, rows)

    records: list[dict[str, Any]] = []
    verifier = BulkVerifier(
        ctx, sink=lambda la: records.append(render_record(la)),
        options=BulkOptions(reuse_ttl=None), store_answers=picky,
    )  # fmt: skip
    text = "".join(f"u{i}@n{i % 3}.example\n" for i in range(50)) + "poison@n1.example\n"
    try:
        await asyncio.wait_for(verifier.run(read_addresses(io.StringIO(text))), 30)
    finally:
        await ctx.aclose()
        await dns.stop()
    assert len(records) == 51
    assert verifier.writer.set_aside == 1
    with store.session() as session:
        assert session.scalar(select(func.count()).select_from(VerificationResult)) == 50


def _world_text() -> str:
    return "".join(f"u{i}@n{i % 3}.example\n" for i in range(30))


async def _null_mx_world(tmp_path: Any, **env: str) -> tuple[SimDNSServer, Store, Settings]:
    dns = SimDNSServer({f"n{i}.example": DomainSpec(null_mx=True) for i in range(3)})
    await dns.start()
    store = Store(f"sqlite:///{tmp_path / 'outage.db'}")
    store.upgrade()
    settings = Settings.from_env(
        {"DNS_NAMESERVERS": dns.nameserver, "DATABASE_URL": store.url, **env}
    )
    return dns, store, settings


async def test_a_database_refusing_writes_for_a_while_loses_nothing(
    tmp_path: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Answers, catch-all findings and MX answers refused for a while are all written once
    the database takes writes again; the refusal is said once, not once per write."""
    dns, store, settings = await _null_mx_world(tmp_path)
    ctx = Context.create(settings, store=store)
    down = {"on": True}
    findings: list[tuple[str, bool]] = []

    def refusing(rows: list[Any]) -> None:
        if down["on"]:
            raise StoreError("database: locked")
        with store.session() as session:
            q.add_answers(session, rows)

    def save_catch_all(domain: str, catch_all: bool) -> None:
        if down["on"]:
            raise StoreError("database: locked")
        findings.append((domain, catch_all))

    ctx.mx_cache.save_catch_all = save_catch_all  # type: ignore[method-assign]
    verifier = BulkVerifier(ctx, sink=lambda la: None, options=BulkOptions(reuse_ttl=None),
                            store_answers=refusing)  # fmt: skip
    verifier.writer.add_finding("late.example", True)

    async def recover() -> None:
        await asyncio.sleep(1.0)
        down["on"] = False

    try:
        recovering = asyncio.create_task(recover())
        await asyncio.wait_for(verifier.run(read_addresses(io.StringIO(_world_text()))), 30)
        await recovering
    finally:
        await ctx.aclose()
        await dns.stop()
    with store.session() as session:
        assert session.scalar(select(func.count()).select_from(VerificationResult)) == 30
    assert findings == [("late.example", True)]
    refusals = [r for r in caplog.records if "refuses writes" in r.getMessage()]
    assert len(refusals) == 1


async def test_a_database_refusing_writes_too_long_stops_the_run(tmp_path: Any) -> None:
    dns, store, settings = await _null_mx_world(tmp_path, DATABASE_OUTAGE_LIMIT="1")
    ctx = Context.create(settings, store=store)

    def refusing(rows: list[Any]) -> None:
        raise StoreError("database sqlite:///x.db: attempt to write a readonly database")

    verifier = BulkVerifier(ctx, sink=lambda la: None, options=BulkOptions(reuse_ttl=None),
                            store_answers=refusing)  # fmt: skip
    try:
        with pytest.raises(StoreError, match=r"readonly database.*refused writes for"):
            await asyncio.wait_for(verifier.run(read_addresses(io.StringIO(_world_text()))), 30)
    finally:
        await ctx.aclose()
        await dns.stop()
