"""Bulk jobs that outlive their server, and webhooks a loopback receiver checks: a restart
mid-job resumes with nothing lost and nothing asked twice; deliveries are signed, retried
with backoff a bounded number of times, and every attempt shows on the job."""

from __future__ import annotations

import json
import signal
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.serve_server import MailWorld, ServeProcess, job_done, wait_for

pytest.importorskip("fastapi")

from mailprobe.serve.webhooks import verify_signature

SECRET = "s3cret-for-tests"


def test_a_restart_mid_job_resumes_without_asking_anything_twice(tmp_path: Path) -> None:
    # One session at a time, one command at a time, replies 0.05 s apart: a 90-line job
    # takes several sessions, so the stop lands in the middle of it.
    with MailWorld(reply_delay=0.05) as world:
        env = {**world.env(), "SMTP_PIPELINING": "0", "PER_MX_MAX_CONCURRENCY_DEFAULT": "1"}
        emails = [f"user.r{i}@ok.example" if i % 3 else f"gone.r{i}@ok.example"
                  for i in range(90)]  # fmt: skip
        first = ServeProcess(env, tmp_path).start()
        c = httpx.Client(base_url=first.url, timeout=30)
        job_id = c.post("/v1/jobs", json={"emails": emails}).json()["id"]
        wait_for(lambda: c.get(f"/v1/jobs/{job_id}").json()["done"] >= 20, 60)
        # uvicorn shuts down gracefully, then re-raises the signal it caught: -SIGTERM
        assert first.stop(signal.SIGTERM) in (0, -signal.SIGTERM), first.output()
        stopped_at = sum(world.rcpts.values())
        assert stopped_at < 90 + 3  # the job was not finished
        second = ServeProcess(env, tmp_path, port=first.port).start()
        try:
            job = job_done(c, job_id, timeout=120)
            assert job["status"] == "done" and job["done"] == 90
            assert job["counts"]["deliverable"] == 60 and job["counts"]["undeliverable"] == 30
            for email in emails:
                assert world.count(email) == 1, email  # nothing asked twice
            records = [
                json.loads(x)
                for x in c.get(f"/v1/jobs/{job_id}/results?format=jsonl").text.splitlines()
            ]
            assert [r["line"] for r in records] == list(range(1, 91))  # nothing lost
        finally:
            second.stop()


class Receiver:
    """A webhook receiver on loopback: records every delivery; answers a path's completion
    events from `statuses` (then 200), everything else 200."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, dict[str, str], bytes]] = []
        self.statuses: dict[str, list[int]] = {}
        self.failing: set[str] = set()  # paths that answer every delivery 503
        self.lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                with owner.lock:
                    owner.requests.append((self.path, dict(self.headers), body))
                    script = owner.statuses.get(self.path, [])
                    finished = self.headers.get("X-Mailprobe-Event") == "job.finished"
                    status = script.pop(0) if script and finished else 200
                    status = 503 if self.path in owner.failing else status
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def got(self, path: str, event: str | None = None) -> list[tuple[dict[str, str], bytes]]:
        with self.lock:
            return [(h, b) for p, h, b in self.requests if p == path
                    and (event is None or h.get("X-Mailprobe-Event") == event)]  # fmt: skip

    def close(self) -> None:
        self.server.shutdown()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[MailWorld, httpx.Client]]:
    with MailWorld() as world:
        env = {
            **world.env(),
            "WEBHOOK_ALLOW_PRIVATE": "127.0.0.0/8",
            "WEBHOOK_BACKOFF": "0.2",
            "WEBHOOK_MAX_ATTEMPTS": "4",
        }
        with ServeProcess(env, tmp_path) as srv, httpx.Client(base_url=srv.url, timeout=30) as c:
            yield world, c


def test_webhooks_are_signed_retried_and_shown_on_the_job(
    served: tuple[MailWorld, httpx.Client], receiver: Receiver
) -> None:
    _, c = served
    receiver.statuses["/hook"] = [500, 503]  # the first two completion attempts fail
    emails = ["user.w1@ok.example", "nobody.w1@ok.example", "user.w1@ok.example"]
    r = c.post(
        "/v1/jobs",
        json={"emails": emails,
              "webhook": {"url": receiver.url("/hook"), "secret": SECRET, "each": True}},
    )  # fmt: skip
    assert r.status_code == 201, r.text
    job_id = r.json()["id"]
    job_done(c, job_id)

    def delivered() -> dict[str, Any] | None:
        job: dict[str, Any] = c.get(f"/v1/jobs/{job_id}").json()
        return job if job["webhook"]["state"] == "delivered" else None

    job = wait_for(delivered, 30)
    finished = [d for d in job["webhook"]["deliveries"] if d["event"] == "job.finished"]
    assert [(d["attempt"], d["status_code"], d["ok"]) for d in finished] == [
        (1, 500, False), (2, 503, False), (3, 200, True)
    ]  # fmt: skip
    completions = receiver.got("/hook", "job.finished")
    assert [h["X-Mailprobe-Attempt"] for h, _ in completions] == ["1", "2", "3"]
    events = wait_for(lambda: len(receiver.got("/hook", "address.verified")) >= 3 or None, 10)
    assert events
    for headers, body in receiver.got("/hook"):
        assert verify_signature(SECRET, body, headers["X-Mailprobe-Signature"])
        assert not verify_signature("another secret", body, headers["X-Mailprobe-Signature"])
    payload = json.loads(completions[-1][1])
    assert payload["job"]["id"] == job_id and payload["job"]["status"] == "done"
    assert payload["job"]["counts"]["deliverable"] == 2
    records = [json.loads(b)["record"] for _, b in receiver.got("/hook", "address.verified")]
    assert sorted(r["line"] for r in records) == [1, 2, 3]


def test_a_webhook_that_never_answers_well_is_given_up_after_its_attempts(
    served: tuple[MailWorld, httpx.Client], receiver: Receiver
) -> None:
    _, c = served
    receiver.statuses["/down"] = [500] * 10
    job_id = c.post(
        "/v1/jobs",
        json={"emails": ["user.w2@ok.example"], "webhook": {"url": receiver.url("/down")}},
    ).json()["id"]
    job_done(c, job_id)
    job = wait_for(
        lambda: (j := c.get(f"/v1/jobs/{job_id}").json())["webhook"]["state"] == "failed" and j,
        30,
    )
    assert [d["attempt"] for d in job["webhook"]["deliveries"]] == [1, 2, 3, 4]
    assert len(receiver.got("/down")) == 4  # WEBHOOK_MAX_ATTEMPTS, then no more
    assert "X-Mailprobe-Signature" not in receiver.got("/down")[0][0]  # no secret, no signature


def test_the_ssrf_guard_refuses_private_targets_unless_allowed(
    served: tuple[MailWorld, httpx.Client],
) -> None:
    _, c = served
    for url in ("http://10.0.0.5/h", "http://169.254.169.254/latest", "http://[::1]:8080/"):
        r = c.post("/v1/jobs", json={"emails": ["a@ok.example"], "webhook": {"url": url}})
        assert r.status_code == 400 and "WEBHOOK_ALLOW_PRIVATE" in r.json()["error"], url


def test_a_completion_webhook_a_stopped_server_still_owed_is_sent_after_its_restart(
    tmp_path: Path, receiver: Receiver
) -> None:
    receiver.statuses["/later"] = [503]  # the first attempt fails; its retry is 60 s away
    with MailWorld() as world:
        env = {**world.env(), "WEBHOOK_ALLOW_PRIVATE": "127.0.0.0/8", "WEBHOOK_BACKOFF": "60"}
        first = ServeProcess(env, tmp_path).start()
        c = httpx.Client(base_url=first.url, timeout=30)
        webhook = {"url": receiver.url("/later"), "secret": SECRET}
        job_id = c.post("/v1/jobs", json={"emails": ["user.k1@ok.example"], "webhook": webhook}
                        ).json()["id"]  # fmt: skip
        job_done(c, job_id)
        wait_for(lambda: c.get(f"/v1/jobs/{job_id}").json()["webhook"]["deliveries"], 30)
        assert first.stop(signal.SIGTERM) in (0, -signal.SIGTERM), first.output()
        assert len(receiver.got("/later")) == 1
        second = ServeProcess(env, tmp_path, port=first.port).start()
        try:
            job = wait_for(
                lambda: (j := c.get(f"/v1/jobs/{job_id}").json())["webhook"]["state"]
                == "delivered" and j, 30,
            )  # fmt: skip
        finally:
            second.stop()
    deliveries = [(d["attempt"], d["status_code"], d["ok"]) for d in job["webhook"]["deliveries"]]
    assert deliveries == [(1, 503, False), (2, 200, True)]  # resumed where it was, not anew
    sent = receiver.got("/later", "job.finished")
    assert [h["X-Mailprobe-Attempt"] for h, _ in sent] == ["1", "2"]
    headers, body = sent[-1]
    assert verify_signature(SECRET, body, headers["X-Mailprobe-Signature"])
    assert json.loads(body)["job"]["id"] == job_id


def test_a_webhook_goes_to_the_address_that_was_checked() -> None:
    """The request is sent to the IP the SSRF check vetted, not to a fresh lookup of the
    name (which could have changed to a private address since): the name stays in Host and
    in TLS's server name."""
    from mailprobe.serve.webhooks import pinned

    assert pinned("https://hooks.example.com/cb?x=1", "203.0.113.7") == (
        "https://203.0.113.7/cb?x=1", "hooks.example.com", "hooks.example.com"
    )  # fmt: skip
    assert pinned("http://hooks.example.com:8080/cb", "2001:db8::5") == (
        "http://[2001:db8::5]:8080/cb", "hooks.example.com:8080", "hooks.example.com"
    )  # fmt: skip


def test_per_address_events_a_stopped_server_did_not_deliver_are_sent_after_its_restart(
    tmp_path: Path, receiver: Receiver
) -> None:
    receiver.failing.add("/each")  # every delivery fails; the retries are 60 s away
    emails = ["user.e1@ok.example", "nobody.e2@ok.example"]
    with MailWorld() as world:
        env = {**world.env(), "WEBHOOK_ALLOW_PRIVATE": "127.0.0.0/8", "WEBHOOK_BACKOFF": "60"}
        first = ServeProcess(env, tmp_path).start()
        c = httpx.Client(base_url=first.url, timeout=30)
        webhook = {"url": receiver.url("/each"), "secret": SECRET, "each": True}
        job_id = c.post("/v1/jobs", json={"emails": emails, "webhook": webhook}).json()["id"]
        job_done(c, job_id)
        wait_for(lambda: len(receiver.got("/each", "address.verified")) >= 2, 30)
        assert first.stop(signal.SIGTERM) in (0, -signal.SIGTERM), first.output()
        receiver.failing.discard("/each")
        before = len(receiver.got("/each", "address.verified"))
        second = ServeProcess(env, tmp_path, port=first.port).start()
        try:
            wait_for(lambda: len(receiver.got("/each", "address.verified")) >= before + 2, 30)
            wait_for(lambda: receiver.got("/each", "job.finished")[1:], 30)
        finally:
            second.stop()
    resent = receiver.got("/each", "address.verified")[before:]
    lines = sorted(json.loads(body)["record"]["line"] for _, body in resent)
    assert lines == [1, 2]  # each line's event once more, after the restart
    for headers, body in resent:
        assert verify_signature(SECRET, body, headers["X-Mailprobe-Signature"])
