# Sourced by the other scripts: a Python virtual environment in .venv with chaosec2panic
# and the given extra installed (as root on a fresh Debian machine, python3-venv first).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
extra="$1"
if ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq && apt-get install -y -qq python3 python3-venv >/dev/null
  else
    echo "setup: python3 with venv is missing; install python3-venv (as root: apt-get install python3-venv)" >&2
    exit 1
  fi
fi
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip 2>&1 | grep -v '^WARNING: Location' || true
# A regular (not editable) install: `chaos discover` finds a package by its installed files.
.venv/bin/python -m pip install -q ".[$extra]" 2>&1 | grep -v '^WARNING: Location' || true
.venv/bin/python -c 'import chaosec2panic' || { echo "setup: chaosec2panic did not install" >&2; exit 1; }
export PATH="$PWD/.venv/bin:$PATH"
