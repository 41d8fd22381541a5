"""Reading SMTP replies as their senders mean them.

The corpus (data/smtp_replies.jsonl, package data of mailprobe.testing) holds
real replies from public sources (data/SOURCES.md), each with the reason and the
address signal a careful reader gives it. Every entry must classify to its recorded reason.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailprobe.classify import (
    REASONS,
    RULES,
    STAGES,
    Category,
    Classification,
    Reason,
    Signal,
    category_for_code,
    classify_reply,
    parse_enhanced,
)
from mailprobe.testing import CORPUS_FILE, SOURCES_FILE

pytestmark = pytest.mark.r08  # the seed's label: pytest -k r08

CORPUS_PATH = CORPUS_FILE
SOURCES_PATH = SOURCES_FILE

# Providers whose replies mean something else than the words say: the rule that
# reads them keys on the MX host, so the test passes a real MX host name of theirs.
PROVIDER_MX: dict[str, str] = {
    "microsoft365": "example-com.mail.protection.outlook.com",
    "outlook.com": "hotmail-com.olc.protection.outlook.com",
    "gmx": "mx00.emig.gmx.net",
    "mimecast": "us-smtp-inbound-1.mimecast.com",
}


def load_corpus() -> list[dict[str, Any]]:
    with CORPUS_PATH.open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def classify_entry(entry: dict[str, Any]) -> Classification:
    return classify_reply(
        entry["stage"],
        entry["code"],
        entry["text"],
        mx_host=PROVIDER_MX.get(entry["provider"], ""),
    )


CORPUS = load_corpus()


# -- the corpus itself ---------------------------------------------------------


def test_corpus_sanity() -> None:
    assert len(CORPUS) >= 150
    assert len({e["provider"] for e in CORPUS}) >= 40
    assert len({e["id"] for e in CORPUS}) == len(CORPUS), "ids must be unique"
    sources = SOURCES_PATH.read_text(encoding="utf-8")
    signals = {s.value for s in Signal}
    for entry in CORPUS:
        assert entry["source"], entry["id"]
        assert entry["source"] in sources, f"{entry['id']}: source not listed in SOURCES.md"
        assert entry["stage"] in STAGES, entry["id"]
        assert Reason(entry["reason"]) in REASONS, entry["id"]
        assert entry["address"] in signals, entry["id"]
        assert isinstance(entry["code"], int), entry["id"]


def test_provider_mx_only_where_a_rule_needs_it() -> None:
    providers = {e["provider"] for e in CORPUS}
    assert set(PROVIDER_MX) <= providers
    needed = set()
    for entry in CORPUS:
        without_mx = classify_reply(entry["stage"], entry["code"], entry["text"]).reason
        if without_mx.value != entry["reason"]:
            needed.add(entry["provider"])
    assert needed == set(PROVIDER_MX)


# -- every corpus entry ----------------------------------------------------------


@pytest.mark.parametrize("entry", CORPUS, ids=[e["id"] for e in CORPUS])
def test_corpus_reason(entry: dict[str, Any]) -> None:
    result = classify_entry(entry)
    assert result.reason.value == entry["reason"], f"rule {result.rule!r}"
    assert result.category == category_for_code(entry["code"])


@pytest.mark.parametrize("entry", CORPUS, ids=[e["id"] for e in CORPUS])
def test_corpus_address_signal(entry: dict[str, Any]) -> None:
    """The reason's signal never contradicts what the corpus knows about the address.

    * Before RCPT a reply says nothing about the recipient: the corpus records
      "undetermined" (a 250 to MAIL FROM is accepted, but proves nothing).
    * "does not exist" must match exactly, both ways: it is the costly verdict.
    * Otherwise either side may be more precise than the other: a reason with an
      undetermined signal may carry text that shows the mailbox exists (Gmail's
      "receiving mail too quickly"), and the corpus may be unsure where the reason
      is not ("Account Closed" is mailbox_disabled, the mailbox was there).
    """
    signal = REASONS[Reason(entry["reason"])].signal.value
    address = entry["address"]
    if entry["stage"] != "rcpt":
        assert address == Signal.UNDETERMINED.value
        return
    assert (signal == Signal.DOES_NOT_EXIST.value) == (address == Signal.DOES_NOT_EXIST.value)
    assert signal == address or Signal.UNDETERMINED.value in (signal, address)


def test_parse_enhanced_never_contradicts_corpus() -> None:
    for entry in CORPUS:
        code, _ = parse_enhanced(entry["text"])
        assert code is None or code == entry["enhanced"], entry["id"]


# -- units -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "category"),
    [
        (None, Category.UNKNOWN),
        (0, Category.UNKNOWN),
        (199, Category.UNKNOWN),
        (200, Category.ACCEPT),
        (220, Category.ACCEPT),
        (250, Category.ACCEPT),
        (299, Category.ACCEPT),
        (354, Category.UNKNOWN),
        (421, Category.TEMP_FAIL),
        (450, Category.TEMP_FAIL),
        (499, Category.TEMP_FAIL),
        (500, Category.HARD_FAIL),
        (550, Category.HARD_FAIL),
        (599, Category.HARD_FAIL),
        (600, Category.UNKNOWN),
    ],
)
def test_seed_mapping(code: int | None, category: Category) -> None:
    assert category_for_code(code) is category


def test_parse_enhanced_multiline() -> None:
    # As aiosmtplib hands it over: "550-" / "550 " stripped, the enhanced code kept per line.
    text = (
        "5.1.1 The email account that you tried to reach does not exist. Please try\n"
        "5.1.1 double-checking the recipient's email address for typos or\n"
        "5.1.1 unnecessary spaces. Learn more at\n"
        "5.1.1  https://support.google.com/mail/?p=NoSuchUser a1si123 - gsmtp"
    )
    code, body = parse_enhanced(text)
    assert code == "5.1.1"
    assert "5.1.1" not in body
    assert body.splitlines()[1] == "double-checking the recipient's email address for typos or"
    assert len(body.splitlines()) == 4


@pytest.mark.parametrize(
    ("text", "code", "body"),
    [
        ("2.1.5 Ok", "2.1.5", "Ok"),
        ("#5.1.0 Address rejected user@example.org", "5.1.0", "Address rejected user@example.org"),
        ("Sorry, no mailbox here by that name. (#5.1.1)", "5.1.1", None),
        ("mx.example.net ESMTP ready", None, "mx.example.net ESMTP ready"),
        ("", None, ""),
        ("7.7.1 not a real class", None, "7.7.1 not a real class"),
    ],
)
def test_parse_enhanced_forms(text: str, code: str | None, body: str | None) -> None:
    parsed_code, parsed_body = parse_enhanced(text)
    assert parsed_code == code
    assert parsed_body == (text.strip() if body is None else body)


def test_blocklist_sent_as_511_is_policy_block() -> None:
    for text in (
        "5.1.1 Service unavailable; client [192.0.2.1] blocked using zen.spamhaus.org",
        "5.1.1 Your IP address is listed on our block list",
        "5.1.1 Mail from 192.0.2.1 rejected: poor reputation",
        "5.1.1 Reverse DNS lookup for 192.0.2.1 failed",
        "5.1.1 SPF check failed for example.org",
    ):
        result = classify_reply("rcpt", 550, text)
        assert result.reason is Reason.POLICY_BLOCK, text
        assert REASONS[result.reason].signal is Signal.UNDETERMINED


def test_bare_mailbox_unavailable_depends_on_the_mx() -> None:
    text = "Requested action not taken: mailbox unavailable"
    assert classify_reply("rcpt", 550, text).reason is Reason.MAILBOX_UNAVAILABLE
    assert classify_reply("rcpt", 550, text, mx_host="mx.example.net").reason is (
        Reason.MAILBOX_UNAVAILABLE
    )
    for mx in (
        "mx00.emig.gmx.net",
        "mx-ha02.web.de",
        "hotmail-com.olc.protection.outlook.com",
        "mx00.emig.gmx.net.",
    ):
        assert classify_reply("rcpt", 550, text, mx_host=mx).reason is Reason.MAILBOX_NOT_FOUND
    # A Microsoft 365 tenant is not Outlook.com: the bare phrase stays unclear there.
    tenant = "example-com.mail.protection.outlook.com"
    assert classify_reply("rcpt", 550, text, mx_host=tenant).reason is Reason.MAILBOX_UNAVAILABLE


def test_dbeb_only_at_microsoft() -> None:
    text = "5.4.1 [user@example.org]: Recipient address rejected: Access denied"
    tenant = "example-com.mail.protection.outlook.com"
    assert classify_reply("rcpt", 550, text, mx_host=tenant).reason is Reason.MAILBOX_NOT_FOUND
    elsewhere = classify_reply("rcpt", 550, text, mx_host="mx.example.net").reason
    assert REASONS[elsewhere].signal is Signal.UNDETERMINED


TENANT_MX = "example-com.mail.protection.outlook.com"
OLC_MX = "hotmail-com.olc.protection.outlook.com"
DBEB_TAGGED = (
    "5.4.1 Recipient address rejected: Access denied. AS(201806281) "
    "[PR2FRA01FT009.eop-fra01.prod.protection.outlook.com]"
)
OLC_TAGGED = "5.5.0 Requested action not taken: mailbox unavailable (S2017062302)"


@pytest.mark.parametrize("mx", ["", "mx.gateway.example", TENANT_MX, "mail.example.net"])
def test_dbeb_with_its_tag_is_not_found_at_any_mx(mx: str) -> None:
    """AS(201806281) is Microsoft's DBEB tag: a gateway passing it on still means "no such user"."""
    result = classify_reply("rcpt", 550, DBEB_TAGGED, mx_host=mx)
    assert result.reason is Reason.MAILBOX_NOT_FOUND
    # Before RCPT it cannot be about a mailbox.
    assert classify_reply("mail", 550, DBEB_TAGGED, mx_host=mx).reason is not (
        Reason.MAILBOX_NOT_FOUND
    )


def test_dbeb_untagged_needs_a_microsoft_mx() -> None:
    text = "5.4.1 Recipient address rejected: Access denied. [CY4PEPF0000EE3C.namprd03.outlook.com]"
    assert classify_reply("rcpt", 550, text, mx_host=TENANT_MX).reason is Reason.MAILBOX_NOT_FOUND
    elsewhere = classify_reply("rcpt", 550, text, mx_host="mx.gateway.example").reason
    assert REASONS[elsewhere].signal is Signal.UNDETERMINED


def test_microsoft_541_relay_access_denied_is_about_the_domain() -> None:
    for mx in (TENANT_MX, ""):
        result = classify_reply("rcpt", 550, "5.4.1 Relay Access Denied", mx_host=mx)
        assert result.reason is Reason.RELAY_DENIED


@pytest.mark.parametrize("mx", ["", "mx.gateway.example", TENANT_MX, OLC_MX])
def test_outlookcom_tagged_mailbox_unavailable_is_not_found(mx: str) -> None:
    assert classify_reply("rcpt", 550, OLC_TAGGED, mx_host=mx).reason is Reason.MAILBOX_NOT_FOUND


def test_untagged_550_mailbox_unavailable_only_at_outlookcom() -> None:
    """Microsoft documents 5.5.0 for @hotmail.com/@outlook.com recipients only."""
    text = "5.5.0 Requested action not taken: mailbox unavailable"
    assert classify_reply("rcpt", 550, text, mx_host=OLC_MX).reason is Reason.MAILBOX_NOT_FOUND
    for mx in (TENANT_MX, "", "mx.example.net"):
        assert classify_reply("rcpt", 550, text, mx_host=mx).reason is Reason.MAILBOX_UNAVAILABLE


def test_microsoft_57504_says_nothing_about_the_mailbox() -> None:
    text = "5.7.504 [user@example.com]: Recipient address rejected: Access denied"
    assert classify_reply("rcpt", 550, text, mx_host=TENANT_MX).reason is (
        Reason.MAILBOX_UNAVAILABLE
    )
    elsewhere = classify_reply("rcpt", 550, text, mx_host="mx.example.net").reason
    assert REASONS[elsewhere].signal is Signal.UNDETERMINED


@pytest.mark.parametrize("stage", STAGES)
@pytest.mark.parametrize(("code", "text"), [(220, "mx ESMTP"), (250, "2.1.0 Ok"), (221, "bye")])
def test_any_2xx_is_accepted(stage: str, code: int, text: str) -> None:
    assert classify_reply(stage, code, text).reason is Reason.ACCEPTED


@pytest.mark.parametrize(
    ("stage", "code", "text", "reason"),
    [
        ("rcpt", 552, "5.2.2 Mailbox size limit exceeded", Reason.MAILBOX_FULL),
        ("rcpt", 550, "5.2.1 <a@example.org>... User Unknown", Reason.MAILBOX_NOT_FOUND),
        (
            "rcpt",
            450,
            "4.2.1 The user you are trying to contact is receiving mail too quickly",
            Reason.RATE_LIMITED,
        ),
        ("rcpt", 551, "User not local; please try <a@example.net>", Reason.MAILBOX_UNAVAILABLE),
        ("rcpt", 552, "Requested mail action aborted", Reason.MAILBOX_UNAVAILABLE),
        ("rcpt", 451, "4.3.0 Temporary failure, please try again later", Reason.TEMP_FAILURE),
        ("mail", 550, "Transaction failed", Reason.POLICY_BLOCK),
        ("mail", 553, "5.1.8 Sender address rejected: Domain not found", Reason.SENDER_REJECTED),
        ("greeting", 421, "mx.example.net Service not available", Reason.SERVICE_UNAVAILABLE),
        ("greeting", 554, "SMTP synchronization error", Reason.PROTOCOL_ERROR),
        ("ehlo", 502, "5.5.2 Error: command not recognized", Reason.PROTOCOL_ERROR),
        ("ehlo", 550, "Rejected", Reason.POLICY_BLOCK),
    ],
)
def test_general_patterns(stage: str, code: int, text: str, reason: Reason) -> None:
    assert classify_reply(stage, code, text).reason is reason


def test_no_policy_refusal_reads_as_missing_mailbox() -> None:
    """Principle: a refusal about us never becomes "does not exist"."""
    for entry in CORPUS:
        if entry["reason"] in {"policy_block", "rate_limited", "sender_rejected", "relay_denied"}:
            reason = classify_reply(entry["stage"], entry["code"], entry["text"]).reason
            assert REASONS[reason].signal is not Signal.DOES_NOT_EXIST, entry["id"]


def test_rules_table_is_well_formed() -> None:
    names = [rule.name for rule in RULES]
    assert len(names) == len(set(names))
    for rule in RULES:
        assert rule.reason in REASONS
        assert set(rule.classes) <= set("245")
        assert set(rule.stages) <= set(STAGES)
        for pattern in (rule.text, rule.enhanced, rule.mx):
            if pattern is not None:
                re.compile(pattern)
    assert set(REASONS) == set(Reason)


def test_unknown_stage_is_an_error() -> None:
    with pytest.raises(ValueError):
        classify_reply("data", 250, "ok")


@settings(max_examples=300, deadline=None)
@given(
    stage=st.sampled_from(STAGES),
    code=st.integers(min_value=0, max_value=999),
    text=st.text(max_size=400),
    mx_host=st.text(max_size=60),
)
def test_classify_never_raises(stage: str, code: int, text: str, mx_host: str) -> None:
    result = classify_reply(stage, code, text, mx_host=mx_host)
    assert result.category == category_for_code(code)
    assert result.reason in REASONS
    if 200 <= code < 300:
        assert result.reason is Reason.ACCEPTED


@settings(max_examples=100, deadline=None)
@given(text=st.text(max_size=400), enhanced=st.none() | st.text(max_size=12))
def test_classify_never_raises_with_enhanced(text: str, enhanced: str | None) -> None:
    classify_reply("rcpt", 550, text, enhanced=enhanced)


# -- the fast matching means what the table says ---------------------------------------
# Rules are matched, for ASCII text, by their patterns lowercased and split into the
# alternatives `re` can skip ahead by (classify._Pattern); these tests hold that to the
# plain meaning: the pattern as written, case-insensitive, searched in the text as is.

_PATTERNS = [(rule.name, p) for rule in RULES for p in (rule.text, rule.mx) if p is not None]
_WORDS = sorted(
    {w for _, p in _PATTERNS for w in re.findall(r"[A-Za-z0-9]+", p)}
    | {w for e in CORPUS for w in e["text"].split()}
)


def _fast_equals_plain(text: str) -> None:
    from mailprobe.classify import _lowered

    for rule in RULES:
        for compiled, pattern in ((rule._text, rule.text), (rule._mx, rule.mx)):
            if compiled is None or pattern is None:
                continue
            plain = re.search(pattern, text, re.IGNORECASE) is not None
            assert compiled.search(text, _lowered(text)) is plain, (rule.name, text)


@settings(max_examples=400, deadline=None)
@given(
    st.lists(
        st.sampled_from(_WORDS) | st.sampled_from(["", " ", ".", "_", "x", "-", "(", ")", "#"]),
        max_size=12,
    ),
    st.sampled_from([" ", "", "_", ".", "x"]),
    st.booleans(),
)
def test_fast_matching_means_the_pattern(words: list[str], sep: str, upper: bool) -> None:
    """Words of the patterns themselves, glued with and without word boundaries (so a
    \\b in a pattern is tested both ways), in any case."""
    text = sep.join(words)
    _fast_equals_plain(text.upper() if upper else text)


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.characters(max_codepoint=0x7F), max_size=120))
def test_fast_matching_means_the_pattern_on_any_ascii(text: str) -> None:
    _fast_equals_plain(text)


def test_fast_matching_of_word_boundaries() -> None:
    for text in ("ptr", "a ptr", "xptr", "ptrx", "PTR record", "_rbl_", "the RBL", "rbl", "xrbl"):
        _fast_equals_plain(text)


def _reference(stage: str, code: int, text: str, mx_host: str) -> tuple[Reason, str]:
    """The table read the plain way: every rule in order, its patterns as written."""
    enhanced, text = parse_enhanced(text)
    text, mx_host = " ".join(text.split()), mx_host.strip().rstrip(".")
    for r in RULES:
        if str(code)[0] not in r.classes or stage not in r.stages:
            continue
        if r.codes and code not in r.codes:
            continue
        if r.enhanced is not None and not (enhanced and re.fullmatch(r.enhanced, enhanced)):
            continue
        if r.text is not None and not re.search(r.text, text, re.IGNORECASE):
            continue
        if r.mx is not None and not re.search(r.mx, mx_host, re.IGNORECASE):
            continue
        return r.reason, r.name
    return Reason.UNKNOWN, "no-rule"


def test_classification_is_the_plain_reading_of_the_table() -> None:
    """Every corpus reply, as is, upper-cased, lower-cased and with a non-ASCII character
    (which takes the unsplit path), at every stage, classifies as the plain reading does."""
    for e in CORPUS:
        mx = PROVIDER_MX.get(e.get("provider", ""), "")
        for text in (e["text"], e["text"].upper(), e["text"].lower(), e["text"] + " é"):
            for stage in STAGES:
                for code in {e["code"], 450, 550}:
                    got = classify_reply(stage, code, text, mx_host=mx)
                    assert (got.reason, got.rule) == _reference(stage, code, text, mx), e["id"]


# -- a reply that names the address is read without the address's words ---------------
# Postfix names the recipient in its refusals ("<rcpt>: Recipient address rejected: User
# unknown in local recipient table", postconf(5) smtpd_reject_unlisted_recipient); a
# local part such as spam@, rbl@, over.quota@ or disabled@ once read as a block of our IP,
# a full mailbox or a disabled one.
@pytest.mark.parametrize("local", ["spam", "spamhaus", "rbl", "blacklisted", "over.quota",
                                   "quota-exceeded", "disabled", "inactive"])  # fmt: skip
def test_the_address_in_a_reply_is_not_read_as_its_words(local: str) -> None:
    from mailprobe.results import Outcome

    email = f"{local}@example.com"
    for text, reason in [
        (f"5.1.1 <{email}>: Recipient address rejected: User unknown in local recipient table",
         Reason.MAILBOX_NOT_FOUND),
        (f"Recipient {email.upper()} rejected: mailbox unavailable", Reason.MAILBOX_UNAVAILABLE),
    ]:  # fmt: skip
        assert classify_reply("rcpt", 550, text, recipient=email).reason is reason
        outcome = Outcome.from_reply(email, stage="rcpt", code=550, message=text, mx_host="mx")
        assert outcome.reason == reason.value
        assert outcome.message == text  # the evidence keeps the reply as it was


def test_replies_naming_other_addresses_are_one_reply() -> None:
    from mailprobe.classify import _classify

    _classify.cache_clear()
    for n in range(50):
        email = f"user{n}@example.org"
        text = f"5.1.1 <{email}>: Recipient address rejected: User unknown in virtual mailbox table"
        assert classify_reply("rcpt", 550, text, recipient=email).reason is Reason.MAILBOX_NOT_FOUND
    assert _classify.cache_info().misses == 1
