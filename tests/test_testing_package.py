"""mailprobe.testing: the simulated servers and world ship as an optional part.

dnslib and trustme are needed only by mailprobe.testing (and the tests): they come
with the `testing` extra (part of `dev`), never with a plain install; mailprobe's
own modules do not import them; the reply corpus is package data of
mailprobe.testing; and `mailprobe demo` without the extra says what to install.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys
from importlib import resources
from pathlib import Path

from packaging.requirements import Requirement

import mailprobe.testing

ROOT = Path(__file__).resolve().parents[1]
ENV = os.environ | {"PYTHONPATH": str(ROOT / "src")}
TESTING_ONLY = {"dnslib", "trustme"}
MISSING_EXTRA = "mailprobe demo needs the testing extra: pip install 'mailprobe[testing]'"


def test_testing_dependencies_come_only_with_an_extra() -> None:
    requires = importlib.metadata.requires("mailprobe") or []
    extras: dict[str, set[str]] = {name: set() for name in TESTING_ONLY}
    for line in requires:
        req = Requirement(line)
        name = req.name.lower()
        if name not in TESTING_ONLY:
            continue
        assert req.marker is not None, f"{line!r} is installed unconditionally"
        assert not req.marker.evaluate({"extra": ""}), f"{line!r} is not behind an extra"
        extras[name] |= {e for e in ("testing", "dev") if req.marker.evaluate({"extra": e})}
        assert extras[name], f"{line!r}: only the testing or dev extra may bring it"
    assert extras == {"dnslib": {"testing", "dev"}, "trustme": {"testing", "dev"}}


def test_runtime_modules_do_not_import_the_testing_package() -> None:
    code = (
        "import json, sys\n"
        "import mailprobe.cli, mailprobe.engine, mailprobe.engine.bulk, mailprobe.smtp\n"
        "import mailprobe.doctor, mailprobe.queue\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
        f"{sorted(TESTING_ONLY)!r} or m == 'mailprobe.testing' "
        "or m.startswith('mailprobe.testing.'))))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=ENV, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == []


def test_corpus_is_package_data_of_mailprobe_testing() -> None:
    data = resources.files("mailprobe.testing") / "data"
    assert (data / "smtp_replies.jsonl").is_file()
    assert (data / "SOURCES.md").is_file()
    assert str(mailprobe.testing.CORPUS_FILE) == str(data / "smtp_replies.jsonl")
    corpus = mailprobe.testing.load_corpus()
    assert len(corpus) >= 150
    assert corpus["postfix-rcpt-550-511-unknown-local-recipient-table"].code == 550
    # Shipped once: no other copy in the source tree.
    copies = [
        p.relative_to(ROOT).as_posix()
        for top in ("src", "tests", "benchmarks", "scripts")
        for p in (ROOT / top).rglob("smtp_replies*")
    ]
    assert copies == ["src/mailprobe/testing/data/smtp_replies.jsonl"]


def test_demo_without_the_testing_extra_says_what_to_install(tmp_path: Path) -> None:
    # A sitecustomize that makes dnslib and trustme unimportable, as without the extra.
    (tmp_path / "sitecustomize.py").write_text(
        "import sys\nsys.modules['dnslib'] = None\nsys.modules['trustme'] = None\n",
        encoding="utf-8",
    )
    env = ENV | {"PYTHONPATH": os.pathsep.join((str(tmp_path), str(ROOT / "src")))}
    done = subprocess.run(
        [sys.executable, "-m", "mailprobe.cli", "demo"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stdout == ""
    assert done.stderr.splitlines() == [MISSING_EXTRA]
