"""Addresses as people paste them: `"Jane Doe" <jane@acme.com>`, `mailto:`, a stray `;`."""

from __future__ import annotations

import re
from urllib.parse import unquote

# A display name (quoted or bare, RFC 5322 name-addr) before an address in angle brackets.
# email.utils.parseaddr would also take this, but it answers ('', '') or a mangled part
# for anything it cannot parse and rewrites quoted local parts; here the text inside the
# brackets is handed on unchanged, for parse_address to judge.
_NAME_ADDR = re.compile(r'(?:"(?:[^"\\]|\\.)*"|[^<>"]*)\s*<([^<>]*)>', re.S)
_MAILTO = re.compile(r"mailto:", re.I)
# The older form with the name in a trailing comment (RFC 5322 section 3.4's CFWS after an
# addr-spec, as old mail clients wrote it): `jane@acme.com (Jane Doe)`.
_COMMENTED = re.compile(r"([^\s()<>\"]+@[^\s()<>\"]+)\s*\([^()]*\)")
_EDGE = "\u200b\ufeff"  # zero-width space and BOM, which spreadsheets and web pages leave
_TRAILING = ";,."  # a list separator or full stop left on the cell by a spreadsheet


def unwrap(raw: str) -> str:
    """The address inside a pasted form, or `raw` stripped when it is none of them."""
    text = raw.strip().strip(_EDGE).strip()
    for _ in range(4):  # forms nest: `<mailto:jane@acme.com>;`
        before = text
        text = text.rstrip(_TRAILING).strip()
        if match := _NAME_ADDR.fullmatch(text):
            text = match.group(1).strip()
        elif match := _COMMENTED.fullmatch(text):
            text = match.group(1)
        if _MAILTO.match(text):
            text = unquote(text[len("mailto:") :].split("?", 1)[0]).strip()
        if len(text) > 1 and text[0] == text[-1] and text[0] in "\"'" and text.count("@") == 1:
            text = text[1:-1].strip()  # a whole cell quoted: "jane@acme.com"
        if text == before:
            break
    return text
