"""The corpus of real SMTP replies, shipped with the package.

`data/smtp_replies.jsonl` holds one reply a line, as a public source recorded it
(`data/SOURCES.md` lists the sources; every entry cites one): its id, provider,
stage (greeting / ehlo / mail / rcpt ...), code, enhanced status code, text, the
reason a careful reader gives it and more. The classifier's tests check every
entry; the simulated world takes its reply texts from it by id (see `replies`).

Both files are package data, read with importlib.resources, so an installed
`mailprobe[testing]` has them as well as a source checkout.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

DATA: Traversable = resources.files("mailprobe.testing") / "data"
CORPUS_FILE: Traversable = DATA / "smtp_replies.jsonl"
SOURCES_FILE: Traversable = DATA / "SOURCES.md"


@dataclass(frozen=True, slots=True)
class CorpusReply:
    """One entry of the corpus (the fields the world uses)."""

    id: str
    provider: str
    stage: str
    code: int
    enhanced: str | None
    text: str
    reason: str


def corpus_entries(path: Path | str | None = None) -> list[dict[str, Any]]:
    """Every entry of the corpus as read (JSON objects, in file order).

    `path`: another file of the same format instead of the shipped corpus.
    """
    file: Traversable = CORPUS_FILE if path is None else Path(path)
    if not file.is_file():
        raise FileNotFoundError(str(file))
    with file.open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def load_corpus(path: Path | str | None = None) -> dict[str, CorpusReply]:
    """The reply corpus by id (the shipped one unless `path` names another file)."""
    return {
        row["id"]: CorpusReply(
            row["id"],
            row["provider"],
            row["stage"],
            int(row["code"]),
            row["enhanced"],
            row["text"],
            row["reason"],
        )
        for row in corpus_entries(path)
    }
