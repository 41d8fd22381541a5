"""From an SMTP reply to what it means: category (the seed's), then reason.

Pure: no sockets, no database. Two layers:

* `category_for_code` is the seed's mapping, by reply class only:
  2xx accept, 4xx temp_fail, 5xx hard_fail, anything else unknown.
* `classify_reply` reads stage, code, enhanced status (RFC 3463), text and,
  for provider-specific meanings, the MX host name, and names a `Reason`
  (any 2xx, at any stage, is `accepted`). The rules are the `RULES` table below, tried in order; the
  first that matches wins. Text evidence comes before enhanced codes because
  real servers misuse enhanced codes (a blocklist refusal sent as 550 5.1.1, a
  missing mailbox sent as 550 5.4.1 or 5.7.1). When nothing is clear the reason
  is one that says nothing about the mailbox (`mailbox_unavailable`,
  `temp_failure`, `unknown`): a false "does not exist" throws away a real lead.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache

from mailprobe.reasons import (  # the vocabulary, re-exported: `from mailprobe.classify import`
    REASONS as REASONS,
)
from mailprobe.reasons import Category as Category
from mailprobe.reasons import Reason as Reason
from mailprobe.reasons import ReasonInfo as ReasonInfo
from mailprobe.reasons import Signal as Signal
from mailprobe.reasons import category_for_code as category_for_code

ENHANCED_CODE = re.compile(r"^\s*#?([245]\.\d{1,3}\.\d{1,3})\b")
ENHANCED_TRAILER = re.compile(r"\(#([245]\.\d{1,3}\.\d{1,3})\)\s*$")


@lru_cache(maxsize=1024)  # a reply's text is parsed by its Reply and again by its reading
def parse_enhanced(text: str) -> tuple[str | None, str]:
    """Split an RFC 3463 enhanced status code off a reply text.

    Multi-line replies usually repeat the code on every line; it is removed
    from each line so that the text reads as the server meant it. A qmail-style
    trailer "(#5.1.1)" gives the code too, and stays in the text.
    """
    lines = text.splitlines() or [""]
    first = ENHANCED_CODE.match(lines[0])
    if not first:
        trailer = ENHANCED_TRAILER.search(text)
        return (trailer.group(1) if trailer else None), text.strip()
    code = first.group(1)
    cleaned = []
    for line in lines:
        match = ENHANCED_CODE.match(line)
        cleaned.append(
            line[match.end() :].strip() if match and match.group(1) == code else line.strip()
        )
    return code, "\n".join(cleaned).strip()


STAGES = ("greeting", "ehlo", "starttls", "mail", "rcpt")


# A pattern in ASCII whose every escape is a case-free class (\b \d \s \w) or punctuation,
# with no inline flags and no character ranges, means the same lowercased and searched in
# lowercased ASCII text as it does with IGNORECASE. Compiled that way `re` can skip ahead
# by the first characters of its alternatives, which it cannot do for cased ones: several
# times faster on the long alternations below.
_CASED_ESCAPE = re.compile(r"\\[A-Za-z]")
_INLINE_FLAGS = re.compile(r"\(\?(?![:=!]|<[=!])")  # any (? but (?: (?= (?! (?<= (?<!
_RANGE = re.compile(r"\[[^\]]*-")


def _foldable(pattern: str) -> bool:
    return (
        pattern.isascii()
        and all(m.group()[1] in "bdsw" for m in _CASED_ESCAPE.finditer(pattern))
        and not _INLINE_FLAGS.search(pattern)
        and not _RANGE.search(pattern)
    )


def _alternatives(pattern: str) -> list[str]:
    """The top-level alternatives of a regex (split at "|" outside groups and classes)."""
    parts, depth, in_class, start, i = [], 0, False, 0, 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "\\":
            i += 2
            continue
        if in_class:
            in_class = ch != "]"
        elif ch == "[":
            in_class = True
        elif ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == "|" and depth == 0:
            parts.append(pattern[start:i])
            start = i + 1
        i += 1
    parts.append(pattern[start:])
    return parts


_LITERAL_START = re.compile(r"[a-z0-9 <>#@'\"!%&,;:=/_~-](?![?*+{])")
_WORD_START = re.compile(r"\\b([a-z0-9])(?![?*+{])")


def _split(pattern: str) -> tuple[re.Pattern[str], ...]:
    """A lowercased foldable pattern as the patterns whose union it is: its alternatives
    that begin with a literal character (which `re` finds by skipping ahead), and the
    others. A match of the whole is a match of one of them, and the reverse. An
    alternative that begins with \\b and a word character, `\\bptr`, begins with that
    character instead, `p(?<!\\wp)tr`: the same condition, checked after it."""
    fast: list[str] = []
    slow: list[str] = []
    for alt in _alternatives(pattern):
        word = _WORD_START.match(alt)
        if word:
            c = word.group(1)
            alt = f"{c}(?<!\\w{c}){alt[word.end() :]}"
        (fast if _LITERAL_START.match(alt) else slow).append(alt)
    return tuple(re.compile("|".join(group)) for group in (fast, slow) if group)


@dataclass(frozen=True, slots=True)
class _Pattern:
    """A case-insensitive regex, with its lowercased twin for ASCII text when that means
    the same (see `_foldable`), split for speed (see `_split`)."""

    any_case: re.Pattern[str]
    folded: tuple[re.Pattern[str], ...] | None

    @classmethod
    def of(cls, pattern: str) -> _Pattern:
        folded = _split(pattern.lower()) if _foldable(pattern) else None
        return cls(re.compile(pattern, re.IGNORECASE), folded)

    def search(self, text: str, lowered: str | None) -> bool:
        """`lowered`: `text.lower()` when `text` is ASCII, else None."""
        if lowered is not None and self.folded is not None:
            for part in self.folded:  # noqa: SIM110 (any() over a generator costs more here)
                if part.search(lowered) is not None:
                    return True
            return False
        return self.any_case.search(text) is not None


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
    _enhanced: re.Pattern[str] | None = field(default=None, init=False, repr=False, compare=False)
    _text: _Pattern | None = field(default=None, init=False, repr=False, compare=False)
    _mx: _Pattern | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:  # compiled once, not looked up per reply
        if self.enhanced is not None:
            object.__setattr__(self, "_enhanced", re.compile(self.enhanced))
        if self.text is not None:
            object.__setattr__(self, "_text", _Pattern.of(self.text))
        if self.mx is not None:
            object.__setattr__(self, "_mx", _Pattern.of(self.mx))

    def matches(self, stage: str, code: int, enhanced: str | None, text: str, mx_host: str) -> bool:
        if str(code)[0] not in self.classes or stage not in self.stages:
            return False
        return self._matches_reply(code, enhanced, text, _lowered(text), mx_host, _lowered(mx_host))

    def _matches_reply(
        self,
        code: int,
        enhanced: str | None,
        text: str,
        text_lower: str | None,
        mx_host: str,
        mx_lower: str | None,
    ) -> bool:
        """`matches` once the class and stage are known to fit."""
        if self.codes and code not in self.codes:
            return False
        if self._enhanced is not None and not (enhanced and self._enhanced.fullmatch(enhanced)):
            return False
        if self._text is not None and not self._text.search(text, text_lower):
            return False
        return self._mx is None or self._mx.search(mx_host, mx_lower)

    @property
    def reads_reply(self) -> bool:
        """Whether its verdict needs the reply's enhanced code, text or MX host."""
        return self.enhanced is not None or self.text is not None or self.mx is not None


def _lowered(text: str) -> str | None:
    return text.lower() if text.isascii() else None


_SESSION = ("greeting", "ehlo", "starttls")
_RCPT = ("rcpt",)
_MAIL = ("mail",)

# -- provider MX hosts, for replies whose meaning depends on who says them ------
_MX_MICROSOFT = r"\.protection\.outlook\.com$|\.office365\.com$|\.microsoft\.com$"
# Outlook.com / Hotmail consumer mailboxes (hotmail-com.olc.protection.outlook.com).
_MX_OUTLOOK_COM = r"\.olc\.protection\.outlook\.com$|(^|\.)hotmail\.com$"
# United Internet: GMX (mx00.emig.gmx.net), WEB.DE (mx-ha02.web.de), mail.com.
_MX_UNITED_INTERNET = r"(^|\.)(gmx\.(net|de|com)|web\.de|mail\.com)$"
_MX_MIMECAST = r"(^|\.)mimecast\.com$"

# -- vocabulary ---------------------------------------------------------------
# The conversation went wrong: nothing about anyone.
_PROTOCOL = (
    r"(helo|ehlo)( ?/ ?(helo|ehlo))? (command )?(needed|required|expected|first)"
    r"|send (helo|ehlo) first|synchroni[sz]ation error|bad sequence"
    r"|sender not yet given|(rcpt|rcpt to) without mail|need mail (from )?(command|first)"
)
_TLS = (
    r"starttls|tls (is )?required|encryption required|secure connection"
    r"|(was not|wasn'?t|not) sent over (a )?tls"
)
_AUTH = (
    r"authentication (is )?required|auth(entication)? required|must authenticate|not authenticated"
    r"|unauthenticated (senders?|users?|relay|clients?)"
)
# Our DNS identity: missing or failing reverse DNS of our IP.
_PTR = (
    r"\bptr\b|reverse (dns|lookup|hostname)|\brdns\b|(ip|host) name lookup failed"
    r"|full circle dns"
)
# Mail volume, ours or the recipient's: wait and come back.
_RATE = (
    r"too many (connections|messages|concurrent|sessions|invalid|unknown)"
    r"|rate ?limit|throttl|too fast|too quickly|slow down|receiving mail at a rate"
    r"|exceeded .{0,40}(rate|sending limit|connection limit|quota of (connections|messages))"
    r"|sending rate|connection (limit|rate)|(?<!size )(?<!storage )limit exceeded|concurrency limit"
    r"|try (again )?later.*(volume|rate)|unexpected volume|temporarily (limited|rate)"
    r"|too many recipients (this|per|an?|in the last) (hour|day|minute)"
    r"|(daily|hourly) (relay |sending |message )?(quota|limit)"
    r"|max(imum)? (number of )?messages? per (connection|session)"
)
_TOO_MANY_RCPTS = (
    r"too many recipients|recipients belong to multiple regions|one domain per"
    r"|recipient limit|maximum (number |limit )?of .{0,12}recipients|maximum recipients"
    r"|rcpt limit|too many rcpt|multiple destination domains|batch limit"
)
_GREYLIST = (
    r"grey ?list|gray ?list|greylisted|graylisted|postgrey|sqlgrey|come back later"
    r"|not yet authori[sz]ed to deliver"  # cPanel/Exim greylisting
    r"|temporary envelope failure"  # qmail envelope scanner greylisting (Plesk)
)
# About our MAIL FROM address or its domain, not about our IP.
_SENDER = (
    r"sender address rejected|domain of sender|unrout(e)?able sender"
    r"|sender (verify|verification) failed|callback setup failed|callout verification"
    r"|(unresolvable|unroutable|unknown|non-?existent) (rfc.?5321 )?(from|sender|envelope) domain"
)
_SENDER_MAIL_ONLY = r"no such domain|does not exist|domain not found"
# Words about *us*: our IP, our name, our reputation, our sender domain.
_ABOUT_US = (
    r"block ?list|black ?list|white ?list|allow ?list|\bRBL\b|\bDNSBL\b|spamhaus|spamcop"
    r"|barracuda ?(rbl|central|reputation)|sorbs|uceprotect|\bcbl\b|\bpbl\b|\bsbl\b|\bxbl\b"
    r"|reputation|listed (at|on|in|by)|blocked using|client host .*(blocked|rejected)"
    r"|your (ip|host|server|network|access)|sending ips?|connecting ip|client ip"
    r"|\bip\b[^.]{0,60}\b(blocked|banned|rejected|refused|not (allowed|permitted|authori[sz]ed))"
    r"|(invalid|unauthori[sz]ed) ip|(host|network|client) (network )?not (allowed|permitted)"
    r"|helo|ehlo|\bspf\b|\bdmarc\b|\bdkim\b|dynamic ip|residential|dial-?up|\bbanned\b"
    r"|spam|abuse|spoof|access denied.*(ip|client)|policy (violation|restriction)"
    r"|not (allowed|authori[sz]ed) to send|smtp (server|relay) of your|relay at your"
    r"|sender (address |ip )?(is )?(blocked|banned)|recipient preferences"
    r"|denied by (local )?policy|administrative prohibition|rejected by (the )?destination domain"
    r"|^blocked\b|\[(TS|TSS|RL|HL|IPTS|BL)\d*\]|\[IPR\]|\(BL\)"
    r"|AUP#(CDRBL|IPBL)"  # Cox: our IP is on its (or a public) blocklist
)
# Spectrum AUP#In-1300..1490: too many connections or messages from us.
_SPECTRUM_RATE = r"AUP#\w*-?1[34]\d\d\b"
_FULL = (
    r"quota|mailbox (is )?full|over ?quota|storage (allocation|space)|insufficient (storage|space)"
    r"|out of (storage|space)|mailbox size limit|exhausted .*storage"
)
# The mailbox holds too many messages (a count quota), not we send too many.
_FULL_COUNT = r"(has|have) too many (messages|mails)|too many (messages|mails) (on|in) the (server|mailbox|inbox)"
_DISABLED = (
    r"disabled|suspended|deactivated|inactive|no longer (active|available|in use)|frozen"
    r"|(?<!your )account (is |has been )?(closed|locked|blocked|expired|terminated|discontinued)"
    r"|has been (closed|terminated)|mailbox (is )?(locked|frozen)|expired account"
    r"|user (account )?(is )?(disabled|expired)"
)
_NOT_FOUND = (
    r"user ?unknown|unknown user|no such (user|mailbox|recipient|account|address|person)"
    r"|does not exist|doesn'?t exist|not exist|does no exists?|does ?not have an? (account|mailbox)"
    r"|not found|no longer (valid|on server)|addressee unknown|not our user"
    r"|unknown (recipient|mailbox|local|address|alias)|invalid (recipient|mailbox|address|user)"
    r"|(address|recipient|user|mailbox) (is )?invalid|unavailable (mail )?user"
    r"|recipient (address )?(unknown|invalid|not (found|valid|recognized))|mailbox not available"
    r"|no mailbox|not a valid (mailbox|user|recipient)|unrouteable address|address rejected.*unknown"
    r"|user not (found|exist|known)|no account|bad recipient|RecipientNotFound|unknown or illegal"
    r"|mailbox unavailable.*(unknown|not found|invalid)|undeliverable address|no valid recipients"
    r"|user doesn'?t have|recipient address rejected: user|account (that you tried to reach )?does not"
    r"|marked as invalid"
)
# "unknown OR not ours": the server itself does not say which.
_EITHER_OR = r"not local or invalid|invalid or not local|(unknown|invalid) (user|address) or relay"
_RELAY = (
    r"relay(ing)? (access )?(denied|not permitted|prohibited|not allowed)|not permitted to relay"
    r"|unable to relay|we do not relay|not a gateway|not local.*relay|not configured to relay"
)

RULES: tuple[Rule, ...] = (
    # Any 2xx: the server took what we said (a banner, EHLO, MAIL FROM, RCPT TO).
    Rule("accepted", Reason.ACCEPTED, classes="2"),
    # -- provider meanings that contradict the words or the registered code ----
    # Microsoft 365 Directory-Based Edge Blocking: "550 5.4.1 Recipient address rejected:
    # Access denied" = "The recipient's address doesn't exist" (Microsoft Learn, "Email
    # non-delivery reports in Exchange Online", read from its source in
    # github:x13-me/OfficeDocs-Exchange; "Use Directory-Based Edge Blocking": "If the
    # address doesn't exist, the service blocks the message ... The NDR looks like this").
    # Also sisimai Rhost::Microsoft (userunknown), Reacher's parser ("address rejected":
    # invalid) and spamresource.com/2023/09 ("still means user unknown ... 99.9% of the
    # time", a directory outage the only, unwitnessed, exception). Not a block of us:
    # Microsoft words those "Access denied, <why>" under 5.7.x, and a domain that is not
    # the tenant's gets "5.4.1 Relay Access Denied" (relay_denied, below).
    Rule(
        "o365-dbeb",
        Reason.MAILBOX_NOT_FOUND,
        classes="5",
        stages=_RCPT,
        enhanced=r"5\.4\.1",
        text=r"recipient address rejected: access denied",
        mx=_MX_MICROSOFT,
    ),
    # The same reply with Microsoft's anti-spam tag of the DBEB rule, AS(201806281), which
    # every tagged copy in the sources carries (zone-eu/zone-mta#214, roundcube#7990,
    # maxsptz/emailpyspam#23): the tag names who answered, so it holds behind a gateway
    # that passes Microsoft's reply on, or at an MX name we do not know as Microsoft's.
    Rule(
        "o365-dbeb-tagged",
        Reason.MAILBOX_NOT_FOUND,
        classes="5",
        stages=_RCPT,
        enhanced=r"5\.4\.1",
        text=r"recipient address rejected: access denied\b.*\bAS\(201806281\)",
    ),
    # 5.7.504 "Recipient address rejected: Access denied" = "The recipient address that
    # you're attempting to contact isn't valid" (Microsoft Learn NDR table); sisimai reads it
    # as suspend, so the sources do not agree that the mailbox is missing: say nothing.
    Rule(
        "o365-57504",
        Reason.MAILBOX_UNAVAILABLE,
        classes="5",
        stages=_RCPT,
        enhanced=r"5\.7\.504",
        text=r"recipient address rejected: access denied",
        mx=_MX_MICROSOFT,
    ),
    # Outlook.com's "550 5.5.0 Requested action not taken: mailbox unavailable (S2017062302)":
    # the recipient, @hotmail.com or @outlook.com, "wasn't found by SMTP address lookup.
    # Similar to 550 5.1.10" (Microsoft Learn NDR table; MicrosoftDocs/OfficeDocs-Exchange#2836;
    # spamresource.com/2023/09: "your typical user unknown bounce ... at Microsoft OLC").
    # The S-tag is Outlook.com's own, so the text holds whatever the MX is called. Untagged,
    # the phrase is read by MX below; at a Microsoft 365 tenant (*.mail.protection.outlook.com)
    # no source shows it, and Microsoft documents it for consumer domains only: undetermined.
    Rule(
        "outlookcom-mailbox-unavailable-tagged",
        Reason.MAILBOX_NOT_FOUND,
        classes="5",
        stages=_RCPT,
        codes=(550,),
        text=r"requested action not taken: mailbox unavailable \(S2017062302\)",
    ),
    # Outlook.com and GMX/WEB.DE answer an unknown mailbox with the bare RFC 5321 phrase.
    Rule(
        "outlookcom-mailbox-unavailable",
        Reason.MAILBOX_NOT_FOUND,
        classes="5",
        stages=_RCPT,
        codes=(550,),
        text=r"requested action not taken: mailbox unavailable",
        mx=_MX_OUTLOOK_COM,
    ),
    Rule(
        "unitedinternet-mailbox-unavailable",
        Reason.MAILBOX_NOT_FOUND,
        classes="5",
        stages=_RCPT,
        codes=(550,),
        text=r"requested action not taken: mailbox unavailable",
        mx=_MX_UNITED_INTERNET,
    ),
    # United Internet: "refused due to an incorrect configuration" of the sending server.
    Rule(
        "unitedinternet-syntax-policy",
        Reason.POLICY_BLOCK,
        codes=(550,),
        text=r"syntax error in parameters",
        mx=_MX_UNITED_INTERNET,
    ),
    # Mimecast documents this text for greylisting.
    Rule(
        "mimecast-greylisting",
        Reason.GREYLISTED,
        classes="4",
        text=r"internal resource temporarily unavailable",
        mx=_MX_MIMECAST,
    ),
    # -- the conversation, our transport, our credentials ---------------------
    Rule("protocol-text", Reason.PROTOCOL_ERROR, text=_PROTOCOL),
    Rule("tls-required", Reason.TLS_REQUIRED, text=_TLS),
    Rule("tls-required-code", Reason.TLS_REQUIRED, enhanced=r"5\.7\.(10|11)"),
    Rule("auth-required", Reason.AUTH_REQUIRED, text=_AUTH),
    Rule("auth-required-code", Reason.AUTH_REQUIRED, codes=(530,)),
    # Our reverse DNS: a fixable cause even when worded as a rate limit or "try later".
    Rule("ptr", Reason.POLICY_BLOCK, text=_PTR),
    # -- volume and batching: how we send, never the address ------------------
    Rule("mailbox-full-count", Reason.MAILBOX_FULL, stages=_RCPT, text=_FULL_COUNT),
    Rule("rate-limited-text", Reason.RATE_LIMITED, text=_RATE),
    Rule("spectrum-aup-rate", Reason.RATE_LIMITED, text=_SPECTRUM_RATE),
    Rule("too-many-rcpts", Reason.TOO_MANY_RECIPIENTS, text=_TOO_MANY_RCPTS),
    Rule("too-many-rcpts-code", Reason.TOO_MANY_RECIPIENTS, stages=_RCPT, enhanced=r"[45]\.5\.3"),
    Rule("greylisted", Reason.GREYLISTED, classes="4", text=_GREYLIST),
    # -- us: our sender address, then our IP, name and reputation -------------
    Rule("sender-address", Reason.SENDER_REJECTED, stages=("mail", "rcpt"), text=_SENDER),
    Rule("sender-domain", Reason.SENDER_REJECTED, stages=_MAIL, text=_SENDER_MAIL_ONLY),
    Rule("policy-text", Reason.POLICY_BLOCK, text=_ABOUT_US),
    # -- before RCPT the refusal cannot be about the mailbox ------------------
    Rule("session-temp", Reason.SERVICE_UNAVAILABLE, stages=_SESSION, classes="4"),
    Rule("service-unavailable", Reason.SERVICE_UNAVAILABLE, codes=(421,)),
    Rule("greeting-refused", Reason.POLICY_BLOCK, stages=("greeting",), classes="5"),
    Rule("ehlo-unsupported", Reason.PROTOCOL_ERROR, stages=("ehlo",), codes=(500, 502)),
    Rule("ehlo-refused", Reason.POLICY_BLOCK, stages=("ehlo", "starttls"), classes="5"),
    Rule("smtputf8", Reason.SMTPUTF8_UNSUPPORTED, stages=("rcpt", "mail"), enhanced=r"5\.6\.7"),
    Rule("sender-code", Reason.SENDER_REJECTED, stages=_MAIL, classes="5", enhanced=r"5\.1\.[78]"),
    Rule(
        "protocol-mail", Reason.PROTOCOL_ERROR, stages=_MAIL, codes=(500, 501, 502, 503, 504, 555)
    ),
    # A bare refusal of MAIL FROM ("Transaction failed", "sender rejected"): about us.
    Rule("mail-refused", Reason.POLICY_BLOCK, stages=_MAIL, classes="5"),
    Rule("mail-temp", Reason.TEMP_FAILURE, stages=_MAIL, classes="4"),
    # -- RCPT: the mailbox itself -------------------------------------------
    Rule("mailbox-full", Reason.MAILBOX_FULL, stages=_RCPT, text=_FULL),
    Rule("mailbox-full-code", Reason.MAILBOX_FULL, stages=_RCPT, enhanced=r"[45]\.2\.2"),
    Rule("either-or", Reason.MAILBOX_UNAVAILABLE, classes="5", stages=_RCPT, text=_EITHER_OR),
    Rule("relay-denied", Reason.RELAY_DENIED, stages=_RCPT, text=_RELAY),
    Rule("mailbox-disabled", Reason.MAILBOX_DISABLED, classes="5", stages=_RCPT, text=_DISABLED),
    Rule("mailbox-not-found", Reason.MAILBOX_NOT_FOUND, classes="5", stages=_RCPT, text=_NOT_FOUND),
    # Postfix table lookups are definite; 450 there only means soft_bounce is on.
    Rule(
        "unknown-in-lookup-table",
        Reason.MAILBOX_NOT_FOUND,
        classes="4",
        stages=_RCPT,
        text=r"user unknown in (virtual alias|local recipient|relay recipient|virtual mailbox) table",
    ),
    Rule(
        "mailbox-disabled-code",
        Reason.MAILBOX_DISABLED,
        classes="5",
        stages=_RCPT,
        enhanced=r"5\.2\.1",
    ),
    Rule(
        "mailbox-not-found-code",
        Reason.MAILBOX_NOT_FOUND,
        classes="5",
        stages=_RCPT,
        enhanced=r"5\.1\.(1|10|6)",
    ),
    # 5.1.0 (other address status) with "address rejected": the recipient address is bad.
    Rule(
        "address-rejected-code",
        Reason.MAILBOX_NOT_FOUND,
        classes="5",
        stages=_RCPT,
        enhanced=r"5\.1\.0",
        text=r"\baddress rejected\b",
    ),
    Rule("bad-address-syntax", Reason.PROTOCOL_ERROR, stages=_RCPT, enhanced=r"5\.1\.3"),
    Rule(
        "relay-code", Reason.RELAY_DENIED, classes="5", stages=_RCPT, enhanced=r"5\.7\.54|5\.1\.2"
    ),
    Rule("policy-code", Reason.POLICY_BLOCK, stages=_RCPT, enhanced=r"[45]\.7\.\d+"),
    Rule("protocol", Reason.PROTOCOL_ERROR, codes=(500, 501, 502, 503, 504, 555)),
    Rule("storage-452", Reason.TEMP_FAILURE, codes=(452,)),
    Rule("temp", Reason.TEMP_FAILURE, classes="4"),
    # 551 "user not local", 552 without words, a bare "mailbox unavailable": says nothing.
    Rule("permanent-unclear", Reason.MAILBOX_UNAVAILABLE, classes="5", stages=_RCPT),
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
    recipient: str | None = None,
) -> Classification:
    """Name the reason for one reply. `enhanced` is parsed from `text` when not given.

    `recipient`: the address the reply is about. Where the text names it, it is read as
    "recipient@domain": no word of a local part ("unknown@", "spam.trap@") can match a
    rule, and the replies of one server to many addresses are one reply, read once."""
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; expected one of {STAGES}")
    category = category_for_code(code)
    if code is None or category is Category.UNKNOWN:
        return Classification(category, Reason.UNKNOWN, "no-code")
    if recipient and "@" in text:
        text = _masked(text, recipient)
    return _classify(stage, code, category, text, enhanced, mx_host)


def _masked(text: str, recipient: str) -> str:
    """`text` with each mention of `recipient` (in any case) as recipient@its-domain."""
    lowered, needle = text.lower(), recipient.lower()
    start = lowered.find(needle)
    if start < 0 or len(lowered) != len(text):  # (a lowercase of another length: as it is)
        return text
    stand_in = "recipient@" + recipient.rpartition("@")[2]
    parts: list[str] = []
    end = 0
    while start >= 0:
        parts += (text[end:start], stand_in)
        end = start + len(needle)
        start = lowered.find(needle, end)
    parts.append(text[end:])
    return "".join(parts)


# Replies repeat ("250 2.1.5 Ok", "550 5.1.1 User unknown"): the same reply from the same
# host is read once. Replies that name the address differ, and only cost a miss.
@lru_cache(maxsize=4096)
def _classify(
    stage: str, code: int, category: Category, text: str, enhanced: str | None, mx_host: str
) -> Classification:
    candidates = _CANDIDATES[stage, str(code)[0]]
    if candidates and not candidates[0].reads_reply and not candidates[0].codes:
        return Classification(category, candidates[0].reason, candidates[0].name)  # any 2xx
    if enhanced is None:
        enhanced, text = parse_enhanced(text)
    # Servers wrap long replies anywhere; rules read one line of single spaces.
    text = " ".join(text.split())
    mx_host = mx_host.strip().rstrip(".")
    text_lower, mx_lower = _lowered(text), _lowered(mx_host)
    for rule in candidates:
        if rule._matches_reply(code, enhanced, text, text_lower, mx_host, mx_lower):
            return Classification(category, rule.reason, rule.name)
    return Classification(category, Reason.UNKNOWN, "no-rule")


# The rules that can apply at each stage to each reply class, in table order.
_CANDIDATES: dict[tuple[str, str], tuple[Rule, ...]] = {
    (stage, cls): tuple(r for r in RULES if cls in r.classes and stage in r.stages)
    for stage in STAGES
    for cls in "2345"
}


def classify_error(kind: str) -> Reason:
    """The reason for a probe that ended without a reply (see smtp.ErrorKind)."""
    return {
        "timeout": Reason.TIMEOUT,
        "connection_failed": Reason.CONNECTION_FAILED,
        "disconnected": Reason.CONNECTION_FAILED,
        "tls_failed": Reason.TLS_FAILED,
        "bad_input": Reason.INVALID_SYNTAX,
        "protocol": Reason.PROTOCOL_ERROR,  # not an SMTP reply (RFC 5321 §4.2): a broken server
        "out_of_step": Reason.PROTOCOL_ERROR,  # replies that do not match their commands
        "proxy_error": Reason.PROXY_ERROR,  # the route's proxy failed: says nothing of the MX
    }.get(kind, Reason.UNKNOWN)
