#!/usr/bin/env bash
# Build an OCI image from a bento.
#
#   scripts/container/containerize.sh BENTO_TAG [IMAGE_TAG]
#
# With a Docker daemon (GitHub runners, laptops): plain `bentoml containerize`.
# Without one (this project's machines): buildah, against a locally made
# python:3.11-slim base image (see build_base_image.sh and GUIDE.md section 2).
# IMAGE_TAG defaults to BENTO_TAG (":latest" added when it has no version).
# BENTOML overrides the bentoml executable (default: the project's .venv);
# BENTOML_HOME the bento store (default: scripts/env.sh's).
set -euo pipefail

usage() { echo "usage: $0 BENTO_TAG [IMAGE_TAG]" >&2; exit 2; }
if [ $# -lt 1 ] || [ $# -gt 2 ]; then usage; fi

BENTO_TAG="$1"
if [ $# -eq 2 ]; then
    IMAGE_TAG="$2"
elif [[ "$BENTO_TAG" == *:* ]]; then
    IMAGE_TAG="$BENTO_TAG"
else
    IMAGE_TAG="${BENTO_TAG}:latest"
fi
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$HERE/../.." && pwd)"
BENTOML="${BENTOML:-$REPO_ROOT/.venv/bin/bentoml}"
# The project's bento store is $BENTOML_HOME from scripts/env.sh (.run/bentoml).
if [ -z "${BENTOML_HOME:-}" ] && [ -f "$REPO_ROOT/scripts/env.sh" ]; then
    # shellcheck source=/dev/null
    . "$REPO_ROOT/scripts/env.sh"
fi

log() { echo "[containerize] $*"; }

command -v "$BENTOML" >/dev/null 2>&1 || { echo "[containerize] ERROR: bentoml not found at '$BENTOML' (set BENTOML)" >&2; exit 1; }

log "bento store: ${BENTOML_HOME:-~/bentoml}"
"$BENTOML" get "$BENTO_TAG" >/dev/null || { echo "[containerize] ERROR: bento $BENTO_TAG not in the store (run: make package)" >&2; exit 1; }

# `bentoml containerize` copies the bento to a temporary build context and then refuses
# a dockerfile_template (bento/Dockerfile.j2) outside the working directory: keep
# that context under the project, and run from the project root.
export TMPDIR="$REPO_ROOT/build/containerize-tmp"
mkdir -p "$TMPDIR"
cd "$REPO_ROOT"

start=$(date +%s)
if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
    log "Docker daemon reachable: docker backend"
    log "$BENTOML containerize $BENTO_TAG -t $IMAGE_TAG"
    "$BENTOML" containerize "$BENTO_TAG" -t "$IMAGE_TAG"
    size_bytes="$(docker image inspect --format '{{.Size}}' "$IMAGE_TAG")"
else
    log "no Docker daemon: buildah backend with a local base image"
    "$HERE/install_tools.sh"
    "$HERE/build_base_image.sh"
    start=$(date +%s)  # time the bento build alone
    # format=docker: the OCI image format has no HEALTHCHECK, buildah would drop it.
    log "BUILDAH_ISOLATION=chroot $BENTOML containerize $BENTO_TAG --backend buildah --opt network=host --opt format=docker -t $IMAGE_TAG"
    BUILDAH_ISOLATION=chroot "$BENTOML" containerize "$BENTO_TAG" \
        --backend buildah --opt network=host --opt format=docker -t "$IMAGE_TAG"
    size_bytes="$(podman image inspect --format '{{.Size}}' "$IMAGE_TAG")"
fi

log "built $IMAGE_TAG in $(( $(date +%s) - start )) s"
log "image size: $(numfmt --to=iec "$size_bytes") ($size_bytes bytes)"
