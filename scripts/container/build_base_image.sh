#!/usr/bin/env bash
# Provide a local `docker.io/library/python:3.11-slim` for daemonless builds.
#
# Where a Docker daemon is reachable (CI on GitHub, a developer laptop) this
# does nothing: `bentoml containerize` pulls the real python:3.11-slim.
# Here no container registry is reachable, so the base image is made from
# Debian packages (GUIDE.md section 2): debootstrap bookworm (its python3 is
# 3.11), add the host's CA bundle and pip settings, import it into the shared
# buildah/podman storage, and tag it with the name BentoML's generated
# Dockerfile uses in `FROM`. The bento then builds unchanged on both paths.
#
# Idempotent: skips when the image already exists (FORCE_REBUILD=1 makes it
# anew; images built on the old one keep their layers). Override the tag with
# BASE_IMAGE, the Debian mirror with DEBIAN_MIRROR, the suite with DEBIAN_SUITE.
set -euo pipefail

BASE_IMAGE="${BASE_IMAGE:-docker.io/library/python:3.11-slim}"
DEBIAN_SUITE="${DEBIAN_SUITE:-bookworm}"
HOST_CA_BUNDLE="${HOST_CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}"
ROOTFS_IMAGE="localhost/catdog-debootstrap-${DEBIAN_SUITE}:latest"

log() { echo "[build_base_image] $*"; }
die() { echo "[build_base_image] ERROR: $*" >&2; exit 1; }

if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
    log "Docker daemon reachable: nothing to do (the real ${BASE_IMAGE} is pulled by the build)"
    exit 0
fi

for tool in podman buildah debootstrap; do
    command -v "$tool" >/dev/null 2>&1 \
        || die "$tool not found: run scripts/container/install_tools.sh first"
done

if [ "${FORCE_REBUILD:-0}" = 1 ] && podman image exists "$BASE_IMAGE"; then
    log "FORCE_REBUILD=1: untagging the existing ${BASE_IMAGE}"
    podman untag "$BASE_IMAGE" "$BASE_IMAGE"
fi
if podman image exists "$BASE_IMAGE"; then
    log "${BASE_IMAGE} already in local storage: skipping ($(podman image inspect --format '{{.Id}}' "$BASE_IMAGE" | cut -c1-12))"
    exit 0
fi

[ "$(id -u)" -eq 0 ] || die "debootstrap needs root"
[ -s "$HOST_CA_BUNDLE" ] || die "host CA bundle $HOST_CA_BUNDLE missing or empty"

# --- The Debian mirror apt uses on this host --------------------------------
# First `deb` URI of the main archive (not -security) from sources.list or the
# deb822 *.sources files.
find_mirror() {
    local f
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [ -f "$f" ] || continue
        awk '$1 == "deb" { for (i = 2; i <= NF; i++) if ($i ~ /^[a-z]+:\/\//) { print $i; break } }' "$f"
    done
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -f "$f" ] || continue
        awk 'tolower($1) == "uris:" { for (i = 2; i <= NF; i++) print $i }' "$f"
    done
}
if [ -z "${DEBIAN_MIRROR:-}" ]; then
    DEBIAN_MIRROR="$(find_mirror | awk '/\/debian\/?$/ && !n++')"
fi
[ -n "${DEBIAN_MIRROR:-}" ] || die "no Debian mirror found in /etc/apt/sources.list*; set DEBIAN_MIRROR"
DEBIAN_MIRROR="${DEBIAN_MIRROR%/}"
SECURITY_MIRROR="$(find_mirror | awk '/\/debian-security\/?$/ && !n++')"
SECURITY_MIRROR="${SECURITY_MIRROR:-${DEBIAN_MIRROR}-security}"
SECURITY_MIRROR="${SECURITY_MIRROR%/}"
log "Debian mirror: ${DEBIAN_MIRROR} (suite ${DEBIAN_SUITE})"

# --- The package index the host's pip uses ----------------------------------
# Only http(s) indexes can be used inside the image: file:// indexes and
# find-links directories exist on this host only.
host_pip_value() {  # $1 = key (index-url | extra-index-url), prints one value per line
    local key="$1" env_name f
    env_name="PIP_$(echo "$key" | tr 'a-z-' 'A-Z_')"
    if [ -n "${!env_name:-}" ]; then
        echo "${!env_name}" | tr ' ' '\n'
        return
    fi
    # Later files override earlier ones, as pip does (global, user, site).
    local value=""
    for f in /etc/xdg/pip/pip.conf /etc/pip.conf "$HOME/.pip/pip.conf" "$HOME/.config/pip/pip.conf" ${PIP_CONFIG_FILE:+"$PIP_CONFIG_FILE"}; do
        [ -f "$f" ] || continue
        local v
        v="$(awk -v k="$key" '
            /^[[:space:]]*\[/ { sect = $0; next }
            sect ~ /\[(global|install)\]/ && $0 ~ "^[[:space:]]*" k "[[:space:]]*=" {
                sub(/^[^=]*=[[:space:]]*/, ""); print; cont = 1; next }
            cont && /^[[:space:]]+[^[:space:]]/ { print; next }
            { cont = 0 }' "$f" | tr ' ' '\n' | sed '/^$/d')"
        if [ -n "$v" ]; then value="$v"; fi
    done
    if [ -n "$value" ]; then echo "$value"; fi
}
PIP_INDEX="$(host_pip_value index-url | awk '/^https?:\/\// && !n++')"
PIP_EXTRA="$(host_pip_value extra-index-url | awk '/^https?:\/\//' | paste -sd' ' -)"
if [ -n "$PIP_INDEX" ]; then
    log "host pip index: ${PIP_INDEX} (the image will use it too)"
else
    log "host pip index: default (PyPI); no index override in the image"
fi
if [ -n "$PIP_EXTRA" ]; then
    log "host pip extra indexes: ${PIP_EXTRA}"
fi

# --- debootstrap ------------------------------------------------------------
WORKDIR="$(mktemp -d /var/tmp/catdog-baseimage.XXXXXX)"
ROOTFS="${WORKDIR}/rootfs"
cleanup() {
    # debootstrap mounts /proc etc. inside the rootfs; never rm through a mount.
    if [ -d "$ROOTFS" ]; then
        awk -v r="$ROOTFS" 'index($2, r) == 1 { print $2 }' /proc/mounts | sort -r \
            | while read -r m; do umount -l "$m"; done
    fi
    rm -rf --one-file-system "$WORKDIR"
}
trap cleanup EXIT

start=$(date +%s)
log "debootstrap ${DEBIAN_SUITE} minbase into ${ROOTFS} (a few minutes)..."
debootstrap --variant=minbase \
    --include=python3,python3-venv,python3-pip,python-is-python3,ca-certificates \
    "$DEBIAN_SUITE" "$ROOTFS" "$DEBIAN_MIRROR" > "${WORKDIR}/debootstrap.log" 2>&1 \
    || { tail -n 40 "${WORKDIR}/debootstrap.log" >&2; die "debootstrap failed (log above)"; }
log "debootstrap done in $(( $(date +%s) - start )) s"

cat > "${ROOTFS}/etc/apt/sources.list" <<EOF
deb ${DEBIAN_MIRROR} ${DEBIAN_SUITE} main
deb ${DEBIAN_MIRROR} ${DEBIAN_SUITE}-updates main
deb ${SECURITY_MIRROR} ${DEBIAN_SUITE}-security main
EOF

# The host's bundle may hold a CA that the network here requires. Keep a copy
# under /usr/local/share/ca-certificates so a later update-ca-certificates
# (any `apt-get install ca-certificates` in a build) keeps it.
cp "$HOST_CA_BUNDLE" "${ROOTFS}/etc/ssl/certs/ca-certificates.crt"
mkdir -p "${ROOTFS}/usr/local/share/ca-certificates"
cp "$HOST_CA_BUNDLE" "${ROOTFS}/usr/local/share/ca-certificates/host-ca-bundle.crt"

{
    echo "[global]"
    echo "cert = /etc/ssl/certs/ca-certificates.crt"
    if [ -n "$PIP_INDEX" ]; then echo "index-url = ${PIP_INDEX}"; fi
    if [ -n "$PIP_EXTRA" ]; then echo "extra-index-url = ${PIP_EXTRA}"; fi
} > "${ROOTFS}/etc/pip.conf"

# Slim like Debian's official images (debuerreotype --slimify, which
# python:3.11-slim is built on): apt keeps no .debs and gzips its lists, dpkg
# installs no docs, man pages or translations. Without this, the `apt-get
# install` in BentoML's generated Dockerfile leaves ~250 MB of caches behind.
APT_CONF_DIR="${ROOTFS}/etc/apt/apt.conf.d"
DPKG_CONF_DIR="${ROOTFS}/etc/dpkg/dpkg.cfg.d"
if [ ! -d "$APT_CONF_DIR" ] || [ ! -d "$DPKG_CONF_DIR" ]; then
    die "unexpected rootfs layout under ${ROOTFS}"
fi
APT_CLEAN='"rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin";'
printf '%s\n' \
    "DPkg::Post-Invoke { ${APT_CLEAN} };" \
    "APT::Update::Post-Invoke { ${APT_CLEAN} };" \
    'Dir::Cache::pkgcache "";' \
    'Dir::Cache::srcpkgcache "";' > "${APT_CONF_DIR}/docker-clean"
echo 'Acquire::GzipIndexes "true";' > "${APT_CONF_DIR}/docker-gzip-indexes"
echo 'Acquire::Languages "none";' > "${APT_CONF_DIR}/docker-no-languages"
echo 'Apt::AutoRemove::SuggestsImportant "false";' > "${APT_CONF_DIR}/docker-autoremove-suggests"
printf '%s\n' \
    'path-exclude /usr/share/doc/*' \
    'path-include /usr/share/doc/*/copyright' \
    'path-exclude /usr/share/info/*' \
    'path-exclude /usr/share/linda/*' \
    'path-exclude /usr/share/lintian/overrides/*' \
    'path-exclude /usr/share/locale/*' \
    'path-exclude /usr/share/man/*' > "${DPKG_CONF_DIR}/docker"
# Same exclusions for what debootstrap already installed. Every path is under
# ${ROOTFS}, checked non-empty above (set -u) and made by mktemp.
find "${ROOTFS}/usr/share/doc" -mindepth 1 -not -type d -not -name copyright -delete
find "${ROOTFS}/usr/share/doc" -mindepth 1 -type d -empty -delete
find "${ROOTFS}/usr/share/info" "${ROOTFS}/usr/share/locale" "${ROOTFS}/usr/share/man" \
    "${ROOTFS}/var/cache/apt" "${ROOTFS}/var/lib/apt/lists" -mindepth 1 -not -type d -delete

log "importing rootfs as ${ROOTFS_IMAGE}..."
tar -C "$ROOTFS" --numeric-owner -c . | podman import --quiet - "$ROOTFS_IMAGE" >/dev/null

# --- ENV layer --------------------------------------------------------------
# uv (used by BentoML's Dockerfile) ignores pip.conf: give it the index too.
ENV_LINES="ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt UV_NATIVE_TLS=1 PIP_BREAK_SYSTEM_PACKAGES=1"
if [ -n "$PIP_INDEX" ]; then
    ENV_LINES+=$'\n'"ENV PIP_INDEX_URL=${PIP_INDEX} UV_INDEX_URL=${PIP_INDEX}"
fi
if [ -n "$PIP_EXTRA" ]; then
    ENV_LINES+=$'\n'"ENV PIP_EXTRA_INDEX_URL=\"${PIP_EXTRA}\" UV_EXTRA_INDEX_URL=\"${PIP_EXTRA}\""
fi
cat > "${WORKDIR}/Containerfile" <<EOF
FROM ${ROOTFS_IMAGE}
${ENV_LINES}
CMD ["python3"]
EOF
log "Containerfile layer:"
sed 's/^/    /' "${WORKDIR}/Containerfile"

BUILDAH_ISOLATION=chroot buildah bud --quiet --layers=false -f "${WORKDIR}/Containerfile" \
    -t "$BASE_IMAGE" "$WORKDIR" >/dev/null
podman rmi "$ROOTFS_IMAGE" >/dev/null

# Check it is what BentoML expects: python 3.11, pip, groupadd/useradd.
# Plain `podman run` fails here (crun, cgroups v1 hybrid, RLIMIT): GUIDE.md section 2.
printf '[containers]\ndefault_ulimits = []\n' > "${WORKDIR}/containers.conf"
py_version="$(CONTAINERS_CONF="${WORKDIR}/containers.conf" podman --runtime /usr/sbin/runc --cgroup-manager=cgroupfs run --rm --network=host \
    "$BASE_IMAGE" python -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
[ "$py_version" = "3.11" ] || die "base image has python ${py_version}, expected 3.11"

log "built ${BASE_IMAGE} in $(( $(date +%s) - start )) s, size $(podman image inspect --format '{{.Size}}' "$BASE_IMAGE" | numfmt --to=iec)"
