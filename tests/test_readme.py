"""The README's tables come from the code (classify.REASONS, verdict.VERDICT_TABLE)."""

from pathlib import Path

import pytest

from mailprobe.classify import REASONS
from mailprobe.verdict import VERDICT_TABLE

pytestmark = pytest.mark.r16  # the seed's label: pytest -k r16

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_lists_every_reason() -> None:
    text = README.read_text()
    for reason, info in REASONS.items():
        row = f"| `{reason}` | {info.signal} | {info.sisimai} | {info.meaning} |"
        assert row in text, (
            f"README reason table is stale for {reason}: mailprobe reasons --markdown"
        )


def test_readme_lists_every_verdict_rule() -> None:
    text = README.read_text()
    for condition, verdict, reason in VERDICT_TABLE:
        assert f"| {condition} | {verdict.value} | {reason} |" in text


def test_readme_starts_with_the_two_commands() -> None:
    head = "\n".join(README.read_text().splitlines()[:6])
    assert "bash scripts/setup.sh" in head and "bash scripts/test.sh" in head
