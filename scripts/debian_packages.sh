#!/usr/bin/env bash
# Install Debian packages the scale profile runs (PostgreSQL, Prometheus, Pushgateway),
# only those missing; idempotent and quick when everything is present.
#   scripts/debian_packages.sh postgresql prometheus prometheus-pushgateway
# The packages' own system services are not used: the platform runs its own
# instances under $CATDOG_RUN_DIR (catdog_runtime/services.py), so they are not started.
set -euo pipefail

missing=()
for pkg in "$@"; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$pkg")
    fi
done
if [ "${#missing[@]}" -eq 0 ]; then exit 0; fi

if ! command -v apt-get >/dev/null 2>&1; then
    echo "[debian_packages] ERROR: missing ${missing[*]} and apt-get is not available;" \
         "install them with the system's package manager" >&2
    exit 1
fi
SUDO=()
if [ "$(id -u)" -ne 0 ]; then SUDO=(sudo); fi

echo "[debian_packages] installing: ${missing[*]}"
# policy-rc.d exit 101: the packages' post-install scripts must not start their
# system services (a second Prometheus on 9090, a cluster on 5432) in containers
# or on a developer's machine; this platform starts its own instances.
policy=/usr/sbin/policy-rc.d
created_policy=0
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' | "${SUDO[@]}" tee "$policy" >/dev/null
    "${SUDO[@]}" chmod +x "$policy"
    created_policy=1
fi
cleanup() { if [ "$created_policy" -eq 1 ]; then "${SUDO[@]}" rm -f "$policy"; fi; }
trap cleanup EXIT
if ! apt-cache show "${missing[0]}" >/dev/null 2>&1; then
    "${SUDO[@]}" apt-get update -q
fi
DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}"
