"""The README's reason table is generated from classify.REASONS; keep them in step."""

from pathlib import Path

from mailprobe.classify import REASONS

README = Path(__file__).resolve().parents[1] / "README.md"


def test_r16_readme_lists_every_reason() -> None:
    text = README.read_text()
    for reason, info in REASONS.items():
        row = f"| `{reason}` | {info.signal} | {info.sisimai} | {info.meaning} |"
        assert row in text, (
            f"README reason table is stale for {reason}: run mailprobe reasons --markdown"
        )


def test_r16_readme_starts_with_the_two_commands() -> None:
    lines = README.read_text().splitlines()
    head = "\n".join(lines[:6])
    assert "bash scripts/setup.sh" in head and "bash scripts/test.sh" in head
