#!/usr/bin/env bash
# Run a containerized bento detached and print the container's name.
#
#   scripts/container/run.sh IMAGE [PORT] [EXTRA RUN ARGS...]
#
# The service listens on http://127.0.0.1:PORT (default 3000), on the loopback
# interface only unless CATDOG_PUBLISH_HOST says otherwise (e.g. 0.0.0.0 behind
# a firewall or load balancer).
# With a Docker daemon: `docker run -d -p HOST:PORT:3000`.
# Without one: podman with the workarounds this machine needs (GUIDE.md
# section 2): runc instead of crun, cgroupfs, no default ulimits, and the
# host network; the address is then chosen through BENTOML_HOST and
# BENTOML_PORT, which `bentoml serve` reads as its --host and --port defaults.
# CATDOG_CONTAINER_NAME overrides the generated name. Stop with
#   docker rm -f NAME    or    scripts/container/run.sh --stop NAME
# Progress goes to stderr; stdout is the container name only.
set -euo pipefail

log() { echo "[run] $*" >&2; }
usage() { echo "usage: $0 IMAGE [PORT] [EXTRA RUN ARGS...] | $0 --stop NAME" >&2; exit 2; }

have_docker() { command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; }

# podman with this machine's workarounds (plain `podman run` fails here:
# crun, cgroups v1 hybrid mode, RLIMIT).
podman_cmd() {
    local conf="${TMPDIR:-/tmp}/catdog-containers.conf"
    printf '[containers]\ndefault_ulimits = []\n' > "$conf"
    CONTAINERS_CONF="$conf" podman --runtime /usr/sbin/runc --cgroup-manager=cgroupfs "$@"
}

[ $# -ge 1 ] || usage

if [ "$1" = "--stop" ]; then
    [ $# -eq 2 ] || usage
    if have_docker; then
        docker rm -f "$2" >/dev/null
    else
        podman_cmd rm -f "$2" >/dev/null
    fi
    log "removed $2"
    exit 0
fi

IMAGE="$1"
PORT="${2:-3000}"
shift
if [ $# -ge 1 ]; then shift; fi
[[ "$PORT" =~ ^[0-9]+$ ]] || { echo "[run] ERROR: PORT must be a number, got '$PORT'" >&2; exit 2; }
NAME="${CATDOG_CONTAINER_NAME:-catdog-${PORT}-$(date +%s)}"
HOST="${CATDOG_PUBLISH_HOST:-127.0.0.1}"

if have_docker; then
    log "docker run -d --name $NAME -p $HOST:$PORT:3000 $* $IMAGE"
    id="$(docker run -d --name "$NAME" -p "${HOST}:${PORT}:3000" "$@" "$IMAGE")"
else
    log "podman run -d --name $NAME --network=host -e BENTOML_HOST=$HOST -e BENTOML_PORT=$PORT $* $IMAGE"
    id="$(podman_cmd run -d --name "$NAME" --network=host -e "BENTOML_HOST=${HOST}" \
        -e "BENTOML_PORT=${PORT}" "$@" "$IMAGE")"
fi
log "started $NAME (id ${id:0:12}): http://${HOST}:${PORT}"
echo "$NAME"
