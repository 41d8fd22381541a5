"""mailprobe against a naive baseline on the same simulated mail world, in one run.

    python benchmarks/bench_verify.py                      # 5,000 addresses over 300 domains
    python benchmarks/bench_verify.py --addresses 1000 --domains 60
    python benchmarks/bench_verify.py --mix intl=0.05,intl_legacy=0.05   # weight-0 scenarios in
    python benchmarks/bench_verify.py --greylist-world --skip-baseline  # greylisting dominates

Each contender gets its own copy of the world (same seed, so the same domains,
mailboxes and behaviours), started in this process; each contender runs in its
own process under the same caps:

* mailprobe: `mailprobe verify` (session reuse, catch-all checks, retries).
* baseline: the way most scripts do it: smtplib, one connection per address
  (EHLO, MAIL, RCPT, QUIT), a thread pool as large as GLOBAL_MAX_CONCURRENCY, and,
  to be as polite as mailprobe, the same global and per-MX rate caps (a simple
  token bucket) and per-MX concurrency caps (semaphores). `--baseline-unthrottled`
  drops the caps (then the servers count its violations).

Printed side by side: addresses per second, RCPTs per TCP connection, the
politeness bound (the shortest time the caps allow for this input: the rate caps
count RCPTs, so each MX takes at most burst + `rps` * T RCPTs in T seconds and all MX
together at most burst + GLOBAL_RPS * T, counting every address and one catch-all
check per domain; new connections at most `rps` a second per MX) and each
contender's time as a ratio of it, the cap violations the servers saw, peak RSS,
and verdict accuracy against the world's ground truth (addresses whose truth is
determinable), in total and per scenario (the world's domain kinds, from its ground
truth: right / determinable and the real addresses called undeliverable).

`--greylist-world`: a world where greylisting is the bottleneck: every MX greylists,
each with its own delay (GREYLIST_DELAYS, seconds: postgrey's 300 s and the common
60 s and 180 s, scaled down 1:20), some saying the time left in the reply
(milter-greylist's "come back in 00:00:15", "try again in 15 seconds"). mailprobe runs
with GREYLIST_FIRST_RETRY and GREYLIST_MAX_DELAY scaled the same way, and the run's
wall time is printed against (the longest greylisting delay + the politeness bound).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import smtplib
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from mailprobe.testing import SimWorld, WorldConfig
from mailprobe.testing.worldconfig import Kind

# Per-MX greylisting delays of --greylist-world: 60, 180 and 300 s scaled 1:20, and the
# engine's first retry and maximum (30 s and 900 s) scaled the same way.
GREYLIST_DELAYS = (3.0, 9.0, 15.0)
BURST_SECONDS = 0.2  # THROTTLE_BURST_SECONDS of the runs (mailprobe's default)
CONNECT_TIMEOUT = 3  # SMTP_CONNECT_TIMEOUT of the runs: what a dead primary costs
GREYLIST_SCALED_ENV = {"GREYLIST_FIRST_RETRY": "1.5", "GREYLIST_MAX_DELAY": "45"}

# The rate caps count RCPTs: at 5 a second the Gmail-like cluster's ~900 RCPTs of the
# 5,000-address list alone would take three minutes, so the runs use higher rates.
CAPS = {
    "GLOBAL_MAX_CONCURRENCY": 24,
    "PER_MX_MAX_CONCURRENCY_DEFAULT": 2,
    "GLOBAL_RPS": 300,
    "PER_MX_RPS_DEFAULT": 40,
}


def unavoidable_wait(world: SimWorld, config: WorldConfig) -> tuple[float, str]:
    """The longest wait a domain of this world imposes on any prober, whatever its caps:
    greylisting's delay, a slow DNS answered twice in turn (the domain's MX, then the MX
    host's address), or a dead primary's connect timeout before its secondary is asked."""
    waits: dict[str, float] = {"nothing": 0.0}
    for d in world.domains.values():
        if d.greylist_seconds:
            waits["greylisting"] = max(waits.get("greylisting", 0.0), d.greylist_seconds)
        if d.kind is Kind.DNS_SLOW:
            waits["slow DNS"] = 2 * config.dns_slow_delay
        if d.kind in {Kind.DEAD_PRIMARY, Kind.BACKUP_ACCEPTS_ALL}:
            waits["connect timeout"] = float(CONNECT_TIMEOUT)
    label = max(waits, key=lambda k: waits[k])
    return waits[label], label


def burst(rps: float) -> int:
    """RCPTs a rate cap lets go at once (mailprobe.throttle: THROTTLE_BURST_SECONDS' worth)."""
    return max(1, math.floor(rps * BURST_SECONDS + 1e-9))


def politeness_bound(world: SimWorld, rcpts_per_session: int) -> tuple[float, int, str]:
    """Seconds the caps allow at best for this input, the RCPTs that needs, and which cap
    binds. The rate caps count RCPTs: every address's RCPT at its first reachable MX, plus
    one catch-all check per domain (an honest verifier must ask it). Each MX takes at most
    burst + rps * T RCPTs in T seconds, all MX together burst + GLOBAL_RPS * T, and each
    MX at most one new connection per 1 / rps seconds (PER_MX_CONNECT_RPS defaults to the
    RCPT rate) for sessions of `rcpts_per_session` RCPTs."""
    per_host: Counter[str] = Counter()
    domains: dict[str, str] = {}
    for email in world.addresses():
        truth = world.truth.lookup(email)
        if truth is None or truth.dns is None or not truth.mx_hosts:
            continue
        if truth.kind is Kind.BLACKHOLE:
            continue  # never greets: no RCPT is ever sent there
        reachable = [h for h in truth.mx_hosts if h not in world.unreachable]
        if reachable:
            per_host[reachable[0]] += 1
            domains.setdefault(email.rpartition("@")[2].lower(), reachable[0])
    for host in domains.values():
        per_host[host] += 1  # the domain's catch-all check
    mx_rps, grps = CAPS["PER_MX_RPS_DEFAULT"], CAPS["GLOBAL_RPS"]
    limits = {
        "per-MX RCPT rate": max(
            (max(0, n - burst(mx_rps)) / mx_rps for n in per_host.values()), default=0.0
        ),
        "per-MX connection rate": max(
            (max(0, math.ceil(n / rcpts_per_session) - 1) / mx_rps for n in per_host.values()),
            default=0.0,
        ),
    }
    total = sum(per_host.values())
    limits["global RCPT rate"] = max(0, total - burst(grps)) / grps
    binding = max(limits, key=lambda k: limits[k])
    return limits[binding], total, binding


def run_contender(name: str, world: SimWorld, addresses: Path, args: argparse.Namespace,
                  tmp: Path) -> dict[str, Any]:  # fmt: skip
    env = {**os.environ, **world.env(), **{k: str(v) for k, v in CAPS.items()},
           "DATABASE_URL": f"sqlite:///{tmp}/{name}.db", "MAILPROBE_RUNS_DIR": f"{tmp}/runs",
           "SMTP_CONNECT_TIMEOUT": str(CONNECT_TIMEOUT), "SMTP_COMMAND_TIMEOUT": "3",
           "SMTP_PROBE_DEADLINE": "20"}  # fmt: skip
    out = tmp / f"{name}.jsonl"
    if name == "no-pipelining":
        env["SMTP_PIPELINING"] = "0"
    if name in {"mailprobe", "no-pipelining"}:
        cmd = [sys.executable, "-m", "mailprobe.cli", "verify", str(addresses), "-o", str(out),
               "--quiet", "--force", "--rcpts-per-session",
               str(args.rcpts_per_session)]  # fmt: skip
        if args.greylist_world:
            env.update(GREYLIST_SCALED_ENV)
        else:
            cmd += ["--greylist-delays", f"{world.config.greylist_seconds + 1:g}"]
    else:
        cmd = [sys.executable, __file__, "--baseline-worker", str(addresses), str(out)]
        if args.baseline_unthrottled:
            cmd.append("--baseline-unthrottled")
    # A fresh wrapper process per contender, so its RUSAGE_CHILDREN peak is that contender's.
    wrapper = (
        "import resource, subprocess, sys\n"
        "code = subprocess.run(sys.argv[1:]).returncode\n"
        "peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss\n"
        "print('peak-kb', peak, file=sys.stderr)\n"
        "sys.exit(code)\n"
    )
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-c", wrapper, *cmd], env=env,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True)  # fmt: skip
    elapsed = time.monotonic() - started
    if done.returncode != 0:
        raise SystemExit(f"{name} failed:\n{done.stderr}")
    peak = int(done.stderr.rsplit("peak-kb", 1)[1].split()[0])
    records = [json.loads(line) for line in out.open()]
    right = wrong = 0
    misses: Counter[tuple[str | None, str]] = Counter()
    per_kind: dict[str, Counter[str]] = defaultdict(Counter)  # kind -> right, wrong, false_undel
    for r in records:
        truth = world.truth.lookup(r["email"])
        expected = world.expected_verdict(r["email"])
        if expected is None or truth is None:
            continue
        tally = per_kind[truth.kind.value if truth.kind else "invalid input"]
        if r["verdict"] == expected:
            right += 1
            tally["right"] += 1
        else:
            wrong += 1
            tally["wrong"] += 1
            misses[(expected, r["verdict"])] += 1
            if r["verdict"] == "undeliverable":
                tally["false_undeliverable"] += 1
    stats = world.stats()
    return {
        "elapsed": elapsed,
        "records": len(records),
        "per_second": len(records) / elapsed,
        "rcpts_per_connection": stats.rcpts_per_connection,
        "connections": stats.connections,
        "violations": stats.cap_violations
        + stats.global_rcpt_violations(CAPS["GLOBAL_RPS"], burst(CAPS["GLOBAL_RPS"])),
        "rcpt_violations": stats.rcpt_rate_violations,
        "global_violations": stats.global_rcpt_violations(
            CAPS["GLOBAL_RPS"], burst(CAPS["GLOBAL_RPS"])
        ),
        "rcpts": stats.rcpts,
        "error_limits": f"{stats.error_delays} / {stats.error_limit_disconnects}",
        "peak_rcpts": max((stats.peak_rcpts_per_second or {}).values(), default=0),
        "max_open": stats.max_open_overall,
        "rss_mb": peak / 1024,
        "right": right,
        "wrong": wrong,
        "misses": misses,
        "per_kind": per_kind,
        "data": stats.data_received,
    }


def main() -> int:
    p = argparse.ArgumentParser(description="mailprobe vs a naive smtplib loop")
    p.add_argument("--addresses", type=int, default=5000)
    p.add_argument("--domains", type=int, default=300)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--rcpts-per-session", type=int, default=20)
    p.add_argument("--baseline-unthrottled", action="store_true")
    p.add_argument("--skip-baseline", action="store_true")
    p.add_argument(
        "--rtt",
        type=float,
        default=0.0,
        help="network round-trip time to every MX, in seconds (e.g. 0.05)",
    )
    p.add_argument(
        "--without-pipelining",
        action="store_true",
        help="also run mailprobe with SMTP_PIPELINING=0, side by side",
    )
    p.add_argument(
        "--mix",
        default="",
        metavar="KIND=WEIGHT,...",
        help="change weights of the world's domain kinds (e.g. intl=0.05,intl_legacy=0.05)",
    )
    p.add_argument(
        "--greylist-world",
        action="store_true",
        help="a world where greylisting is the bottleneck (per-MX delays, some retry hints)",
    )
    p.add_argument("--baseline-worker", nargs=2, metavar=("IN", "OUT"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.baseline_worker:
        return baseline(Path(args.baseline_worker[0]), Path(args.baseline_worker[1]),
                        throttled=not args.baseline_unthrottled)  # fmt: skip

    mix = dict(WorldConfig().mix)
    for item in filter(None, args.mix.replace(" ", "").split(",")):
        kind, _, weight = item.partition("=")
        mix[Kind(kind)] = float(weight)
    config = WorldConfig(
        mix=mix,
        expect_max_concurrency=CAPS["PER_MX_MAX_CONCURRENCY_DEFAULT"],
        expect_rps=CAPS["PER_MX_RPS_DEFAULT"],
        expect_burst=burst(CAPS["PER_MX_RPS_DEFAULT"]),
        blackhole_greeting_delay=3600.0,
        rtt=args.rtt,
    )
    if args.greylist_world:
        config = dataclasses.replace(
            config,
            mix={Kind.GREYLIST: 0.5, Kind.GREYLIST_HINT: 0.5},
            greylist_delays=GREYLIST_DELAYS,
            greylist_retry_window=float(GREYLIST_SCALED_ENV["GREYLIST_MAX_DELAY"]),
        )
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        contenders = ["mailprobe"] + (["no-pipelining"] if args.without_pipelining else [])
        contenders += [] if args.skip_baseline else ["baseline"]
        bound = wait = 0.0
        rcpts, binding = 0, ""
        waited_for = "nothing"
        for name in contenders:
            with SimWorld(args.domains, args.addresses, args.seed, config=config) as world:
                addresses = tmp / "addresses.txt"
                addresses.write_text("\n".join(world.addresses()) + "\n")
                bound, rcpts, binding = politeness_bound(world, args.rcpts_per_session)
                wait, waited_for = unavoidable_wait(world, config)
                if name == contenders[0]:
                    print(f"world: {world.describe()}")
                results[name] = run_contender(name, world, addresses, args, tmp)
    if args.rtt:
        print(f"network round-trip time to every MX: {args.rtt * 1000:g} ms")
    print(f"caps: {CAPS} (rates count RCPTs); politeness bound {bound:.1f} s: {rcpts} RCPTs "
          f"(every address, one catch-all check per domain), bound by the {binding}\n")  # fmt: skip
    rows: list[tuple[str, Callable[[dict[str, Any]], str]]] = [
        ("addresses verified", lambda r: f"{r['records']}"),
        ("elapsed (s)", lambda r: f"{r['elapsed']:.1f}"),
        ("addresses per second", lambda r: f"{r['per_second']:.1f}"),
        ("TCP connections", lambda r: f"{r['connections']}"),
        ("RCPTs per connection", lambda r: f"{r['rcpts_per_connection']:.2f}"),
        ("bound / elapsed", lambda r: f"{bound / r['elapsed']:.2f}"),
        ("RCPTs sent", lambda r: f"{r['rcpts']}"),
        ("cap violations seen by servers", lambda r: f"{r['violations']}"),
        ("  of which RCPT rate (per MX)", lambda r: f"{r['rcpt_violations']}"),
        ("  global RCPT rate", lambda r: f"{r['global_violations']}"),
        ("Postfix error limits: replies held / cut", lambda r: r["error_limits"]),
        ("peak RCPTs in 1 s at one MX", lambda r: f"{r['peak_rcpts']}"),
        ("max open connections to one MX", lambda r: f"{r['max_open']}"),
        ("peak RSS (MB)", lambda r: f"{r['rss_mb']:.0f}"),
        ("verdicts right / determinable", lambda r: f"{r['right']}/{r['right'] + r['wrong']}"),
        ("DATA ever sent", lambda r: "yes" if r["data"] else "never"),
    ]
    names = list(results)
    print(f"{'':34}" + "".join(f"{n:>14}" for n in names))
    for label, cell in rows:
        print(f"{label:34}" + "".join(f"{cell(results[n]):>14}" for n in names))
    target = wait + bound
    for name in names:
        wall = results[name]["elapsed"]
        print(f"{name}: wall {wall:.1f} s / (politeness bound {bound:.1f} s + the longest wait"
              f" no prober can avoid, {waited_for} {wait:g} s) = {wall / target:.2f}"
              f" (goal: at most 1.2)")  # fmt: skip
    for name in names:
        print(f"\n{name}: accuracy per scenario (domain kind)")
        print(f"  {'kind':18}{'right / determinable':>22}{'false undeliverable':>21}")
        for kind, tally in sorted(results[name]["per_kind"].items()):
            seen = tally["right"] + tally["wrong"]
            print(f"  {kind:18}{tally['right']:>13} / {seen:<6}{tally['false_undeliverable']:>21}")
    if "baseline" in results:
        speedup = results["mailprobe"]["per_second"] / results["baseline"]["per_second"]
        print(f"\nmailprobe / baseline throughput: {speedup:.1f}x")
    for name, r in results.items():
        if r["misses"]:
            print(f"{name} verdict misses (expected -> got): {dict(r['misses'])}")
    return 0


# -- the baseline (runs in its own process) -------------------------------------------


class _Bucket:
    """At most `rate` starts a second, burst 1; thread-safe."""

    def __init__(self, rate: float) -> None:
        self.interval, self.next, self.lock = 1.0 / rate, 0.0, threading.Lock()

    def take(self) -> None:
        with self.lock:
            now = time.monotonic()
            start = max(now, self.next)
            self.next = start + self.interval
        time.sleep(max(0.0, start - now))


def baseline(src: Path, out: Path, *, throttled: bool) -> int:
    import dns.resolver

    port = int(os.environ["SMTP_PORT"])
    helo, sender = os.environ["SMTP_HELO_DOMAIN"], os.environ["SMTP_MAIL_FROM"]
    host, _, ns_port = os.environ["DNS_NAMESERVERS"].partition(":")
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers, resolver.port, resolver.lifetime = [host], int(ns_port), 3.0
    global_bucket = _Bucket(CAPS["GLOBAL_RPS"])
    buckets: dict[str, _Bucket] = defaultdict(lambda: _Bucket(CAPS["PER_MX_RPS_DEFAULT"]))
    sems: dict[str, threading.Semaphore] = defaultdict(
        lambda: threading.Semaphore(CAPS["PER_MX_MAX_CONCURRENCY_DEFAULT"])
    )
    lock = threading.Lock()

    def one(email: str) -> dict[str, Any]:
        domain = email.rsplit("@", 1)[1]
        try:
            answer = resolver.resolve(domain, "MX")
            mx = str(sorted(answer, key=lambda r: r.preference)[0].exchange).rstrip(".")
            if mx == "":
                return {"email": email, "verdict": "undeliverable"}
        except dns.resolver.NXDOMAIN:
            return {"email": email, "verdict": "undeliverable"}
        except dns.resolver.NoAnswer:
            mx = domain
        except Exception:
            return {"email": email, "verdict": "unknown"}
        try:
            ip = str(resolver.resolve(mx, "A")[0])
        except Exception:
            return {"email": email, "verdict": "unknown"}
        with lock:
            sem, bucket = sems[mx], buckets[mx]
        if throttled:
            sem.acquire()
        try:
            if throttled:
                bucket.take()
                global_bucket.take()
            with smtplib.SMTP(ip, port, local_hostname=helo, timeout=3) as smtp:
                smtp.ehlo()
                if smtp.has_extn("starttls"):  # as py3-validate-email's mx_check does
                    smtp.starttls()
                    smtp.ehlo()
                smtp.mail(sender)
                code, _ = smtp.rcpt(email)
        except Exception:
            return {"email": email, "verdict": "unknown"}
        finally:
            if throttled:
                sem.release()
        verdict = "deliverable" if code < 300 else "undeliverable" if code >= 500 else "unknown"
        return {"email": email, "verdict": verdict}

    emails = [line.strip() for line in src.open() if line.strip()]
    with ThreadPoolExecutor(CAPS["GLOBAL_MAX_CONCURRENCY"]) as pool, out.open("w") as fh:
        for record in pool.map(one, emails):
            fh.write(json.dumps(record) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
