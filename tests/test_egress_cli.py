"""The egress faces: `probe --proxy`, `verify --no-smtp`, verify's one line when direct
port 25 does not connect, one-line errors for bad proxy settings, redaction, and
`mailprobe doctor`'s route checks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mailprobe.config import Settings
from mailprobe.doctor import run_checks
from mailprobe.testing.dnsd import DomainSpec, SimDNSServer
from mailprobe.testing.smtpd import ACCEPT, MXBehavior, Scripted, SimSMTPServer
from mailprobe.testing.socks5 import SimSocks5Server

BOX = "jane@acme.example"


def run(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mailprobe.cli", *args], capture_output=True, text=True,
        env={**os.environ, **env}, timeout=60, stdin=subprocess.DEVNULL,
    )  # fmt: skip


@pytest.fixture
def world(tmp_path: Path):
    """acme.example's MX on 127.0.0.1 (served), gmail.com's on 127.0.0.9 (nothing there)."""
    server = SimSMTPServer(MXBehavior(mailboxes={BOX: ACCEPT}))
    zone = {
        "acme.example": DomainSpec(mx=[(10, "mx.acme.example")]),
        "mx.acme.example": DomainSpec(a=["127.0.0.1"]),
        "gmail.com": DomainSpec(mx=[(5, "gmail-smtp-in.l.google.com")]),
        "gmail-smtp-in.l.google.com": DomainSpec(a=["127.0.0.9"]),
    }
    with server, SimDNSServer(zone) as dns, SimSocks5Server(bind="127.0.0.2") as proxy:
        env = {
            "DNS_NAMESERVERS": dns.nameserver, "SMTP_PORT": str(server.port),
            "SMTP_CONNECT_TIMEOUT": "2", "SMTP_COMMAND_TIMEOUT": "2",
            "SPECIAL_USE_ALLOWED": "example", "PORT25_CHECK": "1",
            "DATABASE_URL": f"sqlite:///{tmp_path / 'cli.db'}",
        }  # fmt: skip
        yield env, server, proxy


def peers(server: SimSMTPServer) -> set[str]:
    return {c.peer.split("'")[1] for c in server.record.connection_log}


def test_probe_with_proxy_flag(world) -> None:
    env, server, proxy = world
    done = run("probe", "--email", BOX, "--proxy", proxy.url, "--json", env=env)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["reason"] == "accepted"
    assert peers(server) == {"127.0.0.2"}


def test_verify_says_at_once_that_port_25_is_blocked(world, tmp_path: Path) -> None:
    env, server, _ = world
    listing = tmp_path / "in.txt"
    listing.write_text(f"{BOX}\n")
    done = run("verify", str(listing), env=env)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "looks blocked" in lines[0] and "--no-smtp" in lines[0]
    assert done.stdout == "" and server.record.connections == 0


def test_no_smtp_verify_runs_anyway(world, tmp_path: Path) -> None:
    env, server, _ = world
    listing = tmp_path / "in.txt"
    listing.write_text(f"{BOX}\nx@gone.example\n")
    done = run("verify", str(listing), "--no-smtp", env=env)
    assert done.returncode == 0, done.stderr
    got = {r["email"]: r for r in map(json.loads, done.stdout.splitlines())}
    assert (got[BOX]["verdict"], got[BOX]["reason"]) == ("unknown", "smtp_skipped")
    assert got["x@gone.example"]["reason"] == "no_such_domain"
    assert server.record.connections == 0


def test_a_proxy_skips_the_port_25_check(world, tmp_path: Path) -> None:
    env, server, proxy = world
    listing = tmp_path / "in.txt"
    listing.write_text(f"{BOX}\n")
    done = run("verify", str(listing), "--proxy", proxy.url, env=env)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["verdict"] == "deliverable"
    assert peers(server) == {"127.0.0.2"}


@pytest.mark.parametrize(
    ("args", "env", "says"),
    [
        (["probe", "--email", BOX, "--proxy", "http://h:8080"], {}, "--proxy:"),
        (["config"], {"SMTP_PROXY": "socks5://h"}, "SMTP_PROXY:"),
        (["config"], {"MX_ROUTES": "*.outlook.com=nowhere"}, "MX_ROUTES:"),
        (["config"], {"SMTP_ROUTES": "ms=ftp://x:1"}, "SMTP_ROUTES:"),
        (["config"], {"SMTP_SOURCE_ADDRESS": "192.0.2.1, nope"}, "SMTP_SOURCE_ADDRESS:"),
    ],
)
def test_bad_egress_settings_end_in_one_line(
    args: list[str], env: dict[str, str], says: str
) -> None:
    done = run(*args, env=env)
    assert done.returncode == 2
    assert says in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert "Traceback" not in done.stderr


def test_config_hides_proxy_passwords() -> None:
    done = run("config", env={"SMTP_PROXY": "socks5://u:topsecret@10.0.0.5:1080"})
    assert "SMTP_PROXY=socks5://u:***@10.0.0.5:1080" in done.stdout
    assert "topsecret" not in done.stdout


async def test_doctor_checks_each_route() -> None:
    ehlo = Scripted(250, "mx.acme.example Hello there [{client}]\nPIPELINING")
    server = await SimSMTPServer(MXBehavior(ehlo=ehlo)).start()
    proxy = await SimSocks5Server(bind="127.0.0.2").start()
    dead = await SimSocks5Server().start()
    await dead.stop()
    dns = await SimDNSServer({}).start()  # no network: our own (empty) DNS
    try:
        settings = Settings.from_env({
            "SMTP_ROUTES": f"good={proxy.url}, dead={dead.url}", "SMTP_CONNECT_TIMEOUT": "2",
            "DNS_NAMESERVERS": dns.nameserver,
        })  # fmt: skip
        checks = {c.name: c for c in await run_checks(
            settings, mx_host="127.0.0.1", port=server.port, check_private=True, blocklists=()
        )}  # fmt: skip
    finally:
        await server.stop()
        await proxy.stop()
        await dns.stop()
    assert checks["route:good"].status == "pass"
    assert checks["route:good:ip"].detail.startswith("127.0.0.2 ")  # what the MX saw
    assert checks["route:dead"].status == "fail" and "proxy" in checks["route:dead"].fix
