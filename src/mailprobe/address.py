"""Email addresses and hostnames, checked before anything touches a socket.

Every string that ends up on the SMTP wire (the address, the MX host, the HELO
name, the MAIL FROM address) passes through here first, so a CR, LF, NUL or
other control character can never smuggle a second SMTP command onto the line.
Syntax is email-validator's (RFC 5321/5322, quoted local parts, SMTPUTF8, IDNA,
length limits); this module adds the control-character gate, the special-use
domain names that can never receive mail on the public Internet, and the shapes
the rest of mailprobe uses.
"""

from __future__ import annotations

import re
from collections.abc import Collection
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


# The IANA Special-Use Domain Names registry
# (https://www.iana.org/assignments/special-use-domain-names/, listed in full on
# https://en.wikipedia.org/wiki/Special-use_domain_name): alt (RFC 9476); example,
# example.com, example.net, example.org, invalid, localhost and test (RFC 6761); local
# (RFC 6762); onion (RFC 7686); and names under arpa: the private and link-local
# reverse zones (RFC 6761, RFC 6762), ipv4only.arpa (RFC 8880), home.arpa (RFC 8375),
# 6tisch.arpa (RFC 9031). As email-validator does (its SPECIAL_USE_DOMAIN_NAMES), all
# of arpa counts. email-validator leaves the example names out, because RFC 6761 §6.5
# asks applications not to treat them specially; for a verifier they are never a real
# mailbox (the TLD is not delegated, example.com/.net/.org publish a null MX), so they
# are here, and a test environment that uses them allows them (SPECIAL_USE_ALLOWED).
SPECIAL_USE_DOMAINS: tuple[str, ...] = (
    "alt", "arpa", "example", "example.com", "example.net", "example.org", "invalid",
    "local", "localhost", "onion", "test",
)  # fmt: skip

# email-validator's own stand-in: with test_environment=True it accepts "test" and
# "*.test" (and nothing else special), so an allowed special-use name is checked for
# syntax as if it were "test" (same rules for every label before it).
_STAND_IN = "test"


class InvalidAddress(ValueError):
    """An address, host name or identity that must not be sent to a server."""

    reason = "invalid_syntax"


class ReservedDomain(InvalidAddress):
    """A syntactically valid address at a special-use domain: it never receives mail
    on the public Internet, so nothing is asked."""

    reason = "reserved_domain"


def special_use_name(domain: str) -> str | None:
    """The IANA special-use name `domain` is (or is under), or None."""
    host = domain.strip().rstrip(".").lower()
    for name in SPECIAL_USE_DOMAINS:
        if host == name or host.endswith("." + name):
            return name
    return None


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
    """A checked address: local part in its canonical RFC 5321 form, domain normalised.

    `local` is email-validator's normalisation: NFC, a quoted string unquoted when it
    needs no quoting (`"d.wood"` is `d.wood`), otherwise quoted with only the
    necessary quoted-pairs (`"john doe"`, `"a\\"b"`). It is the same for every
    spelling of one mailbox, so it is what we store and what we send.
    """

    local: str
    domain: str
    ascii_domain: str

    @property
    def normalized(self) -> str:
        """The key we store and deduplicate on: canonical local part, domain lowercased."""
        return f"{self.local}@{self.domain}"

    @property
    def wire(self) -> str:
        """The form sent in RCPT TO: canonical local part, the domain IDNA-encoded."""
        return f"{self.local}@{self.ascii_domain}"

    @property
    def needs_smtputf8(self) -> bool:
        """RFC 6531: a non-ASCII local part may only go to a server offering SMTPUTF8."""
        return not self.local.isascii()

    @property
    def quoted(self) -> bool:
        return self.local.startswith('"')

    def __str__(self) -> str:
        return self.normalized


# The shape almost every address in a real list has: an ASCII dot-atom local part and
# a domain of LDH labels ending in a letter (email-validator's DOT_ATOM_TEXT and
# DOT_ATOM_TEXT_HOSTNAME, its DOMAIN_NAME_REGEX). email-validator's answer for such an
# address is the address itself with the domain lowercased; reaching it costs ~25 us of
# Unicode and IDNA checks that only non-ASCII or unusual input needs, most of a bulk
# run's parsing. Anything else (quotes, non-ASCII, "--" labels such as Punycode, a
# trailing dot, a special-use name not allowed, a length limit) goes the whole way;
# tests/test_address_rfc5321.py checks that both ways agree on generated input.
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]"
_PLAIN_LOCAL = re.compile(rf"{_ATEXT}+(?:\.{_ATEXT}+)*")
_PLAIN_DOMAIN = re.compile(
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+"  # labels, then a TLD:
    r"[A-Za-z](?:[A-Za-z0-9-]{0,61}[A-Za-z])?"  # letters at both ends
)


def _plain(local: str, domain: str, allowed: Collection[str] | None) -> EmailAddress | None:
    """`local@domain` checked the short way when it has the plain shape, else None (a
    special-use name the setting refuses goes the whole way, to be said so)."""
    if (
        len(local) > MAX_LOCAL_OCTETS
        or len(local) + len(domain) >= MAX_PATH_OCTETS
        or "--" in domain
        or _PLAIN_LOCAL.fullmatch(local) is None
        or _PLAIN_DOMAIN.fullmatch(domain) is None
    ):
        return None
    if allowed is not None and special_use_name(domain) not in (None, *allowed):
        return None
    lowered = domain.lower()
    return EmailAddress(local=local, domain=lowered, ascii_domain=lowered)


def parse_address(raw: str, *, special_use_allowed: Collection[str] | None = None) -> EmailAddress:
    """Strip and check `raw`; raise InvalidAddress with a message a user can act on.

    Every RFC 5321 Mailbox is accepted: dot-atoms, quoted strings (RFC 5321
    §4.1.2), SMTPUTF8 local parts (RFC 6531) and IDN domains. The local part
    keeps its case (RFC 5321 §2.4: only the receiving host may fold it); the
    domain is lowercased and IDNA-encoded for the wire.

    `special_use_allowed`: None checks syntax only; a collection (the setting
    SPECIAL_USE_ALLOWED) refuses a special-use domain not in it with ReservedDomain.
    """
    if not isinstance(raw, str):
        raise InvalidAddress(f"address must be a string, not {type(raw).__name__}")
    reject_control_chars(raw, "address")
    text = raw.strip()
    if not text:
        raise InvalidAddress("address is empty")
    if "@" not in text:
        raise InvalidAddress(f"address {text!r} must contain an @")
    # The domain never holds an @ (not even a domain literal); a quoted local part may.
    local_text, _, domain_text = text.rpartition("@")
    plain = _plain(local_text, domain_text, special_use_allowed)
    return plain if plain is not None else _validated(text, special_use_allowed)


def _validated(text: str, special_use_allowed: Collection[str] | None) -> EmailAddress:
    """`parse_address` the whole way, through email-validator."""
    local_text, _, domain_text = text.rpartition("@")
    special = special_use_name(domain_text)
    checked = text
    if special is not None:
        checked = f"{local_text}@{domain_text.strip().rstrip('.')[: -len(special)]}{_STAND_IN}"
    try:
        valid = email_validator.validate_email(
            checked,
            check_deliverability=False,
            allow_smtputf8=True,
            allow_quoted_local=True,
            # RFC 5321 Quoted-string = DQUOTE *QcontentSMTP DQUOTE: "" is a mailbox
            # name; an unquoted empty local part is not (Dot-string needs an Atom).
            allow_empty_local=local_text.startswith('"'),
            test_environment=special is not None,
        )
    except email_validator.EmailNotValidError as exc:
        raise InvalidAddress(f"address {text!r}: {exc}") from exc
    domain, ascii_domain = valid.domain, valid.ascii_domain
    if special is not None:
        domain = domain[: -len(_STAND_IN)] + special
        ascii_domain = ascii_domain[: -len(_STAND_IN)] + special
    address = EmailAddress(
        local=valid.local_part or '""',  # email-validator gives the empty quoted string as ""
        domain=domain,
        ascii_domain=ascii_domain or check_hostname(domain, "domain"),
    )
    reject_control_chars(address.wire, "address")  # RFC 5321 qtextSMTP: none, quoted or not
    if len(address.local.encode()) > MAX_LOCAL_OCTETS:
        raise InvalidAddress(f"address {text!r}: local part is longer than 64 octets")
    if len(address.wire.encode()) > MAX_PATH_OCTETS:
        raise InvalidAddress(f"address {text!r}: longer than {MAX_PATH_OCTETS} octets")
    allowed = special_use_allowed
    if special is not None and allowed is not None and special not in allowed:
        raise ReservedDomain(
            f"address {text!r}: {domain} is a special-use domain name ({special}, "
            "IANA registry) and never receives mail on the public Internet; "
            f"SPECIAL_USE_ALLOWED={special} allows it in a test environment"
        )
    return address


def is_valid_address(raw: str) -> bool:
    try:
        parse_address(raw)
    except InvalidAddress:
        return False
    return True
