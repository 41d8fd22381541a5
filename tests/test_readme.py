"""The README's tables come from the code (classify.REASONS, verdict.VERDICT_TABLE)."""

import re
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
    head = "\n".join(README.read_text().splitlines()[:12])
    assert "bash scripts/setup.sh" in head and "bash scripts/test.sh" in head


# -- the README reads for a newcomer --------------------------------------------------------

SEED_SECTION = "## The seed, mapped"
RESERVED = re.compile(r"(^|\.)(example(\.(com|net|org))?|test|invalid|localhost)$")


def section(text: str, title: str) -> str:
    start = text.index(title)
    end = text.find("\n## ", start + len(title))
    return text[start : end if end != -1 else len(text)]


def test_readme_says_what_mailprobe_is_and_its_two_commands_first() -> None:
    text = README.read_text()
    intro = text[: text.index("```")]
    assert "tells whether an email address exists" in intro
    assert "`mailprobe probe" in intro and "`mailprobe verify" in intro


def test_quick_start_sends_no_real_traffic_by_accident() -> None:
    quick = section(README.read_text(), "## Quick start")
    code = "\n".join(re.findall(r"```bash\n(.*?)```", quick, re.S))
    code = re.sub(r"\w+://\S+", "", code)  # a service URL's user@host is no mailbox
    domains = re.findall(r"[\w.+-]+@([\w-]+(?:\.[\w-]+)+)", code)
    domains += re.findall(r"--(?:mx-host|domain) ([\w-]+\.[\w.-]+)", code)
    assert domains, "the quick start shows addresses"
    for domain in domains:
        assert RESERVED.search(domain), f"{domain} is a real name: use example.com"
    # and a line on what probing a real domain takes
    for needed in ("port 25", "SMTP_HELO_DOMAIN", "SMTP_MAIL_FROM", "mailprobe doctor"):
        assert needed in quick


def test_ticket_labels_only_in_the_seed_table() -> None:
    text = README.read_text()
    label = re.compile(r"\b[RO]\d{2}\b|\b[ro]1[5-8]\b|\bissue \d+")
    seed = section(text, SEED_SECTION)
    outside = text.replace(seed, "")
    assert not label.findall(outside), label.findall(outside)
    for line in seed.splitlines():
        if label.search(line):
            assert line.startswith("|"), line


def test_readme_names_only_files_inside_the_repository() -> None:
    text = README.read_text()
    root = README.parent
    assert "../" not in text and "/work/" not in text
    outside_seed = text.replace(section(text, SEED_SECTION), "")
    for path in re.findall(r"`((?:src|tests|scripts|benchmarks)/[\w./-]+)`", outside_seed):
        assert (root / path.rstrip("/")).exists(), f"README names {path}, which is not here"
