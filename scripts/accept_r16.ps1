# The seed's R16 acceptance run for Windows PowerShell; the same steps as scripts/accept_r16.sh
# (the POSIX script is the one CI runs). Uses REDIS_URL when set, else starts redis-server
# from PATH. Set ACCEPT_SKIP_TESTS=1 to skip the pytest step.
$ErrorActionPreference = "Stop"
Set-Location (Join-Path $PSScriptRoot "..")
$PyExe = if (Test-Path ".venv\Scripts\python.exe") { ".venv\Scripts\python.exe" } else { "python" }
$Work = Join-Path ([IO.Path]::GetTempPath()) ("mailprobe-accept-" + [Guid]::NewGuid().ToString("N").Substring(0, 8))
New-Item -ItemType Directory $Work | Out-Null
$Procs = @()
$Step = ""
function Begin-Step($name) { $script:Step = $name; Write-Host "`n==> $name" }
function Fail($why) { Write-Host "✘ step '$Step' failed: $why" -ForegroundColor Red; throw "acceptance failed" }
function Expect($text, $output) { if (-not ($output -join "`n").Contains($text)) { Fail "expected '$text' in its output" } }

$env:DATABASE_URL = "sqlite:///" + (Join-Path $Work "accept.db").Replace("\", "/")
$env:MAILPROBE_RUNS_DIR = Join-Path $Work "runs"
try {
    Begin-Step "simulated mail world"
    $worldEnv = Join-Path $Work "world.env"
    $Procs += Start-Process $PyExe -ArgumentList "-m", "mailprobe.testing.world", "--demo",
        "--addresses-out", (Join-Path $Work "addresses.txt"), "--truth-out", (Join-Path $Work "truth.jsonl") `
        -RedirectStandardOutput $worldEnv -RedirectStandardError (Join-Path $Work "world.log") -PassThru -NoNewWindow
    for ($i = 0; $i -lt 100 -and -not (Select-String -Quiet -Path $worldEnv -Pattern "SMTP_PORT" -ErrorAction SilentlyContinue); $i++) { Start-Sleep -Milliseconds 100 }
    foreach ($line in Get-Content $worldEnv) {
        if ($line -match '^export (\w+)=(.*)$') { Set-Item "env:$($Matches[1])" $Matches[2] }
    }
    if (-not $env:SMTP_PORT) { Fail "the world did not start" }

    if (-not $env:REDIS_URL) {
        Begin-Step "private redis-server"
        $port = & $PyExe -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
        $Procs += Start-Process "redis-server" -ArgumentList "--port", $port, "--bind", "127.0.0.1", "--save", '""', "--appendonly", "no", "--dir", $Work -PassThru -NoNewWindow
        $env:REDIS_URL = "redis://127.0.0.1:$port/0"
        Start-Sleep -Seconds 1
    }

    Begin-Step "apply migrations"
    $out = & $PyExe -m mailprobe.cli db upgrade; $out; Expect "newest schema" $out

    if (-not $env:ACCEPT_SKIP_TESTS) {
        Begin-Step "pytest -k 'r15 or r16'"
        $out = & $PyExe -m pytest -q -k "r15 or r16"; $out | Select-Object -Last 1
        if ($LASTEXITCODE -ne 0) { Fail "tests failed" }
    }

    Begin-Step "ingest sample addresses"
    $n = (Get-Content (Join-Path $Work "addresses.txt")).Count
    $out = & $PyExe -m mailprobe.cli ingest (Join-Path $Work "addresses.txt"); $out; Expect "added $n," $out

    Begin-Step "resolve MX (R15)"
    $out = & $PyExe .\scripts\resolve_mx.py --from-db; $out; Expect " ok " $out; Expect "null_mx" $out

    Begin-Step "start a worker on mx,verify"
    $Procs += Start-Process $PyExe -ArgumentList "-m", "mailprobe.cli", "worker", "--queues", "mx,verify" -PassThru -NoNewWindow
    Start-Sleep -Seconds 2

    Begin-Step "enqueue a batch for task_probe_email"
    $out = & $PyExe -m mailprobe.cli ingest (Join-Path $Work "addresses.txt") --probe; $out; Expect "probes queued $n" $out
    & $PyExe -c @"
import time
from sqlalchemy import func, select
from mailprobe.engine import Context
from mailprobe.store import GeneratedEmail
deadline = time.monotonic() + 120
while True:
    with Context.create().store.session() as s:
        counts = dict(s.execute(select(GeneratedEmail.status, func.count()).group_by(GeneratedEmail.status)).all())
    print('statuses:', counts)
    if set(counts) == {'probed'}: break
    if time.monotonic() > deadline: raise SystemExit(1)
    time.sleep(1)
"@
    if ($LASTEXITCODE -ne 0) { Fail "not every queued probe finished" }

    Begin-Step "CLI probe"
    $pair = & $PyExe -c @"
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
good = next(r['address'] for r in rows if r.get('expected_reason') == 'accepted' and not r.get('catch_all') and not r.get('greylist_seconds'))
bad = next(r['address'] for r in rows if r.get('expected_reason') == 'mailbox_not_found')
print(good, bad)
"@ (Join-Path $Work "truth.jsonl")
    $good, $bad = $pair -split " "
    $out = & $PyExe .\scripts\probe_smtp.py --email $good; $out; Expect "Result : accept (code=250" $out
    $out = & $PyExe .\scripts\probe_smtp.py --email $bad; $out; Expect "Result : hard_fail (code=550" $out

    Begin-Step "domain_resolutions with mx_behavior (O06)"
    $out = & $PyExe -c @"
import json
from sqlalchemy import select
from mailprobe.engine import Context
from mailprobe.store import DomainResolution
with Context.create().store.session() as s:
    for row in s.scalars(select(DomainResolution).order_by(DomainResolution.domain)):
        b = row.mx_behavior or {}
        print(row.domain, row.status, row.lowest_mx, json.dumps({k: b[k] for k in ('probes', 'avg_latency_ms', 'last_code') if k in b}))
"@
    $out; Expect '"probes"' $out

    Write-Host "`n✔ R16 SMTP RCPT TO probe acceptance passed." -ForegroundColor Green
}
finally {
    foreach ($p in $Procs) { if ($p -and -not $p.HasExited) { Stop-Process -Id $p.Id -Force -ErrorAction SilentlyContinue } }
    Remove-Item -Recurse -Force $Work -ErrorAction SilentlyContinue
}
