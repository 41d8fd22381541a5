"""Configuration (seed names and defaults, errors that name the variable) and the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mailprobe import config
from mailprobe.config import ConfigError, Settings
from mailprobe.testing.smtpd import ACCEPT, MXBehavior, Scripted, serve_in_thread

pytestmark = pytest.mark.r16  # the seed's label: pytest -k r16

ROOT = Path(__file__).resolve().parents[1]


def test_seed_defaults() -> None:
    s = Settings.from_env({})
    assert s.smtp_helo_domain == "verifier.crestwellpartners.com"
    assert s.smtp_mail_from == "bounce@verifier.crestwellpartners.com"
    assert (s.smtp_connect_timeout, s.smtp_command_timeout, s.smtp_port) == (10.0, 10.0, 25)
    assert config.SMTP_HELO_DOMAIN == "verifier.crestwellpartners.com"
    assert config.SMTP_COMMAND_TIMEOUT == 10.0


def test_mail_from_follows_helo_domain() -> None:
    s = Settings.from_env({"SMTP_HELO_DOMAIN": "probe.acme.example", "SMTP_PORT": "2525"})
    assert s.smtp_mail_from == "bounce@probe.acme.example"
    assert s.smtp_port == 2525


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("SMTP_CONNECT_TIMEOUT", "-1"),
        ("SMTP_CONNECT_TIMEOUT", "ten"),
        ("SMTP_COMMAND_TIMEOUT", "0"),
        ("SMTP_COMMAND_TIMEOUT", "nan"),
        ("SMTP_PROBE_DEADLINE", "1"),
        ("SMTP_PORT", "0"),
        ("SMTP_PORT", "25.5"),
        ("SMTP_HELO_DOMAIN", "not a host"),
        ("SMTP_HELO_DOMAIN", "localhost"),
        ("SMTP_HELO_DOMAIN", "evil.example\r\nDATA"),
        ("SMTP_MAIL_FROM", "not-an-address"),
        ("SMTP_MAIL_FROM", "a@b.example>\r\nRCPT TO:<x@y.example>"),
        ("SMTP_SOURCE_ADDRESS", "300.1.1.1"),
        ("SMTP_STARTTLS", "maybe"),
        ("SMTP_TLS_CAFILE", "/nonexistent/ca.pem"),
    ],
)
def test_bad_setting_names_its_variable(variable: str, value: str) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env({variable: value})
    assert info.value.variable == variable
    assert str(info.value).startswith(variable)


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("SMTP_")}
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "probe_smtp.py"), *args],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


def test_cli_prints_the_seed_block() -> None:
    with serve_in_thread(MXBehavior(default_rcpt=ACCEPT)) as server:
        done = run_cli(
            "--email",
            "jane@acme.example",
            "--mx-host",
            "127.0.0.1",
            env={"SMTP_PORT": str(server.port)},
        )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert [line.split(":", 1)[0].strip() for line in lines] == [
        "Target",
        "MX",
        "HELO",
        "Result",
        "Reason",
        "Message",
        "Elapsed",
    ]
    assert lines[0] == "Target : jane@acme.example"
    assert lines[2] == "HELO   : verifier.crestwellpartners.com"
    assert lines[3] == "Result : accept (code=250, error=None)"
    assert lines[-1].startswith("Elapsed: ") and lines[-1].endswith(" ms")


@pytest.mark.parametrize(
    ("reply", "status", "category"),
    [
        (Scripted(550, "5.1.1 no such user"), 1, "hard_fail"),
        (Scripted(451, "4.7.1 Greylisted, try again later"), 3, "temp_fail"),
    ],
)
def test_cli_json_and_exit_status(reply: Scripted, status: int, category: str) -> None:
    with serve_in_thread(MXBehavior(default_rcpt=reply)) as server:
        done = run_cli(
            "--email",
            "jane@acme.example",
            "--mx-host",
            "127.0.0.1",
            "--port",
            str(server.port),
            "--json",
        )
    assert done.returncode == status, done.stderr
    result = json.loads(done.stdout)
    assert (result["category"], result["code"]) == (category, reply.code)


def test_cli_unreachable_is_unknown() -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        done = run_cli(
            "--email",
            "jane@acme.example",
            "--mx-host",
            "127.0.0.1",
            "--port",
            str(s.getsockname()[1]),
        )
    assert done.returncode == 4
    assert "connection_failed" in done.stdout


def test_cli_refuses_injection_and_bad_config() -> None:
    with serve_in_thread(MXBehavior(default_rcpt=ACCEPT)) as server:
        done = run_cli(
            "--email",
            "a@acme.example>\r\nDATA",
            "--mx-host",
            "127.0.0.1",
            "--port",
            str(server.port),
        )
        assert done.returncode == 2
        assert "control character" in done.stderr
        bad = run_cli(
            "--email",
            "a@acme.example",
            "--mx-host",
            "127.0.0.1",
            env={"SMTP_COMMAND_TIMEOUT": "-5"},
        )
        assert bad.returncode == 2
        assert "SMTP_COMMAND_TIMEOUT" in bad.stderr
        assert server.record.connections == 0


def test_cli_help_documents_exit_status() -> None:
    done = run_cli("--help")
    assert done.returncode == 0
    assert "Exit status" in done.stdout and "--mx-host" in done.stdout
