"""Global and per-MX caps on concurrency and rate, in-process and across processes.

Most tests run against both backends (LocalThrottle and RedisThrottle on a
private redis-server). The fleet tests start separate OS processes that probe
loopback SMTP servers through one Redis, and judge the caps from what the
*servers* saw, not from what the clients claim.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailprobe.config import MXLimit, Settings
from mailprobe.testing.smtpd import ACCEPT, MXBehavior, SimSMTPServer
from mailprobe.throttle import (
    Limits,
    LocalThrottle,
    RedisThrottle,
    Throttle,
    ThrottlePolicy,
    ThrottleTimeout,
    ThrottleUnavailable,
    late_tolerance,
    make_throttle,
    penalty_reason,
    take_tokens,
)

pytestmark = pytest.mark.r06  # the seed's label: pytest -k r06

pytest_plugins = ["tests.redis_server"]

FAST = 1000.0  # an rps that never binds in these tests
MakeThrottle = Callable[..., Throttle]


def make_policy(
    gconc: int = 100,
    grps: float = FAST,
    mconc: int = 100,
    mrps: float = FAST,
    overrides: tuple[MXLimit, ...] = (),
    **kw: Any,
) -> ThrottlePolicy:
    kw.setdefault("burst_seconds", 0.0)  # one token of burst, unless a test says otherwise
    return ThrottlePolicy(Limits(gconc, grps), Limits(mconc, mrps), overrides, **kw)


def free_port() -> int:
    """A port nothing listens on (bound, then closed)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class FakeClock:
    def __init__(self, now: float = 1_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture(params=["local", "redis"])
async def make(request: pytest.FixtureRequest) -> AsyncIterator[MakeThrottle]:
    """Factory for a throttle of the parametrized backend; closed after the test."""
    url = request.getfixturevalue("redis_url") if request.param == "redis" else None
    made: list[Throttle] = []

    def factory(
        policy: ThrottlePolicy, *, clock: FakeClock | None = None, lease: float = 30.0
    ) -> Throttle:
        throttle: Throttle
        if url is None:
            throttle = LocalThrottle(policy, clock=clock)
        else:
            throttle = RedisThrottle(url, policy, clock=clock, lease_seconds=lease)
        made.append(throttle)
        return throttle

    yield factory
    for throttle in made:
        await throttle.aclose()


def max_in_window(times: list[float], window: float) -> int:
    """The most starts in any half-open window [t, t + window)."""
    ordered = sorted(times)
    return max(
        (sum(1 for u in ordered[i:] if u - t < window) for i, t in enumerate(ordered)), default=0
    )


def rate_allowance(rps: float, window: float = 1.0, slack: float = 0.05) -> int:
    """Starts allowed in a window: rps * window plus the one token of burst (plus jitter)."""
    return int(1 + rps * (window + slack))


# -- concurrency ---------------------------------------------------------------


async def test_concurrency_caps_hold_per_mx_and_globally(make: MakeThrottle) -> None:
    throttle = make(make_policy(gconc=3, mconc=2))
    hosts = ["a.mx.example", "b.mx.example", "c.mx.example"]
    in_flight = dict.fromkeys(hosts, 0)
    peak = dict.fromkeys(hosts, 0)
    glob = {"now": 0, "peak": 0}
    done = 0

    async def worker(i: int) -> None:
        nonlocal done
        host = hosts[i % len(hosts)]
        async with throttle.slot(host, wait=20):
            in_flight[host] += 1
            glob["now"] += 1
            peak[host] = max(peak[host], in_flight[host])
            glob["peak"] = max(glob["peak"], glob["now"])
            await asyncio.sleep(0.03)
            in_flight[host] -= 1
            glob["now"] -= 1
            done += 1

    await asyncio.gather(*(worker(i) for i in range(24)))
    assert done == 24
    assert max(peak.values()) <= 2, peak
    assert glob["peak"] == 3, glob  # the global cap held, and was reached (work ran in parallel)


async def test_override_caps_one_mx_tighter(make: MakeThrottle) -> None:
    policy = make_policy(mconc=2, overrides=(MXLimit("*.google.com", 1, FAST),))
    throttle = make(policy)
    peak: dict[str, int] = {}
    now: dict[str, int] = {}

    async def worker(host: str) -> None:
        async with throttle.slot(host, wait=20):
            now[host] = now.get(host, 0) + 1
            peak[host] = max(peak.get(host, 0), now[host])
            await asyncio.sleep(0.03)
            now[host] -= 1

    hosts = ["gmail-smtp-in.l.google.com", "mx.other.example"] * 5
    await asyncio.gather(*(worker(h) for h in hosts))
    assert peak == {"gmail-smtp-in.l.google.com": 1, "mx.other.example": 2}


# -- rate -------------------------------------------------------------------------


async def _starts(throttle: Throttle, hosts: list[str]) -> list[float]:
    starts: list[float] = []

    async def worker(host: str) -> None:
        async with throttle.slot(host, wait=20):
            starts.append(time.monotonic())

    await asyncio.gather(*(worker(h) for h in hosts))
    return starts


async def test_per_mx_rate_cap(make: MakeThrottle) -> None:
    rps = 10.0
    throttle = make(make_policy(mrps=rps))
    starts = await _starts(throttle, ["mx.rate.example"] * 12)
    assert max_in_window(starts, 1.0) <= rate_allowance(rps)
    # GCRA with one token of burst: n starts span at least (n - 1) / rps.
    assert max(starts) - min(starts) >= 11 / rps - 0.05
    # Another MX has its own bucket: its first start is not held back by this one.
    t0 = time.monotonic()
    await throttle.release(await throttle.acquire("mx.other.example", wait=1))
    assert time.monotonic() - t0 < 0.05


async def test_global_rate_cap_across_mxs(make: MakeThrottle) -> None:
    rps = 10.0
    throttle = make(make_policy(grps=rps))
    hosts = [f"mx{i % 4}.rate.example" for i in range(12)]
    starts = await _starts(throttle, hosts)
    assert max_in_window(starts, 1.0) <= rate_allowance(rps)
    assert max(starts) - min(starts) >= 11 / rps - 0.05


# -- timeouts -------------------------------------------------------------------


async def test_acquire_times_out_on_a_full_slot(make: MakeThrottle) -> None:
    throttle = make(make_policy(mconc=1))
    held = await throttle.acquire("mx.busy.example")
    t0 = time.monotonic()
    with pytest.raises(ThrottleTimeout) as info:
        await throttle.acquire("MX.Busy.Example.", wait=0.3)
    elapsed = time.monotonic() - t0
    assert 0.3 <= elapsed < 1.0
    assert info.value.mx_host == "mx.busy.example"
    assert info.value.waited >= 0.3
    assert "concurrency" in info.value.limited_by
    assert "mx.busy.example" in str(info.value)
    await throttle.release(held)
    await throttle.release(await throttle.acquire("mx.busy.example", wait=1))


async def _late_starts(throttle: Throttle, clock: FakeClock, n: int, late: float) -> list[float]:
    """n starts of one MX by a waiter that always wakes `late` seconds after the token."""
    starts: list[float] = []
    while len(starts) < n:
        try:
            slot = await throttle.acquire("mx.grid.example", wait=0)
        except ThrottleTimeout as exc:
            assert exc.retry_after is not None and exc.retry_after > 0
            clock.advance(exc.retry_after + late)
            continue
        starts.append(clock.now)
        await throttle.release(slot)
    return starts


async def test_late_wake_ups_do_not_slow_the_rate(make: MakeThrottle) -> None:
    """Waking 4 ms after each token (as a busy event loop does) keeps the 5-a-second grid:
    50 starts take 49 intervals (plus one lateness), not 49 * 0.204 s."""
    clock = FakeClock()
    throttle = make(make_policy(mrps=5.0), clock=clock)
    starts = await _late_starts(throttle, clock, 50, late=0.004)
    assert starts[-1] - starts[0] <= 49 * 0.2 + 0.004 + 0.002  # Redis works in whole ms
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert min(gaps) >= 0.2 - late_tolerance(0.2) - 0.002
    assert max_in_window(starts, 1.0) <= 6  # 1 + rps: what a server counting per second sees


async def test_a_long_pause_restarts_the_schedule(make: MakeThrottle) -> None:
    """Lateness beyond the tolerance is not caught up: no burst after an idle spell."""
    clock = FakeClock()
    throttle = make(make_policy(mrps=5.0), clock=clock)
    first = await _late_starts(throttle, clock, 3, late=0.0)
    clock.advance(5.0)
    later = await _late_starts(throttle, clock, 4, late=0.1)  # each wake-up 100 ms late
    gaps = [b - a for a, b in itertools.pairwise(later)]
    assert later[0] - first[-1] >= 5.0
    assert min(gaps) >= 0.3 - 0.002  # 0.2 s interval + 0.1 s late, schedule restarted each time


@given(
    rps=st.sampled_from([0.5, 1.0, 2.0, 5.0, 10.0, 50.0]),
    lateness=st.lists(st.floats(min_value=0.0, max_value=0.2), min_size=2, max_size=80),
)
def test_the_grid_never_exceeds_the_cap_in_any_window(rps: float, lateness: list[float]) -> None:
    """Whatever the wake-up lateness, any window of 1 s holds at most 1 + rps*(1 + tol)
    starts, and two starts are never closer than interval - tol."""
    interval = 1.0 / rps
    tat, now, starts = -float("inf"), 0.0, []
    for late in lateness:
        now = max(now, tat) + late
        starts.append(now)
        taken, tat, _ = take_tokens(tat, now, interval, 1, 1)  # a burst of one
        assert taken == 1
    tol = late_tolerance(interval)
    assert max_in_window(starts, 1.0) <= int(1 + rps * (1.0 + tol) + 1e-9)
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert all(g >= interval - tol - 1e-9 for g in gaps)


async def test_acquire_times_out_on_rate_with_policy_default_wait(make: MakeThrottle) -> None:
    throttle = make(make_policy(mrps=0.5, wait=0.2))
    await throttle.release(await throttle.acquire("mx.slow.example"))
    t0 = time.monotonic()
    with pytest.raises(ThrottleTimeout) as info:
        await throttle.acquire("mx.slow.example")  # policy.wait applies
    assert 0.2 <= time.monotonic() - t0 < 0.8
    assert "rate" in info.value.limited_by


async def test_waiting_does_not_spin(make: MakeThrottle, monkeypatch: pytest.MonkeyPatch) -> None:
    throttle = make(make_policy(mconc=1))
    held = await throttle.acquire("mx.spin.example")
    calls = 0
    name = "_try_take" if isinstance(throttle, LocalThrottle) else "_run"
    original = getattr(throttle, name)

    def counting(*args: Any, **kw: Any) -> Any:
        nonlocal calls
        calls += 1
        return original(*args, **kw)

    monkeypatch.setattr(throttle, name, counting)
    with pytest.raises(ThrottleTimeout):
        await throttle.acquire("mx.spin.example", wait=0.5)
    assert 1 <= calls <= 20, calls  # a hot loop would make thousands
    await throttle.release(held)


# -- policy -----------------------------------------------------------------------


def test_policy_from_settings_and_suffix_overrides() -> None:
    settings = Settings.from_env(
        {"MX_LIMITS": "*.google.com=5:2, mx.acme.example=1:0.5, *.example=3:3"}
    )
    policy = ThrottlePolicy.from_settings(settings)
    assert policy.global_limits == Limits(12, 6.0)
    assert policy.mx_default == Limits(2, 1.0)
    assert policy.wait == 30.0
    assert policy.limits_for("ASPMX.L.Google.COM.") == Limits(5, 2.0)
    assert policy.limits_for("google.com") == Limits(5, 2.0)
    assert policy.limits_for("mx.acme.example") == Limits(1, 0.5)  # listed before *.example
    assert policy.limits_for("mx.other.example") == Limits(3, 3.0)
    assert policy.limits_for("notgoogle.com") == Limits(2, 1.0)  # a suffix, not a substring
    assert policy.limits_for("mx.example.org") == Limits(2, 1.0)
    first_wins = make_policy(
        overrides=(MXLimit("*.example", 3, 3), MXLimit("mx.acme.example", 1, 1))
    )
    assert first_wins.limits_for("mx.acme.example") == Limits(3, 3.0)


def test_make_throttle_picks_the_backend() -> None:
    local = make_throttle(Settings())
    assert isinstance(local, LocalThrottle)
    assert local.policy.global_limits == Limits(12, 6.0)
    remote = make_throttle(Settings(redis_url="redis://127.0.0.1:1/0", smtp_probe_deadline=20))
    assert isinstance(remote, RedisThrottle)
    assert remote.lease_seconds == 50.0


def test_penalty_reason_reads_probe_results() -> None:
    assert penalty_reason({"code": 421, "reason": "service_unavailable"}) == "421"
    assert penalty_reason({"code": 450, "reason": "rate_limited"}) == "rate_limited"
    assert penalty_reason({"code": 550, "reason": "mailbox_not_found"}) is None


# -- penalties --------------------------------------------------------------------


async def test_penalize_halves_then_recovers_slowly(make: MakeThrottle) -> None:
    clock = FakeClock()
    policy = make_policy(mconc=8, mrps=4.0, cooldown=600.0, penalty_grace=5.0)
    throttle = make(policy, clock=clock)
    host = "mx.busy.example"
    assert await throttle.effective_limits(host) == Limits(8, 4.0)
    await throttle.penalize(host, reason="421")
    assert await throttle.effective_limits(host) == Limits(4, 2.0)
    clock.advance(1)
    await throttle.penalize(host, reason="421")  # same overload, reported by a probe in flight
    assert await throttle.effective_limits(host) == Limits(4, 2.0)
    clock.advance(10)
    await throttle.penalize(host, reason="rate_limited")
    assert await throttle.effective_limits(host) == Limits(2, 1.0)
    assert await throttle.effective_limits("mx.other.example") == Limits(8, 4.0)
    clock.advance(599)
    assert await throttle.effective_limits(host) == Limits(2, 1.0)  # cool-down not over
    clock.advance(1)
    assert await throttle.effective_limits(host) == Limits(4, 2.0)  # one step back
    clock.advance(300)
    await throttle.penalize(host, reason="421")  # a new penalty restarts the cool-down
    assert await throttle.effective_limits(host) == Limits(2, 1.0)
    clock.advance(600)
    assert await throttle.effective_limits(host) == Limits(4, 2.0)
    clock.advance(600)
    assert await throttle.effective_limits(host) == Limits(8, 4.0)
    clock.advance(6000)
    assert await throttle.effective_limits(host) == Limits(8, 4.0)


async def test_penalties_bottom_out(make: MakeThrottle) -> None:
    clock = FakeClock()
    throttle = make(make_policy(mconc=8, mrps=4.0, max_penalty_level=6), clock=clock)
    for _ in range(10):
        await throttle.penalize("mx.angry.example", reason="421")
        clock.advance(60)
    assert await throttle.effective_limits("mx.angry.example") == Limits(1, 4.0 / 64)


async def test_penalty_applies_to_acquire(make: MakeThrottle) -> None:
    throttle = make(make_policy(mconc=2))
    host = "mx.penalized.example"
    await throttle.penalize(host, reason="421")
    held = await throttle.acquire(host, wait=1)
    with pytest.raises(ThrottleTimeout):
        await throttle.acquire(host, wait=0.2)  # 2 halved to 1
    await throttle.release(await throttle.acquire("mx.fine.example", wait=1))
    await throttle.release(held)


async def test_renew_keeps_the_slot(make: MakeThrottle) -> None:
    throttle = make(make_policy(mconc=1), lease=0.6)
    held = await throttle.acquire("mx.renew.example")
    await asyncio.sleep(0.3)
    assert await throttle.renew(held)
    await asyncio.sleep(0.45)  # past the first lease, inside the renewed one
    with pytest.raises(ThrottleTimeout):
        await throttle.acquire("mx.renew.example", wait=0)
    await throttle.release(held)
    assert not await throttle.renew(held)


# -- Redis only: the fleet ---------------------------------------------------------


async def test_redis_penalty_is_shared_by_the_fleet(redis_url: str) -> None:
    policy = make_policy(mconc=4, mrps=2.0)
    a, b = RedisThrottle(redis_url, policy), RedisThrottle(redis_url, policy)
    try:
        await a.penalize("mx.shared.example", reason="421")
        assert await b.effective_limits("mx.shared.example") == Limits(2, 1.0)
    finally:
        await a.aclose()
        await b.aclose()


async def test_redis_expired_lease_frees_the_slot(redis_url: str) -> None:
    policy = make_policy(mconc=1)
    throttle = RedisThrottle(redis_url, policy, lease_seconds=0.4)
    try:
        lost = await throttle.acquire("mx.lease.example")
        with pytest.raises(ThrottleTimeout):
            await throttle.acquire("mx.lease.example", wait=0.1)
        await throttle.release(await throttle.acquire("mx.lease.example", wait=2))
        assert not await throttle.renew(lost)
    finally:
        await throttle.aclose()


WORKER = r"""
import asyncio, json, sys
from mailprobe.smtp import aprobe_rcpt
from mailprobe.throttle import Limits, RedisThrottle, ThrottlePolicy

async def main(cfg):
    policy = ThrottlePolicy(
        Limits(cfg["gconc"], cfg["grps"]), Limits(cfg["mconc"], cfg["mrps"]), wait=60,
        burst_seconds=0,
    )
    throttle = RedisThrottle(cfg["url"], policy, lease_seconds=30)

    async def probe(i):
        name, port = cfg["mxs"][i % len(cfg["mxs"])]
        async with throttle.slot(name):
            result = await aprobe_rcpt(
                f"user{i}@example.com", "127.0.0.1", port=port, starttls=False,
                helo_domain="probe.mailprobe.example", mail_from="bounce@mailprobe.example",
                connect_timeout=10, command_timeout=10,
            )
        return result["code"]

    codes = await asyncio.gather(*(probe(i) for i in range(cfg["probes"])))
    await throttle.aclose()
    print(json.dumps(codes), flush=True)

asyncio.run(main(json.loads(sys.argv[1])))
"""

HOLDER = r"""
import asyncio, sys
from mailprobe.throttle import Limits, RedisThrottle, ThrottlePolicy

async def main(url):
    policy = ThrottlePolicy(Limits(10, 1000.0), Limits(1, 1000.0))
    throttle = RedisThrottle(url, policy, lease_seconds=float(sys.argv[2]))
    await throttle.acquire("mx.kill.example", wait=10)
    print("HELD", flush=True)
    await asyncio.sleep(120)

asyncio.run(main(sys.argv[1]))
"""


class _Open:
    """Connections open at once across several servers (they share one event loop)."""

    def __init__(self) -> None:
        self.now = 0
        self.peak = 0


class CountingServer(SimSMTPServer):
    def __init__(self, behavior: MXBehavior, shared: _Open) -> None:
        super().__init__(behavior)
        self.shared = shared

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.shared.now += 1
        self.shared.peak = max(self.shared.peak, self.shared.now)
        try:
            await super()._serve(reader, writer)
        finally:
            self.shared.now -= 1


async def test_redis_caps_hold_across_processes(redis_url: str) -> None:
    gconc, grps, mconc, mrps = 3, 12.0, 2, 8.0
    shared = _Open()
    behavior = MXBehavior(default_rcpt=ACCEPT, reply_delay=0.04)
    servers = [await CountingServer(behavior, shared).start() for _ in range(2)]
    cfg = {
        "url": redis_url,
        "gconc": gconc,
        "grps": grps,
        "mconc": mconc,
        "mrps": mrps,
        "probes": 10,
        "mxs": [[f"mx{i}.fleet.example", s.port] for i, s in enumerate(servers)],
    }
    try:
        procs = [
            await asyncio.create_subprocess_exec(
                sys.executable,
                "-c",
                WORKER,
                json.dumps(cfg),
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            for _ in range(4)
        ]
        outputs = await asyncio.wait_for(asyncio.gather(*(p.communicate() for p in procs)), 60)
    finally:
        for server in servers:
            await server.stop()
    for proc, (out, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err.decode()
        assert json.loads(out) == [250] * 10
    records = [s.record for s in servers]
    assert [r.connections for r in records] == [20, 20]
    # What the servers saw: never more than the per-MX cap, nor the global cap, at once...
    assert all(r.max_open <= mconc for r in records), [r.max_open for r in records]
    assert shared.peak <= gconc, shared.peak
    assert shared.peak >= 2  # (and the work did run in parallel)
    # ...and never faster than the rate caps (one token of burst).
    for r in records:
        assert max_in_window(r.connect_times, 1.0) <= rate_allowance(mrps), r.connect_times
    every = [t for r in records for t in r.connect_times]
    assert max_in_window(every, 1.0) <= rate_allowance(grps)


async def test_redis_killed_holder_frees_its_slot_within_the_lease(redis_url: str) -> None:
    lease = 2.0
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", HOLDER, redis_url, str(lease), stdout=asyncio.subprocess.PIPE
    )
    throttle = RedisThrottle(
        redis_url, ThrottlePolicy(Limits(10, 1000.0), Limits(1, 1000.0)), lease_seconds=lease
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 30)
        held_at = time.monotonic()
        assert line.strip() == b"HELD"
        with pytest.raises(ThrottleTimeout):
            await throttle.acquire("mx.kill.example", wait=0.2)  # really held
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
        slot = await throttle.acquire("mx.kill.example", wait=lease + 3)
        freed_after = time.monotonic() - held_at
        assert lease - 0.5 <= freed_after <= lease + 1.0, freed_after
        await throttle.release(slot)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await throttle.aclose()


# -- Redis down ----------------------------------------------------------------------


async def test_redis_refused_is_unavailable_quickly() -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    throttle = RedisThrottle(url, make_policy(), socket_timeout=1.0)
    t0 = time.monotonic()
    try:
        with pytest.raises(ThrottleUnavailable) as info:
            await throttle.acquire("mx.any.example", wait=10)
    finally:
        await throttle.aclose()
    assert time.monotonic() - t0 < 3.0
    assert info.value.url == url
    assert url in str(info.value)


async def test_redis_silent_server_is_unavailable_not_a_hang() -> None:
    with socket.socket() as silent:  # accepts TCP (backlog) but never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        url = f"redis://user:secret@127.0.0.1:{port}/0"
        throttle = RedisThrottle(url, make_policy(), socket_timeout=0.5)
        t0 = time.monotonic()
        try:
            with pytest.raises(ThrottleUnavailable) as info:
                await throttle.penalize("mx.any.example", reason="421")
        finally:
            await throttle.aclose()
        assert time.monotonic() - t0 < 4.0
        assert "secret" not in str(info.value)
        assert f"127.0.0.1:{port}" in str(info.value)


def test_importing_the_throttle_package_does_not_load_redis_py() -> None:
    import subprocess
    import sys

    code = (
        "import sys, mailprobe.throttle; "
        "print(any(m.split('.')[0] == 'redis' for m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
