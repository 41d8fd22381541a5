"""The CLI as people use it: exit statuses, one-line errors for anything a user
can cause, `probe --json` for every outcome, `config` without passwords, the default
database in the user's data directory, `--version`, `mailprobe results`, and the warning
about probing real servers under the default identity."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest

from mailprobe import identity
from mailprobe.cli import main
from mailprobe.config import Settings
from mailprobe.runs import runs_dir
from mailprobe.testing.dnsd import DomainSpec, SimDNSServer
from mailprobe.testing.smtpd import ACCEPT, GREYLISTED, USER_UNKNOWN, MXBehavior, serve_in_thread


def run(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mailprobe.cli", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        cwd=cwd,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


@pytest.fixture
def paths(tmp_path: Path) -> dict[str, str]:
    listing = tmp_path / "in.txt"
    listing.write_text("jane@acme.invalid\n")  # special-use: answered without any lookup
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    return {"list": str(listing), "file": str(a_file), "dir": str(tmp_path)}


BAD_INPUTS = [
    # (name, argv, env); "{list}", "{file}" and "{dir}" are filled from `paths`
    ("probe port too big", ["probe", "-e", "a@acme.example", "--port", "99999"], {}),
    ("probe port zero", ["probe", "-e", "a@acme.example", "--port", "0"], {}),
    ("probe without --email", ["probe"], {}),
    ("verify port too big", ["verify", "{list}", "--port", "99999"], {}),
    ("verify rcpts zero", ["verify", "{list}", "--rcpts-per-session", "0"], {}),
    ("verify reuse-ttl nan", ["verify", "{list}", "--reuse-ttl", "nan"], {}),
    ("verify reuse-ttl negative", ["verify", "{list}", "--reuse-ttl", "-1"], {}),
    ("verify negative greylist delay", ["verify", "{list}", "--greylist-delays", "60,-5"], {}),
    ("verify bad format", ["verify", "{list}", "--format", "xml"], {}),
    ("verify missing input", ["verify", "{dir}/missing.csv"], {}),
    ("verify input is a directory", ["verify", "{dir}"], {}),
    ("verify output in a missing dir", ["verify", "{list}", "-o", "/missing-dir/out.csv"], {}),
    ("verify output is a directory", ["verify", "{list}", "-o", "{dir}"], {}),
    ("verify run state under a file", ["verify", "{list}"], {"MAILPROBE_RUNS_DIR": "{file}/runs"}),
    ("ingest a directory", ["ingest", "{dir}"], {}),
    ("database parent is a file", ["verify", "{list}"], {"DATABASE_URL": "sqlite:///{file}/x.db"}),
    ("db upgrade, parent a file", ["db", "upgrade"], {"DATABASE_URL": "sqlite:///{file}/x.db"}),
    ("database url not a url", ["verify", "{list}"], {"DATABASE_URL": "mailprobe.db"}),
    ("database unknown driver", ["db", "upgrade"], {"DATABASE_URL": "nosuchdb://x/y"}),
    ("SMTP_PORT out of range", ["verify", "{list}"], {"SMTP_PORT": "99999"}),
    ("bad count in env", ["verify", "{list}"], {"GLOBAL_MAX_CONCURRENCY": "0"}),
    ("bad timeout in env", ["probe", "-e", "a@acme.example"], {"SMTP_CONNECT_TIMEOUT": "soon"}),
    ("bad redis url", ["verify", "{list}"], {"REDIS_URL": "http://x"}),
    ("results since garbage", ["results", "--since", "yesterday"], {}),
    ("results bad verdict", ["results", "--verdict", "maybe"], {}),
    ("results output missing dir", ["results", "-o", "/missing-dir/r.csv"], {}),
    ("worker unknown queue", ["worker", "--queues", "emails"], {}),
    ("doctor port too big", ["doctor", "--port", "70000"], {}),
    ("unknown command", ["verifyy", "x"], {}),
]


@pytest.mark.parametrize(("name", "argv", "env"), BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_a_user_mistake_is_one_line_and_exit_2(
    name: str, argv: list[str], env: dict[str, str], paths: dict[str, str]
) -> None:
    done = run(
        *(a.format(**paths) for a in argv), env={k: v.format(**paths) for k, v in env.items()}
    )
    assert "Traceback" not in done.stderr, done.stderr
    assert done.returncode == 2, (done.returncode, done.stderr)
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert done.stdout == ""


def test_verify_help_documents_every_exit_status() -> None:
    done = run("verify", "--help")
    text = " ".join(done.stdout.split())
    for status in ("0 every line has a final answer", "3 ", "130 ", "75 ", "141 ", "2 bad"):
        assert status in text, status


def test_verify_exits_3_when_lines_are_left_pending(tmp_path: Path) -> None:
    zone = {"acme.example": DomainSpec(mx=[(10, "mx.acme.example")]),
            "mx.acme.example": DomainSpec(a=["127.0.0.1"])}  # fmt: skip
    listing = tmp_path / "in.txt"
    listing.write_text("jane@acme.example\n")
    with SimDNSServer(zone) as dns, serve_in_thread(MXBehavior(default_rcpt=GREYLISTED)) as smtp:
        env = {"DNS_NAMESERVERS": dns.nameserver, "SMTP_PORT": str(smtp.port)}
        pending = run("verify", str(listing), "--no-wait", env=env)
    assert pending.returncode == 3, pending.stderr
    assert "pending" in pending.stderr


def test_probe_json_for_bad_input_and_dns_failures() -> None:
    bad = run("probe", "-e", "not an address", "--json")
    assert bad.returncode == 2
    assert json.loads(bad.stdout)["error_kind"] == "bad_input"
    with SimDNSServer({}) as dns:  # every name: NXDOMAIN
        gone = run("probe", "-e", "jane@gone.example", "--json",
                   env={"DNS_NAMESERVERS": dns.nameserver})  # fmt: skip
    assert gone.returncode == 4, gone.stderr
    result = json.loads(gone.stdout)
    assert (result["stage"], result["reason"]) == ("dns", "no_such_domain")


def test_config_hides_passwords() -> None:
    done = run("config", env={"DATABASE_URL": "postgresql://app:s3cret@db.internal/mp",
                              "REDIS_URL": "redis://:hunter2@redis.internal:6379/0"})  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "s3cret" not in done.stdout and "hunter2" not in done.stdout
    assert "DATABASE_URL=postgresql://app:***@db.internal/mp" in done.stdout
    assert "REDIS_URL=redis://:***@redis.internal:6379/0" in done.stdout


def test_default_database_and_runs_live_in_the_user_data_dir(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "share"))
    home = (tmp_path / "share" / "mailprobe").as_posix()
    assert Settings.from_env({}).database_url == f"sqlite:///{home}/mailprobe.db"
    assert runs_dir() == Path(home) / "runs"
    # The seed's DATABASE_PATH and DATABASE_URL still win.
    assert Settings.from_env({"DATABASE_PATH": "/srv/x.db"}).database_url == "sqlite:////srv/x.db"
    assert Settings.from_env({"DATABASE_URL": "sqlite:///y.db"}).database_url == "sqlite:///y.db"
    monkeypatch.delenv("DATABASE_URL")
    shown = run("config", cwd=tmp_path)
    assert f"DATABASE_URL=sqlite:///{home}/mailprobe.db" in shown.stdout.splitlines()


def test_version_comes_from_the_installed_distribution() -> None:
    done = run("--version")
    assert (done.returncode, done.stdout.strip()) == (0, f"mailprobe {version('mailprobe')}")


def test_results_reads_stored_answers_back(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with serve_in_thread(MXBehavior(mailboxes={"jane@acme.example": ACCEPT},
                                    default_rcpt=USER_UNKNOWN)) as smtp:  # fmt: skip
        for email in ("jane@acme.example", "bob@acme.example", "ann@other.example"):
            main(["probe", "-e", email, "--mx-host", "127.0.0.1", "--port", str(smtp.port)])
    capsys.readouterr()

    def records(*args: str) -> list[dict[str, object]]:
        assert main(["results", *args]) == 0
        return [json.loads(line) for line in capsys.readouterr().out.splitlines()]

    every = records()
    assert sorted(str(r["email"]) for r in every) == [
        "ann@other.example", "bob@acme.example", "jane@acme.example"]  # fmt: skip
    assert {"verdict", "reason", "mx_host", "flags", "reused"} <= set(every[0])
    assert [r["email"] for r in records("--domain", "other.example")] == ["ann@other.example"]
    gone = records("--verdict", "undeliverable", "--domain", "acme.example")
    assert [(r["email"], r["reason"]) for r in gone] == [("bob@acme.example", "mailbox_not_found")]
    assert records("--since", "2999-01-01") == []
    listing = tmp_path / "list.txt"
    listing.write_text("nobody@acme.example\nbob@ACME.example\njane@acme.example\n")
    by_input = records("--input", str(listing))
    assert [(r["line"], r["email"]) for r in by_input] == [(2, "bob@ACME.example"),
                                                           (3, "jane@acme.example")]  # fmt: skip
    out = tmp_path / "r.csv"
    assert main(["results", "--format", "csv", "-o", str(out)]) == 0
    assert out.read_text().splitlines()[0].startswith("line,email,verdict,reason")


def test_the_default_identity_warns_once_for_a_public_mx(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    assert identity.is_public("8.8.8.8") and identity.is_public("2a00:1450:4001::1a")
    assert not any(map(identity.is_public, ["127.0.0.1", "10.1.2.3", "192.168.0.1", "::1"]))
    monkeypatch.setattr(identity, "is_public", lambda ip: True)  # loopback plays a real MX
    caplog.set_level(logging.WARNING, logger="mailprobe.identity")
    with serve_in_thread(MXBehavior(default_rcpt=ACCEPT)) as smtp:
        probe = ["probe", "--mx-host", "127.0.0.1", "--port", str(smtp.port)]
        main([*probe, "-e", "a@acme.example"])
        main([*probe, "-e", "b@acme.example"])  # same process: said once
        warnings = [r.getMessage() for r in caplog.records if r.name == "mailprobe.identity"]
        assert len(warnings) == 1
        assert all(w in warnings[0] for w in ("SMTP_HELO_DOMAIN", "SMTP_MAIL_FROM", "doctor"))
        caplog.clear()
        identity.reset()
        monkeypatch.setenv("SMTP_HELO_DOMAIN", "probe.mine.example")
        from mailprobe import config

        config.get_settings.cache_clear()
        main([*probe, "-e", "c@acme.example"])
    assert not [r for r in caplog.records if r.name == "mailprobe.identity"]
