"""A real DNS server on loopback (UDP and TCP on one port), for tests and the simulated world.

Hand-written on asyncio with dnslib for the wire format, so that the resolver under
test speaks real DNS to it: a client sees NXDOMAIN with an SOA (negative TTL),
SERVFAIL, REFUSED, silence, slow answers, and truncated UDP answers it must retry
over TCP. Every query is recorded (name, type, transport) so a test can prove what
reached the server, e.g. that the IDNA form was asked, or that TCP was used.

The zone is a plain dict read on every query, so a test (or the simulated mail
world) may add, change or remove names while the server runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import struct
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Literal, cast

from dnslib import (
    AAAA,
    CNAME,
    MX,
    PTR,
    QTYPE,
    RCODE,
    RR,
    SOA,
    TXT,
    A,
    DNSError,
    DNSLabel,
    DNSRecord,
)

from mailprobe.testing.background import ThreadedServer

Transport = Literal["udp", "tcp"]

UDP_DEFAULT_LIMIT = 512  # RFC 1035 §4.2.1: without EDNS a UDP answer fits in 512 octets
SOA_MNAME = "ns.sim.example."
SOA_RNAME = "hostmaster.sim.example."


@dataclass
class DomainSpec:
    """What the server answers for one name. Defaults: a name that exists with no records.

    `mx` None means no MX record (so a client falls back to A/AAAA); `null_mx`
    publishes RFC 7505's "0 ." instead. `nxdomain`, `servfail`, `refused` and `drop`
    (never answer) override everything else. `truncate_udp` answers every UDP query
    with only the TC bit, forcing a retry over TCP. `servfail_first` answers SERVFAIL to
    the first N queries for the name, then normally: DNS that fails and recovers.
    `delay` holds every answer back, e.g. longer than a prober's first DNS timeout.

    `ptr` holds reverse-DNS targets (for names like "1.0.0.127.in-addr.arpa") and
    `txt` whole TXT strings such as SPF records ("v=spf1 ip4:127.0.0.1 -all"); a
    string longer than 255 octets goes out split into 255-octet chunks, as a real
    zone would publish it. A DNS blocklist entry is just an `a` record
    ("2.0.0.127.zen.spamhaus.org" -> 127.0.0.2).
    """

    mx: list[tuple[int, str]] | None = None
    a: list[str] = field(default_factory=list)
    aaaa: list[str] = field(default_factory=list)
    cname: str | None = None  # alias: answered (and followed inside the zone) for every type
    ptr: list[str] = field(default_factory=list)  # reverse-DNS target host names
    txt: list[str] = field(default_factory=list)  # one TXT record per string (e.g. SPF)
    null_mx: bool = False
    nxdomain: bool = False
    servfail: bool = False
    refused: bool = False
    servfail_first: int = 0  # SERVFAIL for the first N queries of this name, then answer
    drop: bool = False
    # Answer the name's first query only (later ones are dropped): with `delay`, a server
    # slower than a prober's first try, whose one late answer must still be heard.
    answer_first_only: bool = False
    delay: float = 0.0  # seconds before answering (both transports)
    truncate_udp: bool = False
    ttl: int = 300
    negative_ttl: int = 60  # SOA minimum (and SOA TTL) on negative answers


@dataclass(frozen=True, slots=True)
class DNSQuery:
    """One query as received: name lowercased without the final dot, type mnemonic."""

    name: str
    qtype: str
    transport: Transport


def _norm(name: str) -> str:
    return name.rstrip(".").lower()


class _UDPProtocol(asyncio.DatagramProtocol):
    def __init__(self, server: SimDNSServer) -> None:
        self.server = server
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        self.server._spawn(self._answer(data, addr))

    async def _answer(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        reply = await self.server._respond(data, "udp")
        if reply is not None and self.transport is not None and not self.transport.is_closing():
            self.transport.sendto(reply, addr)


class SimDNSServer(ThreadedServer):
    """An authoritative-looking server for `zone` on one UDP+TCP port.

    `async with SimDNSServer(zone) as dns:` runs it on the current loop; `with
    SimDNSServer(zone) as dns:` runs it on a private loop in a thread, for sync
    callers. `dns.nameserver` is the "127.0.0.1:PORT" string DNS_NAMESERVERS takes.
    """

    thread_name = "sim-dnsd"

    def __init__(
        self,
        zone: dict[str, DomainSpec] | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        negative_ttl: int = 60,
    ) -> None:
        self.zone: dict[str, DomainSpec] = zone if zone is not None else {}
        self.host = host
        self.port = port
        self.negative_ttl = negative_ttl  # for names not in the zone
        self.queries: list[DNSQuery] = []
        self._asked: Counter[str] = Counter()  # queries per name, for `servfail_first`
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    # -- lifecycle --------------------------------------------------------------

    @property
    def nameserver(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    async def start(self) -> SimDNSServer:
        """Bind UDP, then TCP on the same port; with port 0, retry until a free pair is found."""
        loop = asyncio.get_running_loop()
        for _ in range(50):
            udp, _proto = await loop.create_datagram_endpoint(
                lambda: _UDPProtocol(self), local_addr=(self.host, self.port)
            )
            port = udp.get_extra_info("sockname")[1]
            try:
                self._tcp = await asyncio.start_server(self._serve_tcp, self.host, port)
            except OSError as exc:
                udp.close()
                if self.port == 0 and exc.errno == errno.EADDRINUSE:
                    continue  # the TCP twin of this UDP port is taken: draw another
                raise
            self._udp, self.port = udp, port
            return self
        raise OSError(errno.EADDRINUSE, "no free UDP+TCP port pair found on " + self.host)

    async def stop(self) -> None:
        if self._udp is not None:
            self._udp.close()
            self._udp = None
        if self._tcp is not None:
            self._tcp.close()
            for writer in list(self._writers):
                writer.transport.abort()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._tcp is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._tcp.wait_closed(), 2)
            self._tcp = None

    async def __aenter__(self) -> SimDNSServer:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- helpers for tests ------------------------------------------------------

    def queries_for(self, name: str, qtype: str | None = None) -> list[DNSQuery]:
        wanted = _norm(name)
        return [q for q in self.queries if q.name == wanted and qtype in (None, q.qtype)]

    def transports(self, name: str | None = None) -> set[Transport]:
        return {q.transport for q in self.queries if name is None or q.name == _norm(name)}

    # -- serving ----------------------------------------------------------------

    def _spawn(self, coro: Any) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """RFC 1035 §4.2.2 framing: a two-octet length before each message; many per connection."""
        self._writers.add(writer)
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)  # so stop() cancels a delayed answer
        try:
            while True:
                (length,) = struct.unpack("!H", await reader.readexactly(2))
                reply = await self._respond(await reader.readexactly(length), "tcp")
                if reply is None:
                    continue  # "drop": say nothing, let the client time out
                writer.write(struct.pack("!H", len(reply)) + reply)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            return
        except asyncio.CancelledError:
            return  # server stopping; returning keeps 3.11's start_server callback quiet
        finally:
            if task is not None:
                self._tasks.discard(task)
            self._writers.discard(writer)
            writer.transport.abort()

    async def _respond(self, data: bytes, transport: Transport) -> bytes | None:
        try:
            request = DNSRecord.parse(data)
        except (DNSError, struct.error, IndexError, ValueError):
            return None  # not DNS: ignore, as a real server would
        if not request.questions:
            reply = request.reply()
            reply.header.rcode = RCODE.FORMERR
            return bytes(reply.pack())
        question = request.q
        qname = _norm(str(question.qname))
        qtype = QTYPE.get(question.qtype, str(question.qtype))
        self.queries.append(DNSQuery(qname, str(qtype), transport))
        self._asked[qname] += 1
        spec = self.zone.get(qname)
        if spec is not None and spec.answer_first_only and self._asked[qname] > 1:
            return None
        if spec is not None and spec.delay:
            await asyncio.sleep(spec.delay)
        if spec is not None and spec.drop:
            return None
        reply = request.reply()  # QR, AA, RD copied, RA set; the question echoed
        if spec is not None and self._asked[qname] <= spec.servfail_first:
            reply.header.rcode = RCODE.SERVFAIL
            return bytes(reply.pack())
        if spec is not None and transport == "udp" and spec.truncate_udp:
            reply.header.tc = 1
            return bytes(reply.pack())
        self._fill(reply, qname, question.qtype, spec)
        packed = bytes(reply.pack())
        if transport == "udp" and len(packed) > _udp_limit(request):
            truncated = request.reply()
            truncated.header.tc = 1
            truncated.header.rcode = reply.header.rcode
            return bytes(truncated.pack())
        return packed

    def _fill(self, reply: DNSRecord, qname: str, qtype: int, spec: DomainSpec | None) -> None:
        """Answer `qname`/`qtype` from the zone, following CNAMEs that stay inside it."""
        name, seen = qname, set()
        while True:
            if spec is None or spec.nxdomain:
                reply.header.rcode = RCODE.NXDOMAIN
                self._add_soa(reply, name, spec)
                return
            if spec.servfail:
                reply.header.rcode = RCODE.SERVFAIL
                return
            if spec.refused:
                reply.header.rcode = RCODE.REFUSED
                return
            if spec.cname is not None and qtype != QTYPE.CNAME:
                target = _norm(spec.cname)
                reply.add_answer(
                    RR(name + ".", QTYPE.CNAME, rdata=CNAME(target + "."), ttl=spec.ttl)
                )
                seen.add(name)
                if target in seen or target not in self.zone:
                    return  # out of zone (the client asks again) or a loop
                name, spec = target, self.zone[target]
                continue
            records = _records(name, qtype, spec)
            if not records:
                self._add_soa(reply, name, spec)  # NODATA: NOERROR with the SOA (RFC 2308)
            for rr in records:
                reply.add_answer(rr)
            return

    def _add_soa(self, reply: DNSRecord, name: str, spec: DomainSpec | None) -> None:
        negative = spec.negative_ttl if spec is not None else self.negative_ttl
        owner = self._apex(name)
        soa = SOA(SOA_MNAME, SOA_RNAME, (1, 3600, 600, 86400, negative))
        reply.add_auth(RR(owner + ".", QTYPE.SOA, rdata=soa, ttl=negative))

    def _apex(self, name: str) -> str:
        """The nearest enclosing name in the zone (or the parent of an unknown name)."""
        labels = name.split(".")
        for i in range(len(labels)):
            candidate = ".".join(labels[i:])
            if candidate in self.zone and not self.zone[candidate].nxdomain:
                return candidate
        return ".".join(labels[1:]) if len(labels) > 2 else name


def _records(name: str, qtype: int, spec: DomainSpec) -> list[RR]:
    owner = name + "."
    out: list[RR] = []
    if qtype in (QTYPE.MX, QTYPE.ANY):
        if spec.null_mx:
            out.append(RR(owner, QTYPE.MX, rdata=MX(DNSLabel("."), 0), ttl=spec.ttl))
        else:
            for preference, host in spec.mx or []:
                mx = MX(_norm(host) + ".", preference)
                out.append(RR(owner, QTYPE.MX, rdata=mx, ttl=spec.ttl))
    if qtype in (QTYPE.A, QTYPE.ANY):
        out.extend(RR(owner, QTYPE.A, rdata=A(ip), ttl=spec.ttl) for ip in spec.a)
    if qtype in (QTYPE.AAAA, QTYPE.ANY):
        out.extend(RR(owner, QTYPE.AAAA, rdata=AAAA(ip), ttl=spec.ttl) for ip in spec.aaaa)
    if qtype in (QTYPE.PTR, QTYPE.ANY):
        out.extend(
            RR(owner, QTYPE.PTR, rdata=PTR(_norm(host) + "."), ttl=spec.ttl) for host in spec.ptr
        )
    if qtype in (QTYPE.TXT, QTYPE.ANY):
        out.extend(RR(owner, QTYPE.TXT, rdata=_txt(text), ttl=spec.ttl) for text in spec.txt)
    return out


def _txt(text: str) -> TXT:
    """One TXT record; RFC 1035 character-strings hold at most 255 octets each."""
    data = text.encode("utf-8")
    return TXT([data[i : i + 255] for i in range(0, len(data), 255)] or [b""])


def _udp_limit(request: DNSRecord) -> int:
    """The client's EDNS UDP payload size (RFC 6891), else 512."""
    for rr in request.ar:
        if rr.rtype == QTYPE.OPT:
            return max(UDP_DEFAULT_LIMIT, int(rr.rclass))
    return UDP_DEFAULT_LIMIT
