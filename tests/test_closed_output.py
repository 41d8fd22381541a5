"""`mailprobe verify list | head -3`: the run ends promptly and quietly when its reader
stops reading; what was answered is stored, and `--resume` goes on from there."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from sqlalchemy import func, select

from mailprobe.store import Store
from mailprobe.store.models import VerificationResult
from mailprobe.testing.dnsd import DomainSpec, SimDNSServer
from mailprobe.testing.smtpd import ACCEPT, MXBehavior, serve_in_thread


def _env(nameserver: str, smtp_port: int, db: Path) -> dict[str, str]:
    """`mailprobe verify`'s environment: the test's DNS server and MX, its own database."""
    return {
        **os.environ,
        "DNS_NAMESERVERS": nameserver,
        "SMTP_PORT": str(smtp_port),
        "DATABASE_URL": f"sqlite:///{db}",
        "MAILPROBE_RUNS_DIR": str(db.parent / "runs"),
    }


def test_verify_piped_into_head_ends_quietly(tmp_path: Path) -> None:
    zone = {f"d{i}.example": DomainSpec(null_mx=True) for i in range(5)}
    zone |= {"acme.example": DomainSpec(mx=[(10, "mx.acme.example")]),
             "mx.acme.example": DomainSpec(a=["127.0.0.1"])}  # fmt: skip
    listing = tmp_path / "list.txt"
    listing.write_text("".join(f"u{i}@d{i % 5}.example\n" for i in range(3000))
                       + "jane@acme.example\n")  # fmt: skip
    db = tmp_path / "closed.db"
    with SimDNSServer(zone) as dns, serve_in_thread(MXBehavior(default_rcpt=ACCEPT)) as smtp:
        env = _env(dns.nameserver, smtp.port, db)
        verify = subprocess.Popen(
            [sys.executable, "-m", "mailprobe.cli", "verify", str(listing)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, env=env,
        )  # fmt: skip
        assert verify.stdout is not None and verify.stderr is not None
        first = [verify.stdout.readline() for _ in range(3)]
        verify.stdout.close()  # `head -3` exits
        try:
            err = verify.stderr.read().decode()
            status = verify.wait(timeout=60)
        finally:
            verify.kill()
    assert all(line.startswith(b"{") for line in first)
    assert "Traceback" not in err and "Exception ignored" not in err, err
    assert status == 141, err
    with Store(f"sqlite:///{db}").session() as session:
        stored = session.scalar(select(func.count()).select_from(VerificationResult))
    assert stored is not None and 3 <= stored < 3001


def test_records_reach_the_output_while_the_run_waits(tmp_path: Path) -> None:
    """Records are flushed on a cadence, not one by one; one answered before a long
    greylisting wait is in the file during the wait (`tail -f`), not only at the end."""
    from mailprobe.testing.smtpd import Scripted

    zone = {"acme.example": DomainSpec(mx=[(10, "mx.acme.example")]),
            "mx.acme.example": DomainSpec(a=["127.0.0.1"])}  # fmt: skip
    listing = tmp_path / "list.txt"
    answered = [f"{name}@acme.example" for name in ("jane", "bob", "ann", "joe")]
    listing.write_text("grey@acme.example\n" + "".join(f"{a}\n" for a in answered))
    out = tmp_path / "out.jsonl"
    behavior = MXBehavior(
        mailboxes={
            "grey@acme.example": Scripted(450, "4.2.0 <grey@acme.example>: Recipient address "
                                          "rejected: Greylisted for 60 seconds"),
            **dict.fromkeys(answered, ACCEPT),
        },
        default_rcpt=Scripted(550, "5.1.1 User unknown"),
    )  # fmt: skip
    with SimDNSServer(zone) as dns, serve_in_thread(behavior) as smtp:
        env = _env(dns.nameserver, smtp.port, tmp_path / "wait.db")
        verify = subprocess.Popen(
            [sys.executable, "-m", "mailprobe.cli", "verify", str(listing), "-o", str(out),
             "--unordered", "--quiet"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, env=env,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 30
            written = ""
            while time.monotonic() < deadline and verify.poll() is None:
                written = out.read_text() if out.exists() else ""
                if all(a in written for a in answered):
                    break
                time.sleep(0.05)
            still_running = verify.poll() is None
        finally:
            verify.kill()
            verify.wait(timeout=30)
    assert still_running, "the run ended before the greylisting retry: nothing was tested"
    assert all(a in written for a in answered), written
    assert "grey@acme.example" not in written
