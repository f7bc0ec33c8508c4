#!/usr/bin/env bash
# Create .venv with exactly the packages of requirements.lock (`make setup`).
# uv installs them in parallel and from its cache (a fresh install of the
# ~6 GB stack took 20 min with pip; see README "Set-up time"). A venv that
# already matches the lock is left as it is.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3.11}
UV_VERSION=0.13.9  # pinned with its hashes in scripts/uv-bootstrap.txt
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
  .venv/bin/python -m pip install --quiet --disable-pip-version-check --require-hashes \
    -r scripts/uv-bootstrap.txt
fi
# Hash-checking mode once the lock has hashes (`make lock` writes them): every
# file must be one the lock names, whichever index serves it.
hashes=()
if grep -q -- '--hash=sha256:' requirements.lock; then
  hashes=(--require-hashes)
else
  log "WARNING: requirements.lock has no hashes: run make lock to add them"
fi
log "installing requirements.lock ($(grep -c '==' requirements.lock) packages) with uv ${hashes[*]}"
.venv/bin/uv pip install --python .venv/bin/python "${hashes[@]}" -r requirements.lock
# The project itself (hash-checking mode has no hash for a local folder): no
# dependencies (all in the lock), and built by the locked setuptools already in
# .venv instead of one fetched unchecked for an isolated build.
.venv/bin/uv pip install --quiet --python .venv/bin/python --no-deps --no-build-isolation -e .
log "done: .venv ($(du -sh .venv | cut -f1))"
