"""From an SMTP reply to what it means: category (the seed's), then reason.

Pure: no sockets, no database. Two layers:

* `category_for_code` is the seed's mapping, by reply class only:
  2xx accept, 4xx temp_fail, 5xx hard_fail, anything else unknown.
* `classify_reply` reads stage, code, enhanced status (RFC 3463) and text and
  names a `Reason`. The rules are the `RULES` table below, tried in order; the
  first that matches wins. Text evidence comes before enhanced codes because
  real servers misuse enhanced codes (a blocklist refusal sent as 550 5.1.1, a
  missing mailbox sent as 550 5.4.1 or 5.7.1). When nothing is clear the reason
  is one that says nothing about the mailbox (`mailbox_unavailable`,
  `temp_failure`, `unknown`): a false "does not exist" throws away a real lead.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum


class Category(StrEnum):
    ACCEPT = "accept"
    HARD_FAIL = "hard_fail"
    TEMP_FAIL = "temp_fail"
    UNKNOWN = "unknown"


def category_for_code(code: int | None) -> Category:
    """The seed's mapping, kept exactly: by reply class only."""
    if code is None:
        return Category.UNKNOWN
    if 200 <= code < 300:
        return Category.ACCEPT
    if 500 <= code < 600:
        return Category.HARD_FAIL
    if 400 <= code < 500:
        return Category.TEMP_FAIL
    return Category.UNKNOWN


class Signal(StrEnum):
    """What a reason says about the recipient address itself."""

    EXISTS = "exists"
    DOES_NOT_EXIST = "does_not_exist"
    UNDETERMINED = "undetermined"


class Reason(StrEnum):
    ACCEPTED = "accepted"
    MAILBOX_NOT_FOUND = "mailbox_not_found"
    MAILBOX_DISABLED = "mailbox_disabled"
    MAILBOX_FULL = "mailbox_full"
    MAILBOX_UNAVAILABLE = "mailbox_unavailable"
    GREYLISTED = "greylisted"
    RATE_LIMITED = "rate_limited"
    TOO_MANY_RECIPIENTS = "too_many_recipients"
    POLICY_BLOCK = "policy_block"
    SENDER_REJECTED = "sender_rejected"
    RELAY_DENIED = "relay_denied"
    TLS_REQUIRED = "tls_required"
    AUTH_REQUIRED = "auth_required"
    SERVICE_UNAVAILABLE = "service_unavailable"
    TEMP_FAILURE = "temp_failure"
    PROTOCOL_ERROR = "protocol_error"
    SMTPUTF8_UNSUPPORTED = "smtputf8_unsupported"
    TIMEOUT = "timeout"
    CONNECTION_FAILED = "connection_failed"
    TLS_FAILED = "tls_failed"
    INVALID_SYNTAX = "invalid_syntax"
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class ReasonInfo:
    signal: Signal
    sisimai: str  # nearest reason in sisimai, the reference bounce classifier
    meaning: str


# The one definition of every reason; the README table is generated from it
# (`mailprobe reasons --markdown`) and a test keeps the two in step.
REASONS: dict[Reason, ReasonInfo] = {
    Reason.ACCEPTED: ReasonInfo(
        Signal.EXISTS,
        "delivered",
        "RCPT TO accepted (2xx); on a catch-all domain this proves nothing",
    ),
    Reason.MAILBOX_NOT_FOUND: ReasonInfo(
        Signal.DOES_NOT_EXIST, "userunknown", "the server says the mailbox does not exist"
    ),
    Reason.MAILBOX_DISABLED: ReasonInfo(
        Signal.DOES_NOT_EXIST, "suspend", "the mailbox exists but is disabled, suspended or closed"
    ),
    Reason.MAILBOX_FULL: ReasonInfo(
        Signal.EXISTS, "mailboxfull", "the mailbox exists but is over its quota"
    ),
    Reason.MAILBOX_UNAVAILABLE: ReasonInfo(
        Signal.UNDETERMINED,
        "undefined",
        "a permanent refusal that does not say whether the mailbox exists",
    ),
    Reason.GREYLISTED: ReasonInfo(
        Signal.UNDETERMINED, "undefined", "greylisting: try again later, the answer may change"
    ),
    Reason.RATE_LIMITED: ReasonInfo(
        Signal.UNDETERMINED, "toomanyconn", "we are sending too much or too fast to this server"
    ),
    Reason.TOO_MANY_RECIPIENTS: ReasonInfo(
        Signal.UNDETERMINED,
        "toomanyconn",
        "the server refuses our batching (recipients per transaction or session)",
    ),
    Reason.POLICY_BLOCK: ReasonInfo(
        Signal.UNDETERMINED,
        "blocked",
        "refused because of us (IP on a blocklist, reputation, PTR, HELO, SPF, 5.7.x)",
    ),
    Reason.SENDER_REJECTED: ReasonInfo(
        Signal.UNDETERMINED, "rejected", "our MAIL FROM was refused, so RCPT TO never ran"
    ),
    Reason.RELAY_DENIED: ReasonInfo(
        Signal.UNDETERMINED, "norelaying", "this server does not accept mail for that domain"
    ),
    Reason.TLS_REQUIRED: ReasonInfo(
        Signal.UNDETERMINED, "securityerror", "the server requires STARTTLS before it answers"
    ),
    Reason.AUTH_REQUIRED: ReasonInfo(
        Signal.UNDETERMINED, "securityerror", "the server requires authentication (not an MX)"
    ),
    Reason.SERVICE_UNAVAILABLE: ReasonInfo(
        Signal.UNDETERMINED, "systemerror", "421 and the like: the server is closing or busy"
    ),
    Reason.TEMP_FAILURE: ReasonInfo(
        Signal.UNDETERMINED, "systemerror", "another temporary failure (4xx)"
    ),
    Reason.PROTOCOL_ERROR: ReasonInfo(
        Signal.UNDETERMINED, "syntaxerror", "the server did not understand a command (500-504)"
    ),
    Reason.SMTPUTF8_UNSUPPORTED: ReasonInfo(
        Signal.UNDETERMINED,
        "syntaxerror",
        "the address needs SMTPUTF8 and the server does not offer it",
    ),
    Reason.TIMEOUT: ReasonInfo(
        Signal.UNDETERMINED, "expired", "no answer within the time budget (tarpit or slow server)"
    ),
    Reason.CONNECTION_FAILED: ReasonInfo(
        Signal.UNDETERMINED, "networkerror", "could not connect, or the connection dropped"
    ),
    Reason.TLS_FAILED: ReasonInfo(
        Signal.UNDETERMINED, "securityerror", "the STARTTLS handshake failed"
    ),
    Reason.INVALID_SYNTAX: ReasonInfo(
        Signal.DOES_NOT_EXIST, "syntaxerror", "not a valid address: nothing was sent"
    ),
    Reason.UNKNOWN: ReasonInfo(Signal.UNDETERMINED, "undefined", "nothing we can read"),
}


ENHANCED_CODE = re.compile(r"^\s*([245])\.(\d{1,3})\.(\d{1,3})\b")


def parse_enhanced(text: str) -> tuple[str | None, str]:
    """Split an RFC 3463 enhanced status code off a reply text.

    Multi-line replies usually repeat the code on every line; it is removed
    from each line so that the text reads as the server meant it.
    """
    lines = text.splitlines() or [""]
    first = ENHANCED_CODE.match(lines[0])
    if not first:
        return None, text.strip()
    code = first.group(0).strip()
    cleaned = [
        line.strip()[len(code) :].strip() if line.strip().startswith(code) else line.strip()
        for line in lines
    ]
    return code, "\n".join(cleaned).strip()


STAGES = ("greeting", "ehlo", "starttls", "mail", "rcpt")


@dataclass(frozen=True, slots=True)
class Rule:
    """One line of the table: all given conditions must hold."""

    name: str
    reason: Reason
    classes: str = "45"  # reply classes the rule applies to ("2", "4", "5")
    stages: tuple[str, ...] = STAGES
    enhanced: str | None = None  # regex on the enhanced code, e.g. r"5\.1\.1"
    text: str | None = None  # regex on the reply text, case-insensitive
    codes: tuple[int, ...] = ()
    mx: str | None = None  # regex on the MX host, for provider-specific meanings

    def matches(self, stage: str, code: int, enhanced: str | None, text: str, mx_host: str) -> bool:
        if str(code)[0] not in self.classes or stage not in self.stages:
            return False
        if self.codes and code not in self.codes:
            return False
        if self.enhanced is not None and not (enhanced and re.fullmatch(self.enhanced, enhanced)):
            return False
        if self.text is not None and not re.search(self.text, text, re.IGNORECASE):
            return False
        return self.mx is None or bool(re.search(self.mx, mx_host, re.IGNORECASE))


_BEFORE_RCPT = ("greeting", "ehlo", "starttls", "mail")

# Words about *us*: our IP, our name, our reputation, our sender domain.
_ABOUT_US = (
    r"block ?list|black ?list|\bRBL\b|\bDNSBL\b|spamhaus|spamcop|barracuda ?(rbl|central|reputation)"
    r"|sorbs|uceprotect|\bcbl\b|\bpbl\b|\bsbl\b|\bxbl\b|reputation|listed (at|on|in|by)"
    r"|client host .*(blocked|rejected)|your (ip|host|server|network)|sending ip|connecting ip"
    r"|ip address .*(blocked|block|listed|rejected|reputation)|reverse (dns|lookup|hostname)"
    r"|\bptr\b|rdns|helo|ehlo|\bspf\b|\bdmarc\b|\bdkim\b|blocked using|poor reputation"
    r"|dynamic ip|residential|dial-?up|\bbanned\b|\[(TS|TSS|RL|HL|IPTS)\d*\]"
    r"|spam|abuse|access denied.*(ip|client)|not allowed to send|policy (violation|restriction)"
)
_GREYLIST = (
    r"grey ?list|gray ?list|greylisted|graylisted|postgrey|sqlgrey|try again later"
    r"|please retry|temporarily (deferred|rejected)|deferred.*retry|retry (later|in)"
)
_RATE = (
    r"too many (connections|messages|concurrent|sessions|errors|invalid|unknown)"
    r"|rate ?limit|throttl|too fast|slow down|exceeded .*(rate|limit|quota of (connections|messages))"
    r"|sending rate|connection (limit|rate)|limit exceeded|try (again )?later.*(volume|rate)"
    r"|unusual rate|temporarily (limited|rate)"
)
_TOO_MANY_RCPTS = (
    r"too many recipients|recipients belong to multiple regions|one domain per"
    r"|recipient limit|maximum (number of )?recipients|rcpt limit|too many rcpt"
)
_FULL = r"quota|mailbox (is )?full|over ?quota|storage (allocation|space)|insufficient (storage|space)|out of (storage|space)|mailbox size limit"
_DISABLED = (
    r"disabled|suspended|deactivated|inactive|no longer (active|available|in use|valid)"
    r"|account (has been )?(closed|locked|blocked|expired|terminated)|has been (closed|terminated)"
    r"|mailbox (is )?(locked|frozen)|expired account|user (account )?(is )?(disabled|expired)"
)
_NOT_FOUND = (
    r"user ?unknown|unknown user|no such (user|mailbox|recipient|account|address|person)"
    r"|does not exist|doesn'?t exist|not exist|does ?not have an? (account|mailbox)|not found"
    r"|unknown (recipient|mailbox|local|address|alias)|invalid (recipient|mailbox|address|user)"
    r"|recipient (address )?(unknown|invalid|not (found|valid|recognized))|mailbox not available"
    r"|no mailbox|not a valid (mailbox|user|recipient)|unrouteable address|address rejected.*unknown"
    r"|user not (found|exist|known)|no account|bad recipient|RecipientNotFound|unknown or illegal alias"
    r"|mailbox unavailable.*(unknown|not found|invalid)|undeliverable address|no valid recipients"
    r"|user doesn'?t have|recipient address rejected: user|account (that you tried to reach )?does not"
)
_RELAY = r"relay(ing)? (access )?(denied|not permitted|prohibited|not allowed)|not permitted to relay|unable to relay|we do not relay|not a gateway|not local.*relay"
_TLS = r"starttls|must issue a starttls|tls (is )?required|encryption required|secure connection"
_AUTH = (
    r"authentication (is )?required|auth(entication)? required|must authenticate|not authenticated"
)

RULES: tuple[Rule, ...] = (
    Rule("accepted", Reason.ACCEPTED, classes="2", stages=("rcpt",)),
    # Provider meanings that contradict the registered enhanced code.
    Rule(
        "o365-dbeb",
        Reason.MAILBOX_NOT_FOUND,
        classes="5",
        stages=("rcpt",),
        enhanced=r"5\.4\.1",
        text=r"recipient address rejected: access denied",
        mx=r"outlook\.com$|\.office365\.com$|\.microsoft\.com$",
    ),
    # Batching refusals are about how we send, never about the address.
    Rule("too-many-rcpts", Reason.TOO_MANY_RECIPIENTS, text=_TOO_MANY_RCPTS),
    Rule(
        "multiple-destination-domains",
        Reason.TOO_MANY_RECIPIENTS,
        classes="4",
        stages=("rcpt",),
        enhanced=r"4\.5\.3",
    ),
    Rule("rate-limited-text", Reason.RATE_LIMITED, text=_RATE),
    Rule("greylisted", Reason.GREYLISTED, classes="4", text=_GREYLIST),
    Rule("tls-required", Reason.TLS_REQUIRED, text=_TLS, codes=(530, 454, 550, 554, 451, 523)),
    Rule("tls-required-code", Reason.TLS_REQUIRED, enhanced=r"5\.7\.(10|11)"),
    Rule("auth-required", Reason.AUTH_REQUIRED, text=_AUTH),
    Rule("auth-required-code", Reason.AUTH_REQUIRED, codes=(530,)),
    # Before RCPT, anything about the mailbox cannot be: the refusal is about us.
    Rule("service-unavailable-early", Reason.SERVICE_UNAVAILABLE, codes=(421,)),
    Rule(
        "policy-early",
        Reason.POLICY_BLOCK,
        stages=("greeting", "ehlo", "starttls"),
        classes="5",
        text=_ABOUT_US,
    ),
    Rule(
        "sender-policy",
        Reason.POLICY_BLOCK,
        stages=("mail",),
        classes="5",
        text=r"block ?list|black ?list|spamhaus|reputation|client host|your ip|\bptr\b|rdns|helo",
    ),
    Rule("sender-rejected", Reason.SENDER_REJECTED, stages=("mail",), classes="5"),
    Rule("greeting-refused", Reason.POLICY_BLOCK, stages=("greeting",), classes="5"),
    Rule("ehlo-refused", Reason.PROTOCOL_ERROR, stages=("ehlo",), classes="5"),
    Rule("early-temp", Reason.TEMP_FAILURE, stages=_BEFORE_RCPT, classes="4"),
    # RCPT: the mailbox itself.
    Rule("mailbox-full", Reason.MAILBOX_FULL, stages=("rcpt",), text=_FULL),
    Rule("mailbox-full-code", Reason.MAILBOX_FULL, stages=("rcpt",), enhanced=r"[45]\.2\.2"),
    Rule("relay-denied", Reason.RELAY_DENIED, stages=("rcpt",), text=_RELAY),
    Rule("policy-text", Reason.POLICY_BLOCK, stages=("rcpt",), text=_ABOUT_US),
    Rule(
        "mailbox-disabled", Reason.MAILBOX_DISABLED, classes="5", stages=("rcpt",), text=_DISABLED
    ),
    Rule(
        "mailbox-disabled-code",
        Reason.MAILBOX_DISABLED,
        classes="5",
        stages=("rcpt",),
        enhanced=r"5\.2\.1",
    ),
    Rule(
        "mailbox-not-found",
        Reason.MAILBOX_NOT_FOUND,
        classes="5",
        stages=("rcpt",),
        text=_NOT_FOUND,
    ),
    Rule(
        "mailbox-not-found-code",
        Reason.MAILBOX_NOT_FOUND,
        classes="5",
        stages=("rcpt",),
        enhanced=r"5\.1\.(1|10|6)",
    ),
    Rule(
        "relay-code",
        Reason.RELAY_DENIED,
        classes="5",
        stages=("rcpt",),
        enhanced=r"5\.7\.54|5\.1\.2",
    ),
    Rule("relay-551", Reason.RELAY_DENIED, stages=("rcpt",), codes=(551,)),
    Rule("policy-code", Reason.POLICY_BLOCK, stages=("rcpt",), enhanced=r"[45]\.7\.\d+"),
    Rule("smtputf8", Reason.SMTPUTF8_UNSUPPORTED, stages=("rcpt", "mail"), enhanced=r"5\.6\.7"),
    Rule("protocol", Reason.PROTOCOL_ERROR, codes=(500, 501, 502, 503, 504, 555)),
    Rule("service-unavailable", Reason.SERVICE_UNAVAILABLE, codes=(421,)),
    Rule("storage-452", Reason.TEMP_FAILURE, codes=(452,)),
    Rule("mailbox-552", Reason.MAILBOX_FULL, stages=("rcpt",), codes=(552,)),
    Rule("temp", Reason.TEMP_FAILURE, classes="4"),
    Rule("permanent-unclear", Reason.MAILBOX_UNAVAILABLE, classes="5", stages=("rcpt",)),
)


@dataclass(frozen=True, slots=True)
class Classification:
    category: Category
    reason: Reason
    rule: str  # which RULES entry decided, for the evidence trail


def classify_reply(
    stage: str,
    code: int | None,
    text: str = "",
    enhanced: str | None = None,
    mx_host: str = "",
) -> Classification:
    """Name the reason for one reply. `enhanced` is parsed from `text` when not given."""
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; expected one of {STAGES}")
    category = category_for_code(code)
    if code is None or category is Category.UNKNOWN:
        return Classification(category, Reason.UNKNOWN, "no-code")
    if enhanced is None:
        enhanced, text = parse_enhanced(text)
    if category is Category.ACCEPT and stage != "rcpt":
        return Classification(category, Reason.UNKNOWN, "early-2xx")
    for rule in RULES:
        if rule.matches(stage, code, enhanced, text, mx_host):
            return Classification(category, rule.reason, rule.name)
    return Classification(category, Reason.UNKNOWN, "no-rule")


def classify_error(kind: str) -> Reason:
    """The reason for a probe that ended without a reply (see smtp.ErrorKind)."""
    return {
        "timeout": Reason.TIMEOUT,
        "connection_failed": Reason.CONNECTION_FAILED,
        "disconnected": Reason.CONNECTION_FAILED,
        "tls_failed": Reason.TLS_FAILED,
        "bad_input": Reason.INVALID_SYNTAX,
    }.get(kind, Reason.UNKNOWN)
