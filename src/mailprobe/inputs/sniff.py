"""Is this list a table, with which delimiter, and which column holds the address?"""

from __future__ import annotations

import csv
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

from mailprobe.inputs.decode import InputError

DELIMITERS = ",;\t|"

# Header names of an address column, compared by `header_key` (case, accents, spaces,
# dashes, underscores and dots ignored). English as CRMs export them (Email, Email
# Address; see tests/data/exports/README.md), and the words for it in the languages of
# the lists people bring: French courriel / adresse électronique, Spanish correo
# (electrónico), German E-Mail-Adresse, Dutch e-mailadres, Scandinavian e-post, Italian
# posta elettronica, Portuguese endereço de e-mail, Finnish sähköposti.
ADDRESS_HEADERS: tuple[str, ...] = (
    "email", "e-mail", "email address", "e-mail address", "mail", "emailaddress",
    "mail address", "courriel", "adresse courriel", "adresse e-mail", "adresse mail",
    "adresse électronique", "correo", "correo electrónico", "dirección de correo",
    "dirección de correo electrónico", "dirección de email", "e-mail-adresse",
    "mailadresse", "e-mailadres", "e-post", "e-postadresse", "e-postadress",
    "posta elettronica", "indirizzo email", "indirizzo e-mail", "endereço de e-mail",
    "endereço de email", "sähköposti", "sähköpostiosoite",
)  # fmt: skip
# Second choice: a header that starts or ends with one of those (Work Email, Email 1,
# "E-mail 1 - Value"), unless it names something about the address, not the address.
_NOT_THE_ADDRESS = re.compile(
    r"domain|opt|status|type|bounce|consent|valid|verif|format|permission|subscri|date|count"
)


def header_key(name: str) -> str:
    """`E-Mail Adresse`, `e_mail_adresse` and `EMAIL-ADRESSE` are one name."""
    decomposed = unicodedata.normalize("NFKD", name.strip().lstrip("\ufeff"))
    bare = "".join(c for c in decomposed if not unicodedata.combining(c))
    return re.sub(r"[\W_]+", "", bare.casefold())


_KEYS = frozenset(header_key(n) for n in ADDRESS_HEADERS)


def address_column(headers: Sequence[str], *, exact: bool = False) -> int | None:
    """The index of the address column among `headers`, or None. `exact`: a known name
    only, not one that merely starts or ends with it."""
    keys = [header_key(h) for h in headers]
    for i, key in enumerate(keys):
        if key in _KEYS:
            return i
    if exact:
        return None
    for i, key in enumerate(keys):
        near = any(key.startswith(k) or key.endswith(k) for k in ("email", "mail", "courriel"))
        if near and not _NOT_THE_ADDRESS.search(key):
            return i
    return None


def chosen_column(headers: Sequence[str] | None, column: str) -> int:
    """`--column NAME|NUMBER`: a 1-based number, or a header name (same matching)."""
    if column.strip().isdigit():
        number = int(column)
        if number < 1:
            raise InputError(f"--column {column}: columns are numbered from 1")
        return number - 1
    if headers is not None:
        key = header_key(column)
        for i, header in enumerate(headers):
            if header_key(header) == key:
                return i
    raise InputError(f"--column {column!r}: no such column; headers seen: {seen(headers)}")


def seen(headers: Sequence[str] | None) -> str:
    if not headers:
        return "(none: the first line is no header)"
    shown = ", ".join(repr(h.strip()[:40]) for h in headers[:20])
    return shown + (f" and {len(headers) - 20} more" if len(headers) > 20 else "")


def split(line: str, delimiter: str) -> list[str]:
    """One line's cells (a line csv cannot read, a lone CR in it, is no header: one cell)."""
    try:
        return next(csv.reader([line], delimiter=delimiter, skipinitialspace=True), [])
    except csv.Error:
        return [line]


@dataclass(frozen=True, slots=True)
class Shape:
    """What the first lines say: a table (delimiter, header cells) or a plain list."""

    delimiter: str | None  # None: one address a line
    headers: list[str] | None  # None: no header row (data from the first line)


def sniff(sample: Sequence[str]) -> Shape:
    """The delimiter (csv.Sniffer on the sample) and whether line 1 is a header row.

    Sniffer judges by how evenly characters recur, so it can pick a delimiter that
    splits the header into no known name (a `;` file whose quoted names hold commas,
    a sample of one line); the header names are the stronger evidence, so a delimiter
    that splits line 1 into a known address header wins over Sniffer's guess."""
    first = sample[0] if sample else ""
    if not first.strip() or first.lstrip().startswith("#"):
        return Shape(None, None)  # a text list, perhaps commented
    lines = [line for line in sample if line.strip()]
    by_name = [d for d in DELIMITERS if address_column(split(first, d), exact=True) is not None]
    by_name = by_name or [d for d in DELIMITERS if address_column(split(first, d)) is not None]
    if by_name:
        delimiter = max(by_name, key=lambda d: len(split(first, d)))
        cells = split(first, delimiter)
        if "@" not in first or len(cells) > 1:
            return Shape(delimiter, cells)
    try:
        sniffed: str | None = csv.Sniffer().sniff("".join(lines), DELIMITERS).delimiter
    except csv.Error:
        sniffed = None
    if sniffed is None:
        cells = [first.strip()]
        return Shape(None, cells if address_column(cells) is not None else None)
    cells = split(first, sniffed)
    filled = len([c for c in cells if c.strip()])
    if filled >= 2 and "@" not in first:
        return Shape(sniffed, cells)  # a header row, perhaps with no address column
    return Shape(sniffed if filled >= 2 else None, None)
