"""A simulated mail world on loopback: many MX hosts, their DNS, and the truth.

For tests, benchmarks and `mailprobe demo`. One asyncio loop serves every MX host
of the world, each a `SimSMTPServer` on its own loopback address 127.0.x.y (Linux
routes all of 127.0.0.0/8 to lo) on ONE shared port, plus a `SimDNSServer` that
answers MX / A / null MX / NXDOMAIN for the world's domains. Point mailprobe at
it with `world.env()` (DNS_NAMESERVERS, SMTP_PORT, SMTP_HELO_DOMAIN, SMTP_MAIL_FROM).

The world is generated deterministically from a seed: N domains under ".example"
(e.g. "acme-17.example"), each of one behaviour `Kind` drawn from a configurable
mix, and M addresses with a mailbox fact each (exists / missing / full /
disabled). Provider clusters serve many domains, as real hosting does
(aspmx.google-like.example, mx.outlook-like.example, mx1.hosting-like.example; the
Microsoft-like domains also at a tenant-example.mail.protection.outlook.com and an
Outlook.com-like *.olc.protection.outlook.com, whose refusals only such names explain);
other domains have their own MX. `world.truth` holds the ground truth for every
address and `expected_verdict(email)` the verdict a correct prober should reach.

The pieces, each in its own module: `worldconfig` (domain kinds, mailbox facts,
`WorldConfig`), `corpus` and `replies` (the real reply texts each kind of server
uses), `generate` (drawing domains and addresses from the seed), `truth` (the
ground truth) and `stats` (every server's cap accounting, added up).

    async with SimWorld(domains=40, addresses=200, seed=1) as world: ...
    with SimWorld(...) as world: ...  # served from a background thread
    python -m mailprobe.testing.world --domains 300 --addresses 5000 --seed 1 --addresses-out FILE
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import random
import signal
import socket
import ssl
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from mailprobe.address import is_valid_address, parse_address
from mailprobe.testing.background import ThreadedServer
from mailprobe.testing.corpus import load_corpus
from mailprobe.testing.deadmx import SynDropper
from mailprobe.testing.dnsd import DomainSpec, SimDNSServer
from mailprobe.testing.generate import (
    apportion,
    domain_name,
    intl_local_part,
    invalid_line,
    local_part,
)
from mailprobe.testing.replies import (
    ReplyFamily,
    blocked_reply,
    greylist_hint_replies,
    greylist_reply,
    reply_families,
)
from mailprobe.testing.smtpd import MXBehavior, Scripted, SimSMTPServer
from mailprobe.testing.stats import WorldStats
from mailprobe.testing.truth import AddressTruth, DomainTruth, GroundTruth, address_truth
from mailprobe.testing.worldconfig import (
    DEAD_PRIMARY_MX,
    GOOGLE_MX,
    HOSTING_MX,
    MICROSOFT_VARIANTS,
    DNSStatus,
    Kind,
    Mailbox,
    WorldConfig,
)


def _free_port() -> int:
    """A TCP port nobody uses on any IPv4 address (a wildcard bind conflicts with all)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        return int(s.getsockname()[1])


class SimWorld(ThreadedServer):
    """N domains, M addresses, their MX hosts and DNS, and the truth; see the module doc.

    `async with` serves on the current loop, `with` from a background thread. A
    `layout` ((kind, (mailbox, ...)), ...) fixes the domains and their addresses
    instead of drawing them from `config.mix` (see `demo_world`). `clock` is the
    greylisting clock of every greylisting MX (tests inject one).
    """

    thread_name = "sim-world"

    def __init__(
        self,
        domains: int = 300,
        addresses: int = 5000,
        seed: int = 1,
        *,
        config: WorldConfig | None = None,
        layout: Sequence[tuple[str, Sequence[str]]] | None = None,
        port: int = 0,
        clock: Callable[[], float] = time.monotonic,
        corpus_path: Path | str | None = None,
        dns_host: str = "127.0.0.1",
    ) -> None:
        self.config = cfg = config or WorldConfig()
        self.seed = seed
        self.clock = clock
        self.smtp_port = port
        self._port_wanted = port
        self.corpus = load_corpus(corpus_path)
        self.families = reply_families(self.corpus)
        self._greylisted = greylist_reply(self.corpus)
        self._greylisted_hint = greylist_hint_replies(self.corpus)
        self._blocked = blocked_reply(self.corpus)
        self.zone: dict[str, DomainSpec] = {}
        self.dns = SimDNSServer(self.zone, host=dns_host)
        self.servers: dict[str, SimSMTPServer] = {}  # MX host name -> server
        self.host_ips: dict[str, str] = {}  # every MX host, the unreachable ones too
        self.unreachable: set[str] = set()  # MX hosts nobody answers on (refused or silent)
        self.droppers: dict[str, SynDropper] = {}  # the silent ones: connects time out
        self._next_ip = 0
        self._microsoft_domains = 0  # Kind.MICROSOFT domains take MICROSOFT_VARIANTS in turn
        self._tls: ssl.SSLContext | None = None  # servers' context, when config.starttls

        rng = random.Random(seed)
        if layout is None:
            kinds = apportion(cfg.mix, domains)
            rng.shuffle(kinds)
            per_domain = [0] * len(kinds)
            for j in range(addresses if kinds else 0):
                per_domain[j if j < len(kinds) else rng.randrange(len(kinds))] += 1
            boxes = [Mailbox(m) for m, w in cfg.mailbox_mix.items() if w > 0]
            weights = [float(cfg.mailbox_mix[m]) for m in boxes]
            plan = [
                (k, rng.choices(boxes, weights, k=c))
                for k, c in zip(kinds, per_domain, strict=True)
            ]
        else:
            plan = [(Kind(k), [Mailbox(m) for m in ms]) for k, ms in layout]

        domain_truth: dict[str, DomainTruth] = {}
        truths: dict[str, AddressTruth] = {}
        valid: list[str] = []
        for i, (kind, mailboxes) in enumerate(plan, start=1):
            domain = domain_name(rng, i)
            used: set[str] = set()
            if kind in (Kind.INTL, Kind.INTL_LEGACY):
                locals_ = [intl_local_part(rng, used, j) for j in range(len(mailboxes))]
            else:
                locals_ = [local_part(rng, used) for _ in mailboxes]
            emails = [f"{local}@{domain}" for local in locals_]
            facts = list(zip(emails, mailboxes, strict=True))
            d = self._add_domain(domain, kind, facts)
            domain_truth[domain] = d
            for email, mailbox in facts:
                truths[email] = address_truth(email, d, mailbox)
                valid.append(email)
        rng.shuffle(valid)
        lines = list(valid)
        n_invalid = round(len(valid) * cfg.invalid_fraction) if valid else 0
        for _ in range(n_invalid):
            line = invalid_line(rng, rng.choice(valid))
            if line.lower() in truths or is_valid_address(line):
                continue  # (a quoted local part can make a mangled line valid)
            truths[line.lower()] = AddressTruth(address=line, valid_syntax=False)
            lines.insert(rng.randrange(len(lines) + 1), line)
        self._valid, self._lines = valid, lines
        self.truth = GroundTruth(
            truths, domain_truth, cfg.greylist_retry_window, hosts=self.host_ips
        )

    # -- construction -------------------------------------------------------------

    def _ip(self) -> str:
        i = self._next_ip
        self._next_ip += 1
        if i >= 254 * 254:
            raise ValueError("out of loopback addresses for MX hosts")
        return f"127.0.{1 + i // 254}.{1 + i % 254}"

    def _host(self, host: str, behavior: MXBehavior | None, *, silent: bool = False) -> str:
        """Give `host` an address (A record) and, unless unreachable, a server; a `silent`
        unreachable host drops our SYNs (connect timeout) instead of refusing them."""
        ip = self._ip()
        self.host_ips[host] = ip
        if host not in self.zone:
            self.zone[host] = DomainSpec(a=[ip], ttl=self.config.dns_ttl)
        else:
            self.zone[host].a = [ip]
        if behavior is None:
            self.unreachable.add(host)
            if silent:
                self.droppers[host] = SynDropper(ip, self._port_wanted)
        else:
            self.servers[host] = SimSMTPServer(behavior, host=ip, port=self._port_wanted)
        return host

    def _greylist_delay(self, domain: str) -> float:
        """This domain's MX's greylisting delay: one of `greylist_delays`, or the one."""
        choices = self.config.greylist_delays
        return random.Random(domain).choice(choices) if choices else self.config.greylist_seconds

    def _behavior(self, host: str, family: ReplyFamily, **kw: Any) -> MXBehavior:
        cfg = self.config
        kw.setdefault("greylist_reply", self._greylisted)
        if family.name == "postfix" and cfg.postfix_error_limits is not None:
            kw.setdefault("soft_error_limit", cfg.postfix_error_limits[0])
            kw.setdefault("hard_error_limit", cfg.postfix_error_limits[1])
            kw.setdefault("error_sleep", cfg.postfix_error_sleep)
        return MXBehavior(
            hostname=host,
            banner=family.banner,
            ehlo=family.ehlo,
            mail=family.mail,
            default_rcpt=family.missing,
            too_many_rcpts=family.too_many_rcpts,
            too_many_rcpts_session=family.too_many_rcpts,
            too_many_connections=family.too_many_connections,
            multiple_domains=family.multiple_domains,
            catch_all_reply=family.accept,
            clock=self.clock,
            expect_max_concurrency=cfg.expect_max_concurrency,
            expect_rps=cfg.expect_rps,
            expect_burst=cfg.expect_burst,
            expect_connect_rps=cfg.expect_connect_rps,
            rtt=cfg.rtt,
            tls_context=self._tls_context() if cfg.starttls else None,
            **kw,
        )

    def _tls_context(self) -> ssl.SSLContext:
        """One server certificate (trustme) for every MX of the world: mailprobe's
        opportunistic TLS, like a naive smtplib.starttls(), does not check it."""
        if self._tls is None:
            import trustme

            cert = trustme.CA().issue_cert("*.example", "mx.sim")
            self._tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            cert.configure_cert(self._tls)
        return self._tls

    def _cluster(self, hosts: Sequence[str], family: ReplyFamily, **kw: Any) -> tuple[str, ...]:
        for host in hosts:
            if host not in self.servers:
                kw.setdefault("max_connections", self.config.cluster_max_connections)
                self._host(host, self._behavior(host, family, **kw))
        return tuple(hosts)

    def _add_domain(
        self, domain: str, kind: Kind, facts: Sequence[tuple[str, Mailbox]]
    ) -> DomainTruth:
        cfg, fams = self.config, self.families
        ttl = cfg.dns_ttl
        family = "postfix"
        extra: dict[str, Any] = {}
        if kind is Kind.NXDOMAIN:
            self.zone[domain] = DomainSpec(nxdomain=True, ttl=ttl)
            return DomainTruth(domain, kind, DNSStatus.NXDOMAIN)
        if kind is Kind.NULL_MX:
            self.zone[domain] = DomainSpec(null_mx=True, ttl=ttl)
            return DomainTruth(domain, kind, DNSStatus.NULL_MX)
        if kind is Kind.GOOGLE:
            family = "google"
            hosts = self._cluster(
                GOOGLE_MX,
                fams["google"],
                one_domain_per_transaction=True,
                max_rcpts_per_transaction=cfg.google_max_rcpts,
            )
            self.zone[domain] = DomainSpec(mx=[(1, hosts[0]), (5, hosts[1])], ttl=ttl)
        elif kind is Kind.MICROSOFT:
            family, mx = MICROSOFT_VARIANTS[self._microsoft_domains % len(MICROSOFT_VARIANTS)]
            self._microsoft_domains += 1
            hosts = self._cluster(
                (mx,), fams[family], max_rcpts_per_transaction=cfg.microsoft_max_rcpts
            )
            self.zone[domain] = DomainSpec(mx=[(0, hosts[0])], ttl=ttl)
        elif kind is Kind.HOSTED:
            hosts = self._cluster(HOSTING_MX, fams["postfix"])
            self.zone[domain] = DomainSpec(mx=[(10, hosts[0]), (20, hosts[1])], ttl=ttl)
        elif kind is Kind.A_ONLY:
            self.zone[domain] = DomainSpec(ttl=ttl)
            hosts = (self._host(domain, self._behavior(domain, fams["postfix"])),)
        elif kind is Kind.DEAD_PRIMARY:
            dead, live = DEAD_PRIMARY_MX
            if dead not in self.host_ips:
                self._host(dead, None, silent=True)
            hosts = (dead, *self._cluster((live,), fams["postfix"]))
            self.zone[domain] = DomainSpec(mx=[(10, dead), (20, live)], ttl=ttl)
        elif kind is Kind.BACKUP_ACCEPTS_ALL:
            dead, backup = f"mx1.{domain}", f"mx2.{domain}"
            relay = self._behavior(backup, fams["postfix"], catch_all=True)
            hosts = (self._host(dead, None, silent=True), self._host(backup, relay))
            self.zone[domain] = DomainSpec(mx=[(10, dead), (20, backup)], ttl=ttl)
        elif kind is Kind.BACKUP_MX:
            dead = self._host(f"mx1.{domain}", None)
            mx2 = f"mx2.{domain}"
            hosts = (dead, self._host(mx2, self._behavior(mx2, fams["postfix"])))
            self.zone[domain] = DomainSpec(mx=[(10, hosts[0]), (20, hosts[1])], ttl=ttl)
        elif kind in (Kind.INTL, Kind.INTL_LEGACY):
            mx1 = f"mx1.{domain}"
            behavior = self._behavior(mx1, fams["postfix"], smtputf8=kind is Kind.INTL)
            if kind is Kind.INTL and behavior.ehlo is not None:
                # Postfix with smtputf8_enable = yes appends SMTPUTF8 to its EHLO reply
                # (github:vdukhovni/postfix, postfix/src/smtpd/smtpd.c: EHLO_APPEND).
                behavior.ehlo = Scripted(behavior.ehlo.code, behavior.ehlo.text + "\nSMTPUTF8")
            hosts = (self._host(mx1, behavior),)
            self.zone[domain] = DomainSpec(mx=[(10, hosts[0])], ttl=ttl)
        else:
            if kind is Kind.CATCH_ALL:
                extra["catch_all"] = True
            elif kind in (Kind.GREYLIST, Kind.GREYLIST_HINT):
                extra["greylist_seconds"] = self._greylist_delay(domain)
                if kind is Kind.GREYLIST_HINT:
                    pick = random.Random(f"hint:{domain}").randrange(len(self._greylisted_hint))
                    extra["greylist_reply"] = self._greylisted_hint[pick]
            elif kind is Kind.SLOW:
                extra["greeting_delay"] = cfg.slow_greeting_delay
                extra["reply_delay"] = cfg.slow_reply_delay
            elif kind is Kind.BLOCKED:
                extra["blocked"] = self._blocked
            elif kind is Kind.BLACKHOLE:
                extra["greeting_delay"] = cfg.blackhole_greeting_delay
            mx1 = f"mx1.{domain}"
            hosts = (self._host(mx1, self._behavior(mx1, fams["postfix"], **extra)),)
            self.zone[domain] = DomainSpec(mx=[(10, hosts[0])], ttl=ttl)
            if kind is Kind.DNS_FLAKY:
                self.zone[domain].servfail_first = cfg.dns_flaky_failures
            elif kind is Kind.DNS_SLOW:  # one slow zone: the MX host's name is in it too
                self.zone[domain].delay = self.zone[mx1].delay = cfg.dns_slow_delay
        fam = fams[family or "postfix"]
        for host in hosts:
            server = self.servers.get(host)
            if server is None or kind is Kind.BACKUP_ACCEPTS_ALL:
                continue  # (the backup has no recipient list: it accepts everyone)
            for email, mailbox in facts:
                if mailbox is not Mailbox.MISSING:  # keyed as the RCPT names it
                    key = parse_address(email).wire.lower()
                    server.behavior.mailboxes[key] = fam.mailbox_reply(mailbox)
        return DomainTruth(
            domain,
            kind,
            DNSStatus.A_ONLY if kind is Kind.A_ONLY else DNSStatus.MX,
            mx_hosts=hosts,
            family=family,
            catch_all=kind in (Kind.CATCH_ALL, Kind.BACKUP_ACCEPTS_ALL),
            blocked=kind is Kind.BLOCKED,
            greylist_seconds=extra.get("greylist_seconds"),
            never_answers=kind is Kind.BLACKHOLE,
            backup_accepts_all=kind is Kind.BACKUP_ACCEPTS_ALL,
            smtputf8=any(
                s.behavior.offers_smtputf8 for h in hosts if (s := self.servers.get(h)) is not None
            ),
        )

    # -- what a caller reads --------------------------------------------------------

    @property
    def nameserver(self) -> str:
        """For DNS_NAMESERVERS ("127.0.0.1:PORT"); valid once started."""
        return self.dns.nameserver

    @property
    def domains(self) -> dict[str, DomainTruth]:
        return self.truth.domains

    def addresses(self, include_invalid: bool = False) -> list[str]:
        """The input list (shuffled; with `include_invalid`, some lines that are not addresses)."""
        return list(self._lines if include_invalid else self._valid)

    def expected_verdict(self, email: str) -> str | None:
        return self.truth.expected_verdict(email)

    def ip_of(self, host: str) -> str:
        return self.host_ips[host.rstrip(".").lower()]

    def env(self) -> dict[str, str]:
        """Environment that points mailprobe at this world."""
        return {
            "DNS_NAMESERVERS": self.nameserver,
            "SMTP_PORT": str(self.smtp_port),
            "SMTP_HELO_DOMAIN": self.config.helo_domain,
            "SMTP_MAIL_FROM": self.config.mail_from,
            # The world lives under .example (RFC 6761), a special-use name mailprobe
            # refuses by default (reserved_domain): this world allows it.
            "SPECIAL_USE_ALLOWED": "example",
        }

    def kinds(self) -> Counter[str]:
        return Counter(d.kind.value for d in self.truth.domains.values())

    def stats(self) -> WorldStats:
        return WorldStats.of({host: s.record for host, s in self.servers.items()})

    def describe(self) -> str:
        kinds = ", ".join(f"{k} {n}" for k, n in sorted(self.kinds().items()))
        verdicts = ", ".join(
            f"{v or 'not determinable'} {n}"
            for v, n in sorted(self.truth.counts().items(), key=lambda kv: str(kv[0]))
        )
        return (
            f"{len(self.truth.domains)} domains ({kinds}); {len(self._valid)} addresses "
            f"+ {len(self._lines) - len(self._valid)} invalid lines; "
            f"{len(self.servers)} MX servers on port {self.smtp_port}, "
            f"{len(self.unreachable)} unreachable MX hosts; expected: {verdicts}"
        )

    # -- lifecycle -------------------------------------------------------------------

    async def start(self) -> SimWorld:
        await self.dns.start()
        try:
            await self._start_smtp()
        except BaseException:
            await self.dns.stop()
            raise
        return self

    async def _start_smtp(self) -> None:
        servers: list[SimSMTPServer | SynDropper] = [
            *self.servers.values(),
            *self.droppers.values(),
        ]
        for _ in range(30):
            port = self._port_wanted or _free_port()
            started: list[SimSMTPServer | SynDropper] = []
            try:
                for server in servers:
                    server.port = port
                    await server.start()
                    started.append(server)
            except OSError as exc:
                for server in started:
                    await server.stop()
                if self._port_wanted or exc.errno != errno.EADDRINUSE:
                    raise
                continue
            self.smtp_port = port
            return
        raise OSError(errno.EADDRINUSE, "no port free on every MX address of the world")

    async def stop(self) -> None:
        await asyncio.gather(*(s.stop() for s in self.servers.values()), return_exceptions=True)
        await asyncio.gather(*(d.stop() for d in self.droppers.values()), return_exceptions=True)
        await self.dns.stop()

    async def __aenter__(self) -> SimWorld:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


# -- the demo ---------------------------------------------------------------------

DEMO_LAYOUT: tuple[tuple[str, tuple[str, ...]], ...] = (
    (Kind.POSTFIX, (Mailbox.EXISTS, Mailbox.MISSING, Mailbox.FULL, Mailbox.DISABLED)),
    (Kind.GOOGLE, (Mailbox.EXISTS, Mailbox.MISSING, Mailbox.DISABLED)),
    (Kind.MICROSOFT, (Mailbox.EXISTS, Mailbox.MISSING, Mailbox.FULL)),
    (Kind.CATCH_ALL, (Mailbox.EXISTS, Mailbox.MISSING)),
    (Kind.GREYLIST, (Mailbox.EXISTS, Mailbox.MISSING)),
    (Kind.SLOW, (Mailbox.EXISTS,)),
    (Kind.BLOCKED, (Mailbox.EXISTS,)),
    (Kind.BACKUP_MX, (Mailbox.EXISTS, Mailbox.MISSING)),
    (Kind.A_ONLY, (Mailbox.EXISTS,)),
    (Kind.NULL_MX, (Mailbox.EXISTS,)),
    (Kind.NXDOMAIN, (Mailbox.EXISTS,)),
)


def demo_world(
    *,
    seed: int = 0,
    port: int = 0,
    clock: Callable[[], float] = time.monotonic,
    config: WorldConfig | None = None,
) -> SimWorld:
    """A small world (11 domains, 21 addresses and one invalid line) showing every
    behaviour except the blackhole, with short greylisting and delays."""
    cfg = config or WorldConfig(
        greylist_seconds=1.0, slow_greeting_delay=0.2, slow_reply_delay=0.02, invalid_fraction=0.05
    )
    return SimWorld(seed=seed, layout=DEMO_LAYOUT, config=cfg, port=port, clock=clock)


# -- python -m mailprobe.testing.world ------------------------------------------------


async def _serve(world: SimWorld, args: argparse.Namespace) -> None:
    async with world:
        if args.addresses_out:
            lines = world.addresses(include_invalid=args.invalid)
            Path(args.addresses_out).write_text("\n".join(lines) + "\n", encoding="utf-8")
        if args.truth_out:
            world.truth.write_jsonl(args.truth_out)
        for name, value in world.env().items():
            print(f"export {name}={value}")
        print(f"# {world.describe()}", file=sys.stderr)
        print("# serving until Ctrl-C", file=sys.stderr, flush=True)
        sys.stdout.flush()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        print(f"# {world.stats().summary()}", file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m mailprobe.testing.world",
        description="Serve a simulated mail world (DNS + MX hosts on loopback) until Ctrl-C.",
    )
    p.add_argument("--domains", type=int, default=300)
    p.add_argument("--addresses", type=int, default=5000)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--port", type=int, default=0, help="SMTP port for every MX (0: a free one)")
    p.add_argument("--demo", action="store_true", help="the small demo world instead")
    p.add_argument("--addresses-out", metavar="FILE", help="write the address list here")
    p.add_argument("--invalid", action="store_true", help="include invalid lines in the list")
    p.add_argument("--truth-out", metavar="FILE", help="write the ground truth here (JSONL)")
    p.add_argument("--greylist-seconds", type=float, default=None)
    args = p.parse_args(argv)
    cfg = WorldConfig()
    if args.greylist_seconds is not None:
        cfg = WorldConfig(greylist_seconds=args.greylist_seconds)
    if args.demo:
        world = demo_world(seed=args.seed, port=args.port)
    else:
        world = SimWorld(args.domains, args.addresses, args.seed, config=cfg, port=args.port)
    asyncio.run(_serve(world, args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
