"""`mailprobe demo`: the whole probe, end to end, against a simulated MX on loopback.

A newcomer sees what mailprobe does without internet access or port 25: the
simulated server offers STARTTLS (a throwaway trustme certificate), knows a
few mailboxes and answers the rest the way real servers do.
"""

from __future__ import annotations

import ssl

import trustme
from rich.console import Console
from rich.table import Table

from mailprobe.config import Settings
from mailprobe.engine import probe_email
from mailprobe.sim.smtpd import ACCEPT, MXBehavior, Scripted, SimSMTPServer

# address -> (the server's scripted reply, the reason mailprobe should report)
DEMO_MAILBOXES: dict[str, tuple[Scripted, str]] = {
    "jane.doe@acme.example": (ACCEPT, "accepted"),
    "john.smith@acme.example": (
        Scripted(
            550,
            "5.1.1 <john.smith@acme.example>: Recipient address rejected: "
            "User unknown in virtual mailbox table",
        ),
        "mailbox_not_found",
    ),
    "full.box@acme.example": (
        Scripted(552, "5.2.2 <full.box@acme.example>: Mailbox full"),
        "mailbox_full",
    ),
    "new.hire@acme.example": (
        Scripted(
            450,
            "4.2.0 <new.hire@acme.example>: Recipient address rejected: "
            "Greylisted, see http://postgrey.schweikert.ch/help/acme.example.html",
        ),
        "greylisted",
    ),
    "old.account@acme.example": (
        Scripted(
            550,
            "5.2.1 <old.account@acme.example>: The email account that you tried "
            "to reach is disabled",
        ),
        "mailbox_disabled",
    ),
    "sales@acme.example": (
        Scripted(
            554, "5.7.1 Service unavailable; Client host [127.0.0.1] blocked using zen.spamhaus.org"
        ),
        "policy_block",
    ),
}


async def run_demo(settings: Settings) -> int:
    """Probe every demo address; return 0 when each reason is the expected one."""
    console = Console(width=120) if not Console().is_terminal else Console()
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("mx.acme.example").configure_cert(server_ctx)
    behavior = MXBehavior(
        hostname="mx.acme.example",
        tls_context=server_ctx,
        mailboxes={addr: reply for addr, (reply, _) in DEMO_MAILBOXES.items()},
    )
    table = Table(title="mailprobe demo: a simulated MX on 127.0.0.1 (nothing leaves this machine)")
    for column in ("address", "category", "code", "reason", "TLS", "ms", "check"):
        table.add_column(column, no_wrap=column == "address")
    failures = 0
    async with SimSMTPServer(behavior) as server:
        for addr, (_, expected) in DEMO_MAILBOXES.items():
            result = await probe_email(
                addr, mx_host="127.0.0.1", port=server.port, settings=settings, persist=False
            )
            good = result["reason"] == expected
            failures += not good
            table.add_row(
                addr,
                result["category"],
                str(result["code"]),
                result["reason"],
                "yes" if result["tls"] else "no",
                str(result["elapsed_ms"]),
                "ok" if good else f"expected {expected}",
            )
        data_seen = server.record.data_received
    console.print(table)
    console.print(f"DATA sent to the server: {'YES (bug!)' if data_seen else 'never'}")
    return 1 if failures or data_seen else 0
