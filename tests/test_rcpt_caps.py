"""The rate caps count RCPT commands, fleet-wide: what the servers saw, not what we claim.

GLOBAL_RPS, PER_MX_RPS_DEFAULT and MX_LIMITS' rates are RCPTs a second (the seed's
throttle wrapped one `probe_rcpt`, one RCPT, per token). A session reserves a token per
RCPT it sends, so pipelining saves connections and round trips but never raises the
rate; new connections have a cap of their own (PER_MX_CONNECT_RPS). The simulated
servers count RCPTs in sliding windows (`MXBehavior.expect_rps`, `expect_burst`).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailprobe.config import Settings
from mailprobe.egress import RouteTable
from mailprobe.engine import Context
from mailprobe.engine.bulk import BulkOptions, verify
from mailprobe.engine.egress import acquire_routed
from mailprobe.inputs import read_addresses
from mailprobe.report import render_record
from mailprobe.store import Store
from mailprobe.testing.dnsd import DomainSpec, SimDNSServer
from mailprobe.testing.records import window_violations
from mailprobe.testing.smtpd import ACCEPT, MXBehavior, SimSMTPServer, serve_in_thread
from mailprobe.throttle import (
    Limits,
    LocalThrottle,
    RedisThrottle,
    Throttle,
    ThrottlePolicy,
    ThrottleTimeout,
    late_tolerance,
    take_tokens,
)

pytestmark = pytest.mark.r06  # the seed's throttle label: pytest -k r06

pytest_plugins = ["tests.redis_server"]


# -- the token bucket ---------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(
    rps=st.floats(0.5, 200.0),
    burst=st.integers(1, 20),
    steps=st.lists(st.tuples(st.floats(0.0, 0.3), st.integers(1, 25)), min_size=1, max_size=80),
)
def test_take_tokens_keeps_burst_plus_rate_in_every_window(
    rps: float, burst: int, steps: list[tuple[float, int]]
) -> None:
    """Whatever the wake-ups and the sizes asked, no window of T seconds gets more than
    burst + rps * (T + lateness tolerance) tokens."""
    interval, tat, now = 1.0 / rps, float("-inf"), 0.0
    times: list[float] = []
    for pause, want in steps:
        now += pause
        taken, tat, wait = take_tokens(tat, now, interval, burst, want)
        if not taken:
            assert wait > 0
            now += wait  # come back when it said
            taken, tat, _ = take_tokens(tat, now, interval, burst, want)
            assert taken >= 1
        assert taken <= min(want, burst)
        times += [now] * taken
    tol = late_tolerance(interval)
    for window in (0.5, 1.0, 3.0):
        for t in times:
            inside = sum(1 for u in times if t <= u < t + window)
            assert inside <= burst + rps * (window + tol) + 1e-6


def test_burst_is_a_fraction_of_a_second_worth_at_least_one() -> None:
    policy = ThrottlePolicy(Limits(10, 6.0), Limits(2, 1.0))
    assert policy.burst_seconds == 0.2
    assert (policy.burst(1.0), policy.burst(6.0), policy.burst(50.0)) == (1, 1, 10)
    assert ThrottlePolicy(Limits(1, 1), Limits(1, 1), burst_seconds=0).burst(1000.0) == 1
    settings = Settings.from_env({"PER_MX_CONNECT_RPS": "0.5", "THROTTLE_BURST_SECONDS": "0"})
    policy = ThrottlePolicy.from_settings(settings)
    assert policy.limits_for("mx.any.example").connect_rate == 0.5
    assert policy.burst(100.0) == 1
    # without PER_MX_CONNECT_RPS, connections go at the MX's RCPT rate
    assert ThrottlePolicy.from_settings(Settings.from_env({})).limits_for("mx.x").connect_rate == 1


# -- both backends ------------------------------------------------------------------------


@pytest.fixture(params=["local", "redis"])
async def backend(request: pytest.FixtureRequest) -> Any:
    url = request.getfixturevalue("redis_url") if request.param == "redis" else None
    made: list[Throttle] = []

    def make(policy: ThrottlePolicy) -> Throttle:
        throttle: Throttle = LocalThrottle(policy) if url is None else RedisThrottle(url, policy)
        made.append(throttle)
        return throttle

    yield make
    for throttle in made:
        await throttle.aclose()


async def test_a_slot_comes_with_the_rcpt_tokens_available_now(backend: Any) -> None:
    # MX: 10 RCPTs a second, a burst of 2 (0.2 s worth); the global cap far off
    throttle = backend(ThrottlePolicy(Limits(100, 1000.0), Limits(5, 10.0), connect_rps=100.0))
    slot = await throttle.acquire("mx.tokens.example", wait=1, rcpts=20)
    assert slot.rcpts == 2  # the burst, not the 20 asked for
    times = [time.monotonic()] * slot.rcpts
    while len(times) < 22:
        got = await throttle.more(slot, 20 - len(times) % 20, wait=1)
        assert 1 <= got <= 2
        times += [time.monotonic()] * got
    elapsed = times[-1] - times[0]
    assert elapsed >= (len(times) - 2) / 10.0 - 0.15  # 20 more tokens need ~2 s at 10 a second
    assert window_violations(times, 10.0, 2, 1.0) == 0
    await throttle.release(slot)


async def test_no_token_within_the_wait_fails_at_once(backend: Any) -> None:
    throttle = backend(ThrottlePolicy(Limits(100, 1000.0), Limits(5, 0.5), connect_rps=100.0))
    slot = await throttle.acquire("mx.slow-rate.example", wait=1, rcpts=5)
    assert slot.rcpts == 1
    started = time.monotonic()
    with pytest.raises(ThrottleTimeout) as caught:
        await throttle.more(slot, 1, wait=0.5)  # the next token is 2 s away
    assert time.monotonic() - started < 0.4  # failed at once, not after the wait
    assert caught.value.retry_after is not None and caught.value.retry_after > 1.0
    assert caught.value.limited_by == "per-MX rate"
    await throttle.release(slot)


async def test_new_connections_have_their_own_cap(backend: Any) -> None:
    # RCPTs may go 100 a second, but connections only 4 a second
    throttle = backend(ThrottlePolicy(Limits(100, 1000.0), Limits(10, 100.0), connect_rps=4.0))
    starts = []
    for _ in range(6):
        slot = await throttle.acquire("mx.conn.example", wait=5)
        starts.append(time.monotonic())
        await throttle.release(slot)
    assert starts[-1] - starts[0] >= 5 / 4.0 - 0.1
    with pytest.raises(ThrottleTimeout) as caught:
        await throttle.acquire("mx.conn.example", wait=0)
    assert caught.value.limited_by == "per-MX connection rate"


async def test_the_global_rate_counts_rcpts_of_every_mx(backend: Any) -> None:
    throttle = backend(ThrottlePolicy(Limits(100, 10.0), Limits(10, 1000.0), burst_seconds=0))
    a = await throttle.acquire("mx.a.example", wait=1, rcpts=5)
    times = [time.monotonic()] * a.rcpts
    b = await throttle.acquire("mx.b.example", wait=1, rcpts=5)
    times += [time.monotonic()] * b.rcpts
    for _ in range(8):
        for slot in (a, b):
            got = await throttle.more(slot, 5, wait=2)
            times += [time.monotonic()] * got
    assert window_violations(times, 10.0, 1, 1.0) == 0
    assert times[-1] - times[0] >= (len(times) - 1) / 10.0 - 0.1


# -- a whole run, as the servers saw it -----------------------------------------------------


def _zone(hosts: dict[str, str]) -> dict[str, DomainSpec]:
    zone = {f"{name}.example": DomainSpec(mx=[(10, f"mx.{name}.example")]) for name in hosts}
    zone.update({f"mx.{name}.example": DomainSpec(a=[ip]) for name, ip in hosts.items()})
    return zone


async def test_a_bulk_run_keeps_the_rcpt_rate_at_every_mx(tmp_path: Path) -> None:
    """60 addresses at one MX capped at 10 RCPTs a second (a burst of 2): sessions of 20
    RCPTs would send them in one group; the server must never count more than 12 in a
    second, and a 10-second window at most 2 + 100."""
    rps, burst = 10.0, 2
    behavior = MXBehavior(
        mailboxes={f"u{i}@acme.example": ACCEPT for i in range(0, 60, 2)},
        expect_rps=rps,
        expect_burst=burst,
        expect_max_concurrency=2,
    )
    other = MXBehavior(default_rcpt=ACCEPT, expect_rps=rps, expect_burst=burst)
    async with (
        SimSMTPServer(behavior, host="127.0.0.1") as acme,
        SimSMTPServer(other, host="127.0.0.2", port=acme.port) as beta,
        SimDNSServer(_zone({"acme": "127.0.0.1", "beta": "127.0.0.2"})) as dns,
    ):
        store = Store(f"sqlite:///{tmp_path / 'caps.db'}")
        store.upgrade()
        settings = Settings.from_env({
            "DNS_NAMESERVERS": dns.nameserver, "SMTP_PORT": str(acme.port),
            "GLOBAL_RPS": "200", "PER_MX_RPS_DEFAULT": str(rps),
            "PER_MX_MAX_CONCURRENCY_DEFAULT": "2", "THROTTLE_BURST_SECONDS": "0.2",
            "DATABASE_URL": store.url,
        })  # fmt: skip
        lines = [f"u{i}@acme.example" for i in range(60)] + [f"b{i}@beta.example" for i in range(5)]
        records: list[dict[str, Any]] = []
        ctx = Context.create(settings, store=store)
        started = time.monotonic()
        try:
            await verify(
                read_addresses(io.StringIO("\n".join(lines) + "\n")),
                lambda la: records.append(render_record(la)),
                ctx=ctx,
                options=BulkOptions(reuse_ttl=None),
            )
        finally:
            await ctx.aclose()
        elapsed = time.monotonic() - started
    assert len(records) == 65
    verdicts = {r["email"]: r["verdict"] for r in records}
    assert verdicts["u0@acme.example"] == "deliverable"
    assert verdicts["u1@acme.example"] == "undeliverable"
    rec = acme.record
    assert rec.rcpts >= 61  # every address and the catch-all check
    assert rec.rcpt_rate_violations == 0, rec.peak_rcpts_per_second()
    assert rec.peak_rcpts_per_second() <= burst + rps
    assert window_violations(rec.rcpt_times, rps, burst, 10.0) == 0
    assert rec.connections < rec.rcpts / 3  # batching still saves connections
    assert rec.concurrency_violations == 0 and rec.connect_rate_violations == 0
    assert elapsed >= (rec.rcpts - burst) / rps - 0.5  # the cap, not the server, set the pace
    assert beta.record.rcpt_rate_violations == 0


# -- a fleet on Redis ------------------------------------------------------------------------


async def test_four_workers_on_redis_share_the_rcpt_caps(tmp_path: Path, redis_url: str) -> None:
    """Four `mailprobe verify` processes, one Redis: together they keep one MX's RCPT rate
    and concurrency, and the global RCPT rate, as the server counted them."""
    rps, grps = 8.0, 12.0
    mailboxes = {f"w{w}u{i}@fleet.example": ACCEPT for w in range(4) for i in range(0, 12, 2)}
    behavior = MXBehavior(
        mailboxes=mailboxes, expect_rps=rps, expect_burst=1, expect_max_concurrency=2
    )
    with (
        SimDNSServer(_zone({"fleet": "127.0.0.1"})) as dns,
        serve_in_thread(behavior) as smtp,
    ):
        env = {
            **os.environ,
            "DNS_NAMESERVERS": dns.nameserver,
            "SMTP_PORT": str(smtp.port),
            "REDIS_URL": redis_url,
            "GLOBAL_RPS": str(grps),
            "PER_MX_RPS_DEFAULT": str(rps),
            "PER_MX_MAX_CONCURRENCY_DEFAULT": "2",
            "THROTTLE_BURST_SECONDS": "0",
            "SPECIAL_USE_ALLOWED": "example",
        }
        procs = []
        for w in range(4):
            listing = tmp_path / f"w{w}.txt"
            listing.write_text("".join(f"w{w}u{i}@fleet.example\n" for i in range(12)))
            env_w = {**env, "DATABASE_URL": f"sqlite:///{tmp_path / f'w{w}.db'}"}
            procs.append(
                await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-m",
                    "mailprobe.cli",
                    "verify",
                    str(listing),
                    "--format",
                    "jsonl",
                    env=env_w,
                    stdin=subprocess.DEVNULL,
                    stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.PIPE,
                )
            )
        outputs = await asyncio.wait_for(asyncio.gather(*(p.communicate() for p in procs)), 120)
        rec = smtp.record
    for proc, (out, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err.decode()
        rows = [json.loads(line) for line in out.decode().splitlines()]
        assert len(rows) == 12
        assert {r["verdict"] for r in rows} <= {"deliverable", "undeliverable"}
    assert rec.rcpts >= 48
    assert rec.rcpt_rate_violations == 0, rec.peak_rcpts_per_second()
    assert window_violations(rec.rcpt_times, rps, 1, 5.0) == 0
    assert window_violations(rec.rcpt_times, grps, 1, 1.0) == 0
    assert rec.max_open <= 2 and rec.concurrency_violations == 0


async def _critical_share(throttle: Throttle, priority: bool, seconds: float = 2.0) -> int:
    """RCPT tokens a lane capped at 10 a second gets in `seconds` while ten other lanes
    want every global token there is."""
    crit = await throttle.acquire("mx.critical.example", wait=1, rcpts=0)
    hogs = [await throttle.acquire(f"mx.hog{i}.example", wait=1, rcpts=0) for i in range(10)]
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    got = 0

    async def hog(slot: Any) -> None:
        while loop.time() < end:
            with contextlib.suppress(ThrottleTimeout):
                await throttle.more(slot, 50, wait=1)

    async def critical() -> None:
        nonlocal got
        while loop.time() < end:
            with contextlib.suppress(ThrottleTimeout):
                got += await throttle.more(crit, 1, wait=1, priority=priority)

    await asyncio.gather(critical(), *(hog(h) for h in hogs))
    return got


async def test_the_critical_lane_gets_its_rate_when_every_mx_wants_global_tokens(
    backend: Any,
) -> None:
    """Global 50 RCPTs a second (a burst of 20), per MX 10 a second: the lane that bounds
    the run gets its 10 a second however many others wait; without priority it gets a
    share of the global rate."""
    policy = ThrottlePolicy(Limits(100, 50.0), Limits(20, 10.0), burst_seconds=0.4)
    with_priority = await _critical_share(backend(policy), priority=True)
    without = await _critical_share(backend(policy), priority=False)
    assert with_priority >= 16, (with_priority, without)  # ~10 a second for 2 s (+ burst)
    assert without < with_priority


async def test_the_critical_lanes_session_is_asked_for_with_priority() -> None:
    """The scheduler asks for the critical lane's connection with priority, through its
    egress route: refused on the global rate, it has the other lanes leave it a quarter
    of the global burst until its token comes; else they take each token as it comes and
    its next session starts after theirs, its RCPT rate idle meanwhile."""
    now = [100.0]
    policy = ThrottlePolicy(Limits(100, 10.0), Limits(20, 100.0), burst_seconds=2.0)
    throttle = LocalThrottle(policy, clock=lambda: now[0])  # global burst 20, 4 kept
    routes = RouteTable.build()
    hog = await throttle.acquire("mx.hog.example", wait=1, rcpts=20)
    assert hog.rcpts == 20  # the global burst is spent
    with pytest.raises(ThrottleTimeout) as caught:
        await acquire_routed(throttle, routes, "mx.critical.example", wait=0, rcpts=0,
                             priority=True)  # fmt: skip
    assert caught.value.limited_by == "global rate"
    now[0] += 0.15  # one global token is due
    with pytest.raises(ThrottleTimeout):  # not for another lane
        await acquire_routed(throttle, routes, "mx.other.example", wait=0, rcpts=0)
    routed = await acquire_routed(throttle, routes, "mx.critical.example", wait=0, rcpts=0,
                                  priority=True)  # fmt: skip
    assert routed is not None and routed[1] is not None


WORKER = (
    "import sys\n"
    "from mailprobe.queue.worker import run_worker\n"
    "sys.exit(run_worker(['verify'], burst=False, logging_level='WARNING'))\n"
)


def test_verify_enqueue_with_four_rq_workers_keeps_the_rcpt_caps(
    redis_url: str, tmp_path: Path
) -> None:
    """`verify --enqueue`: per-domain batches on four RQ workers, all to one MX (a hosting
    cluster): the RCPTs the server counted keep its rate and the global rate, fleet-wide."""
    rps, grps = 8.0, 10.0
    names = ["alpha", "beta", "gamma", "delta"]
    zone = {f"{n}.example": DomainSpec(mx=[(10, "mx.cluster.example")]) for n in names}
    zone["mx.cluster.example"] = DomainSpec(a=["127.0.0.1"])
    behavior = MXBehavior(
        mailboxes={f"u{i}@{n}.example": ACCEPT for n in names for i in range(0, 12, 3)},
        expect_rps=rps,
        expect_burst=1,
        expect_max_concurrency=2,
    )
    listing = tmp_path / "in.txt"
    listing.write_text("".join(f"u{i}@{n}.example\n" for i in range(12) for n in names))
    with SimDNSServer(zone) as dns, serve_in_thread(behavior) as smtp:
        env = {
            **os.environ, "DNS_NAMESERVERS": dns.nameserver, "SMTP_PORT": str(smtp.port),
            "REDIS_URL": redis_url, "MAILPROBE_RUNS_DIR": str(tmp_path / "runs"),
            "GLOBAL_RPS": str(grps), "PER_MX_RPS_DEFAULT": str(rps),
            "PER_MX_MAX_CONCURRENCY_DEFAULT": "2", "THROTTLE_BURST_SECONDS": "0",
        }  # fmt: skip
        workers = [
            subprocess.Popen(
                [sys.executable, "-c", WORKER],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                start_new_session=True,
            )
            for _ in range(4)
        ]
        try:
            done = subprocess.run(
                [sys.executable, "-m", "mailprobe.cli", "verify", str(listing), "--enqueue"],
                env=env, capture_output=True, text=True, timeout=180, stdin=subprocess.DEVNULL,
            )  # fmt: skip
        finally:
            for worker in workers:
                os.killpg(worker.pid, signal.SIGTERM)
            for worker in workers:
                worker.wait(20)
        rec = smtp.record
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in done.stdout.splitlines()]
    assert len(rows) == 48
    verdicts = {r["email"]: r["verdict"] for r in rows}
    assert verdicts["u0@alpha.example"] == "deliverable"
    assert verdicts["u1@delta.example"] == "undeliverable"
    assert rec.rcpts >= 52  # every address, each domain's catch-all check
    assert rec.rcpt_rate_violations == 0, rec.peak_rcpts_per_second()
    assert window_violations(rec.rcpt_times, rps, 1, 5.0) == 0
    assert window_violations(rec.rcpt_times, grps, 1, 1.0) == 0
    assert rec.max_open <= 2 and rec.concurrency_violations == 0
