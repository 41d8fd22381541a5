"""`mailprobe verify` gives the same answers on uvloop (the `fast` extra, which `verify`
uses when it is installed) and on asyncio's own loop (MAILPROBE_UVLOOP=0), in a world
whose every MX offers STARTTLS: the two loops' TLS and stream code are not the same."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mailprobe.testing import Kind, SimWorld, WorldConfig

LOOPS = [
    "asyncio",
    pytest.param(
        "uvloop",
        marks=pytest.mark.skipif(
            importlib.util.find_spec("uvloop") is None,
            reason="uvloop is not installed (the fast extra; setup installs it with dev)",
        ),
    ),
]


def _loop_name(env: dict[str, str]) -> str:
    code = "from mailprobe.smtp_wire import use_fast_event_loop; print(use_fast_event_loop())"
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, check=True).stdout.strip()  # fmt: skip


@pytest.mark.parametrize("loop", LOOPS)
def test_verify_answers_the_same_on_either_loop(loop: str, tmp_path: Path) -> None:
    config = WorldConfig(mix={Kind.POSTFIX: 0.4, Kind.GOOGLE: 0.2, Kind.MICROSOFT: 0.2,
                              Kind.CATCH_ALL: 0.2},
                         invalid_fraction=0.0, expect_rps=None, starttls=True)  # fmt: skip
    with SimWorld(10, 120, seed=7, config=config) as world:
        listing = tmp_path / "list.txt"
        listing.write_text("\n".join(world.addresses()) + "\n")
        out = tmp_path / "out.jsonl"
        env = {**os.environ, **world.env(), "DATABASE_URL": f"sqlite:///{tmp_path / 'db'}",
               "MAILPROBE_RUNS_DIR": str(tmp_path / "runs"), "GLOBAL_RPS": "1000",
               "PER_MX_RPS_DEFAULT": "1000",
               "MAILPROBE_UVLOOP": "1" if loop == "uvloop" else "0"}  # fmt: skip
        assert _loop_name(env) == loop
        done = subprocess.run(
            [sys.executable, "-m", "mailprobe.cli", "verify", str(listing), "-o", str(out),
             "--quiet"],
            env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=120,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        records = [json.loads(line) for line in out.read_text().splitlines()]
        assert len(records) == 120
        got = {r["email"]: r["verdict"] for r in records}
        assert got == {email: world.expected_verdict(email) for email in got}
        assert world.stats().rcpts >= 120
