"""`mailprobe verify --enqueue` hands per-domain batches to RQ workers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from mailprobe import config
from mailprobe.testing.dnsd import DomainSpec, SimDNSServer
from mailprobe.testing.smtpd import ACCEPT, MXBehavior, serve_in_thread

pytestmark = pytest.mark.r18  # the seed's label: pytest -k r18

pytest_plugins = ["tests.redis_server"]

ROOT = Path(__file__).resolve().parents[1]
WORKER = (
    "import sys\n"
    "from mailprobe.queue.worker import run_worker\n"
    "sys.exit(run_worker(['verify'], burst=False, logging_level='WARNING'))\n"
)


def test_verify_enqueue_through_workers(
    redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    zone = {
        "acme.example": DomainSpec(mx=[(10, "mx.acme.example")]),
        "mx.acme.example": DomainSpec(a=["127.0.0.1"]),
        "nomail.example": DomainSpec(null_mx=True),
    }
    mailboxes = {f"u{i}@acme.example": ACCEPT for i in range(0, 60, 2)}
    listing = tmp_path / "in.txt"
    lines = [f"u{i}@acme.example" for i in range(60)] + ["x@nomail.example", "bad line"]
    listing.write_text("\n".join(lines) + "\n")
    with SimDNSServer(zone) as dns, serve_in_thread(MXBehavior(mailboxes=mailboxes)) as smtp:
        env = {**os.environ, "DNS_NAMESERVERS": dns.nameserver, "SMTP_PORT": str(smtp.port),
               "REDIS_URL": redis_url, "MAILPROBE_RUNS_DIR": str(tmp_path / "runs")}  # fmt: skip
        monkeypatch.setenv("REDIS_URL", redis_url)
        config.get_settings.cache_clear()
        worker = subprocess.Popen([sys.executable, "-c", WORKER], env=env, cwd=ROOT,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                  start_new_session=True)  # fmt: skip
        try:
            done = subprocess.run(
                [sys.executable, "-m", "mailprobe.cli", "verify", str(listing), "--enqueue"],
                env=env, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
            )  # fmt: skip
        finally:
            os.killpg(worker.pid, signal.SIGTERM)
            worker.wait(20)
        assert done.returncode == 0, done.stderr
        records = [json.loads(line) for line in done.stdout.splitlines()]
        assert sorted(r["line"] for r in records) == list(range(1, len(lines) + 1))
        got = {r["email"]: r for r in records}
        assert got["u0@acme.example"]["verdict"] == "deliverable"
        assert got["u1@acme.example"]["verdict"] == "undeliverable"
        assert got["x@nomail.example"]["reason"] == "null_mx"
        assert got["bad line"]["reason"] == "invalid_syntax"
        assert "3 jobs" in done.stderr  # acme: a batch of 50 and one of 10; nomail: one
        assert smtp.record.connections <= 6  # sessions carried many RCPTs each
