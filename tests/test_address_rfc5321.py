"""Every RFC 5321 mailbox is accepted and sent in a form a server takes (issue 13, point 3);
special-use domains are said plainly as reserved_domain (issue 13, point 7)."""

from __future__ import annotations

import asyncio
import io
import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailprobe.address import (
    SPECIAL_USE_DOMAINS,
    EmailAddress,
    InvalidAddress,
    ReservedDomain,
    parse_address,
)
from mailprobe.classify import REASONS, Reason
from mailprobe.config import ConfigError, Settings
from mailprobe.engine import Context
from mailprobe.engine.probe import probe_email
from mailprobe.inputs import entry, read_addresses
from mailprobe.report import render_record
from mailprobe.results import LineAnswer, invalid_answer
from mailprobe.smtp import SMTPSession
from mailprobe.verdict import decide

# -- the RFC 5321 §4.1.2 grammar, with RFC 6531's UTF8-non-ascii ----------------------
# atext (RFC 5322 §3.2.3), plus a few precomposed non-ASCII letters (RFC 6531 §3.3).
ATEXT = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+-/=?^_`{|}~"
UTF8_NON_ASCII = "äöüéñøłçßжあ中"
# qtextSMTP = %d32-33 / %d35-91 / %d93-126 (no control character, no " or \ bare).
QTEXT = "".join(chr(c) for c in [*range(32, 34), *range(35, 92), *range(93, 127)])
DOT_STRING = re.compile(r"^[" + re.escape(ATEXT + UTF8_NON_ASCII) + r"]+(\.[" + re.escape(
    ATEXT + UTF8_NON_ASCII) + r"]+)*$")  # fmt: skip

atom = st.text(alphabet=ATEXT + UTF8_NON_ASCII, min_size=1, max_size=8)
dot_string = st.lists(atom, min_size=1, max_size=3).map(".".join)
qcontent = st.one_of(
    st.sampled_from(QTEXT + UTF8_NON_ASCII),
    st.sampled_from([chr(c) for c in range(32, 127)]).map(lambda c: "\\" + c),  # quoted-pair
)
quoted_string = st.lists(qcontent, min_size=0, max_size=16).map(lambda q: '"' + "".join(q) + '"')
let_dig = "abcdefghijklmnopqrstuvwxyz0123456789"
sub_domain = st.builds(
    lambda first, mid, last: first + mid + last if mid or last else first,
    st.sampled_from(let_dig),
    st.text(alphabet=let_dig + "-", max_size=6),
    st.text(alphabet=let_dig, min_size=1, max_size=2),
).filter(lambda label: "--" not in label[2:4])  # "xn--"-like labels are IDNA's
idn_label = st.sampled_from(["café", "bücher", "münchen", "пример"])
tld = st.sampled_from(["com", "org", "de", "io", "shop", "example", "test"])
domain = st.builds(
    lambda labels, top: ".".join([*labels, top]),
    st.lists(st.one_of(sub_domain, idn_label), min_size=1, max_size=2),
    tld,
)
mailbox = st.builds(
    lambda local, dom: f"{local}@{dom}", st.one_of(dot_string, quoted_string), domain
)


def _unquoted(local: str) -> str:
    """The mailbox name a quoted string stands for (its quoted-pairs resolved)."""
    return re.sub(r"\\(.)", r"\1", local[1:-1]) if local.startswith('"') else local


@settings(max_examples=400, deadline=None)
@given(mailbox)
def test_every_rfc5321_mailbox_round_trips(text: str) -> None:
    local = text.rpartition("@")[0]
    if len(local.encode()) > 64:
        return  # RFC 5321 §4.5.3.1.1 caps the local part; the grammar does not
    address = parse_address(text)  # accepted: no RFC 5321 Mailbox is "invalid_syntax"
    wire = address.wire
    assert not any(c in wire for c in "\r\n\x00")
    again = parse_address(wire)
    assert again == address  # the wire form is the same mailbox
    assert parse_address(address.normalized) == address  # the stored key is stable
    name = _unquoted(local)
    assert _unquoted(address.local) == name or address.local.lower() == name.lower()
    # a quoted string that needs no quoting goes out as a dot-atom, and only then
    assert address.quoted == (DOT_STRING.match(name) is None)
    command = b" ".join(SMTPSession.rcpt_command(address))
    assert command == b"RCPT TO:<" + wire.encode() + b">"


@pytest.mark.parametrize(
    ("raw", "wire"),
    [
        ('"d.wood"@example.com', "d.wood@example.com"),  # the address
        ('"john doe"@x.com', '"john doe"@x.com'),
        ('"a@b"@x.com', '"a@b"@x.com'),
        ('"a\\"b"@x.com', '"a\\"b"@x.com'),  # RFC 5321 quoted-pairSMTP
        ('"a\\ b"@x.com', '"a b"@x.com'),  # a needless quoted-pair resolved
        ('""@x.com', '""@x.com'),  # Quoted-string = DQUOTE *QcontentSMTP DQUOTE
        ("first+tag@x.com", "first+tag@x.com"),
        ("jöe@café.com", "jöe@xn--caf-dma.com"),
        ('"jö e"@x.com', '"jö e"@x.com'),
    ],
)
def test_quoted_and_international_mailboxes(raw: str, wire: str) -> None:
    address = parse_address(raw)
    assert address.wire == wire
    assert parse_address(wire) == address
    assert address.needs_smtputf8 == (not wire.partition("@")[0].isascii())


@pytest.mark.parametrize(
    "raw",
    [
        '"a\rb"@x.com', '"a\nb"@x.com', '"a\x00b"@x.com', '"a\\\rb"@x.com', '"a\tb"@x.com',
        '"a\x7fb"@x.com', "a b@x.com", "a..b@x.com", ".a@x.com", "@x.com", '"a"b"@x.com',
        "a@b@x.com", "a@-x.com", "a@x", '"unterminated@x.com',
    ],
)  # fmt: skip
def test_what_rfc5321_forbids_is_refused(raw: str) -> None:
    with pytest.raises(InvalidAddress) as caught:
        parse_address(raw)
    assert type(caught.value) is InvalidAddress  # syntax, not reserved_domain


# -- special-use domains: reserved_domain ----------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        "a@foo.test", "a@test", "a@x.invalid", "a@localhost", "a@host.localhost",
        "a@printer.local", "a@xyz.onion", "a@router.home.arpa", "a@x.alt", "a@shop.example",
        "a@example.com", "a@www.example.org", "a@example.net", '"d.wood"@x.test', "jöe@b.local",
    ],
)  # fmt: skip
def test_special_use_domains_are_reserved(raw: str) -> None:
    assert parse_address(raw)  # syntax alone: a valid address
    with pytest.raises(ReservedDomain) as caught:
        parse_address(raw, special_use_allowed=())
    assert caught.value.reason == "reserved_domain"
    assert "special-use" in str(caught.value) and "SPECIAL_USE_ALLOWED=" in str(caught.value)


def test_allowed_special_use_names_parse_as_usual() -> None:
    address = parse_address("Jane@Foo.Test", special_use_allowed=("test",))
    assert (address.local, address.domain, address.wire) == ("Jane", "foo.test", "Jane@foo.test")
    assert parse_address("a@bücher.local", special_use_allowed=("local",)).wire == (
        "a@xn--bcher-kva.local"
    )
    with pytest.raises(ReservedDomain):  # "test" allows .test only
        parse_address("a@foo.local", special_use_allowed=("test",))
    with pytest.raises(InvalidAddress):  # an allowed name still needs valid syntax
        parse_address("a..b@foo.test", special_use_allowed=("test",))
    assert parse_address("a@acme.com", special_use_allowed=()).domain == "acme.com"


def test_special_use_allowed_setting() -> None:
    assert Settings.from_env({}).special_use_allowed == ()
    got = Settings.from_env({"SPECIAL_USE_ALLOWED": "test, .Example,example.com,test"})
    assert got.special_use_allowed == ("test", "example", "example.com")
    assert got.as_env()["SPECIAL_USE_ALLOWED"] == "test,example,example.com"
    with pytest.raises(ConfigError, match="SPECIAL_USE_ALLOWED"):
        Settings.from_env({"SPECIAL_USE_ALLOWED": "com"})
    assert set(SPECIAL_USE_DOMAINS) >= {"test", "invalid", "localhost", "local", "onion", "alt"}


def test_reserved_domain_reason_and_verdict() -> None:
    assert REASONS[Reason.RESERVED_DOMAIN].signal.value == "does_not_exist"
    assert decide("reserved_domain") == ("undeliverable", "reserved_domain")
    assert decide("reserved_domain", dns_status="dns_error") == ("undeliverable", "reserved_domain")


def _record(raw: str, allowed: tuple[str, ...] = ()) -> dict[str, Any]:
    line = entry(1, raw, {}, allowed)
    assert line.address is None and line.error
    return render_record(LineAnswer(1, raw, invalid_answer(raw, line.error, line.reason)))


def test_invalid_lines_say_why_in_the_record() -> None:
    reserved = _record("x@shop.test")
    assert (reserved["verdict"], reserved["reason"]) == ("undeliverable", "reserved_domain")
    assert "special-use" in reserved["message"]
    invalid = _record("not an address")
    assert (invalid["verdict"], invalid["reason"]) == ("undeliverable", "invalid_syntax")
    assert "must contain an @" in invalid["message"]
    assert _record("a..b@x.com")["message"]  # every invalid line has its message


def test_input_lines_follow_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    text = "a@acme.example\nb@acme.test\n"
    lines = list(read_addresses(io.StringIO(text)))  # the process setting: example (conftest)
    assert lines[0].address is not None
    assert (lines[1].address, lines[1].reason) == (None, "reserved_domain")
    lines = list(read_addresses(io.StringIO(text), ("test",)))
    assert lines[0].reason == "reserved_domain" and lines[1].address is not None


def test_probe_answers_reserved_without_a_lookup() -> None:
    async def run() -> Any:
        # no DNS_NAMESERVERS that answer: a lookup would fail as dns_error
        ctx = Context.create(Settings.from_env({"DNS_NAMESERVERS": "127.0.0.1:9"}))
        try:
            return await probe_email(ctx, "boss@corp.invalid", persist=False)
        finally:
            await ctx.aclose()

    answer = asyncio.run(run())
    assert (answer.verdict.value, answer.reason) == ("undeliverable", "reserved_domain")
    assert answer.outcome.stage == "input" and "special-use" in (answer.outcome.error or "")


def test_email_address_is_frozen() -> None:
    address = parse_address('"john doe"@x.com')
    with pytest.raises(AttributeError):
        address.local = "x"  # type: ignore[misc]
    assert isinstance(address, EmailAddress)


def test_spellings_of_one_mailbox_are_one_stored_row(tmp_path: Any) -> None:
    """The normalised form is the database key: every spelling of a mailbox lands on it."""
    from mailprobe import queue
    from mailprobe.store import GeneratedEmail, Store

    store = Store(f"sqlite:///{tmp_path / 'mailprobe.db'}")
    store.upgrade()
    ids = {
        queue.upsert_generated_email(raw, store=store)
        for raw in ('"d.wood"@Acme.example', "d.wood@acme.example", '"d\\.wood"@acme.example')
    }
    quoted = {
        queue.upsert_generated_email(raw, store=store)
        for raw in ('"john doe"@acme.example', '"john\\ doe"@ACME.example')
    }
    assert len(ids) == 1 and len(quoted) == 1 and ids != quoted
    with store.session() as session:
        row = session.get(GeneratedEmail, quoted.pop())
        assert row is not None
        assert (row.email, row.local_part) == ('"john doe"@acme.example', '"john doe"')
    store.dispose()


# -- the short way for plain addresses agrees with email-validator's whole way ---------
# Characters that make the two ways differ if anything does: atext, dots, hyphens,
# digits, letters of both cases, a quote, non-ASCII, and the @.
_SHAPES = "aZ09.-_+'`|~=@\"é"


def _both(raw: str, allowed: tuple[str, ...] | None = None) -> tuple[object, object]:
    from mailprobe.address import _validated

    def outcome(parse: Any) -> object:
        try:
            return parse()
        except InvalidAddress as exc:
            return type(exc)

    return (
        outcome(lambda: parse_address(raw, special_use_allowed=allowed)),
        outcome(lambda: _validated(raw.strip(), allowed)),
    )


@settings(max_examples=3000, deadline=None)
@given(
    st.text(_SHAPES, min_size=1, max_size=12),
    st.lists(st.text("aZ09-", min_size=1, max_size=8), min_size=1, max_size=4),
    st.sampled_from(["", ".example", ".test", ".localhost", ".arpa", ".onion", ".Example"]),
    st.sampled_from([None, (), ("example",), ("test", "localhost")]),
)
def test_plain_addresses_parse_as_email_validator_parses_them(
    local: str, labels: list[str], special: str, allowed: tuple[str, ...] | None
) -> None:
    raw = f"{local}@{'.'.join(labels)}{special}"
    fast, whole = _both(raw, allowed)
    assert fast == whole, raw


@pytest.mark.parametrize(
    "raw",
    [
        "Jane.Doe@Acme.COM", "a@b.co", "a@1.2.3.com", "a@b.c0", "a@b.0c", "a@x-.com", "a@-x.com",
        "a@ab--c.com", "a@xn--bcher-kva.example.com", "a.@b.com", ".a@b.com", "a..b@c.com",
        "a@b.com.", "a@b", "a@b.123", f"{'a' * 64}@b.com", f"{'a' * 65}@b.com",
        f"a@{'b' * 63}.com", f"a@{'b' * 64}.com", f"{'a' * 64}@{'b.' * 94}com",
        f"{'a' * 64}@{'b.' * 93}com", "a@test", "a@x.test", "a@x.localhost", "a@x.invalid",
        "user+tag@sub.domain.org", "o'brien@x.ie", "a@x.museum",
    ],
)  # fmt: skip
def test_plain_address_edges_agree(raw: str) -> None:
    for allowed in (None, (), ("test", "localhost")):
        fast, whole = _both(raw, allowed)
        assert fast == whole
