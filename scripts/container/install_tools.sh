#!/usr/bin/env bash
# Install the daemonless container tool chain (buildah, podman, debootstrap, runc).
# Idempotent: exits quickly when every tool is already present.
# Needed only where no Docker daemon is reachable (see GUIDE.md section 2);
# on a machine with Docker, scripts/container/containerize.sh never calls this.
set -euo pipefail

PACKAGES=(buildah podman debootstrap runc)

missing=()
for pkg in "${PACKAGES[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$pkg")
    fi
done

if [ "${#missing[@]}" -eq 0 ]; then
    echo "[install_tools] all present: ${PACKAGES[*]}"
    exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
    echo "[install_tools] ERROR: missing ${missing[*]} and apt-get is not available" >&2
    exit 1
fi

SUDO=()
if [ "$(id -u)" -ne 0 ]; then
    SUDO=(sudo)
fi

echo "[install_tools] installing: ${missing[*]}"
"${SUDO[@]}" apt-get update -q
DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}"

for tool in buildah podman debootstrap; do
    command -v "$tool" >/dev/null 2>&1 || { echo "[install_tools] ERROR: $tool not on PATH after install" >&2; exit 1; }
done
[ -x /usr/sbin/runc ] || { echo "[install_tools] ERROR: /usr/sbin/runc missing after install" >&2; exit 1; }
echo "[install_tools] done: $(buildah --version); $(podman --version)"
