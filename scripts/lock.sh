#!/usr/bin/env bash
# Regenerate the exact resolved dependency set (`make lock`):
#   requirements.lock        everything `make setup` installs (project + dev)
#   bento/requirements.txt   the service's closure only (pyproject's [serve]
#                            extra), constrained to the versions in requirements.lock,
#                            so the tests, the bento and the image run the same packages.
# Linux x86_64, CPython 3.11: the platform this project runs and is tested on.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3.11}
. scripts/uv_env.sh
UV=${UV:-$(command -v uv || echo .venv/bin/uv)}
target=(--python-version 3.11 --python-platform x86_64-manylinux_2_28 --quiet)

"$UV" pip compile pyproject.toml --extra dev "${target[@]}" \
  --custom-compile-command "make lock" -o requirements.lock

serve_in="$(mktemp)"; trap 'rm -f "$serve_in"' EXIT
"$PYTHON" - "$serve_in" <<'PY'
import sys, tomllib
extras = tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"]
open(sys.argv[1], "w").write("\n".join(extras["serve"]) + "\n")
PY
"$UV" pip compile "$serve_in" -c requirements.lock "${target[@]}" --no-annotate \
  --custom-compile-command "make lock" -o bento/requirements.txt
echo "wrote requirements.lock ($(grep -c '==' requirements.lock) packages)" \
     "and bento/requirements.txt ($(grep -c '==' bento/requirements.txt) packages)"
