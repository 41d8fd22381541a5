"""Probes resolve their MX through the cache and our own resolver."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from mailprobe import engine
from mailprobe.testing.dnsd import DomainSpec, SimDNSServer
from mailprobe.testing.smtpd import ACCEPT, MXBehavior, serve_in_thread

pytestmark = pytest.mark.r15  # the seed's label: pytest -k r15

ROOT = Path(__file__).resolve().parents[1]


def zone() -> dict[str, DomainSpec]:
    return {
        # mx1 points at a loopback address nobody listens on: the probe must fall back.
        "acme.example": DomainSpec(mx=[(10, "mx1.acme.example"), (20, "mx2.acme.example")]),
        "mx1.acme.example": DomainSpec(a=["127.0.0.2"]),
        "mx2.acme.example": DomainSpec(a=["127.0.0.1"]),
        "nomail.example": DomainSpec(null_mx=True),
    }


@pytest.fixture
def world(monkeypatch: pytest.MonkeyPatch):
    with SimDNSServer(zone()) as dns, serve_in_thread(MXBehavior(default_rcpt=ACCEPT)) as smtp:
        monkeypatch.setenv("DNS_NAMESERVERS", dns.nameserver)
        monkeypatch.setenv("DNS_TIMEOUT", "2")
        monkeypatch.setenv("SMTP_PORT", str(smtp.port))
        yield dns, smtp


def run(script: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ROOT / "scripts" / script), *args],
        capture_output=True,
        text=True,
        env=dict(os.environ),
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


async def test_probe_falls_back_to_next_mx(world) -> None:
    answer = await engine.probe_email(engine.Context.create(), "jane@acme.example")
    result = answer.as_seed_dict()
    assert (result["category"], result["mx_host"]) == ("accept", "mx2.acme.example")
    assert result["dns_status"] == "ok"
    assert any("mx2.acme.example (127.0.0.1)" in line for line in result["transcript"])


def test_cli_probe_resolves_mx(world) -> None:
    dns, _ = world
    done = run("probe_smtp.py", "--email", "jane@acme.example")
    assert done.returncode == 0, done.stderr
    assert "MX     : mx2.acme.example" in done.stdout
    assert len(dns.queries_for("acme.example", "MX")) == 1
    again = run("probe_smtp.py", "--email", "bob@acme.example")  # from the cache now
    assert again.returncode == 0 and len(dns.queries_for("acme.example", "MX")) == 1
    forced = run("probe_smtp.py", "--email", "bob@acme.example", "--force-resolve")
    assert forced.returncode == 0 and len(dns.queries_for("acme.example", "MX")) == 2


def test_cli_probe_null_mx_sends_nothing(world) -> None:
    _, smtp = world
    done = run("probe_smtp.py", "--email", "jane@nomail.example")
    assert done.returncode == 4
    assert "null_mx" in done.stderr
    assert smtp.record.connections == 0


def test_seed_helpers_and_resolve_script(world, tmp_path: Path) -> None:
    info = engine.get_or_resolve_mx("acme.example")
    assert info["lowest_mx"] == "mx1.acme.example" and info["status"] == "ok"
    assert engine.get_or_resolve_mx("acme.example")["from_cache"] is True
    listing = tmp_path / "in.txt"
    listing.write_text("a@acme.example\nb@nomail.example\n")
    assert engine.ingest(listing).added == 2
    done = run("resolve_mx.py", "--from-db")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].split()[:2] == ["acme.example", "ok"]
    assert lines[1].split()[:2] == ["nomail.example", "null_mx"]
