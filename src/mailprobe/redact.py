"""One URL redactor: passwords never reach a message, a log line or `mailprobe config`."""

from __future__ import annotations

import re


def redact_url(url: str) -> str:
    """The URL without its password, fit for messages."""
    return re.sub(r"(//[^:/@]*:)[^@]*@", r"\1***@", url)
