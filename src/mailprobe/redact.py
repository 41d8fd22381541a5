"""One way to show a URL without its password (Redis, database, any URL with userinfo).

    redis://:secret@host:6379/0   -> redis://:***@host:6379/0
    postgresql://u:p@h/db         -> postgresql://u:***@h/db

A URL as typed may hold a password with any character in it, "@" and "/" included
(not every tool percent-encodes), so the password is taken to run from the first
":" after "//" to the *last* "@": whatever the split, no part of the password is
shown. The cost is that an "@" later in the path or query of a URL that also has
a port (redis://host:6379/0?name=a@b) hides too much; never too little.
"""

from __future__ import annotations

MASK = "***"


def redact_url(url: str) -> str:
    """The URL with its password (if any) replaced by "***", fit for messages and logs."""
    start = url.find("//")
    if start < 0:
        return url
    start += 2
    end = url.rfind("@")
    if end < start:
        return url  # no userinfo
    colon = url.find(":", start, end)
    if colon < 0 or "/" in url[start:colon]:
        return url  # a user name without a password, or the "@" is not in the authority
    return url[: colon + 1] + MASK + url[end:]
