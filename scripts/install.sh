#!/usr/bin/env bash
# Create .venv with exactly the packages of requirements.lock (`make setup`).
# uv installs them in parallel and from its cache (a fresh install of the
# ~6 GB stack took 20 min with pip; see README "Set-up time"). A venv that
# already matches the lock is left as it is.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3.11}
UV_VERSION=0.13.9
. scripts/uv_env.sh

log() { printf '[setup] %s\n' "$*"; }
command -v "$PYTHON" >/dev/null || {
  echo "[setup] $PYTHON not found: install CPython 3.11 or run make PYTHON=/path/to/python3.11" >&2
  exit 1
}
if [ ! -x .venv/bin/python ]; then
  log "creating .venv with $($PYTHON --version)"
  "$PYTHON" -m venv .venv
fi
if ! .venv/bin/uv --version 2>/dev/null | grep -q " $UV_VERSION"; then
  log "installing uv $UV_VERSION into .venv"
  .venv/bin/python -m pip install --quiet --disable-pip-version-check "uv==$UV_VERSION"
fi
log "installing requirements.lock ($(grep -c '==' requirements.lock) packages) with uv"
.venv/bin/uv pip install --python .venv/bin/python -r requirements.lock
.venv/bin/uv pip install --quiet --python .venv/bin/python --no-deps -e .
log "done: .venv ($(du -sh .venv | cut -f1))"
