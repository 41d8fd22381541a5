"""CPU per RCPT: `mailprobe verify` against a naive smtplib loop, in one run.

    python benchmarks/bench_cpu.py                       # 20,000 addresses over 12 domains
    python benchmarks/bench_cpu.py --addresses 5000 --domains 6
    python benchmarks/bench_cpu.py --starttls            # every MX offers STARTTLS
    python benchmarks/bench_cpu.py --profile /tmp/verify.prof   # cProfile the verify run

What costs CPU here is ours alone: the simulated world (DNS server and MX hosts on
loopback, zero latency, no greylisting, no catch-all domains, existing and missing
mailboxes; with --starttls every MX offers STARTTLS, as nearly every real MX does, see
WorldConfig.starttls) is served from this process, and each contender runs in a process of its
own whose user + system CPU (children included: `os.wait4`) is measured, with the
caps set far above what it can reach, so no contender ever waits for a token:

* mailprobe: the real `mailprobe verify` (pipelined sessions of --rcpts-per-session
  RCPTs, catch-all checks, records to a file, answers to SQLite, its database created
  beforehand); on uvloop when it is installed (the `fast` extra), and without it
  (MAILPROBE_UVLOOP=0);
* naive-lean: the leanest loop a script can be: each domain's MX looked up once, then
  smtplib, one connection per address (connect, EHLO, STARTTLS and EHLO again when
  offered, as py3-validate-email's mx_check does, MAIL, RCPT, QUIT), one address
  after the other;
* naive-smtplib: bench_verify.py's baseline, unthrottled: the same smtplib exchange
  from a thread pool, the MX (and its address) looked up for every address, the way
  most scripts do it: the kind of loop the goal is set against ("a naive smtplib loop,
  one connection per address").

RCPTs are counted by the servers (the catch-all checks and any retries included).
Printed: RCPTs per CPU-second for each, mailprobe's over each naive loop's (the goal:
at least 5,000, and 4x naive-smtplib's; naive-lean's ratio is shown beside it), and each
contender's verdicts that differ from the world's truth ("wrong", 0 expected).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import smtplib
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.bench_verify import CONNECT_TIMEOUT
from mailprobe.testing import SimWorld, WorldConfig
from mailprobe.testing.worldconfig import Kind, Mailbox

# `mailprobe verify` as its entry point runs it, on uvloop unless MAILPROBE_UVLOOP=0.
VERIFY = (
    "import sys\n"
    "try:\n"
    "    from mailprobe.smtp_wire import use_fast_event_loop\n"
    "except ImportError:  # an older mailprobe, for comparisons\n"
    "    pass\n"
    "else:\n"
    "    use_fast_event_loop()\n"
    "from mailprobe.cli import main\n"
    "sys.exit(main())\n"
)
# Far above what one process reaches on loopback: no contender waits for a token.
HIGH_CAPS = {
    "GLOBAL_MAX_CONCURRENCY": 64,
    "PER_MX_MAX_CONCURRENCY_DEFAULT": 16,
    "GLOBAL_RPS": 1_000_000,
    "PER_MX_RPS_DEFAULT": 1_000_000,
}
# Zero-latency MX hosts that answer every RCPT at once: Postfix-like ones, a hosting
# cluster and a Gmail-like cluster; mailboxes that exist or not.
WORLD = WorldConfig(
    mix={Kind.POSTFIX: 0.5, Kind.HOSTED: 0.25, Kind.GOOGLE: 0.25},
    mailbox_mix={Mailbox.EXISTS: 0.6, Mailbox.MISSING: 0.4},
    invalid_fraction=0.0,
    cluster_max_connections=None,
    expect_max_concurrency=None,
    expect_rps=None,
)


@dataclass(frozen=True)
class Measured:
    name: str
    rcpts: int
    connections: int
    cpu: float  # user + system seconds, children included
    user: float
    system: float
    wall: float
    rss_mb: float
    records: int
    wrong: int  # verdicts other than the world's truth

    @property
    def per_cpu_second(self) -> float:
        return self.rcpts / self.cpu if self.cpu else 0.0


def measure(name: str, cmd: list[str], env: dict[str, str], world: SimWorld, out: Path) -> Measured:
    """Run `cmd` to its end; its CPU (and its children's) from wait4, its RCPTs from the
    servers' counts before and after, its verdicts (JSON lines in `out`) against the truth."""
    before = world.stats()
    started = time.monotonic()
    proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE)
    # Linux's wait4 reports the child with its own waited-for children added.
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.monotonic() - started
    assert proc.stderr is not None
    err = proc.stderr.read().decode(errors="replace")
    proc.stderr.close()
    if proc.returncode != 0:
        raise SystemExit(f"{name} failed ({proc.returncode}):\n{err}")
    after = world.stats()
    records = [json.loads(line) for line in out.open()]
    wrong = sum(r["verdict"] != world.expected_verdict(r["email"]) for r in records)
    return Measured(
        name,
        rcpts=after.rcpts - before.rcpts,
        connections=after.connections - before.connections,
        cpu=usage.ru_utime + usage.ru_stime,
        user=usage.ru_utime,
        system=usage.ru_stime,
        wall=wall,
        rss_mb=usage.ru_maxrss / 1024,
        records=len(records),
        wrong=wrong,
    )


def main() -> int:
    p = argparse.ArgumentParser(description="RCPTs per CPU-second: mailprobe vs a naive loop")
    p.add_argument("--addresses", type=int, default=20_000)
    p.add_argument("--domains", type=int, default=12)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--rcpts-per-session", type=int, default=20)
    p.add_argument("--skip-naive", action="store_true")
    p.add_argument("--starttls", action="store_true",
                   help="every MX offers STARTTLS, as nearly every real one does")  # fmt: skip
    p.add_argument("--profile", metavar="FILE", help="run verify under cProfile, stats to FILE")
    p.add_argument("--py-spy", metavar="FILE", help="sample verify with py-spy, raw stacks to FILE")
    p.add_argument("--naive-worker", nargs=2, metavar=("IN", "OUT"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.naive_worker:
        return naive(Path(args.naive_worker[0]), Path(args.naive_worker[1]))

    results: list[Measured] = []
    world_config = dataclasses.replace(WORLD, starttls=args.starttls)
    with (
        tempfile.TemporaryDirectory() as tmp_name,
        SimWorld(args.domains, args.addresses, args.seed, config=world_config) as world,
    ):
        tmp = Path(tmp_name)
        print(f"world: {world.describe()}")
        addresses = tmp / "addresses.txt"
        addresses.write_text("\n".join(world.addresses()) + "\n")
        base_env = {**os.environ, **world.env(), **{k: str(v) for k, v in HIGH_CAPS.items()},
                    "MAILPROBE_RUNS_DIR": f"{tmp}/runs",
                    "SMTP_CONNECT_TIMEOUT": str(CONNECT_TIMEOUT)}  # fmt: skip
        variants = [("mailprobe", {"MAILPROBE_UVLOOP": "0"})]
        if _has_uvloop():
            variants = [("mailprobe+uvloop", {"MAILPROBE_UVLOOP": "1"}), *variants]
        for name, extra in variants:
            env = {**base_env, **extra, "DATABASE_URL": f"sqlite:///{tmp}/{name}.db"}
            # The database is created first: its one-time migration is not a run's cost.
            subprocess.run([sys.executable, "-m", "mailprobe.cli", "db", "upgrade"], env=env,
                           check=True, capture_output=True)  # fmt: skip
            prefix = [sys.executable]
            if args.profile:
                prefix += ["-m", "cProfile", "-o", f"{args.profile}.{name}"]
            if args.py_spy:  # (its own CPU is counted too: read the stacks, not the figures)
                prefix = ["py-spy", "record", "--gil", "-r", "250", "-f", "raw", "-o",
                          f"{args.py_spy}.{name}", "--", *prefix]  # fmt: skip
            out = tmp / f"{name}.jsonl"
            # (cProfile runs a module, not -c: profiled, verify runs on the default loop)
            entry = ["-m", "mailprobe.cli"] if args.profile else ["-c", VERIFY]
            cmd = [*prefix, *entry, "verify", str(addresses), "-o", str(out), "--quiet",
                   "--force", "--rcpts-per-session", str(args.rcpts_per_session)]  # fmt: skip
            results.append(measure(name, cmd, env, world, out))
        if not args.skip_naive:
            out = tmp / "naive-lean.jsonl"
            cmd = [sys.executable, __file__, "--naive-worker", str(addresses), str(out)]
            results.append(measure("naive-lean", cmd, base_env, world, out))
            # bench_verify's baseline, unthrottled: a thread pool, DNS asked per address
            out = tmp / "naive-smtplib.jsonl"
            bench = str(Path(__file__).with_name("bench_verify.py"))
            cmd = [sys.executable, bench, "--baseline-worker", str(addresses), str(out),
                   "--baseline-unthrottled"]  # fmt: skip
            results.append(measure("naive-smtplib", cmd, base_env, world, out))

    print(f"caps: {HIGH_CAPS}\n")
    print(f"{'':22}{'RCPTs':>8}{'conns':>8}{'CPU s':>8}{'user':>8}{'sys':>8}{'wall s':>8}"
          f"{'RSS MB':>8}{'wrong':>7}{'RCPT/CPU-s':>12}")  # fmt: skip
    for r in results:
        print(f"{r.name:22}{r.rcpts:>8}{r.connections:>8}{r.cpu:>8.2f}{r.user:>8.2f}"
              f"{r.system:>8.2f}{r.wall:>8.1f}{r.rss_mb:>8.0f}{r.wrong:>7}"
              f"{r.per_cpu_second:>12.0f}")  # fmt: skip
    naives = [r for r in results if r.name.startswith("naive")]
    for r in results:
        if r in naives:
            continue
        line = f"{r.name}: {r.per_cpu_second:.0f} RCPTs per CPU-second (goal: at least 5000)"
        for n in naives:
            if n.per_cpu_second:
                line += f"; {r.per_cpu_second / n.per_cpu_second:.1f}x {n.name}'s"
        print(line + " (goal: at least 4x naive-smtplib's)")
    return 0


def _has_uvloop() -> bool:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return False
    return True


# -- the naive loop (runs in its own process) -------------------------------------------


def naive(src: Path, out: Path) -> int:
    """One connection per address, one address after the other; each domain's MX looked
    up once (dnspython, at the world's DNS server)."""
    import dns.resolver

    port = int(os.environ["SMTP_PORT"])
    helo, sender = os.environ["SMTP_HELO_DOMAIN"], os.environ["SMTP_MAIL_FROM"]
    host, _, ns_port = os.environ["DNS_NAMESERVERS"].partition(":")
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers, resolver.port, resolver.lifetime = [host], int(ns_port), 3.0
    mx_ip: dict[str, str] = {}
    fh = out.open("w")
    for line in src.open():
        email = line.strip()
        domain = email.rsplit("@", 1)[1]
        if domain not in mx_ip:
            mx = min(resolver.resolve(domain, "MX"), key=lambda r: r.preference)
            mx_ip[domain] = str(resolver.resolve(str(mx.exchange), "A")[0])
        with smtplib.SMTP(mx_ip[domain], port, local_hostname=helo, timeout=3) as smtp:
            smtp.ehlo()
            if smtp.has_extn("starttls"):  # as py3-validate-email's mx_check does
                smtp.starttls()
                smtp.ehlo()
            smtp.mail(sender)
            code, _ = smtp.rcpt(email)
        verdict = "deliverable" if code < 300 else "undeliverable" if code >= 500 else "unknown"
        fh.write(json.dumps({"email": email, "verdict": verdict}) + "\n")
    fh.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
