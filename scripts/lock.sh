#!/usr/bin/env bash
# Regenerate the exact resolved dependency set (`make lock`):
#   requirements.lock          everything `make setup` installs (project + dev)
#   bento/requirements.txt     the service's closure only (pyproject's [serve]
#                              extra), constrained to the versions in requirements.lock,
#                              so the tests, the bento and the image run the same packages.
#   requirements-remotes.lock  the DVC plugins for s3://, gs:// and azure:// remotes
#                              (CI, when its remote is in a cloud), constrained the same way.
# Every pin carries the sha256 of each file published for it (--generate-hashes):
# `make setup`, CI and the image build install nothing else, whichever index
# serves the file.
# Linux x86_64, CPython 3.11: the platform this project runs and is tested on.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3.11}
. scripts/uv_env.sh
UV=${UV:-$(command -v uv || echo .venv/bin/uv)}
target=(--python-version 3.11 --python-platform x86_64-manylinux_2_28 --quiet --generate-hashes)

"$UV" pip compile pyproject.toml --extra dev "${target[@]}" \
  --custom-compile-command "make lock" -o requirements.lock

serve_in="$(mktemp)"; remotes_in="$(mktemp)"; trap 'rm -f "$serve_in" "$remotes_in"' EXIT
"$PYTHON" - "$serve_in" <<'PY'
import sys, tomllib
extras = tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"]
open(sys.argv[1], "w").write("\n".join(extras["serve"]) + "\n")
PY
"$UV" pip compile "$serve_in" -c requirements.lock "${target[@]}" --no-annotate \
  --custom-compile-command "make lock" -o bento/requirements.txt
# dvc's own extras name the plugins; its version comes from requirements.lock.
echo 'dvc[azure,gs,s3]' > "$remotes_in"
"$UV" pip compile "$remotes_in" -c requirements.lock "${target[@]}" --no-annotate \
  --custom-compile-command "make lock" -o requirements-remotes.lock
echo "wrote requirements.lock ($(grep -c '==' requirements.lock) packages)," \
     "bento/requirements.txt ($(grep -c '==' bento/requirements.txt) packages)" \
     "and requirements-remotes.lock ($(grep -c '==' requirements-remotes.lock) packages)"
