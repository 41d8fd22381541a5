"""How long a greylisting server asks us to wait, read from its reply text.

Many greylisters say it: postgrey's `--greylist-text` has `%s` for the seconds left
(github:schweikert/postgrey:postgrey, "How many seconds left until the greylisting is
over"), and configurations use it as "Greylisted for %s seconds" or "Greylisted,
retry in %s seconds"; milter-greylist's default is "Greylisting in action, please come
back in 00:04:59" (github:ryoqun/milter-greylist:milter-greylist.c, HH:MM:SS); hosting
providers answer "Greylisted, please try again in 900 seconds" or "Greylisted for 5
minutes". Waiting exactly that long is what gets through on the first retry; guessing
costs either a wasted retry (too early) or minutes (too late).

Pure: text in, seconds out. Only a number tied to the wait by "in", "after", "for" or
"wait" counts (never a status code, an IP or a date), and the result is bounded to a
sane range: a server cannot make us wait a day, and "0 seconds" is still a pause.
"""

from __future__ import annotations

import re

MIN_HINT = 1.0  # seconds: a hint of 0 still leaves the server a moment
MAX_HINT = 6 * 3600.0  # seconds: longer than any greylisting we would wait for

_UNITS: dict[str, float] = {"s": 1.0, "m": 60.0, "h": 3600.0}
_LEAD = r"\b(?:in|after|for|wait(?:ing)?)\s+(?:about\s+|another\s+|at\s+least\s+)?"
# "in 300 seconds", "for 5 minutes", "after 2 hrs", "wait 300 sec", "in 45s"
_AMOUNT = re.compile(
    _LEAD + r"(\d{1,6}(?:\.\d+)?)\s*"
    r"(s(?:ec(?:ond)?s?)?|m(?:in(?:ute)?s?)?|h(?:(?:ou)?rs?)?)\b",
    re.IGNORECASE,
)
# milter-greylist: "please come back in 00:04:59" (hours:minutes:seconds)
_CLOCK = re.compile(_LEAD + r"(\d{1,2}):([0-5]\d):([0-5]\d)\b", re.IGNORECASE)


def retry_hint(text: str) -> float | None:
    """Seconds the reply asks us to wait before retrying, or None when it does not say."""
    if not text:
        return None
    clock = _CLOCK.search(text)
    if clock is not None:
        hours, minutes, seconds = (int(g) for g in clock.groups())
        return _bounded(hours * 3600.0 + minutes * 60.0 + seconds)
    amount = _AMOUNT.search(text)
    if amount is None:
        return None
    number, unit = amount.groups()
    return _bounded(float(number) * _UNITS[unit[0].lower()])


def _bounded(seconds: float) -> float:
    return min(max(seconds, MIN_HINT), MAX_HINT)
