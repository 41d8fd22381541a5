"""Probe jobs on RQ queues, throttled across a fleet of worker processes.

The fleet tests start real `run_worker` processes against a private redis-server,
a simulated DNS zone and loopback SMTP servers, and judge the caps from what the
*servers* saw (open connections, connection times), not from what workers claim.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from redis import Redis
from rq import Queue
from rq.job import Job
from rq.registry import FailedJobRegistry
from sqlalchemy import select

from mailprobe import config, engine, queue
from mailprobe.engine.probe import renewing
from mailprobe.queue.worker import run_worker
from mailprobe.store.models import GeneratedEmail
from mailprobe.testing.dnsd import DomainSpec, SimDNSServer
from mailprobe.testing.smtpd import ACCEPT, MXBehavior, SimSMTPServer, serve_in_thread
from mailprobe.throttle import (
    KEY_PREFIX,
    Limits,
    RedisThrottle,
    Slot,
    Throttle,
    ThrottlePolicy,
    ThrottleTimeout,
)
from tests.redis_server import free_port

pytestmark = pytest.mark.r06  # the seed's label: pytest -k r06

pytest_plugins = ["tests.redis_server"]

ROOT = Path(__file__).resolve().parents[1]
SEED_KEYS = {"ok", "category", "code", "message", "mx_host", "helo_domain", "elapsed_ms", "error"}
WORKER = (
    "import sys\n"
    "from mailprobe.queue.worker import run_worker\n"
    "sys.exit(run_worker(sys.argv[1].split(','), burst=sys.argv[2] == '1',"
    " logging_level='WARNING', heartbeat=1, heartbeat_grace=2, maintenance_interval=1))\n"
)


def zone() -> dict[str, DomainSpec]:
    return {
        "alpha.example": DomainSpec(mx=[(10, "mx.alpha.example")]),
        "mx.alpha.example": DomainSpec(a=["127.0.0.1"]),
        "beta.example": DomainSpec(mx=[(10, "mx.beta.example")]),
        "mx.beta.example": DomainSpec(a=["127.0.0.2"]),
        "nomail.example": DomainSpec(null_mx=True),
        "broken.example": DomainSpec(servfail=True),
    }


def use_env(monkeypatch: pytest.MonkeyPatch, **values: object) -> None:
    for name, value in values.items():
        monkeypatch.setenv(name, str(value))
    config.get_settings.cache_clear()


def statuses() -> dict[str, str]:
    with engine.Context.create().store.session() as session:
        return dict(session.execute(select(GeneratedEmail.email, GeneratedEmail.status)).all())


@pytest.fixture
def world(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[SimDNSServer, SimSMTPServer]]:
    with SimDNSServer(zone()) as dns, serve_in_thread(MXBehavior(default_rcpt=ACCEPT)) as smtp:
        use_env(monkeypatch, DNS_NAMESERVERS=dns.nameserver, DNS_TIMEOUT=2, SMTP_PORT=smtp.port)
        yield dns, smtp


# -- the task ------------------------------------------------------------------------


def test_task_shape_and_store(world: tuple[SimDNSServer, SimSMTPServer]) -> None:
    _, smtp = world
    email_id = queue.upsert_generated_email("Jane@Alpha.example", enqueue_probe=False)
    result = queue.task_probe_email(email_id, "Jane@Alpha.example", "")  # domain derived
    assert result.keys() >= SEED_KEYS
    assert (result["ok"], result["category"], result["code"]) == (True, "accept", 250)
    assert result["mx_host"] == "mx.alpha.example" and result["error"] is None
    assert result["helo_domain"] == config.get_settings().smtp_helo_domain
    assert isinstance(result["elapsed_ms"], int)
    assert smtp.record.connections == 1 and "DATA" not in smtp.record.verbs()
    assert statuses() == {"Jane@alpha.example": "probed"}


@pytest.mark.parametrize(
    ("email", "domain"),
    [("no-at-sign", None), ("no-at-sign", ""), ("jane@alpha.example", "other.example")],
)
def test_task_bad_input(email: str, domain: str | None) -> None:
    result = queue.task_probe_email(None, email, domain)
    assert result.keys() >= SEED_KEYS
    assert result["ok"] is False and result["error"].startswith("bad_input")
    assert queue.job_probe_email(None, email, domain) == result  # returned, never retried


def test_task_null_mx_dials_nothing(world: tuple[SimDNSServer, SimSMTPServer]) -> None:
    _, smtp = world
    result = queue.task_probe_email(None, "jane@nomail.example", "nomail.example")
    assert (result["category"], result["dns_status"], result["mx_host"]) == (
        "unknown",
        "null_mx",
        None,
    )
    assert smtp.record.connections == 0


def test_task_resolve_mx(world: tuple[SimDNSServer, SimSMTPServer]) -> None:
    dns, _ = world
    first = queue.task_resolve_mx("alpha.example")
    assert (first["status"], first["lowest_mx"]) == ("ok", "mx.alpha.example")
    assert first["mx_hosts"] == [{"preference": 10, "host": "mx.alpha.example"}]
    assert queue.task_resolve_mx("alpha.example")["from_cache"] is True
    assert queue.task_resolve_mx("alpha.example", force=True)["from_cache"] is False
    assert len(dns.queries_for("alpha.example", "MX")) == 2
    assert queue.task_resolve_mx("not a domain")["status"] == "bad_input"


def test_job_policy_transient_and_no_slot(
    world: tuple[SimDNSServer, SimSMTPServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    from rq import Retry

    with pytest.raises(queue.TransientProbeError, match=r"broken\.example"):
        queue.job_probe_email(None, "jane@broken.example", "broken.example")

    class NoSlot(Throttle):
        async def acquire(
            self, mx_host: str, *, wait: float | None = None, rcpts: int = 1, priority: bool = False
        ) -> Slot:
            raise ThrottleTimeout(mx_host, wait or 0.0, "per-MX concurrency")

        async def more(
            self, slot: Slot, rcpts: int, *, wait: float | None = None, priority: bool = False
        ) -> int:
            raise AssertionError("a single probe sends one RCPT")

        async def release(self, slot: Slot) -> None:
            raise AssertionError("nothing to release")

        async def renew(self, slot: Slot, lease_seconds: float | None = None) -> bool:
            return False

        async def penalize(self, mx_host: str, *, reason: str) -> None:
            raise AssertionError("nothing to penalize")

        async def effective_limits(self, mx_host: str) -> Limits:
            return Limits(1, 1.0)

    monkeypatch.setattr(queue, "make_job_throttle", lambda settings: NoSlot())
    with pytest.raises(ThrottleTimeout):
        queue.task_probe_email(None, "jane@alpha.example", "alpha.example")
    retry = queue.job_probe_email(None, "jane@alpha.example", "alpha.example")
    assert isinstance(retry, Retry) and retry.max == queue.RESCHEDULE_MAX
    assert all(i >= 1 for i in retry.intervals)  # delayed: never a hot loop
    assert world[1].record.connections == 0


async def test_live_probe_keeps_its_short_lease(redis_url: str) -> None:
    """The slot lease is short (a dead worker frees it soon) but renewed while the job lives."""
    policy = ThrottlePolicy(Limits(10, 1000.0), Limits(1, 1000.0))
    mine, other = (RedisThrottle(redis_url, policy, lease_seconds=0.6) for _ in range(2))
    try:
        async with (
            mine.slot("mx.renew.example") as slot,
            renewing(mine, slot, 0.6),
        ):
            for _ in range(3):  # 2.5 leases in all
                await asyncio.sleep(0.5)
                with pytest.raises(ThrottleTimeout):
                    await other.acquire("mx.renew.example", wait=0.05)
        await other.release(await other.acquire("mx.renew.example", wait=0.2))
    finally:
        await mine.aclose()
        await other.aclose()


# -- enqueueing ----------------------------------------------------------------------


def test_enqueue_twice_is_one_job(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    use_env(monkeypatch, REDIS_URL=redis_url, SMTP_PROBE_DEADLINE=60)
    first = queue.enqueue_probe_email(1, "jane@alpha.example", "alpha.example")
    again = queue.enqueue_probe_email(1, "Jane@alpha.example", "alpha.example")
    assert first == again == queue.probe_job_id("jane@alpha.example")
    connection = Redis.from_url(redis_url)
    verify = Queue(queue.VERIFY_QUEUE, connection=connection)
    assert verify.job_ids == [first]
    job = Job.fetch(first, connection=connection)
    assert job.func_name == "mailprobe.queue.job_probe_email"
    assert job.args == (1, "jane@alpha.example", "alpha.example")
    assert job.retries_left == queue.RETRY_MAX
    assert job.timeout is not None and job.timeout > 60
    # Through the engine's seam: an upsert queues a new address once.
    email_id = queue.upsert_generated_email("bob@alpha.example")
    queue.upsert_generated_email("bob@alpha.example")
    assert verify.count == 2
    assert statuses()["bob@alpha.example"] == "queued" and email_id > 0
    assert queue.enqueue_resolve_mx("alpha.example") == queue.enqueue_resolve_mx("Alpha.example")
    assert Queue(queue.MX_QUEUE, connection=connection).count == 1


def test_enqueue_without_redis_fails_clearly(monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"redis://user:secret@127.0.0.1:{free_port()}/0"  # nothing listens there
    use_env(monkeypatch, REDIS_URL=url)
    t0 = time.monotonic()
    with pytest.raises(queue.QueueUnavailable) as info:
        queue.enqueue_probe_email(1, "jane@alpha.example", "alpha.example")
    assert time.monotonic() - t0 < 5
    message = str(info.value)
    assert "secret" not in message and url.replace("secret", "***") in message
    assert "unavailable" in message
    # Nothing silently dropped: the address is left unqueued, for a later upsert.
    with pytest.raises(queue.QueueUnavailable):
        queue.upsert_generated_email("jane@alpha.example")
    assert statuses() == {"jane@alpha.example": "new"}


def test_run_worker_refuses_to_start_without_redis(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_worker(["verify"], burst=True) == 2
    assert "REDIS_URL is not set" in capsys.readouterr().err
    url = f"redis://127.0.0.1:{free_port()}/0"
    use_env(monkeypatch, REDIS_URL=url)
    t0 = time.monotonic()
    assert run_worker(["mx", "verify"], burst=True) == 2
    assert time.monotonic() - t0 < 5
    assert f"Redis at {url} is unreachable" in capsys.readouterr().err
    assert run_worker(["bogus"], burst=True) == 2
    assert "unknown queue" in capsys.readouterr().err


def test_embedded_mode_probes_in_process(world: tuple[SimDNSServer, SimSMTPServer]) -> None:
    _, smtp = world
    email_id = queue.upsert_generated_email("jane@alpha.example")
    assert queue.enqueue_probe_email(email_id, "jane@alpha.example", "") == f"local-{email_id}"
    assert statuses() == {"jane@alpha.example": "queued"}
    results = queue.run_queued()
    assert [r["category"] for r in results] == ["accept"]
    assert statuses() == {"jane@alpha.example": "probed"}
    assert smtp.record.connections == 1


# -- worker processes ----------------------------------------------------------------


async def start_worker(queues: str, *, burst: bool) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        WORKER,
        queues,
        "1" if burst else "0",
        cwd=ROOT,
        env=dict(os.environ),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,  # its session holds the worker, its job and its scheduler
    )


def kill_session(sid: int) -> int:
    """SIGKILL every process of a session (a worker with its forked job and scheduler)."""
    killed = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[3]) == sid:  # fields after "(comm)": state ppid pgrp session ...
            try:
                os.kill(int(entry.name), signal.SIGKILL)
                killed += 1
            except ProcessLookupError:
                pass
    return killed


def test_exhausted_retries_land_in_failed_registry(
    world: tuple[SimDNSServer, SimSMTPServer], redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_env(monkeypatch, REDIS_URL=redis_url)
    monkeypatch.setattr(queue, "RETRY_MAX", 1)
    monkeypatch.setattr(queue, "RETRY_INTERVALS", (0,))  # no scheduler wait in a burst run
    queue.upsert_generated_email("jane@broken.example")  # enqueues the probe
    job_id = queue.probe_job_id("jane@broken.example")

    async def run() -> tuple[int | None, bytes]:
        proc = await start_worker("verify", burst=True)
        _, err = await asyncio.wait_for(proc.communicate(), 60)
        return proc.returncode, err

    returncode, err = asyncio.run(run())
    assert returncode == 0, err.decode()
    connection = Redis.from_url(redis_url)
    failed = FailedJobRegistry(queue.VERIFY_QUEUE, connection=connection)
    assert failed.get_job_ids() == [job_id]
    job = Job.fetch(job_id, connection=connection)
    assert job.retries_left == 0  # ran twice: the first try and its one retry
    assert "TransientProbeError" in (job.exc_info or "")
    assert "broken.example" in (job.exc_info or "")
    dns, _ = world
    assert len(dns.queries_for("broken.example", "MX")) >= 2


class FleetServer(SimSMTPServer):
    """Counts connections open at once across every server sharing `shared`."""

    def __init__(self, behavior: MXBehavior, host: str, port: int, shared: dict[str, int]):
        super().__init__(behavior, host=host, port=port)
        self.shared = shared

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.shared["now"] += 1
        self.shared["peak"] = max(self.shared["peak"], self.shared["now"])
        try:
            await super()._serve(reader, writer)
        finally:
            self.shared["now"] -= 1


async def two_mx_servers(shared: dict[str, int]) -> list[FleetServer]:
    """One server on 127.0.0.1 and one on 127.0.0.2, on the same port (SMTP_PORT is global)."""
    behavior = MXBehavior(default_rcpt=ACCEPT, reply_delay=0.02)
    for _ in range(10):
        first = FleetServer(behavior, "127.0.0.1", 0, shared)
        await first.start()
        second = FleetServer(behavior, "127.0.0.2", first.port, shared)
        try:
            await second.start()
        except OSError:
            await first.stop()
            continue
        return [first, second]
    raise RuntimeError("no port free on both 127.0.0.1 and 127.0.0.2")


def max_in_window(times: list[float], window: float = 1.0) -> int:
    ordered = sorted(times)
    return max(
        (sum(1 for u in ordered[i:] if u - t < window) for i, t in enumerate(ordered)), default=0
    )


@pytest.fixture
async def fleet_world(
    monkeypatch: pytest.MonkeyPatch, redis_url: str
) -> AsyncIterator[tuple[list[FleetServer], dict[str, int]]]:
    shared = {"now": 0, "peak": 0}
    servers = await two_mx_servers(shared)
    async with SimDNSServer(zone()) as dns:
        use_env(
            monkeypatch,
            REDIS_URL=redis_url,
            DNS_NAMESERVERS=dns.nameserver,
            DNS_TIMEOUT=3,
            SMTP_PORT=servers[0].port,
        )
        try:
            yield servers, shared
        finally:
            for server in servers:
                await server.stop()


async def test_four_workers_hold_the_caps(
    fleet_world: tuple[list[FleetServer], dict[str, int]], monkeypatch: pytest.MonkeyPatch
) -> None:
    servers, shared = fleet_world
    mconc, mrps, gconc, grps = 2, 10.0, 3, 15.0
    use_env(
        monkeypatch,
        PER_MX_MAX_CONCURRENCY_DEFAULT=mconc,
        PER_MX_RPS_DEFAULT=mrps,
        GLOBAL_MAX_CONCURRENCY=gconc,
        GLOBAL_RPS=grps,
        THROTTLE_WAIT=60,
    )
    addresses = [f"user{i}@{'alpha' if i % 2 else 'beta'}.example" for i in range(200)]
    report = queue.ingest(io.StringIO("\n".join(addresses)), enqueue_probe=True)
    assert report.enqueued == 200
    t0 = time.monotonic()
    procs = [await start_worker("mx,verify", burst=True) for _ in range(4)]
    outputs = await asyncio.wait_for(asyncio.gather(*(p.communicate() for p in procs)), 90)
    elapsed = time.monotonic() - t0
    for proc, (_, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err.decode()[-2000:]

    # Every job finished, with a result, exactly once.
    connection = Redis.from_url(config.get_settings().redis_url or "")
    for email in addresses:
        job = Job.fetch(queue.probe_job_id(email), connection=connection)
        assert job.get_status() == "finished", (email, job.get_status(), job.exc_info)
        result = job.return_value()
        assert isinstance(result, dict), result
        assert result.keys() >= SEED_KEYS and result["category"] == "accept", result
    assert FailedJobRegistry(queue.VERIFY_QUEUE, connection=connection).count == 0
    assert set(statuses().values()) == {"probed"}
    records = [s.record for s in servers]
    assert [r.connections for r in records] == [100, 100]
    # What the servers saw: never more than the caps at once...
    assert all(r.max_open <= mconc for r in records), [r.max_open for r in records]
    assert shared["peak"] <= gconc, shared["peak"]
    assert shared["peak"] >= 2  # (and the workers did run in parallel)
    # ...nor faster than the rates: one probe is one RCPT, and a second sees at most the
    # rate plus its burst (THROTTLE_BURST_SECONDS, 0.2 s worth by default: 2 and 3 here).
    policy = ThrottlePolicy.from_settings(config.get_settings())
    for r in records:
        allowed = policy.burst(mrps) + mrps
        assert max_in_window(r.connect_times) <= allowed, sorted(r.connect_times)
    every = [t for r in records for t in r.connect_times]
    assert max_in_window(every) <= policy.burst(grps) + grps
    assert elapsed >= (200 - policy.burst(grps)) / grps - 1  # the global rate bound the run


class FirstCallHangs(SimSMTPServer):
    """The first connection never gets its greeting (a probe stays in flight); later ones do."""

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.record.connections == 0:
            self.record.connections += 1
            self.record.connect_times.append(time.monotonic())
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(30)
            writer.transport.abort()
            return
        await super()._serve(reader, writer)


async def test_killed_worker_job_reruns_and_slot_frees(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not Path("/proc/self/stat").exists():
        pytest.skip("needs /proc to kill a worker's whole session")
    server = await FirstCallHangs(MXBehavior(default_rcpt=ACCEPT)).start()
    procs: list[asyncio.subprocess.Process] = []
    # The abandoned job's retry is enqueued at once: a dead worker's scheduler lock would
    # hold back a delayed retry for a minute (RQ's lock TTL), which this test cannot wait.
    monkeypatch.setattr(queue, "RETRY_INTERVALS", (0,))
    async with SimDNSServer(zone()) as dns:
        use_env(
            monkeypatch,
            REDIS_URL=redis_url,
            DNS_NAMESERVERS=dns.nameserver,
            SMTP_PORT=server.port,
            SMTP_CONNECT_TIMEOUT=3,
            SMTP_COMMAND_TIMEOUT=3,
            SMTP_PROBE_DEADLINE=4,  # lease = 4 s
            PER_MX_MAX_CONCURRENCY_DEFAULT=1,  # the re-run needs the dead worker's slot
        )
        lease = queue.slot_lease(config.get_settings())
        try:
            email_id = queue.upsert_generated_email("jane@alpha.example")
            job_id = queue.probe_job_id("jane@alpha.example")
            procs.append(await start_worker("verify", burst=False))
            for _ in range(300):  # until the probe is in flight
                if server.record.connections:
                    break
                await asyncio.sleep(0.05)
            assert server.record.connections == 1, "the first worker never probed"
            await asyncio.sleep(0.3)
            connection = Redis.from_url(redis_url)
            assert Job.fetch(job_id, connection=connection).get_status() == "started"
            assert kill_session(procs[0].pid) >= 2  # the worker and its forked job
            killed_at = time.monotonic()
            # The dead job's slot is a lease that ends within `lease` of the kill.
            seconds, micros = connection.time()
            now_ms = int(seconds) * 1000 + int(micros) // 1000
            leases = connection.zrange(
                f"{KEY_PREFIX}conc:mx:mx.alpha.example", 0, -1, withscores=True
            )
            assert len(leases) == 1
            assert 0 < float(leases[0][1]) - now_ms <= lease * 1000

            procs.append(await start_worker("verify", burst=False))
            for _ in range(400):
                if Job.fetch(job_id, connection=connection).get_status() == "finished":
                    break
                await asyncio.sleep(0.05)
            job = Job.fetch(job_id, connection=connection)
            assert job.get_status() == "finished", job.get_status()
            result = job.return_value()
            assert isinstance(result, dict) and result["category"] == "accept", result
            assert server.record.connections == 2
            rerun_after = server.record.connect_times[1] - killed_at
            assert rerun_after <= lease + 6, rerun_after
            assert FailedJobRegistry(queue.VERIFY_QUEUE, connection=connection).count == 0
            assert statuses() == {"jane@alpha.example": "probed"} and email_id
        finally:
            for proc in procs:
                if proc.returncode is None:
                    proc.send_signal(signal.SIGTERM)
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(proc.communicate(), 10)
                kill_session(proc.pid)
                if proc.returncode is None:
                    await proc.wait()
            await server.stop()
