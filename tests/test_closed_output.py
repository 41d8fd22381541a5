"""`mailprobe verify list | head -3`: the run ends promptly and quietly when its reader
stops reading; what was answered is stored, and `--resume` goes on from there."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from sqlalchemy import func, select

from mailprobe.store import Store
from mailprobe.store.models import VerificationResult
from mailprobe.testing.dnsd import DomainSpec, SimDNSServer
from mailprobe.testing.smtpd import ACCEPT, MXBehavior, serve_in_thread


def test_verify_piped_into_head_ends_quietly(tmp_path: Path) -> None:
    zone = {f"d{i}.example": DomainSpec(null_mx=True) for i in range(5)}
    zone |= {"acme.example": DomainSpec(mx=[(10, "mx.acme.example")]),
             "mx.acme.example": DomainSpec(a=["127.0.0.1"])}  # fmt: skip
    listing = tmp_path / "list.txt"
    listing.write_text("".join(f"u{i}@d{i % 5}.example\n" for i in range(3000))
                       + "jane@acme.example\n")  # fmt: skip
    db = tmp_path / "closed.db"
    with SimDNSServer(zone) as dns, serve_in_thread(MXBehavior(default_rcpt=ACCEPT)) as smtp:
        env = {
            **os.environ,
            "DNS_NAMESERVERS": dns.nameserver,
            "SMTP_PORT": str(smtp.port),
            "DATABASE_URL": f"sqlite:///{db}",
            "MAILPROBE_RUNS_DIR": str(tmp_path / "runs"),
        }
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
