"""mailprobe.dns's single-lookup helpers (used by doctor and SPF) against a loopback DNS."""

from __future__ import annotations

import dns.exception
import pytest

from mailprobe.dns import (
    DNSLookupError,
    lookup,
    lookup_addresses,
    lookup_ptr,
    lookup_txt,
    make_resolver,
)
from mailprobe.testing.dnsd import DomainSpec, SimDNSServer

ZONE = {
    "both.example": DomainSpec(a=["192.0.2.1"], aaaa=["2001:db8::1"], txt=["v=spf1 -all", "x"]),
    "empty.example": DomainSpec(),
    "gone.example": DomainSpec(nxdomain=True),
    "broken.example": DomainSpec(servfail=True),
    "1.2.0.192.in-addr.arpa": DomainSpec(ptr=["Mail.Example."]),
}


async def test_lookup_answers_nodata_and_nxdomain() -> None:
    async with SimDNSServer(ZONE) as server:
        resolver = make_resolver([server.nameserver], 2)
        assert [str(r.address) for r in await lookup(resolver, "both.example", "A") or []] == [
            "192.0.2.1"
        ]
        assert await lookup(resolver, "empty.example", "A") == []
        assert await lookup(resolver, "gone.example", "A") is None
        with pytest.raises(DNSLookupError):
            await lookup(resolver, "broken.example", "A")
        with pytest.raises(dns.exception.DNSException):  # not a name: bad input, not DNS
            await lookup(resolver, "bad..name", "A")


async def test_addresses_txt_and_ptr() -> None:
    async with SimDNSServer(ZONE) as server:
        resolver = make_resolver([server.nameserver], 2)
        assert await lookup_addresses(resolver, "both.example") == ["192.0.2.1", "2001:db8::1"]
        assert await lookup_addresses(resolver, "gone.example") == []
        assert sorted(await lookup_txt(resolver, "both.example")) == ["v=spf1 -all", "x"]
        assert await lookup_txt(resolver, "gone.example") == []
        assert await lookup_ptr(resolver, "192.0.2.1") == ["mail.example"]
        assert await lookup_ptr(resolver, "192.0.2.9") == []


async def test_a_silent_server_is_a_lookup_error_within_the_lifetime() -> None:
    import socket
    import time

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        resolver = make_resolver([f"127.0.0.1:{sock.getsockname()[1]}"], 1)
        start = time.monotonic()
        with pytest.raises(DNSLookupError):
            await lookup(resolver, "example.com", "A")
        assert time.monotonic() - start < 3
