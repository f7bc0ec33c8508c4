#!/usr/bin/env bash
# Smoke-test a containerized cat/dog classifier.
#
#   scripts/container/smoke_test.sh IMAGE
#
# Starts IMAGE with run.sh on PORT (default 3000; the next free port when
# 3000 is taken and PORT is unset), waits for /readyz (READY_TIMEOUT, default
# 180 s), then checks the HTTP contract, /metrics, that the container runs as
# non-root, that torch is not in the image and that no compiler or build tool
# is. The container runs as deploy/k8s/service.yaml runs it: read-only root
# filesystem with /tmp and the inference-log volume the only writable paths,
# all capabilities dropped, no privilege escalation. The container and its
# anonymous volume are always removed at the end. Exit status 1 when any check failed.
# TEST_IMAGES_DIR (default: <repo>/test_images) must hold cat/*.jpg, dog/*.jpg.
set -euo pipefail

IMAGE="${1:?usage: $0 IMAGE}"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$HERE/../.." && pwd)"
TEST_IMAGES_DIR="${TEST_IMAGES_DIR:-$REPO_ROOT/test_images}"
READY_TIMEOUT="${READY_TIMEOUT:-180}"

FAILURES=()
log() { echo "[smoke] $*"; }
pass() { echo "[smoke] PASS: $*"; }
fail() { echo "[smoke] FAIL: $*" >&2; FAILURES+=("$*"); }
die() { echo "[smoke] ERROR: $*" >&2; exit 1; }

have_docker() { command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; }
# The pod's securityContext (deploy/k8s/service.yaml), as run flags.
HARDENED=(--read-only --tmpfs /tmp --cap-drop=ALL --security-opt=no-new-privileges)
if have_docker; then
    engine() { docker "$@"; }
else
    # podman mounts tmpfs on /run and /var/tmp too with --read-only, unless told not to.
    HARDENED=(--read-only-tmpfs=false "${HARDENED[@]}")
    # Same workarounds as run.sh (GUIDE.md section 2).
    engine() {
        local conf="${TMPDIR:-/tmp}/catdog-containers.conf"
        printf '[containers]\ndefault_ulimits = []\n' > "$conf"
        CONTAINERS_CONF="$conf" podman --runtime /usr/sbin/runc --cgroup-manager=cgroupfs "$@"
    }
fi

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# --- inputs -------------------------------------------------------------------
shopt -s nullglob
cats=("$TEST_IMAGES_DIR"/cat/*.jpg)
dogs=("$TEST_IMAGES_DIR"/dog/*.jpg)
shopt -u nullglob
[ "${#cats[@]}" -gt 0 ] || die "no cat JPEG in $TEST_IMAGES_DIR/cat (run: dvc pull test_images.dvc)"
[ "${#dogs[@]}" -gt 0 ] || die "no dog JPEG in $TEST_IMAGES_DIR/dog (run: dvc pull test_images.dvc)"
CAT_IMG="${cats[0]}"
DOG_IMG="${dogs[0]}"
engine image inspect "$IMAGE" >/dev/null || die "image $IMAGE not found"

if [ -n "${PORT:-}" ]; then
    port_in_use "$PORT" && die "PORT=$PORT is already in use"
else
    PORT=3000
    while port_in_use "$PORT"; do
        PORT=$((PORT + 1))
        [ "$PORT" -le 3100 ] || die "no free port in 3000-3100"
    done
fi

WORK="$(mktemp -d)"
NAME=""
cleanup() {
    local rc=$?
    if [ -n "$NAME" ]; then
        if [ "$rc" -ne 0 ]; then
            echo "[smoke] last container logs:" >&2
            engine logs --tail 60 "$NAME" >&2 2>&1 || echo "[smoke] (no logs)" >&2
        fi
        log "stopping and removing $NAME"
        engine rm -f -v "$NAME" >/dev/null || echo "[smoke] WARNING: could not remove $NAME" >&2
    fi
    rm -rf "$WORK"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

BASE="http://127.0.0.1:${PORT}"
start=$(date +%s)
NAME="$(CATDOG_CONTAINER_NAME="catdog-smoke-${PORT}-$$" "$HERE/run.sh" "$IMAGE" "$PORT" "${HARDENED[@]}")"

# --- readiness ----------------------------------------------------------------
log "waiting up to ${READY_TIMEOUT} s for $BASE/readyz"
ready=0
while [ $(( $(date +%s) - start )) -lt "$READY_TIMEOUT" ]; do
    running="$(engine inspect --format '{{.State.Running}}' "$NAME")"
    [ "$running" = "true" ] || die "container $NAME exited before it was ready"
    if code="$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 "$BASE/readyz")" && [ "$code" = 200 ]; then
        ready=1
        break
    fi
    sleep 1
done
[ "$ready" = 1 ] || die "not ready after ${READY_TIMEOUT} s"
pass "ready in $(( $(date +%s) - start )) s (container start to /readyz 200)"

# --- HTTP contract ------------------------------------------------------------
# post FILE [CURL -F TYPE SUFFIX] -> sets HTTP_CODE and writes the body to $WORK/body
post() {
    HTTP_CODE="$(curl -sS -o "$WORK/body" -w '%{http_code}' --max-time 30 \
        -F "image=@$1${2:-}" "$BASE/classify")"
}

json_field() {  # json_field FIELD < body
    python3 -c 'import json, sys; print(json.load(sys.stdin)[sys.argv[1]])' "$1"
}

check_label() {  # check_label IMAGE EXPECTED
    local img="$1" want="$2" got
    if ! post "$img"; then
        fail "POST /classify $(basename "$img"): request failed"
        return
    fi
    if [ "$HTTP_CODE" != 200 ]; then
        fail "POST /classify $(basename "$img"): HTTP $HTTP_CODE: $(head -c 300 "$WORK/body")"
        return
    fi
    if ! got="$(json_field label < "$WORK/body")"; then
        fail "POST /classify $(basename "$img"): response is not JSON with a label: $(head -c 300 "$WORK/body")"
        return
    fi
    if [ "$got" = "$want" ]; then
        pass "$(basename "$img") -> $(head -c 300 "$WORK/body")"
    else
        fail "$(basename "$img"): expected label '$want', got '$got' ($(head -c 300 "$WORK/body"))"
    fi
}
check_label "$CAT_IMG" cat
check_label "$DOG_IMG" dog

# expect_status WHAT CODE ERROR CURL-ARGS...: the exact status and "error" the README promises.
expect_status() {
    local what="$1" want="$2" want_error="$3" got_error
    shift 3
    if ! HTTP_CODE="$(curl -sS -o "$WORK/body" -w '%{http_code}' --max-time 30 "$@" "$BASE/classify")"; then
        fail "$what: request failed"
        return
    fi
    got_error="$(json_field error < "$WORK/body" 2>/dev/null || echo "(no JSON error field)")"
    if [ "$HTTP_CODE" = "$want" ] && [ "$got_error" = "$want_error" ]; then
        pass "$what -> HTTP $HTTP_CODE $got_error"
    else
        fail "$what -> HTTP $HTTP_CODE $got_error, expected $want $want_error: $(head -c 200 "$WORK/body")"
    fi
}
printf 'this is not an image\n' > "$WORK/not-an-image.txt"
head -c 2000 "$CAT_IMG" > "$WORK/truncated.jpg"
: > "$WORK/empty.jpg"
expect_status "text file upload" 415 not_an_image -F "image=@$WORK/not-an-image.txt;type=text/plain"
expect_status "truncated JPEG" 422 corrupt -F "image=@$WORK/truncated.jpg"
expect_status "empty file" 400 empty -F "image=@$WORK/empty.jpg"
expect_status "JSON body instead of a form" 415 unsupported_media_type -H 'Content-Type: application/json' -d '{}'
expect_status "form without the image field" 400 missing_field -F "photo=@$CAT_IMG"

# --- metrics ------------------------------------------------------------------
if curl -sS -f --max-time 10 -o "$WORK/metrics" "$BASE/metrics"; then
    for label in cat dog; do
        value="$(awk -v l="label=\"$label\"" '
            $1 ~ /^catdog_predictions_total\{/ && index($1, l) { v += $NF; n++ }
            END { if (n) print v }' "$WORK/metrics")"
        if [ -z "$value" ]; then
            fail "/metrics has no catdog_predictions_total{label=\"$label\"}"
        elif awk -v v="$value" 'BEGIN { exit !(v >= 1) }'; then
            pass "/metrics catdog_predictions_total{label=\"$label\"} = $value"
        else
            fail "/metrics catdog_predictions_total{label=\"$label\"} = $value, expected >= 1"
        fi
    done
else
    fail "GET /metrics failed"
fi

# --- inference log on its volume, write errors counted -------------------------
log_errors="$(awk '$1 == "catdog_inference_log_errors_total" { v += $NF } END { print v + 0 }' "$WORK/metrics")"
if grep -q '^catdog_inference_log_errors_total' "$WORK/metrics" && [ "$log_errors" = 0 ]; then
    pass "/metrics catdog_inference_log_errors_total = 0"
else
    fail "inference log write errors: catdog_inference_log_errors_total = '$log_errors' (or missing)"
fi
sleep 2  # the log writer batches rows on a background thread
if rows="$(engine exec "$NAME" python -c "import sqlite3; print(sqlite3.connect('/var/lib/catdog/inference_log.sqlite').execute('select count(*) from inferences').fetchone()[0])" 2>&1)" \
        && [ "$rows" -ge 2 ]; then
    pass "inference log on the volume /var/lib/catdog holds $rows rows"
else
    fail "inference log at /var/lib/catdog/inference_log.sqlite: $rows"
fi

# --- health check ---------------------------------------------------------------
if health="$(engine image inspect --format '{{json .Config.Healthcheck}}' "$IMAGE")" && [[ "$health" == *readyz* ]]; then
    pass "image HEALTHCHECK probes /readyz"
else
    fail "image has no HEALTHCHECK on /readyz: $health"
fi

# --- image properties -----------------------------------------------------------
if uid="$(engine exec "$NAME" id -u)"; then
    if [ "$uid" != 0 ]; then
        pass "runs as uid $uid ($(engine exec "$NAME" id -un)), not root"
    else
        fail "container runs as root"
    fi
else
    fail "could not exec id -u in the container"
fi

if torch_out="$(engine exec "$NAME" python -c 'import torch' 2>&1)"; then
    fail "torch is importable in the serving image"
elif grep -q "No module named 'torch'" <<< "$torch_out"; then
    pass "torch is not installed in the image"
else
    fail "python -c 'import torch' failed for another reason: $torch_out"
fi

# No compiler or build tool in the runtime image (bento/Dockerfile.j2 builds
# in a separate stage): smaller, and nothing to compile an exploit with.
build_tools=(gcc cc g++ c++ make ld as cpp)
# shellcheck disable=SC2016  # $@ and $t expand in the container's shell
if found="$(engine exec "$NAME" sh -c 'for t in "$@"; do command -v "$t"; done; exit 0' sh "${build_tools[@]}")"; then
    if [ -z "$found" ]; then
        pass "no compiler or build tool in the image (${build_tools[*]})"
    else
        fail "build tools in the runtime image: $(echo "$found" | paste -sd' ' -)"
    fi
else
    fail "could not look for build tools in the container"
fi
if engine exec "$NAME" test -e /usr/lib/gcc; then
    fail "/usr/lib/gcc exists in the runtime image"
fi

if engine exec "$NAME" sh -c 'touch /home/bentoml/probe' 2>/dev/null; then
    fail "the root filesystem is writable (expected the read-only run of deploy/k8s)"
else
    pass "serves with a read-only root filesystem (writable: /tmp, /var/lib/catdog)"
fi

size="$(engine image inspect --format '{{.Size}}' "$IMAGE")"
log "image $IMAGE size: $(numfmt --to=iec "$size") ($size bytes)"

# --- verdict --------------------------------------------------------------------
if [ "${#FAILURES[@]}" -gt 0 ]; then
    echo "[smoke] ${#FAILURES[@]} check(s) failed:" >&2
    printf '[smoke]   - %s\n' "${FAILURES[@]}" >&2
    exit 1
fi
log "all checks passed"
