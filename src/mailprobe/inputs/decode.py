"""Bytes to text lines, bounded: the input is read in binary, one physical line at a time.

A line is never held whole past `MAX_ROW` (the rest of an overlong line is skipped as it
is read), a line that is not UTF-8 is decoded by charset-normalizer or set aside alone
(invalid_encoding), and a file that is not text at all is refused before any line.
"""

from __future__ import annotations

import codecs
import io
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol, TextIO

import charset_normalizer

# RFC 5321 §4.5.3.1.3 allows 254 octets for an address; a CSV row carries other columns
# too, so a physical line may hold this much before it is cut and answered alone.
MAX_ROW = 64 * 1024
SHOWN = 254  # what a record shows of a line or cell that is no address: a bounded prefix
HEAD = 8000  # bytes looked at to tell text from binary (git's own NUL-byte window)
DETECT_SAMPLE = 256 * 1024  # bytes the detector sees when the file itself is not UTF-8

# C0 controls other than tab, CR and LF; DEL; C1 controls; U+FFFD (a decoder's give-up).
_NOT_TEXT = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ufffd]")
_CONTROL_BYTES = frozenset(range(0x00, 0x09)) | {0x0B, 0x0C} | frozenset(range(0x0E, 0x20))


class InputError(Exception):
    """The input cannot be read as a list at all: one line for the user, exit status 2."""


class ByteLines(Protocol):
    def readline(self, size: int = -1, /) -> bytes: ...


@dataclass(frozen=True, slots=True)
class Line:
    """One physical line, decoded, its ending kept (a CSV field may span lines)."""

    number: int
    text: str
    problem: str | None = None  # why it cannot be read; then `text` is a bounded prefix
    reason: str = "invalid_syntax"  # the reason `problem` is answered with
    guessed: str | None = None  # the encoding a per-line guess read it in (not UTF-8)


def shown(text: str) -> str:
    """A bounded prefix of `text`, for a record about input that is no address."""
    text = text.rstrip("\r\n")
    return text if len(text) <= SHOWN else text[:SHOWN] + "…"


class Prefixed:
    """`head` (already read to check the file) followed by the rest of the stream."""

    def __init__(self, head: bytes, rest: ByteLines) -> None:
        self._head = io.BytesIO(head)
        self._rest = rest

    def readline(self, size: int = -1, /) -> bytes:
        line = self._head.readline(size)
        if line.endswith(b"\n") or (size >= 0 and len(line) >= size):
            return line
        return line + self._rest.readline(size - len(line) if size >= 0 else -1)


class TextAsBytes:
    """A text stream (io.StringIO, as tests and callers pass) read as UTF-8 bytes."""

    def __init__(self, fh: TextIO) -> None:
        self._fh = fh

    def read(self, size: int) -> bytes:
        return self._fh.read(size).encode("utf-8", "surrogateescape")

    def readline(self, size: int = -1, /) -> bytes:
        return self._fh.readline(size).encode("utf-8", "surrogateescape")


def check_text(head: bytes, name: str) -> None:
    """Refuse a file that is not text, before a single record is written for it."""
    if head.startswith(b"PK\x03\x04"):
        raise InputError(f"{name}: a ZIP archive, not text (an .xlsx workbook? name it .xlsx)")
    if head.startswith(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"):
        raise InputError(f"{name}: a legacy Excel .xls workbook: save it as .xlsx or CSV UTF-8")
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise InputError(f"{name}: UTF-16 text (Excel 'Unicode Text'): save it as CSV UTF-8")
    # Binary: NUL on the first line, or most lines of the head hold control bytes (a text
    # list with one stray binary line is read, that line answered alone).
    lines = [x for x in head.split(b"\n") if x]
    if b"\x00" in head.split(b"\n", 1)[0]:
        raise InputError(f"{name}: not a text file (NUL bytes at the start)")
    if lines and sum(any(b in _CONTROL_BYTES for b in x) for x in lines) > len(lines) / 2:
        raise InputError(f"{name}: not a text file (mostly control bytes)")


class Decoder:
    """UTF-8 first; else the file's own encoding (charset-normalizer on a large sample),
    else a per-line guess, remembered for the lines after it; else the line is set aside."""

    def __init__(self, file_encoding: str | None = None) -> None:
        self.file_encoding = file_encoding
        self._guess: str | None = None

    def decode(self, number: int, raw: bytes) -> Line:
        try:
            return Line(number, raw.decode("utf-8"))
        except UnicodeDecodeError:
            pass
        if self.file_encoding and (text := _as_text(raw, self.file_encoding)) is not None:
            return Line(number, text)
        if self._guess and (text := _as_text(raw, self._guess)) is not None:
            return Line(number, text, guessed=self._guess)
        best = charset_normalizer.from_bytes(raw).best()
        if best is not None and (text := _as_text(raw, best.encoding)) is not None:
            self._guess = best.encoding
            return Line(number, text, guessed=best.encoding)
        return Line(
            number,
            shown(raw.decode("utf-8", "replace")),
            f"line {number} is not UTF-8 and reads as text in no encoding: not read",
            "invalid_encoding",
        )


def _as_text(raw: bytes, encoding: str) -> str | None:
    try:
        text = raw.decode(encoding)
    except (UnicodeDecodeError, LookupError):
        return None
    return None if _NOT_TEXT.search(text) else text


def file_encoding(sample: bytes) -> str | None:
    """The encoding of a file whose start is not UTF-8, from a large sample (a detector
    needs context: on one short line it guesses wildly). None: UTF-8 or no idea."""
    try:
        sample.decode("utf-8")
        return None
    except UnicodeDecodeError as exc:
        if exc.start >= len(sample) - 3:  # a character cut by the sample's end
            return None
    best = charset_normalizer.from_bytes(sample).best()
    return None if best is None else best.encoding


def physical_lines(
    src: ByteLines, decoder: Decoder, *, limit: int = MAX_ROW, start: int = 1
) -> Iterator[Line]:
    """Every physical line (split at LF only) decoded, none held past `limit` bytes."""
    number = start - 1
    while True:
        raw = src.readline(limit + 1)
        if not raw:
            return
        number += 1
        if number == 1 and raw.startswith(codecs.BOM_UTF8):
            raw = raw[len(codecs.BOM_UTF8) :]
        if len(raw) > limit and not raw.endswith(b"\n"):
            size = len(raw)
            while (chunk := src.readline(limit)) and not chunk.endswith(b"\n"):
                size += len(chunk)  # skipped as read: never held
            size += len(chunk)
            yield Line(
                number,
                shown(raw[: SHOWN * 4].decode("utf-8", "replace")),
                f"line {number} is {size} bytes long, longer than any address row can be "
                f"({limit} bytes): not read",
            )
            continue
        yield decoder.decode(number, raw)
