"""The RCPT-TO probe against real SMTP servers on loopback.

Every integration test talks the real protocol to a scripted server
(mailprobe.testing.smtpd) on 127.0.0.1; nothing here touches the network.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

import mailprobe.smtp as smtp_mod
from mailprobe import behavior
from mailprobe.address import InvalidAddress, parse_address
from mailprobe.classify import Category, category_for_code
from mailprobe.smtp import aprobe_rcpt, effective_timeouts, probe_rcpt
from mailprobe.testing.smtpd import ACCEPT, MXBehavior, Scripted, serve_in_thread

from .conftest import HELO, MAIL_FROM, MakeServer

pytestmark = pytest.mark.r16  # the seed's label: pytest -k r16

SEED_KEYS = {"ok", "category", "code", "message", "mx_host", "helo_domain", "elapsed_ms", "error"}
ALLOWED_VERBS = {"EHLO", "HELO", "STARTTLS", "MAIL", "RCPT", "RSET", "QUIT"}


async def probe(server: Any, email: str = "jane@acme.example", **kw: Any) -> dict[str, Any]:
    kw.setdefault("connect_timeout", 5.0)
    kw.setdefault("command_timeout", 5.0)
    return await aprobe_rcpt(
        email, "127.0.0.1", helo_domain=HELO, mail_from=MAIL_FROM, port=server.port, **kw
    )


# -- the seed's code mapping ---------------------------------------------------


@pytest.mark.parametrize(
    ("code", "category"),
    [
        (250, "accept"),
        (251, "accept"),
        (200, "accept"),
        (299, "accept"),
        (550, "hard_fail"),
        (553, "hard_fail"),
        (500, "hard_fail"),
        (599, "hard_fail"),
        (450, "temp_fail"),
        (451, "temp_fail"),
        (421, "temp_fail"),
        (None, "unknown"),
        (354, "unknown"),
        (199, "unknown"),
        (600, "unknown"),
    ],
)
def test_code_mapping(code: int | None, category: str) -> None:
    assert category_for_code(code) == Category(category)


@pytest.mark.parametrize(
    ("reply", "category", "reason"),
    [
        (ACCEPT, "accept", "accepted"),
        (
            Scripted(550, "5.1.1 <{rcpt}>: Recipient address rejected: User unknown"),
            "hard_fail",
            "mailbox_not_found",
        ),
        (Scripted(552, "5.2.2 <{rcpt}>: Mailbox full"), "hard_fail", "mailbox_full"),
        (
            Scripted(451, "4.7.1 <{rcpt}>: Recipient address rejected: Greylisted for 300 seconds"),
            "temp_fail",
            "greylisted",
        ),
        (
            Scripted(
                550, "5.7.1 Service unavailable; client [127.0.0.1] blocked using zen.spamhaus.org"
            ),
            "hard_fail",
            "policy_block",
        ),
    ],
)
async def test_rcpt_replies(
    smtp_server: MakeServer, reply: Scripted, category: str, reason: str
) -> None:
    server = await smtp_server(MXBehavior(default_rcpt=reply))
    result = await probe(server)
    assert set(result) >= SEED_KEYS
    assert result["ok"] is True
    assert result["category"] == category
    assert result["code"] == reply.code
    assert result["reason"] == reason
    assert result["stage"] == "rcpt"
    assert result["error"] is None
    assert result["message"].startswith(reply.text.split(" ", 1)[0])
    assert result["enhanced_status"] == reply.text.split(" ", 1)[0]
    assert server.record.verbs() == ["EHLO", "MAIL", "RCPT", "RSET", "QUIT"]


async def test_multiline_reply_parsed(smtp_server: MakeServer) -> None:
    gmail_style = Scripted(
        550,
        "5.1.1 The email account that you tried to reach does not exist. Please try\n"
        "5.1.1 double-checking the recipient's email address for typos or\n"
        "5.1.1 unnecessary spaces.",
    )
    server = await smtp_server(MXBehavior(default_rcpt=gmail_style))
    result = await probe(server)
    assert result["code"] == 550
    assert result["enhanced_status"] == "5.1.1"
    assert result["message"].count("\n") == 2
    assert result["reason"] == "mailbox_not_found"
    assert any(line.startswith("S: 550-5.1.1 The email account") for line in result["transcript"])


# -- results that are not RCPT replies ----------------------------------------


@pytest.mark.parametrize(
    ("banner", "category", "reason"),
    [
        (
            Scripted(
                554, "5.7.1 mx.sim.example: Client host [127.0.0.1] blocked using zen.spamhaus.org"
            ),
            "hard_fail",
            "policy_block",
        ),
        (
            Scripted(421, "4.7.0 mx.sim.example Too many connections, try again later"),
            "temp_fail",
            "rate_limited",
        ),
        (
            Scripted(421, "mx.sim.example Service not available, closing transmission channel"),
            "temp_fail",
            "service_unavailable",
        ),
    ],
)
async def test_greeting_refusal_is_a_result(
    smtp_server: MakeServer, banner: Scripted, category: str, reason: str
) -> None:
    server = await smtp_server(MXBehavior(banner=banner))
    result = await probe(server)
    assert result["ok"] is True
    assert (result["code"], result["category"], result["reason"]) == (banner.code, category, reason)
    assert result["stage"] == "greeting"
    assert server.record.commands == []  # nothing sent after a refusing greeting


async def test_ehlo_refused_falls_back_to_helo(smtp_server: MakeServer) -> None:
    server = await smtp_server(
        MXBehavior(ehlo=Scripted(502, "5.5.2 Error: command not recognized"))
    )
    result = await probe(server)
    assert result["category"] == "accept" or result["reason"] == "mailbox_not_found"
    assert server.record.verbs()[:3] == ["EHLO", "HELO", "MAIL"]


async def test_sender_rejected_never_sends_rcpt(smtp_server: MakeServer) -> None:
    server = await smtp_server(
        MXBehavior(
            mail=Scripted(
                553, "5.1.8 <bounce@mailprobe.example>: Sender address rejected: Domain not found"
            )
        )
    )
    result = await probe(server)
    assert (result["stage"], result["code"], result["reason"]) == ("mail", 553, "sender_rejected")
    assert "RCPT" not in server.record.verbs()


# -- TLS ----------------------------------------------------------------------


async def test_starttls_upgrades_and_ehlo_again(
    smtp_server: MakeServer, server_tls: ssl.SSLContext, client_tls: ssl.SSLContext
) -> None:
    server = await smtp_server(MXBehavior(tls_context=server_tls, default_rcpt=ACCEPT))
    result = await probe(server, tls_context=client_tls)  # verifies the trustme certificate
    assert result["tls"] is True
    assert result["category"] == "accept"
    assert server.record.verbs() == ["EHLO", "STARTTLS", "EHLO", "MAIL", "RCPT", "RSET", "QUIT"]


async def test_server_requiring_tls(smtp_server: MakeServer, server_tls: ssl.SSLContext) -> None:
    server = await smtp_server(
        MXBehavior(tls_context=server_tls, require_tls=True, default_rcpt=ACCEPT)
    )
    assert (await probe(server))["reason"] == "accepted"
    refused = await probe(server, starttls=False)
    assert (refused["code"], refused["stage"], refused["reason"]) == (530, "mail", "tls_required")


async def test_tls_handshake_failure_is_reported(
    smtp_server: MakeServer, server_tls: ssl.SSLContext
) -> None:
    server = await smtp_server(MXBehavior(tls_context=server_tls))
    strict = ssl.create_default_context()  # does not trust the test CA
    result = await probe(server, tls_context=strict)
    assert (result["ok"], result["error_kind"], result["reason"]) == (
        False,
        "tls_failed",
        "tls_failed",
    )
    assert result["stage"] == "starttls"


# -- exceptions map to ok=False / unknown ---------------------------------------


async def test_connection_refused_maps_to_unknown() -> None:
    import socket

    with socket.socket() as s:  # a port that is certainly closed: bound, never listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        result = await aprobe_rcpt(
            "jane@acme.example", "127.0.0.1", helo_domain=HELO, mail_from=MAIL_FROM, port=port
        )
    assert result["ok"] is False
    assert result["category"] == "unknown"
    assert result["code"] is None
    assert result["error"] and "connect" in result["error"]
    assert result["reason"] == "connection_failed"


@pytest.mark.parametrize("verb", ["MAIL", "RCPT", "EHLO"])
async def test_dropped_connection_mid_session(smtp_server: MakeServer, verb: str) -> None:
    server = await smtp_server(MXBehavior(drop_at=verb))
    result = await probe(server)
    assert (result["ok"], result["category"], result["code"]) == (False, "unknown", None)
    assert result["error_kind"] == "disconnected"
    assert result["reason"] == "connection_failed"
    assert result["stage"] == verb.lower()


async def test_tarpit_ends_within_budget(smtp_server: MakeServer) -> None:
    # One byte a second: the 40-byte greeting would take 40 s.
    server = await smtp_server(MXBehavior(dribble=1.0))
    started = time.monotonic()
    result = await probe(server, connect_timeout=1.5, command_timeout=1.5, deadline=3.0)
    took = time.monotonic() - started
    assert result["error_kind"] == "timeout"
    assert result["reason"] == "timeout"
    assert (result["ok"], result["code"]) == (False, None)
    assert took < 3.5, f"probe took {took:.1f}s against a 3 s deadline"


async def test_deadline_caps_slow_but_steady_server(smtp_server: MakeServer) -> None:
    # Each reply inside the command timeout, but the whole session is longer than the deadline.
    server = await smtp_server(MXBehavior(reply_delay=0.8))
    started = time.monotonic()
    result = await probe(server, command_timeout=1.0, deadline=2.0)
    assert result["error_kind"] == "timeout"
    assert "deadline" in result["error"]
    assert time.monotonic() - started < 2.5


# -- behaviour hint and the seed's behaviour hook---------------------------------------


def test_behavior_hint_rule() -> None:
    assert effective_timeouts(10, 10, None) == smtp_mod.Timeouts(10, 10)
    assert effective_timeouts(10, 10, {"tarpit": True}) == smtp_mod.Timeouts(5, 5)
    assert effective_timeouts(10, 10, {"slow": True}) == smtp_mod.Timeouts(5, 5)
    assert effective_timeouts(3, 3, {"tarpit": True}) == smtp_mod.Timeouts(2, 2)
    assert effective_timeouts(1, 1, {"tarpit": True}) == smtp_mod.Timeouts(1, 1)
    assert effective_timeouts(10, 10, {"command_timeout": 60}) == smtp_mod.Timeouts(10, 60)
    assert effective_timeouts(10, 10, {"tarpit": False, "slow": False}) == smtp_mod.Timeouts(10, 10)


async def test_tarpit_hint_shortens_the_wait(smtp_server: MakeServer) -> None:
    server = await smtp_server(MXBehavior(greeting_delay=30))
    started = time.monotonic()
    result = await probe(
        server, connect_timeout=4, command_timeout=4, behavior_hint={"tarpit": True}
    )
    assert result["reason"] == "timeout"
    assert time.monotonic() - started < 3.0  # halved from 4 s to 2 s


async def test_behavior_hook_invoked(
    smtp_server: MakeServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[tuple[Any, ...], dict[str, Any]]] = []
    monkeypatch.setattr(smtp_mod, "record_mx_probe", lambda *a, **k: calls.append((a, k)))
    server = await smtp_server(MXBehavior())
    result = await probe(server)
    assert len(calls) == 1
    args, kwargs = calls[0]
    assert args == ("127.0.0.1",)
    assert kwargs["code"] == 550
    assert kwargs["latency_ms"] == result["elapsed_ms"]
    assert kwargs["error_kind"] is None


async def test_default_hook_feeds_the_behaviour_cache(smtp_server: MakeServer) -> None:
    server = await smtp_server(MXBehavior(greeting_delay=5))
    for _ in range(2):
        await probe(server, connect_timeout=0.3)
    hint = behavior.behavior_hint("127.0.0.1")
    assert hint is not None and hint["tarpit"] is True and hint["probes"] == 2


async def test_broken_hook_does_not_lose_the_result(
    smtp_server: MakeServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*a: Any, **k: Any) -> None:
        raise RuntimeError("hook exploded")

    monkeypatch.setattr(smtp_mod, "record_mx_probe", broken)
    server = await smtp_server(MXBehavior(default_rcpt=ACCEPT))
    assert (await probe(server))["category"] == "accept"


# -- bad input never reaches the wire -----------------------------------------

INJECTIONS = [
    "a@b.com>\r\nDATA",
    "a@b.com\r\nRCPT TO:<victim@b.com>",
    "a\n@b.com",
    "a@b.com\x00",
    "a\x1b@b.com",
    "a@b.com\u2028DATA",
    "no-at-sign.example",
    "two@@ats.example",
    "a@b@c.example",
    "@nolocal.example",
    "nodomain@",
    "x" * 65 + "@long.example",
    "a@" + "d" * 64 + ".example",
    "",
    "   ",
]


@pytest.mark.parametrize("email", INJECTIONS)
async def test_bad_address_never_reaches_server(smtp_server: MakeServer, email: str) -> None:
    server = await smtp_server(MXBehavior(default_rcpt=ACCEPT))
    result = await probe(server, email)
    assert (result["ok"], result["error_kind"], result["reason"]) == (
        False,
        "bad_input",
        "invalid_syntax",
    )
    assert result["error"]
    assert server.record.connections == 0


@pytest.mark.parametrize(
    "field",
    [
        {"helo_domain": "evil.example\r\nDATA"},
        {"mail_from": "a@b.example>\r\nDATA"},
        {"mx_host": "127.0.0.1\r\nDATA"},
    ],
)
async def test_bad_identity_never_reaches_server(
    smtp_server: MakeServer, field: dict[str, str]
) -> None:
    server = await smtp_server(MXBehavior(default_rcpt=ACCEPT))
    kwargs: dict[str, Any] = {
        "helo_domain": HELO,
        "mail_from": MAIL_FROM,
        "port": server.port,
        **field,
    }
    mx = kwargs.pop("mx_host", "127.0.0.1")
    result = await aprobe_rcpt("jane@acme.example", mx, **kwargs)
    assert result["error_kind"] == "bad_input"
    assert server.record.connections == 0


@given(
    st.text(min_size=1, max_size=30),
    st.sampled_from("\r\n\x00\x07\x1b\x7f\x85\u2028"),
    st.integers(min_value=0, max_value=30),
)
def test_any_control_character_is_refused(text: str, bad: str, pos: int) -> None:
    candidate = text[:pos] + bad + text[pos:] + "@acme.example"
    with pytest.raises(InvalidAddress):
        parse_address(candidate)


def test_address_normalisation() -> None:
    addr = parse_address("  Jane.Doe@ACME.Example ")
    assert (addr.local, addr.domain, addr.normalized) == (
        "Jane.Doe",
        "acme.example",
        "Jane.Doe@acme.example",
    )
    idn = parse_address("info@bücher.example")
    assert idn.wire == "info@xn--bcher-kva.example"
    assert not idn.needs_smtputf8
    assert parse_address("jürgen@bücher.example").needs_smtputf8


async def test_idn_domain_sent_as_punycode(smtp_server: MakeServer) -> None:
    server = await smtp_server(MXBehavior(default_rcpt=ACCEPT))
    result = await probe(server, "info@bücher.example")
    assert result["category"] == "accept"
    assert "RCPT TO:<info@xn--bcher-kva.example>" in server.record.commands


async def test_smtputf8_local_part(smtp_server: MakeServer) -> None:
    plain = await smtp_server(MXBehavior(default_rcpt=ACCEPT))
    result = await probe(plain, "jürgen@acme.example")
    assert result["reason"] == "smtputf8_unsupported"
    assert "MAIL" not in plain.record.verbs()
    utf8 = await smtp_server(MXBehavior(default_rcpt=ACCEPT, smtputf8=True))
    result = await probe(utf8, "jürgen@acme.example")
    assert result["category"] == "accept"
    assert utf8.record.commands[1].endswith(" SMTPUTF8")


# -- never DATA ---------------------------------------------------------------


async def test_never_sends_data(smtp_server: MakeServer, server_tls: ssl.SSLContext) -> None:
    mailboxes = {"ok@acme.example": ACCEPT, "full@acme.example": Scripted(452, "4.2.2 full")}
    server = await smtp_server(MXBehavior(tls_context=server_tls, mailboxes=mailboxes))
    for email in ["ok@acme.example", "full@acme.example", "gone@acme.example"]:
        await probe(server, email)
    assert server.record.connections == 3
    assert not server.record.data_received
    assert set(server.record.verbs()) <= ALLOWED_VERBS


# -- the sync face --------------------------------------------------------------


def test_probe_rcpt_sync_face() -> None:
    with serve_in_thread(MXBehavior(default_rcpt=ACCEPT)) as server:
        result = probe_rcpt(
            "jane@acme.example",
            "127.0.0.1",
            helo_domain=HELO,
            mail_from=MAIL_FROM,
            port=server.port,
        )
    assert set(result) >= SEED_KEYS
    assert (result["ok"], result["category"], result["code"]) == (True, "accept", 250)
    assert result["helo_domain"] == HELO and result["mx_host"] == "127.0.0.1"
    assert isinstance(result["elapsed_ms"], int)


async def test_probe_rcpt_inside_running_loop_does_not_deadlock() -> None:
    with serve_in_thread(MXBehavior(default_rcpt=ACCEPT)) as server:
        asyncio.get_running_loop()  # we are inside a running loop
        result = probe_rcpt(
            "jane@acme.example",
            "127.0.0.1",
            helo_domain=HELO,
            mail_from=MAIL_FROM,
            port=server.port,
        )
    assert result["category"] == "accept"


# -- queue task shape and throttle hooks (monkeypatched) ---------------------------


def _r16_recording_throttle(events: list[tuple[Any, ...]], server: Any) -> Any:
    """A fake throttle that records acquire/release/penalize (and what the server saw)."""
    from mailprobe.throttle import Limits, Slot, Throttle

    class Recording(Throttle):
        async def acquire(
            self, mx_host: str, *, wait: float | None = None, rcpts: int = 1, priority: bool = False
        ) -> Slot:
            events.append(("acquire", mx_host, wait, server.record.connections))
            return Slot(mx_host, "token")

        async def more(
            self, slot: Slot, rcpts: int, *, wait: float | None = None, priority: bool = False
        ) -> int:
            raise AssertionError("a single probe sends one RCPT")

        async def release(self, slot: Slot) -> None:
            events.append(("release", slot.mx_host, server.record.connections))

        async def renew(self, slot: Slot, lease_seconds: float | None = None) -> bool:
            return True

        async def penalize(self, mx_host: str, *, reason: str) -> None:
            events.append(("penalize", mx_host, reason))

        async def effective_limits(self, mx_host: str) -> Limits:
            return Limits(1, 1.0)

        async def aclose(self) -> None:
            events.append(("close",))

    return Recording()


@pytest.mark.parametrize(
    ("rcpt", "category", "penalized"),
    [(ACCEPT, "accept", False), (Scripted(421, "4.7.0 Too many connections"), "temp_fail", True)],
)
def test_queue_task_shape_and_throttle_hooks(
    monkeypatch: pytest.MonkeyPatch, rcpt: Scripted, category: str, penalized: bool
) -> None:
    from mailprobe import config, queue
    from mailprobe.testing.dnsd import DomainSpec, SimDNSServer

    zone = {
        "acme.example": DomainSpec(mx=[(20, "mx2.acme.example"), (10, "mx1.acme.example")]),
        "mx1.acme.example": DomainSpec(a=["127.0.0.1"]),
        "mx2.acme.example": DomainSpec(a=["127.0.0.1"]),
    }
    events: list[tuple[Any, ...]] = []
    with SimDNSServer(zone) as dns, serve_in_thread(MXBehavior(default_rcpt=rcpt)) as server:
        monkeypatch.setenv("DNS_NAMESERVERS", dns.nameserver)
        monkeypatch.setenv("SMTP_PORT", str(server.port))
        monkeypatch.setenv("THROTTLE_WAIT", "7")
        config.get_settings.cache_clear()
        fake = _r16_recording_throttle(events, server)
        monkeypatch.setattr(queue, "make_job_throttle", lambda settings: fake)
        result = queue.task_probe_email(None, "jane@acme.example", "acme.example")
    assert set(result) >= SEED_KEYS
    assert result["category"] == category and result["mx_host"] == "mx1.acme.example"
    assert result["helo_domain"] == config.get_settings().smtp_helo_domain
    # One slot, for the lowest MX, taken before the probe connected and released after it.
    expected: list[tuple[Any, ...]] = [
        ("acquire", "mx1.acme.example", 7.0, 0),
        ("release", "mx1.acme.example", 1),
    ]
    if penalized:
        expected.append(("penalize", "mx1.acme.example", "421"))
    assert events == [*expected, ("close",)]
