"""`mailprobe worker --metrics-port` counts what its forked jobs did, and `mailprobe serve`
with REDIS_URL hands a job's lines to the workers: real processes, a private redis-server,
the simulated mail world on loopback."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from mailprobe.testing.smtpd import Scripted, SessionState
from tests.serve_server import ROOT, MailWorld, ServeProcess, free_port, job_done, wait_for

pytest.importorskip("prometheus_client")
pytest.importorskip("fastapi")

pytest_plugins = ["tests.redis_server"]

# A 421 on RCPT: the MX tells us to slow down, so the throttle is penalised.
SLOW_DOWN = Scripted(421, "4.7.0 Too many connections, slow down")


class PushbackWorld(MailWorld):
    """MailWorld, and an address whose local part starts with "slow" gets a 421."""

    def _rcpt(self, rcpt: str, state: SessionState) -> Scripted:
        reply = super()._rcpt(rcpt, state)
        return SLOW_DOWN if rcpt.lower().startswith("slow") else reply


class Worker:
    """`mailprobe worker` in a subprocess (its own session, so a stop reaches its horses)."""

    def __init__(self, env: dict[str, str], log: Path, *args: str) -> None:
        self.log = log
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "mailprobe.cli", "worker", "--queues", "verify", *args],
                env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> int:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        return self.proc.returncode


def sample(text: str, name: str, **labels: str) -> float:
    """A sample's value in Prometheus' text format (0 when absent)."""
    shown = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    wanted = f"{name}{{{shown}}}" if labels else name
    for line in text.splitlines():
        if line.split(" ")[0] == wanted:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


@pytest.fixture
def world() -> Iterator[PushbackWorld]:
    with PushbackWorld() as w:
        yield w


def test_a_worker_serves_what_its_forked_jobs_counted(
    world: PushbackWorld, redis_url: str, tmp_path: Path
) -> None:
    from redis import Redis
    from rq import Queue
    from rq.job import Job

    from mailprobe.queue import job_probe_email
    from mailprobe.queue.fleet import job_verify_batch

    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("SMTP_", "DNS_"))},
        **world.env(),
        "REDIS_URL": redis_url,
        "DATABASE_URL": f"sqlite:///{tmp_path / 'worker.db'}",
        "TMPDIR": str(tmp_path),  # where the worker keeps its metrics' files
    }
    worker = Worker(env, tmp_path / "worker.log", "--metrics-port", str(port))
    url = f"http://127.0.0.1:{port}/metrics"

    def scraped() -> str | None:
        assert worker.proc.poll() is None, worker.output()
        try:
            r = httpx.get(url, timeout=2)
        except httpx.HTTPError:
            return None
        return r.text if r.status_code == 200 else None

    try:
        wait_for(scraped, 30)
        queue = Queue("verify", connection=Redis.from_url(redis_url))
        jobs = [  # one worker runs them in turn; the 421 (which slows the MX down) last
            queue.enqueue(job_verify_batch, [(1, "user.w3@ok.example"),
                                             (2, "nobody.w4@ok.example")]),
            queue.enqueue(job_probe_email, None, "user.w1@ok.example", "ok.example"),
            queue.enqueue(job_probe_email, None, "slow.w2@ok.example", "ok.example"),
        ]  # fmt: skip

        def finished() -> bool:
            statuses = [Job.fetch(j.id, connection=queue.connection).get_status() for j in jobs]
            assert "failed" not in statuses, worker.output()
            return all(s == "finished" for s in statuses)

        wait_for(finished, 90, every=0.2)
        text = wait_for(scraped, 10)
        # every job ran in its own forked horse, and its counts reached the worker's /metrics
        assert sample(text, "mailprobe_probes_total", verdict="deliverable", reason="accepted") == 2
        assert sample(text, "mailprobe_probes_total", verdict="undeliverable",
                      reason="mailbox_not_found") == 1  # fmt: skip
        assert sum(float(x.rsplit(" ", 1)[1]) for x in text.splitlines()
                   if x.startswith("mailprobe_probes_total{")) == 4  # fmt: skip
        assert sample(text, "mailprobe_probes_total", verdict="unknown", reason="rate_limited") == 1
        assert sample(text, "mailprobe_throttle_penalties_total", reason="421") == 1
        assert sample(text, "mailprobe_session_seconds_count", mx_class="default") >= 3
        assert sample(text, "mailprobe_throttle_wait_seconds_count") >= 2  # the probe jobs wait
        assert sample(text, "mailprobe_sessions_open", mx_class="default") == 0
        assert sample(text, "mailprobe_rcpt_seconds_count") >= 3
        # each ended horse was folded into the archives: only the worker's own files are left
        [folder] = tmp_path.glob("mailprobe-worker-metrics-*")
        names = sorted(p.name for p in folder.glob("*.db"))
        owners = {re.sub(r"\.db$", "", n).rsplit("_", 1)[1] for n in names}
        assert owners <= {"archive", str(worker.proc.pid)}, names
        assert "counter_archive.db" in names
        again = wait_for(scraped, 10)  # a scrape reads the same counts again
        assert sample(again, "mailprobe_probes_total", verdict="deliverable",
                      reason="accepted") == 2  # fmt: skip
    finally:
        code = worker.stop()
    assert code == 0, worker.output()
    assert not list(tmp_path.glob("mailprobe-worker-metrics-*"))  # removed when it stopped


def test_a_worker_says_in_one_line_when_its_metrics_port_is_taken(
    redis_url: str, tmp_path: Path
) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {**os.environ, "REDIS_URL": redis_url,
               "DATABASE_URL": f"sqlite:///{tmp_path / 'w.db'}"}  # fmt: skip
        done = subprocess.run(
            [sys.executable, "-m", "mailprobe.cli", "worker", "--metrics-port", str(port)],
            env=env, cwd=ROOT, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.startswith(f"mailprobe worker: --metrics-port {port}: ")
    assert "Traceback" not in done.stderr and done.stderr.count("\n") == 1


def test_serve_hands_a_job_to_the_workers_and_stores_every_line_once(
    world: PushbackWorld, redis_url: str, tmp_path: Path
) -> None:
    emails: list[object] = [
        {"email": "user.q1@ok.example", "crm_id": "1"},
        {"email": "nobody.q2@ok.example", "crm_id": "2"},
        {"email": "user.q1@OK.example", "crm_id": "3"},  # a duplicate: asked once
        {"email": "anyone@all.example", "crm_id": "4"},
        {"email": "x@gone.example", "crm_id": "5"},
        {"email": "not an address", "crm_id": "6"},
        {"email": "full.q7@ok.example", "crm_id": "7"},
        {"email": "user.q8@ok.example", "crm_id": "8"},
    ]
    env = {**world.env(), "REDIS_URL": redis_url}
    with ServeProcess(env, tmp_path) as srv:
        worker = Worker({**srv.env, "REDIS_URL": redis_url}, tmp_path / "worker.log")
        try:
            with httpx.Client(base_url=srv.url, timeout=30) as c:
                assert c.get("/readyz").json()["redis"] == "ok"
                r = c.post("/v1/jobs", json={"emails": emails, "name": "fleet"})
                assert r.status_code == 201, r.text
                job = job_done(c, r.json()["id"], timeout=120)
                assert job["status"] == "done", (job, srv.output(), worker.output())
                assert job["total"] == job["done"] == 8
                assert job["counts"] == {"deliverable": 3, "undeliverable": 3, "risky": 2,
                                         "unknown": 0}  # fmt: skip
                lines = c.get(f"/v1/jobs/{job['id']}/results?format=jsonl").text.splitlines()
                records = [json.loads(x) for x in lines]
                assert [x["line"] for x in records] == list(range(1, 9))  # each line once
                got = {x["line"]: x for x in records}
                assert got[1]["verdict"] == "deliverable" and got[3]["duplicate_of"] == 1
                assert (got[2]["reason"], got[5]["reason"]) == ("mailbox_not_found",
                                                                "no_such_domain")  # fmt: skip
                assert got[4]["reason"] == "catch_all" and got[6]["reason"] == "invalid_syntax"
                assert got[7]["reason"] == "mailbox_full"
                text = c.get(f"/v1/jobs/{job['id']}/results?format=csv").text
                rows = list(csv.DictReader(io.StringIO(text)))
                assert [(x["email"], x["crm_id"]) for x in rows][:2] == [
                    ("user.q1@ok.example", "1"), ("nobody.q2@ok.example", "2")]  # fmt: skip
                assert [x["crm_id"] for x in rows] == [str(i) for i in range(1, 9)]
        finally:
            assert worker.stop() == 0, worker.output()
    for address in ("user.q1@ok.example", "nobody.q2@ok.example", "user.q8@ok.example"):
        assert world.count(address) == 1, address
    # the worker asked, not the server: a job per domain (ok, all, gone) went through RQ
    from redis import Redis
    from rq.registry import FinishedJobRegistry

    finished = FinishedJobRegistry("verify", connection=Redis.from_url(redis_url))
    assert finished.count == 3


def test_a_server_waiting_on_absent_workers_stops_and_its_job_resumes_later(
    world: PushbackWorld, redis_url: str, tmp_path: Path
) -> None:
    emails = [f"user.z{i}@ok.example" for i in range(5)] + ["nobody.z5@ok.example"]
    env = {**world.env(), "REDIS_URL": redis_url}
    first = ServeProcess(env, tmp_path).start()
    with httpx.Client(base_url=first.url, timeout=30) as c:
        job_id = c.post("/v1/jobs", json={"emails": emails}).json()["id"]
        wait_for(lambda: c.get(f"/v1/jobs/{job_id}").json()["status"] == "running", 30)
        time.sleep(1.0)  # its batch is on the queue, no worker to take it
        started = time.monotonic()
        # Ctrl-C: uvicorn shuts down, then re-raises SIGINT (KeyboardInterrupt), and the
        # interpreter waits for the threads of the default executor on its way out
        assert first.stop(signal.SIGINT, timeout=60) in (0, 1, 130, -signal.SIGINT), first.output()
        assert time.monotonic() - started < 20, "the server hung waiting for the workers"
        assert sum(world.rcpts.values()) == 0
    from redis import Redis
    from rq import Queue

    assert Queue("verify", connection=Redis.from_url(redis_url)).count == 0  # no orphan batch
    second = ServeProcess(env, tmp_path, port=first.port).start()
    worker = Worker({**second.env, "REDIS_URL": redis_url}, tmp_path / "worker.log")
    try:
        with httpx.Client(base_url=second.url, timeout=30) as c:
            job = job_done(c, job_id, timeout=120)
            assert job["status"] == "done" and job["done"] == 6, (job, worker.output())
            lines = c.get(f"/v1/jobs/{job_id}/results?format=jsonl").text.splitlines()
            assert [json.loads(x)["line"] for x in lines] == list(range(1, 7))
    finally:
        assert worker.stop() == 0, worker.output()
        second.stop()
    for email in emails:
        assert world.count(email) == 1, email  # the stopped server's batch was not run too


def test_a_job_cancelled_while_out_with_the_workers_takes_its_batches_back(
    world: PushbackWorld, redis_url: str, tmp_path: Path
) -> None:
    from redis import Redis
    from rq import Queue

    queue = Queue("verify", connection=Redis.from_url(redis_url))
    srv = ServeProcess({**world.env(), "REDIS_URL": redis_url}, tmp_path)
    with srv, httpx.Client(base_url=srv.url, timeout=30) as c:
        emails = ["user.c1@ok.example", "anyone@all.example"]
        job_id = c.post("/v1/jobs", json={"emails": emails}).json()["id"]
        wait_for(lambda: queue.count == 2, 30)  # a batch per domain, no worker to run them
        r = c.delete(f"/v1/jobs/{job_id}")
        assert r.status_code == 200 and r.json()["status"] == "cancelled", r.text
        wait_for(lambda: queue.count == 0, 5)
        assert c.get(f"/v1/jobs/{job_id}").json()["done"] == 0
