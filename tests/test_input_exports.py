"""Lists as people export them: the address column found by header, the delimiter sniffed,
any encoding, pasted forms, input that cannot be an address kept small, and the export's
own columns back in order; driven through `mailprobe verify` as a subprocess."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mailprobe.inputs import InputError, read_addresses
from mailprobe.testing.dnsd import DomainSpec, SimDNSServer

EXPORTS = Path(__file__).parent / "data" / "exports"
ZONE = {"null1.example": DomainSpec(null_mx=True), "null2.example": DomainSpec(null_mx=True)}


@pytest.fixture(scope="module")
def dns():
    with SimDNSServer(ZONE) as server:
        yield server


def verify(dns, path: Path, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DNS_NAMESERVERS": dns.nameserver, "SPECIAL_USE_ALLOWED": "example",
           "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite'}",
           "MAILPROBE_RUNS_DIR": str(tmp_path / "runs")}  # fmt: skip
    return subprocess.run(
        [sys.executable, "-m", "mailprobe.cli", "verify", str(path), "--force", *args],
        capture_output=True, text=True, env=env, timeout=120, stdin=subprocess.DEVNULL,
    )  # fmt: skip


def records(done: subprocess.CompletedProcess[str]) -> dict[int, dict[str, object]]:
    assert "Traceback" not in done.stderr, done.stderr
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in done.stdout.splitlines()]
    by_line = {int(r["line"]): r for r in rows}
    assert len(by_line) == len(rows)  # one record per row
    return by_line


# file -> {line: (email shown, verdict, reason)}
EXPECTED = {
    "hubspot_contacts.csv": {
        2: ("jane@null1.example", "undeliverable", "null_mx"),
        3: ('"Bob Smith" <bob@null2.example>', "undeliverable", "null_mx"),
        4: ("not-an-address", "undeliverable", "invalid_syntax"),
    },
    "mailchimp_members.csv": {
        2: ("zoé@null1.example", "undeliverable", "null_mx"),
        3: ("max@null2.example", "undeliverable", "null_mx"),
    },
    "salesforce_contacts.csv": {
        2: ("tom@null1.example", "undeliverable", "null_mx"),
        3: ("ian@null2.example", "undeliverable", "null_mx"),  # its Description spans 3-4
        5: ("kim@null1.example", "undeliverable", "null_mx"),
    },
    "excel_de_semicolon_cp1252.csv": {
        2: ("juergen@null1.example", "undeliverable", "null_mx"),
        3: ("rene@null2.example", "undeliverable", "null_mx"),
    },
    "excel_fr_tab_latin1.txt": {
        2: ("francoise@null1.example", "undeliverable", "null_mx"),
        3: ("elodie@null2.example", "undeliverable", "null_mx"),
    },
    "unterminated_quote.csv": {
        2: ("jane@null1.example", "undeliverable", "null_mx"),
        3: ('"Bob,bob@null2.example', "undeliverable", "invalid_syntax"),
        4: ("ann@null1.example", "undeliverable", "null_mx"),
        5: ("eve@null2.example", "undeliverable", "null_mx"),
    },
    "pasted.txt": {
        1: ('"Jane Doe" <jane@null1.example>', "undeliverable", "null_mx"),
        2: ("<bob@null2.example>", "undeliverable", "null_mx"),
        3: ("mailto:ann@null1.example", "undeliverable", "null_mx"),
        4: ("  eve@null2.example;", "undeliverable", "null_mx"),
        5: ("kim@null1.example,", "undeliverable", "null_mx"),
    },
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_verify_reads_each_export(dns, tmp_path: Path, name: str) -> None:
    got = records(verify(dns, EXPORTS / name, tmp_path))
    want = EXPECTED[name]
    assert {n: (r["email"], r["verdict"], r["reason"]) for n, r in got.items()} == want
    if name == "unterminated_quote.csv":
        assert "never closed" in str(got[3]["message"])


def test_binary_line_and_1mb_line_are_answered_alone(dns, tmp_path: Path) -> None:
    listing = tmp_path / "pipes.csv"
    shutil.copy(EXPORTS / "pipes_es_binary.csv", listing)
    with listing.open("ab") as fh:
        fh.write(b"Luis|" + b"x" * (1 << 20) + b"\n" + b"Rosa|rosa@null1.example\n")
    got = records(verify(dns, listing, tmp_path))
    assert sorted(got) == [2, 3, 4, 5, 6]
    assert (got[2]["email"], got[2]["reason"]) == ("ana@null1.example", "null_mx")
    assert (got[3]["verdict"], got[3]["reason"]) == ("unknown", "invalid_encoding")
    assert got[4]["email"] == "eva@null2.example"
    assert got[5]["reason"] == "invalid_syntax" and len(str(got[5]["email"])) < 300
    assert "bytes long" in str(got[5]["message"])
    assert got[6]["email"] == "rosa@null1.example"


@pytest.mark.parametrize(
    ("name", "says"),
    [("no_address_column.csv", "'Name', 'Phone', 'City'"), ("binary.bin", "not a text file")],
)
def test_unreadable_list_exits_2_with_one_line(dns, tmp_path: Path, name: str, says: str) -> None:
    done = verify(dns, EXPORTS / name, tmp_path)
    assert done.returncode == 2 and done.stdout == ""
    assert "Traceback" not in done.stderr and says in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_column_option_overrides(dns, tmp_path: Path) -> None:
    listing = tmp_path / "two.csv"
    listing.write_text("Email,Backup\nnot-this@null1.example,this@null2.example\n")
    for column in ("Backup", "2"):
        got = records(verify(dns, listing, tmp_path, "--column", column))
        assert got[2]["email"] == "this@null2.example"
    done = verify(dns, EXPORTS / "no_address_column.csv", tmp_path, "--column", "nope")
    assert done.returncode == 2 and "'Name', 'Phone', 'City'" in done.stderr


def test_ingest_takes_column_and_refuses_a_table_without_one(tmp_path: Path) -> None:
    env = {**os.environ, "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite'}",
           "SPECIAL_USE_ALLOWED": "example"}  # fmt: skip

    def ingest(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "mailprobe.cli", "ingest", *args],
                              capture_output=True, text=True, env=env, timeout=120,
                              stdin=subprocess.DEVNULL)  # fmt: skip

    done = ingest(str(EXPORTS / "excel_de_semicolon_cp1252.csv"))
    assert done.returncode == 0 and "added 2" in done.stdout, done.stderr
    done = ingest(str(EXPORTS / "no_address_column.csv"))
    assert done.returncode == 2 and "Traceback" not in done.stderr
    done = ingest(str(EXPORTS / "no_address_column.csv"), "--column", "City")
    assert done.returncode == 0 and "bad lines 2" in done.stdout, done.stderr


# -- the reader itself, in process --------------------------------------------------


def lines_of(data: bytes, tmp_path: Path, name: str = "in.csv", **kw: str):
    path = tmp_path / name
    path.write_bytes(data)
    return list(read_addresses(path, ("example",), **kw))


@pytest.mark.parametrize(
    "header",
    ["email", "E-mail", "Email Address", "e_mail_address", "MAIL", "EmailAddress", "Courriel",
     "correo", "Correo electrónico", "E-Mail-Adresse", "Work Email", "E-mail 1 - Value"],
)  # fmt: skip
def test_address_column_found_by_header(tmp_path: Path, header: str) -> None:
    got = lines_of(f"Name,{header}\r\nJane,jane@acme.example\r\n".encode(), tmp_path)
    assert [(x.line_no, x.raw, x.extra) for x in got] == [
        (2, "jane@acme.example", {"Name": "Jane"})
    ]
    assert got[0].address is not None


@pytest.mark.parametrize("sep", [",", ";", "\t", "|"])
def test_delimiter_sniffed(tmp_path: Path, sep: str) -> None:
    data = sep.join(["First, Name" if sep != "," else "First", "Email"]) + "\n"
    data += sep.join(["Doe", "jane@acme.example"]) + "\n"
    got = lines_of(data.encode(), tmp_path)
    assert [x.address and x.address.normalized for x in got] == ["jane@acme.example"]


def test_overlong_plain_line_is_skipped_not_held(tmp_path: Path) -> None:
    data = b"a@acme.example\n" + b"y" * (3 << 20) + b"\nb@acme.example\n"
    got = lines_of(data, tmp_path, "list.txt")
    assert [x.line_no for x in got] == [1, 2, 3]
    assert got[1].address is None and len(got[1].raw) < 300 and "bytes long" in str(got[1].error)
    assert got[2].address is not None


def test_one_bad_byte_keeps_the_rest(tmp_path: Path) -> None:
    data = b"".join(b"u%d@acme.example\n" % i for i in range(3000))
    data += b"n\xe9e@acme.example,\n" + b"last@acme.example\n"
    got = lines_of(data, tmp_path, "list.txt")
    assert len(got) == 3002 and got[-1].address is not None
    assert got[3000].address is not None and got[3000].raw == "née@acme.example,"


def test_a_guessed_line_whose_address_is_not_ascii_is_invalid_encoding(tmp_path: Path) -> None:
    data = b"".join(b"u%d@acme.example\n" % i for i in range(20000))  # the head is UTF-8
    data += b"jos\xe9@acme.example\n\x00\x01\x02\xff\n" + b"last@acme.example\n"
    got = lines_of(data, tmp_path, "list.txt")
    assert len(got) == 20003 and got[-1].address is not None
    assert [(x.reason, x.address) for x in got[20000:20002]] == [("invalid_encoding", None)] * 2


def test_latin1_file_is_decoded(tmp_path: Path) -> None:
    data = "nom;adresse électronique\nJosé;jose@acme.example\nRenée;renee@acme.example\n"
    got = lines_of(data.encode("latin-1"), tmp_path)
    assert [(x.extra["nom"], x.address is not None) for x in got] == [
        ("José", True),
        ("Renée", True),
    ]


def test_pasted_forms_read_as_the_address_inside() -> None:
    text = '"Doe, Jane" <jane@acme.example>\n mailto:bob@acme.example?subject=hi \n'
    got = list(read_addresses(io.StringIO(text), ("example",)))
    assert [x.address and x.address.normalized for x in got] == [
        "jane@acme.example",
        "bob@acme.example",
    ]
    assert got[0].raw == '"Doe, Jane" <jane@acme.example>'


def test_injection_is_never_unwrapped() -> None:
    got = list(read_addresses(io.StringIO("<a@acme.example>\rDATA\n"), ("example",)))
    assert got[0].address is None and "control character" in str(got[0].error)


def test_unterminated_quote_at_end_of_file() -> None:
    text = 'name,email\nJane,jane@acme.example\n"Bob,bob@acme.example\nno address here\n'
    got = list(read_addresses(io.StringIO(text), ("example",)))
    assert [x.line_no for x in got] == [2, 3, 4]
    assert "never closed" in str(got[1].error)


def test_binary_file_refused_at_once(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not a text file"):
        lines_of(b"\x00\x01\x02" * 100, tmp_path)


def test_xlsx_first_sheet(tmp_path: Path) -> None:
    openpyxl = pytest.importorskip("openpyxl")
    book = openpyxl.Workbook()
    sheet = book.active
    sheet.append(["First Name", "E-mail Address"])
    sheet.append(["Jane", "jane@acme.example"])
    sheet.append(["Bob", None])
    book.save(tmp_path / "leads.xlsx")
    got = list(read_addresses(tmp_path / "leads.xlsx", ("example",)))
    assert [(x.line_no, x.raw, x.extra) for x in got] == [
        (2, "jane@acme.example", {"First Name": "Jane"}),
        (3, "", {"First Name": "Bob"}),
    ]


def test_xlsx_without_the_extra_says_which_to_install(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "openpyxl", None)
    (tmp_path / "leads.xlsx").write_bytes(b"PK\x03\x04")
    with pytest.raises(InputError, match=r"mailprobe\[xlsx\]"):
        list(read_addresses(tmp_path / "leads.xlsx", ("example",)))


# file -> (encoding, delimiter) to read it back with Python's csv module
TABLES = {
    "hubspot_contacts.csv": ("utf-8", ","),
    "mailchimp_members.csv": ("utf-8-sig", ","),
    "salesforce_contacts.csv": ("utf-8", ","),
    "excel_de_semicolon_cp1252.csv": ("cp1252", ";"),
    "excel_fr_tab_latin1.txt": ("latin-1", "\t"),
}


@pytest.mark.parametrize("name", sorted(TABLES))
def test_csv_output_keeps_the_exports_columns_and_order(dns, tmp_path: Path, name: str) -> None:
    encoding, delimiter = TABLES[name]
    with (EXPORTS / name).open(encoding=encoding, newline="") as fh:
        sheet = list(csv.reader(fh, delimiter=delimiter))
    out = tmp_path / "out.csv"
    done = verify(dns, EXPORTS / name, tmp_path, "-f", "csv", "-o", str(out))
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    spreadsheet = encoding != "utf-8"  # a BOM or a code page: Excel made it
    assert out.read_bytes().startswith(b"\xef\xbb\xbf") == spreadsheet  # Excel: UTF-8
    with out.open(encoding="utf-8-sig", newline="") as fh:
        got = list(csv.reader(fh, delimiter=delimiter))  # the input's own delimiter
    width = len(sheet[0])
    assert [row[:width] for row in got] == sheet  # every column, as given, row by row
    assert got[0][width : width + 3] == ["line", "verdict", "reason"]
    assert [int(row[width]) for row in got[1:]] == sorted(EXPECTED[name])


@pytest.mark.parametrize(
    "raw",
    ['"Jane Doe" <jane@acme.example>', "Doe, Jane <jane@acme.example>", "<jane@acme.example>",
     "MAILTO:jane@acme.example?subject=hi", "\xa0 jane@acme.example\u200b ", "jane@acme.example.",
     "jane@acme.example (Jane Doe)", "'jane@acme.example',", "<mailto:jane@acme.example>;"],
)  # fmt: skip
def test_pasted_form_read_as_the_address_and_kept_as_given(raw: str) -> None:
    from mailprobe.inputs import entry

    line = entry(7, raw, None, ("example",))
    assert line.address is not None and line.address.normalized == "jane@acme.example"
    assert line.raw == raw
