"""How well classify_reply reads the corpus of real SMTP replies.

Prints a confusion matrix (recorded reason in rows, predicted reason in
columns), the accuracy, the misclassified entries, and the share of entries
predicted as a reason whose signal is undetermined ("other/unknown").

    .venv/bin/python benchmarks/classify_report.py
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
for path in (ROOT, ROOT / "src"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from mailprobe.classify import REASONS, Reason, Signal, classify_reply  # noqa: E402
from mailprobe.testing.corpus import corpus_entries  # noqa: E402
from tests.test_classify import PROVIDER_MX  # noqa: E402


def load_corpus() -> list[dict[str, Any]]:
    """The corpus shipped with mailprobe.testing (package data)."""
    return corpus_entries()


def predict(entry: dict[str, Any]) -> str:
    result = classify_reply(
        entry["stage"],
        entry["code"],
        entry["text"],
        mx_host=PROVIDER_MX.get(entry["provider"], ""),
    )
    return result.reason.value


def confusion_matrix(pairs: list[tuple[str, str]]) -> str:
    """Rows: recorded reason; columns: predicted reason (only those that occur)."""
    counts = Counter(pairs)
    rows = sorted({recorded for recorded, _ in pairs})
    cols = sorted({predicted for _, predicted in pairs})
    # Columns are headed by number to keep the table narrow; the legend follows.
    width = max(len(r) for r in rows)
    header = " " * width + " | " + " ".join(f"{i:>3}" for i in range(len(cols))) + " | total"
    lines = [header, "-" * len(header)]
    for recorded in rows:
        cells = []
        for predicted in cols:
            n = counts[(recorded, predicted)]
            cells.append(f"{n:>3}" if n else "  .")
        total = sum(counts[(recorded, p)] for p in cols)
        lines.append(f"{recorded:<{width}} | " + " ".join(cells) + f" | {total:>5}")
    lines.append("")
    lines.extend(f"{i:>3} = {name}" for i, name in enumerate(cols))
    return "\n".join(lines)


def main() -> int:
    corpus = load_corpus()
    pairs = [(entry["reason"], predict(entry)) for entry in corpus]
    total = len(pairs)
    correct = sum(recorded == predicted for recorded, predicted in pairs)
    undetermined = sum(
        REASONS[Reason(predicted)].signal is Signal.UNDETERMINED for _, predicted in pairs
    )
    recorded_undetermined = sum(
        REASONS[Reason(recorded)].signal is Signal.UNDETERMINED for recorded, _ in pairs
    )

    print(f"corpus: {total} replies from {len({e['provider'] for e in corpus})} providers")
    print()
    print("confusion matrix (rows: recorded reason, columns: predicted reason)")
    print(confusion_matrix(pairs))
    print()
    print(f"accuracy: {correct}/{total} = {correct / total:.1%}")
    print(
        f"predicted other/unknown (undetermined signal): {undetermined}/{total}"
        f" = {undetermined / total:.1%} (recorded: {recorded_undetermined / total:.1%})"
    )
    wrong = [
        (entry["id"], recorded, predicted)
        for entry, (recorded, predicted) in zip(corpus, pairs, strict=True)
        if recorded != predicted
    ]
    if wrong:
        print()
        print("misclassified:")
        for entry_id, recorded, predicted in wrong:
            print(f"  {entry_id}: recorded {recorded}, predicted {predicted}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
