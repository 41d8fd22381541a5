"""`verify`'s records in input order through a bounded buffer, each with its row's own
columns; `--unordered` as answered. No record dropped or written twice."""

from __future__ import annotations

import csv
import io
import json
import os
import random
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from mailprobe.cli.ordered import InputOrder
from mailprobe.inputs import read_addresses
from mailprobe.testing.dnsd import DomainSpec, SimDNSServer


def listing(n: int):
    text = "Name,E-Mail\n" + "".join(f"N{i},u{i}@acme.example\n" for i in range(n))
    return read_addresses(io.StringIO(text), ("example",))


def test_records_come_out_in_input_order_with_their_columns() -> None:
    out: list[dict[str, object]] = []
    order = InputOrder(listing(50), out.append, window=1000)
    lines = list(order.lines())
    shuffled = lines[:]
    random.Random(7).shuffle(shuffled)
    for line in shuffled:
        order.answered({"line": line.line_no, "verdict": "x"})
    order.close()
    assert [r["line"] for r in out] == list(range(2, 52))
    assert out[0]["columns"] == {"Name": "N0", "E-Mail": "u0@acme.example"}


def test_a_full_buffer_holds_the_reader_and_loses_nothing() -> None:
    out: list[dict[str, object]] = []
    order = InputOrder(listing(100), out.append, window=10)
    read: list[int] = []
    reader = threading.Thread(target=lambda: read.extend(x.line_no for x in order.lines()))
    reader.start()
    time.sleep(0.3)
    assert len(read) == 10 and order.held == 10  # the reader waits for room
    for n in range(11, 3, -1):  # lines 4..11 answered, line 2 and 3 not: nothing comes out
        order.answered({"line": n})
    time.sleep(0.2)
    assert out == [] and len(read) == 10
    order.answered({"line": 2})
    order.answered({"line": 3})  # 2..11 out at once, room for 10 more
    time.sleep(0.3)
    assert [r["line"] for r in out] == list(range(2, 12)) and len(read) == 20
    answered = set(range(2, 12))
    while len(out) < 100:
        for n in [x for x in read if x not in answered][::-1]:
            answered.add(n)
            order.answered({"line": n})
        time.sleep(0.05)
    reader.join(5)
    assert [r["line"] for r in out] == list(range(2, 102)) and order.most_held == 10


def test_unordered_writes_as_answered_and_close_flushes_what_was_answered() -> None:
    out: list[dict[str, object]] = []
    order = InputOrder(listing(5), out.append, ordered=False)
    lines = list(order.lines())
    order.answered({"line": lines[3].line_no})
    assert [r["line"] for r in out] == [5]
    ordered_out: list[dict[str, object]] = []
    order = InputOrder(listing(5), ordered_out.append)
    list(order.lines())
    for n in (6, 4, 5):
        order.answered({"line": n})
    order.close()  # stopped with lines 2 and 3 unanswered: what was answered is written
    assert [r["line"] for r in ordered_out] == [4, 5, 6]


# -- through the CLI ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def dns():
    zone = {"null1.example": DomainSpec(null_mx=True), "null2.example": DomainSpec(null_mx=True)}
    with SimDNSServer(zone) as server:
        yield server


def verify(dns, path: Path, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    env = {**os.environ, "DNS_NAMESERVERS": dns.nameserver, "SPECIAL_USE_ALLOWED": "example",
           "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite'}",
           "MAILPROBE_RUNS_DIR": str(tmp_path / "runs")}  # fmt: skip
    return subprocess.run(
        [sys.executable, "-m", "mailprobe.cli", "verify", str(path), "--force", *args],
        capture_output=True, env=env, timeout=120, stdin=subprocess.DEVNULL,
    )  # fmt: skip


def test_csv_output_pastes_back_next_to_the_sheet(dns, tmp_path: Path) -> None:
    sheet = tmp_path / "crm.csv"
    rows = [["Contact ID", "email", "Owner", "Email"]]  # a second "Email": a backup address
    rows += [[str(i), f"u{i}@null{1 + i % 2}.example", "Zoé", "x"] for i in range(400)]
    rows.insert(100, ["n/a", "not an address", "", ""])
    with sheet.open("w", newline="", encoding="utf-8") as fh:
        csv.writer(fh).writerows(rows)
    done = verify(dns, sheet, tmp_path, "-f", "csv", "--order-buffer", "50")
    assert done.returncode == 0 and b"Traceback" not in done.stderr, done.stderr
    got = list(csv.reader(io.StringIO(done.stdout.decode())))
    assert got[0][:5] == ["Contact ID", "email", "Owner", "Email", "line"]
    assert [r[:4] for r in got] == [rows[0], *rows[1:]]  # every row, as given, in order
    assert got[100][5:7] == ["undeliverable", "invalid_syntax"]
    done = verify(dns, sheet, tmp_path, "-f", "jsonl", "--unordered")
    records = [json.loads(x) for x in done.stdout.splitlines()]
    assert sorted(r["line"] for r in records) == list(range(2, 403))
    assert records[0]["columns"].keys() == {"Contact ID", "email", "Owner", "Email"}
