"""`verify`'s progress: a rate and ETA over a moving window, a status line that says what
the run waits for, and records that progress never overwrites on a shared terminal."""

from __future__ import annotations

import fcntl
import io
import json
import os
import pty
import re
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest
from rich.console import Console

from mailprobe.cli.progress import ProgressView, RateWindow, duration, eta_text, waiting_for
from mailprobe.engine.bulk.status import RunStatus, SlowServer
from mailprobe.testing.dnsd import DomainSpec, SimDNSServer


def status(**kw: object) -> RunStatus:
    base: dict[str, object] = dict(
        in_flight=0, sessions=0, queued=0, resolving=0, greylisted=0, retrying=0,
        dns_failing=0, next_retry=None, catch_all_wait=0,
    )  # fmt: skip
    return RunStatus(**{**base, **kw})  # type: ignore[arg-type]


# -- the window maths ------------------------------------------------------------------


def test_rate_is_over_the_window_not_since_the_start() -> None:
    window = RateWindow(span=30.0)
    for t in range(6):  # 1000 answers a second for 5 s (reused answers, say)
        window.add(float(t), t * 1000)
    assert window.rate() == pytest.approx(1000.0)
    for t in range(6, 60):  # then stuck on a slow server: nothing for 54 s
        window.add(float(t), 5000)
    assert window.rate() == 0.0  # since the start it would say 85/s
    assert eta_text(10, window.rate()) == "ETA unknown: nothing answered in 30 s"
    for t in range(60, 71):  # it moves again, 2 a second
        window.add(float(t), 5000 + 2 * (t - 59))
    assert window.rate() == pytest.approx(22 / 30, rel=0.05)


def test_no_rate_before_two_seconds_and_eta_from_the_rate() -> None:
    window = RateWindow()
    window.add(0.0, 0)
    window.add(1.0, 50)
    assert window.rate() is None and eta_text(100, None) == "ETA …"
    window.add(2.0, 100)
    assert eta_text(300, window.rate()) == "ETA 6s"
    assert eta_text(None, 5.0) == "" and eta_text(0, 5.0) == "ETA 0s"
    assert [duration(s) for s in (5, 75, 3725)] == ["5s", "1m15s", "1h02m"]


# -- the status line ---------------------------------------------------------------------


def test_status_line_says_what_the_run_waits_for() -> None:
    said = waiting_for(status(greylisted=3, next_retry=41.2, in_flight=3))
    assert said == "3 addresses wait 41s for greylisting retries"
    said = waiting_for(status(dns_failing=10, retrying=2, next_retry=25.0, in_flight=12))
    assert said.startswith("DNS failing for 10 domains: retrying · 2 addresses wait 25s")
    slow = (SlowServer("mx.example.com", 2),)
    said = waiting_for(status(slow_servers=slow, sessions=2, in_flight=2))
    assert "slow server mx.example.com: 2 sessions" in said
    assert waiting_for(status(resolving=1, in_flight=4)) == "looking up MX for 1 domain"
    assert "throttle unreachable for 12s" in waiting_for(status(throttle_down=12.0))
    assert "catch-all" in waiting_for(status(catch_all_wait=4))
    assert waiting_for(status()) == "reading the input"
    assert waiting_for(None) == ""


# -- records and progress on one terminal ------------------------------------------------

CSI = re.compile(r"\x1b\[(\??)(\d*)([A-Za-z])")


def screen(stream: str) -> list[str]:
    """What a terminal shows for `stream` (enough of one for this: CR, LF, cursor up,
    erase line; colours and other controls ignored)."""
    lines, row, col = [""], 0, 0
    i = 0
    while i < len(stream):
        ch = stream[i]
        if ch == "\x1b" and (m := CSI.match(stream, i)):
            _, n, op = m.groups()
            if op == "A":
                row = max(0, row - int(n or 1))
            elif op == "K":
                lines[row] = "" if n == "2" else lines[row][:col]
            i = m.end()
            continue
        if ch == "\r":
            col = 0
        elif ch == "\n":
            row += 1
            col = 0
            if row == len(lines):
                lines.append("")
        else:
            line = lines[row].ljust(col)
            lines[row] = line[:col] + ch + line[col + 1 :]
            col += 1
        i += 1
    return lines


def test_shared_terminal_records_are_never_overwritten() -> None:
    term = io.StringIO()
    console = Console(file=term, force_terminal=True, width=100, color_system=None)
    clock = [0.0]
    view = ProgressView(100, True, shared=True, console=console, clock=lambda: clock[0])

    def write(record: dict[str, object]) -> None:
        term.write(json.dumps(record) + "\n")  # stdout: the same terminal

    out = view.writing(write)
    for n in range(1, 21):
        record = {"line": n, "verdict": "deliverable"}
        view.advance(record)
        out(record)
        clock[0] += 0.15
        if n % 5 == 0:
            view.update(status(greylisted=2, next_retry=30.0, in_flight=2))
    view.close()
    shown = screen(term.getvalue())
    records = [line for line in shown if line.startswith("{")]
    assert records == [json.dumps({"line": n, "verdict": "deliverable"}) for n in range(1, 21)]
    assert any("20/100" in line for line in shown)  # the last state stays, below them
    assert shown.index(records[-1]) < max(i for i, s in enumerate(shown) if "20/100" in s)


def test_without_a_shared_terminal_writing_is_untouched() -> None:
    view = ProgressView(10, True, shared=False, console=Console(file=io.StringIO()))
    written: list[object] = []
    assert view.writing(written.append) == written.append


# -- the CLI, records on stdout while progress is on stderr -------------------------------


@pytest.fixture(scope="module")
def dns():
    with SimDNSServer({"null1.example": DomainSpec(null_mx=True)}) as server:
        yield server


def run_on_pty(dns, listing: Path, tmp_path: Path, *, shared: bool) -> tuple[str, str, int]:
    """`verify` with stderr on a terminal (and stdout too, if `shared`)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 120, 0, 0))
    env = {**os.environ, "DNS_NAMESERVERS": dns.nameserver, "SPECIAL_USE_ALLOWED": "example",
           "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite'}", "TERM": "xterm",
           "MAILPROBE_RUNS_DIR": str(tmp_path / "runs"), "COLUMNS": "120"}  # fmt: skip
    env.pop("NO_COLOR", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "mailprobe.cli", "verify", str(listing), "--force"],
        stdout=slave if shared else subprocess.PIPE, stderr=slave, stdin=subprocess.DEVNULL,
        env=env,
    )  # fmt: skip
    os.close(slave)
    chunks: list[bytes] = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    stdout = proc.stdout.read().decode() if proc.stdout else ""
    code = proc.wait(timeout=120)
    os.close(master)
    return b"".join(chunks).decode(errors="replace"), stdout, code


def listing_of(tmp_path: Path, n: int) -> Path:
    path = tmp_path / "list.txt"
    path.write_text("".join(f"user{i}@null1.example\n" for i in range(n)))
    return path


def test_cli_records_intact_when_they_share_the_terminal(dns, tmp_path: Path) -> None:
    term, _, code = run_on_pty(dns, listing_of(tmp_path, 300), tmp_path, shared=True)
    assert code == 0 and "Traceback" not in term
    shown = screen(term.replace("\r\n", "\n"))
    lines = [json.loads(s) for s in shown if s.startswith("{")]
    assert [r["line"] for r in lines] == list(range(1, 301))  # every record, whole, in order
    assert any("300/300" in s for s in shown)  # and the progress, at the end


def test_cli_progress_stays_off_stdout(dns, tmp_path: Path) -> None:
    started = time.monotonic()
    term, stdout, code = run_on_pty(dns, listing_of(tmp_path, 50), tmp_path, shared=False)
    assert code == 0 and time.monotonic() - started < 120
    records = [json.loads(line) for line in stdout.splitlines()]
    assert [r["line"] for r in records] == list(range(1, 51))
    assert "\x1b" not in stdout and "50/50" in term
