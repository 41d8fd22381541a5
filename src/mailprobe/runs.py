"""Run bookkeeping for `verify --resume`: when did the last unfinished run of this input start?

Results themselves live in the store; a run only needs to know since when its
stored results count as "already done" when it is resumed.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from mailprobe.config import data_dir
from mailprobe.store.models import utcnow


def runs_dir() -> Path:
    """MAILPROBE_RUNS_DIR, else `runs` in the user's data directory (read at each run, so
    the place does not depend on the directory a command runs from)."""
    return Path(os.environ.get("MAILPROBE_RUNS_DIR") or data_dir() / "runs")


@dataclass
class RunState:
    path: Path
    started_at: datetime
    resume_since: datetime | None

    @classmethod
    def start(cls, input_path: str, *, resume: bool) -> RunState:
        key = "stdin" if input_path == "-" else os.path.abspath(input_path)
        path = runs_dir() / (hashlib.sha256(key.encode()).hexdigest()[:16] + ".json")
        since = None
        if resume and path.exists():
            data = json.loads(path.read_text())
            if not data.get("finished"):
                since = datetime.fromisoformat(data["started_at"])
        now = utcnow()
        started = since or now
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"input": key, "started_at": started.isoformat()}))
        return cls(path, started, since)

    def finish(self) -> None:
        self.path.write_text(
            json.dumps({"started_at": self.started_at.isoformat(), "finished": True})
        )
