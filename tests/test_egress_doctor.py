"""`mailprobe doctor` per route: the IP the MX sees through each route, its reverse DNS
(forward-confirmed) and its blocklist listings, all from our own DNS on loopback.

A DNSBL answers a listed IP's reversed-octet name under its zone with an A record in
127.0.0.0/8 (RFC 5782 §2.1, https://www.rfc-editor.org/rfc/rfc5782#section-2.1); an
unlisted IP gets NXDOMAIN.
"""

from __future__ import annotations

from mailprobe.config import Settings
from mailprobe.doctor.egress import check_routes
from mailprobe.testing.dnsd import DomainSpec, SimDNSServer
from mailprobe.testing.smtpd import MXBehavior, Scripted, SimSMTPServer
from mailprobe.testing.socks5 import SimSocks5Server

EHLO = Scripted(250, "mx.acme.example Hello there [{client}]\nPIPELINING")


async def test_doctor_reads_each_routes_ptr_and_listings() -> None:
    server = await SimSMTPServer(MXBehavior(ehlo=EHLO)).start()
    clean = await SimSocks5Server(bind="127.0.0.2").start()  # the MX sees 127.0.0.2
    listed = await SimSocks5Server(bind="127.0.0.3").start()  # and 127.0.0.3
    zone = {
        "gmail.com": DomainSpec(mx=[(5, "gmail-smtp-in.l.google.com")]),  # DNS works
        # 127.0.0.2: PTR -> out.probe.example -> 127.0.0.2 (forward-confirmed)
        "2.0.0.127.in-addr.arpa": DomainSpec(ptr=["out.probe.example"]),
        "out.probe.example": DomainSpec(a=["127.0.0.2"]),
        # 127.0.0.3: PTR to a name that does not point back; and listed
        "3.0.0.127.in-addr.arpa": DomainSpec(ptr=["elsewhere.probe.example"]),
        "elsewhere.probe.example": DomainSpec(a=["192.0.2.9"]),
        "3.0.0.127.bl.test.example": DomainSpec(a=["127.0.0.2"]),
    }
    dns = await SimDNSServer(zone).start()
    try:
        settings = Settings.from_env({
            "SMTP_ROUTES": f"clean={clean.url}, listed={listed.url}",
            "SMTP_CONNECT_TIMEOUT": "2", "DNS_NAMESERVERS": dns.nameserver,
            "SMTP_HELO_DOMAIN": "out.probe.example",
        })  # fmt: skip
        checks = {
            c.name: c
            for c in await check_routes(
                settings,
                mx_host="127.0.0.1",
                port=server.port,
                check_private=True,
                blocklists=("bl.test.example",),
            )
        }
    finally:
        for thing in (server, clean, listed, dns):
            await thing.stop()
    assert checks["route:clean"].status == "pass"
    assert checks["route:clean:ip"].detail.startswith("127.0.0.2 ")
    assert checks["route:clean:ptr"].status == "pass", checks["route:clean:ptr"].detail
    assert "forward-confirmed" in checks["route:clean:ptr"].detail
    assert checks["route:clean:blocklist:bl.test.example"].status == "pass"
    assert checks["route:listed:ip"].detail.startswith("127.0.0.3 ")
    assert checks["route:listed:ptr"].status == "fail"
    assert "not forward-confirmed" in checks["route:listed:ptr"].detail
    assert checks["route:listed:blocklist:bl.test.example"].status == "fail"
