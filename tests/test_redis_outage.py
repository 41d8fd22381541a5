"""The throttle's Redis lost mid-run: probing pauses, nothing unprobed is answered or stored,
and after THROTTLE_OUTAGE_LIMIT the run stops with its reason, the rest left pending."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from mailprobe.config import Settings
from mailprobe.engine import Context
from mailprobe.engine.bulk import BulkOptions, ServiceLost, verify
from mailprobe.inputs import read_addresses
from mailprobe.report import render_record
from mailprobe.store import Store
from mailprobe.store.models import VerificationResult
from mailprobe.testing.dnsd import DomainSpec, SimDNSServer
from mailprobe.testing.smtpd import ACCEPT, MXBehavior, SimSMTPServer
from tests.redis_server import _redis_binary, _start, _stop


async def _world(
    tmp_path: Path, redis_port: int, domains: int, **env: str
) -> tuple[SimSMTPServer, SimDNSServer, Store, Settings]:
    """`domains` domains on one accepting MX, a store, and settings with the Redis throttle."""
    smtp = await SimSMTPServer(MXBehavior(default_rcpt=ACCEPT)).start()
    zone = {f"d{i}.example": DomainSpec(mx=[(10, "mx.shared.example")]) for i in range(domains)}
    dns = SimDNSServer({**zone, "mx.shared.example": DomainSpec(a=["127.0.0.1"])})
    await dns.start()
    store = Store(f"sqlite:///{tmp_path / 'outage.db'}")
    store.upgrade()
    settings = Settings.from_env({
        "DNS_NAMESERVERS": dns.nameserver, "SMTP_PORT": str(smtp.port),
        "DATABASE_URL": store.url, "REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
        "GLOBAL_RPS": "50", **env,
    })  # fmt: skip
    return smtp, dns, store, settings


async def test_lost_redis_pauses_then_stops_and_invents_nothing(tmp_path: Path) -> None:
    binary = _redis_binary()
    if binary is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    proc, redis_port = _start(binary, tmp_path)
    smtp, dns, store, settings = await _world(
        tmp_path, redis_port, 40, PER_MX_RPS_DEFAULT="2", THROTTLE_OUTAGE_LIMIT="2"
    )
    records: list[dict[str, Any]] = []

    def sink(line: Any) -> None:
        records.append(render_record(line))
        if len(records) == 3:
            _stop(proc)  # Redis goes away with most of the list still to probe

    text = "".join(f"user{i}@d{i}.example\n" for i in range(40))
    ctx = Context.create(settings, store=store)
    try:
        with pytest.raises(ServiceLost, match="unreachable") as stopped:
            await asyncio.wait_for(
                verify(read_addresses(io.StringIO(text)), sink, ctx=ctx,
                       options=BulkOptions(reuse_ttl=None, rcpts_per_session=1,
                                           catch_all_check=False)),
                60,
            )  # fmt: skip
    finally:
        await ctx.aclose()
        await dns.stop()
        await smtp.stop()
        _stop(proc)
    assert 3 <= len(records) < 40
    assert all(r["reason"] == "catch_all_unknown" for r in records)  # only what servers said
    assert stopped.value.pending == 40 - len(records)
    with store.session() as session:
        rows = list(session.scalars(select(VerificationResult)))
    assert len(rows) == len(records)
    assert {row.reason for row in rows} == {"accepted"}


async def test_redis_back_within_the_limit_resumes_probing(tmp_path: Path) -> None:
    """Redis stopped and started again on the same port within THROTTLE_OUTAGE_LIMIT:
    probing pauses, then resumes, and every line is answered from what a server said."""
    import subprocess

    binary = _redis_binary()
    if binary is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    proc, redis_port = _start(binary, tmp_path)
    procs = [proc]
    smtp, dns, store, settings = await _world(
        tmp_path, redis_port, 20, PER_MX_RPS_DEFAULT="4", THROTTLE_OUTAGE_LIMIT="30"
    )
    records: list[dict[str, Any]] = []

    async def restart() -> None:
        await asyncio.sleep(1.5)
        procs.append(subprocess.Popen(
            [binary, "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(tmp_path)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        ))  # fmt: skip

    restarting: list[asyncio.Task[None]] = []

    def sink(line: Any) -> None:
        records.append(render_record(line))
        if len(records) == 3:
            _stop(procs[0])
            restarting.append(asyncio.ensure_future(restart()))

    text = "".join(f"user{i}@d{i}.example\n" for i in range(20))
    ctx = Context.create(settings, store=store)
    try:
        await asyncio.wait_for(
            verify(read_addresses(io.StringIO(text)), sink, ctx=ctx,
                   options=BulkOptions(reuse_ttl=None, rcpts_per_session=1,
                                       catch_all_check=False)),
            60,
        )  # fmt: skip
    finally:
        await ctx.aclose()
        await dns.stop()
        await smtp.stop()
        for p in procs:
            _stop(p)
    assert len(records) == 20
    assert {r["reason"] for r in records} == {"catch_all_unknown"}
