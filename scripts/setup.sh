#!/usr/bin/env bash
# Set up mailprobe on a fresh Debian machine, then run `mailprobe demo`.
#   bash scripts/setup.sh            # everything, then the demo
#   bash scripts/setup.sh --no-demo  # everything but the demo (used by scripts/test.sh)
# Installs, when missing: python3-venv, redis-server and PostgreSQL's server binaries
# (tests start private servers from them), chromium (the web page's browser tests);
# creates .venv and `pip install -e .[dev]`.
set -euo pipefail
cd "$(dirname "$0")/.."

demo=1
[ "${1:-}" = "--no-demo" ] && demo=0

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

need_pkgs=()
python3 -c 'import venv, ensurepip' 2>/dev/null || need_pkgs+=(python3-venv)
command -v redis-server >/dev/null 2>&1 || need_pkgs+=(redis-server)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1 \
    || need_pkgs+=(postgresql)
# The web page's tests drive Debian's chromium through Playwright (never `playwright install`).
[ -x /usr/bin/chromium ] || need_pkgs+=(chromium)
if ((${#need_pkgs[@]})); then
    sudo=""
    [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1 && sudo="sudo"
    say "installing Debian packages: ${need_pkgs[*]}"
    if ! { $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
            $sudo apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}"; } >&2; then
        say "could not install ${need_pkgs[*]}: tests that need them will be skipped"
    fi
fi

if [ ! -x .venv/bin/python ]; then
    say "creating .venv"
    python3 -m venv .venv
fi
stamp=.venv/.mailprobe-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    say "pip install -e .[dev]"
    .venv/bin/python -m pip install -q --upgrade pip >&2
    .venv/bin/python -m pip install -q -e '.[dev]' >&2
    touch "$stamp"
fi

if [ "$demo" = 1 ]; then
    say "mailprobe demo (a simulated mail server on 127.0.0.1; nothing leaves this machine)"
    .venv/bin/mailprobe demo
    say "done. Activate with: source .venv/bin/activate"
fi
