"""For the `mailprobe serve` tests: a small mail world on loopback (one DNS server, one SMTP
server that counts every RCPT per address) and the real server, `mailprobe serve`, run as
a subprocess on a free loopback port, stopped and started again like a deployed one."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

from mailprobe.testing.background import ThreadedServer
from mailprobe.testing.dnsd import DomainSpec, SimDNSServer
from mailprobe.testing.smtpd import (
    ACCEPT,
    USER_UNKNOWN,
    MXBehavior,
    Scripted,
    SessionState,
    SimSMTPServer,
)

ROOT = Path(__file__).resolve().parents[1]
MX = "mx.sim.example"
FULL = Scripted(552, "5.2.2 <{rcpt}>: Mailbox full, over quota")
DISABLED = Scripted(550, "5.2.1 The email account that you tried to reach is disabled.")
BLOCKED = Scripted(554, "5.7.1 Service unavailable; Client host blocked using zen.spamhaus.org")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class MailWorld(ThreadedServer):
    """Domains on one MX at 127.0.0.1: `ok.example` (a mailbox exists when its local part
    starts with "user", "full" or "off" says full / disabled), `all.example` (catch-all),
    `blocked.example` (refuses us), `gone.example` (NXDOMAIN), `nomail.example` (null MX).
    `rcpts` counts every RCPT by address, under a lock (the server runs in its own thread)."""

    thread_name = "serve-mail-world"

    def __init__(self, reply_delay: float = 0.0) -> None:
        self.rcpts: Counter[str] = Counter()
        self.lock = threading.Lock()
        self.reply_delay = reply_delay
        self.smtp = SimSMTPServer(MXBehavior(rcpt_handler=self._rcpt, reply_delay=reply_delay))
        self.dns = SimDNSServer(
            {
                "ok.example": DomainSpec(mx=[(10, MX)]),
                "all.example": DomainSpec(mx=[(10, MX)]),
                "blocked.example": DomainSpec(mx=[(10, MX)]),
                "nomail.example": DomainSpec(null_mx=True),
                "gone.example": DomainSpec(nxdomain=True),
                MX: DomainSpec(a=["127.0.0.1"]),
            }
        )

    def _rcpt(self, rcpt: str, state: SessionState) -> Scripted:
        address = rcpt.lower()
        with self.lock:
            self.rcpts[address] += 1
        local, _, domain = address.partition("@")
        if domain == "all.example":
            return ACCEPT
        if domain == "blocked.example":
            return BLOCKED
        if local.startswith("user"):
            return ACCEPT
        if local.startswith("full"):
            return FULL
        if local.startswith("off"):
            return DISABLED
        return USER_UNKNOWN

    def count(self, address: str) -> int:
        with self.lock:
            return self.rcpts[address.lower()]

    async def start(self) -> MailWorld:
        await self.dns.start()
        await self.smtp.start()
        return self

    async def stop(self) -> None:
        await self.smtp.stop()
        await self.dns.stop()

    def env(self) -> dict[str, str]:
        return {
            "DNS_NAMESERVERS": self.dns.nameserver,
            "DNS_TIMEOUT": "2",
            "SMTP_PORT": str(self.smtp.port),
            "SMTP_HELO_DOMAIN": "probe.mailprobe.example",
            "SMTP_MAIL_FROM": "bounce@probe.mailprobe.example",
            "SMTP_CONNECT_TIMEOUT": "3",
            "SMTP_COMMAND_TIMEOUT": "3",
            "SMTP_PROBE_DEADLINE": "10",
            "SPECIAL_USE_ALLOWED": "example",
            "GLOBAL_RPS": "500",
            "PER_MX_RPS_DEFAULT": "500",
        }


class ServeProcess:
    """`mailprobe serve` in a subprocess; `start()` waits for /healthz."""

    def __init__(self, env: dict[str, str], tmp: Path, *args: str, port: int | None = None):
        self.port = port or free_port()
        self.args = args
        self.log = tmp / f"serve-{self.port}.log"
        base = {k: v for k, v in os.environ.items() if not k.startswith(("SMTP_", "DNS_"))}
        self.env = {
            **base,
            "DATABASE_URL": f"sqlite:///{tmp / 'serve.db'}",
            "XDG_DATA_HOME": str(tmp / "xdg"),
            "PYTHONUNBUFFERED": "1",
            **env,
        }
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Another `mailprobe` command against the same database."""
        return subprocess.run(
            [sys.executable, "-m", "mailprobe.cli", *args],
            env=self.env, capture_output=True, text=True, timeout=60, cwd=ROOT,
        )  # fmt: skip

    def start(self, timeout: float = 30.0) -> ServeProcess:
        out = open(self.log, "ab")  # noqa: SIM115 (the child holds it)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mailprobe.cli", "serve", "--port", str(self.port),
             "--log-level", "warning", *self.args],
            env=self.env, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT,
        )  # fmt: skip
        out.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"serve exited {self.proc.returncode}: {self.output()}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"serve did not come up: {self.output()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        code = self.proc.returncode
        self.proc = None
        return code

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def __enter__(self) -> ServeProcess:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def wait_for(predicate: Any, timeout: float = 30.0, every: float = 0.1) -> Any:
    """Poll until `predicate()` is truthy; return its value (AssertionError on timeout)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"not true within {timeout} s")


def job_done(client: httpx.Client, job_id: str, timeout: float = 60.0) -> dict[str, Any]:
    def finished() -> dict[str, Any] | None:
        body: dict[str, Any] = client.get(f"/v1/jobs/{job_id}").json()
        return body if body["status"] in {"done", "cancelled", "failed"} else None

    result: dict[str, Any] = wait_for(finished, timeout)
    return result
