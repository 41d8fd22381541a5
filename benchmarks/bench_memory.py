"""Peak memory of `mailprobe verify` on a big input (target: 1,000,000 lines under 150 MB),
in input order (the default, through the reorder buffer) and with --unordered.

The input's domains are answered by a loopback DNS server: most publish a null
MX or do not exist, some accept mail on a loopback SMTP server, and a share of
lines are not addresses at all, so the whole pipeline (reading, routing,
records, batched result writes) runs without the SMTP wait dominating.

    python benchmarks/bench_memory.py --lines 1000000
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from mailprobe.testing.dnsd import DomainSpec, SimDNSServer
from mailprobe.testing.smtpd import ACCEPT, MXBehavior, serve_in_thread


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument(
        "--gone-domains",
        type=int,
        default=1000,
        help="distinct non-existent domains (many: tests the per-domain state)",
    )
    parser.add_argument(
        "--smtp-share",
        type=float,
        default=0.01,
        help="share of lines on domains that are probed over SMTP",
    )
    parser.add_argument(
        "--modes",
        type=lambda text: [m.strip() for m in text.split(",") if m.strip()],
        default=["ordered", "unordered"],
        help="runs side by side: ordered (records in input order, the default) and/or "
        "unordered (--unordered)",
    )
    args = parser.parse_args()

    zone: dict[str, DomainSpec] = {"mx.live.example": DomainSpec(a=["127.0.0.1"])}
    for i in range(50):
        zone[f"live{i}.example"] = DomainSpec(mx=[(10, "mx.live.example")])
        zone[f"nomail{i}.example"] = DomainSpec(null_mx=True)
    with (
        tempfile.TemporaryDirectory() as tmp,
        SimDNSServer(zone) as dns,
        serve_in_thread(MXBehavior(default_rcpt=ACCEPT)) as smtp,
    ):
        path = Path(tmp) / "input.txt"
        smtp_every = max(1, round(1 / args.smtp_share)) if args.smtp_share else 0
        with path.open("w") as fh:
            for n in range(args.lines):
                if n % 50 == 7:
                    fh.write(f"not an address {n}\n")
                elif smtp_every and n % smtp_every == 0:
                    fh.write(f"user{n}@live{n % 50}.example\n")
                elif n % 3 == 0:
                    fh.write(f"user{n}@gone{n % args.gone_domains}.example\n")  # NXDOMAIN
                else:
                    fh.write(f"user{n}@nomail{n % 50}.example\n")
        env = {
            **os.environ,
            "DNS_NAMESERVERS": dns.nameserver,
            "SMTP_PORT": str(smtp.port),
            "DATABASE_URL": f"sqlite:///{tmp}/bench.db",
            "MAILPROBE_RUNS_DIR": f"{tmp}/runs",
            "GLOBAL_RPS": "500",
            "PER_MX_RPS_DEFAULT": "200",
            "PER_MX_MAX_CONCURRENCY_DEFAULT": "8",
            "SPECIAL_USE_ALLOWED": "example",  # the simulated domains are .example names
        }
        results = [run_mode(mode, path, env, Path(tmp), args.lines) for mode in args.modes]
    print(f"input lines            : {args.lines:,}")
    failed = 0
    for mode, code, records, elapsed, peak_mb, reasons, stderr in results:
        print(f"-- verify {mode}")
        if code != 0:
            print(stderr, file=sys.stderr)
            failed = failed or code
            continue
        check = "one per line" if records == args.lines else "MISMATCH"
        print(f"records written        : {records:,} ({check})")
        print(f"elapsed                : {elapsed:.1f} s ({args.lines / elapsed:,.0f} lines/s)")
        print(f"peak RSS of the run    : {peak_mb:.0f} MB (target < 150 MB)")
        print(f"reasons                : {dict(reasons.most_common())}")
        failed = failed or (records != args.lines)
    return int(failed)


def run_mode(
    mode: str, path: Path, env: dict[str, str], tmp: Path, lines: int
) -> tuple[str, int, int, float, float, Counter[str], str]:
    """One `verify` run; its own peak RSS (wait4: this child's, not every child's)."""
    out = tmp / f"out-{mode}.jsonl"
    flags = {"ordered": [], "unordered": ["--unordered"]}[mode]
    err = tmp / f"err-{mode}.txt"
    env = {**env, "DATABASE_URL": f"sqlite:///{tmp}/bench-{mode}.db"}  # no warm MX cache
    started = time.monotonic()
    with err.open("w") as err_fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "mailprobe.cli", "verify", str(path), "-o", str(out),
             "--quiet", "--force", *flags],
            env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err_fh,
        )  # fmt: skip
        _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.monotonic() - started
    code = os.waitstatus_to_exitcode(status)
    records = 0
    reasons: Counter[str] = Counter()
    order_kept = True
    if code == 0:
        with out.open() as fh:
            for line in fh:
                records += 1
                record = json.loads(line)
                reasons[record["reason"]] += 1
                order_kept = order_kept and record["line"] == records
    if mode == "ordered" and not order_kept:
        reasons["(records out of input order)"] += 1
    return mode, code, records, elapsed, usage.ru_maxrss / 1024, reasons, err.read_text()


if __name__ == "__main__":
    sys.exit(main())
