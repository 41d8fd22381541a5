#!/usr/bin/env bash
# Run every check: ruff (lint and format), mypy, then the whole pytest suite.
#   bash scripts/test.sh [extra pytest args, e.g. -k r16]
# Sets up .venv first when it is missing or stale (no demo run).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --no-demo </dev/null

echo "==> ruff"
.venv/bin/ruff check src tests scripts benchmarks
.venv/bin/ruff format --check src tests scripts benchmarks
echo "==> mypy"
.venv/bin/mypy
echo "==> pytest"
status=0
.venv/bin/python -m pytest "$@" || status=$?
if [ "$status" -eq 5 ]; then
    echo "pytest collected no tests: that is a failure here" >&2
    exit 1
fi
exit "$status"
