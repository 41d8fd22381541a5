"""Email addresses and hostnames, checked before anything touches a socket.

Every string that ends up on the SMTP wire (the address, the MX host, the HELO
name, the MAIL FROM address) passes through here first, so a CR, LF, NUL or
other control character can never smuggle a second SMTP command onto the line.
Syntax is email-validator's (RFC 5321/5322, IDNA, length limits); this module
adds the control-character gate and the shapes the rest of mailprobe uses.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import email_validator

# C0 controls, DEL, C1 controls and the Unicode line/paragraph separators: any
# of them on the wire can end an SMTP command line early or confuse a parser.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")

# RFC 1035 / RFC 1123 host name: dot-separated LDH labels of 1-63 octets.
_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")

MAX_HOSTNAME_LENGTH = 253
MAX_LOCAL_OCTETS = 64  # RFC 5321 §4.5.3.1.1
MAX_PATH_OCTETS = 254  # RFC 5321 §4.5.3.1.3: 256 for the path, less the angle brackets


class InvalidAddress(ValueError):
    """An address, host name or identity that must not be sent to a server."""

    reason = "invalid_syntax"


def reject_control_chars(value: str, what: str) -> None:
    """Refuse any control character: the guard against SMTP command injection."""
    match = _CONTROL.search(value)
    if match:
        raise InvalidAddress(
            f"{what} contains a control character (U+{ord(match.group()):04X}); refused"
        )


def check_hostname(name: str, what: str = "host name") -> str:
    """Return `name` as a lowercase ASCII (IDNA) host name, or raise InvalidAddress."""
    reject_control_chars(name, what)
    host = name.strip().rstrip(".")
    if not host:
        raise InvalidAddress(f"{what} is empty")
    try:
        ascii_host = host.encode("idna").decode("ascii").lower()
    except UnicodeError as exc:
        raise InvalidAddress(f"{what} {name!r} is not a valid host name: {exc}") from exc
    if len(ascii_host) > MAX_HOSTNAME_LENGTH:
        raise InvalidAddress(f"{what} {name!r} is longer than {MAX_HOSTNAME_LENGTH} characters")
    labels = ascii_host.split(".")
    if not all(_LABEL.match(label) for label in labels):
        raise InvalidAddress(f"{what} {name!r} is not a valid host name")
    return ascii_host


@dataclass(frozen=True, slots=True)
class EmailAddress:
    """A checked address: local part as given (case kept), domain normalised."""

    local: str
    domain: str
    ascii_domain: str

    @property
    def normalized(self) -> str:
        """The key we store and deduplicate on: local part verbatim, domain lowercased."""
        return f"{self.local}@{self.domain}"

    @property
    def wire(self) -> str:
        """The form sent in RCPT TO: the domain IDNA-encoded."""
        return f"{self.local}@{self.ascii_domain}"

    @property
    def needs_smtputf8(self) -> bool:
        return not self.local.isascii()

    def __str__(self) -> str:
        return self.normalized


def parse_address(raw: str) -> EmailAddress:
    """Strip and check `raw`; raise InvalidAddress with a message a user can act on.

    The local part keeps its case (RFC 5321 §2.4: only the receiving host may
    fold it); the domain is lowercased and IDNA-encoded for the wire.
    """
    if not isinstance(raw, str):
        raise InvalidAddress(f"address must be a string, not {type(raw).__name__}")
    reject_control_chars(raw, "address")
    text = raw.strip()
    if not text:
        raise InvalidAddress("address is empty")
    if text.count("@") != 1:
        raise InvalidAddress(f"address {text!r} must contain exactly one @")
    try:
        valid = email_validator.validate_email(
            text, check_deliverability=False, allow_smtputf8=True
        )
    except email_validator.EmailNotValidError as exc:
        raise InvalidAddress(f"address {text!r}: {exc}") from exc
    address = EmailAddress(
        local=valid.local_part,
        domain=valid.domain,
        ascii_domain=valid.ascii_domain or check_hostname(valid.domain, "domain"),
    )
    if len(address.local.encode()) > MAX_LOCAL_OCTETS:
        raise InvalidAddress(f"address {text!r}: local part is longer than 64 octets")
    if len(address.wire.encode()) > MAX_PATH_OCTETS:
        raise InvalidAddress(f"address {text!r}: longer than {MAX_PATH_OCTETS} octets")
    return address


def is_valid_address(raw: str) -> bool:
    try:
        parse_address(raw)
    except InvalidAddress:
        return False
    return True
