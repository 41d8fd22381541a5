#!/usr/bin/env bash
# The seed's R16 acceptance run, on a machine with no internet, against the simulated
# mail world (DNS + MX servers on loopback). Every step checks its own output; the first
# failing step is named and the script exits non-zero. What it starts, it stops.
#
#   bash scripts/accept_r16.sh            # uses REDIS_URL if set, else a private redis-server
#   ACCEPT_SKIP_TESTS=1 bash scripts/accept_r16.sh   # skip the pytest step (CI ran it already)
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --no-demo </dev/null || { echo "✘ setup failed" >&2; exit 1; }
PY=.venv/bin/python
MP=.venv/bin/mailprobe

WORK=$(mktemp -d -t mailprobe-accept-XXXXXX)
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null; done
    rm -rf "$WORK"
}
trap cleanup EXIT

step=""
fail() { echo "✘ step '$step' failed: $*" >&2; exit 1; }
begin() { step=$1; printf '\n==> %s\n' "$step"; }
expect() { grep -q -- "$1" "$2" || fail "expected '$1' in its output (see above)"; }

export DATABASE_URL="sqlite:///$WORK/accept.db"
export MAILPROBE_RUNS_DIR="$WORK/runs"

begin "simulated mail world"
$PY -m mailprobe.testing.world --demo --addresses-out "$WORK/addresses.txt" \
    --truth-out "$WORK/truth.jsonl" >"$WORK/world.env" 2>"$WORK/world.log" &
PIDS+=($!)
for _ in $(seq 100); do grep -q SMTP_PORT "$WORK/world.env" 2>/dev/null && break; sleep 0.1; done
grep -q SMTP_PORT "$WORK/world.env" || fail "the world did not start: $(cat "$WORK/world.log")"
# shellcheck disable=SC1091
source "$WORK/world.env"
cat "$WORK/world.env"

if [ -z "${REDIS_URL:-}" ]; then
    begin "private redis-server"
    command -v redis-server >/dev/null || fail "redis-server not found: apt-get install redis-server"
    port=$($PY -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no --dir "$WORK" \
        --logfile "$WORK/redis.log" &
    PIDS+=($!)
    export REDIS_URL="redis://127.0.0.1:$port/0"
    for _ in $(seq 50); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.1; done
    redis-cli -p "$port" ping | grep -q PONG || fail "redis-server did not answer"
    echo "REDIS_URL=$REDIS_URL"
fi

begin "apply migrations"
$MP db upgrade | tee "$WORK/out" || fail "mailprobe db upgrade"
expect "newest schema" "$WORK/out"

if [ -z "${ACCEPT_SKIP_TESTS:-}" ]; then
    begin "pytest -k 'r15 or r16'"
    (env -u REDIS_URL -u DNS_NAMESERVERS -u SMTP_PORT $PY -m pytest -q -k "r15 or r16" -p no:cacheprovider) \
        >"$WORK/out" 2>&1 || { tail -20 "$WORK/out"; fail "tests failed"; }
    tail -1 "$WORK/out"
    expect " passed" "$WORK/out"
fi

begin "ingest sample addresses"
$MP ingest "$WORK/addresses.txt" | tee "$WORK/out" || fail "mailprobe ingest"
n=$(wc -l <"$WORK/addresses.txt")
expect "added $n," "$WORK/out"

begin "resolve MX (R15)"
$PY scripts/resolve_mx.py --from-db | tee "$WORK/out" || fail "resolve_mx.py --from-db"
expect " ok " "$WORK/out"
expect "null_mx" "$WORK/out"

begin "start a worker on mx,verify"
$MP worker --queues mx,verify >"$WORK/worker.log" 2>&1 &
PIDS+=($!)
sleep 2
kill -0 "${PIDS[-1]}" 2>/dev/null || fail "the worker died: $(tail -5 "$WORK/worker.log")"

begin "enqueue a batch for task_probe_email"
$MP ingest "$WORK/addresses.txt" --probe | tee "$WORK/out" || fail "mailprobe ingest --probe"
expect "probes queued $n" "$WORK/out"
$PY - <<'EOF' || fail "not every queued probe finished"
import time
from sqlalchemy import func, select
from mailprobe.engine import Context
from mailprobe.store import GeneratedEmail
store = Context.create().store
deadline = time.monotonic() + 120
while True:
    with store.session() as s:
        counts = dict(s.execute(select(GeneratedEmail.status, func.count()).group_by(GeneratedEmail.status)).all())
    print("statuses:", counts)
    if set(counts) == {"probed"}:
        break
    if time.monotonic() > deadline:
        raise SystemExit(1)
    time.sleep(1)
EOF

begin "CLI probe"
read -r good bad < <($PY - "$WORK/truth.jsonl" <<'EOF'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
good = next(r["address"] for r in rows if r.get("expected_reason") == "accepted" and not r.get("catch_all") and not r.get("greylist_seconds"))
bad = next(r["address"] for r in rows if r.get("expected_reason") == "mailbox_not_found")
print(good, bad)
EOF
)
$PY scripts/probe_smtp.py --email "$good" | tee "$WORK/out"
expect "Result : accept (code=250" "$WORK/out"
$PY scripts/probe_smtp.py --email "$bad" | tee "$WORK/out"
expect "Result : hard_fail (code=550" "$WORK/out"
expect "Reason : mailbox_not_found" "$WORK/out"

begin "domain_resolutions with mx_behavior (O06)"
$PY - <<'EOF' | tee "$WORK/out" || fail "reading domain_resolutions"
import json
from sqlalchemy import select
from mailprobe.engine import Context
from mailprobe.store import DomainResolution
with Context.create().store.session() as s:
    for row in s.scalars(select(DomainResolution).order_by(DomainResolution.domain)):
        behavior = row.mx_behavior or {}
        snippet = {k: behavior[k] for k in ("probes", "avg_latency_ms", "last_code", "greylisting_seen") if k in behavior}
        print(f"{row.domain:28} {row.status:15} {row.lowest_mx or '-':28} mx_behavior={json.dumps(snippet)}")
EOF
expect '"probes"' "$WORK/out"

printf '\n✔ R16 SMTP RCPT TO probe acceptance passed.\n'
