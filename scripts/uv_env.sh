# Sourced by scripts/install.sh and scripts/lock.sh: lets uv use the package
# indexes that pip is configured with on this machine (a mirror or a local
# wheel folder), since uv does not read pip.conf. Without pip settings uv
# uses PyPI, as for any user.
pip_setting() { "${PYTHON:-python3.11}" -m pip config get "$1" 2>/dev/null | tr '\n' ' '; }
if [ -z "${UV_EXTRA_INDEX_URL:-}" ]; then
  extra="$(pip_setting global.extra-index-url)"
  if [ -n "${extra// /}" ]; then export UV_EXTRA_INDEX_URL="$extra"; fi
fi
if [ -z "${UV_FIND_LINKS:-}" ]; then
  links="$(pip_setting global.find-links)"
  if [ -n "${links// /}" ]; then export UV_FIND_LINKS="${links// /,}"; export UV_FIND_LINKS="${UV_FIND_LINKS%,}"; fi
fi
# Which index a package comes from. uv's default, `first-index`, takes each
# package from the first index that has it, so a name on a later index can never
# shadow it (dependency confusion). Only the local mirrors of this machine's pip
# settings (file:// folders, partial copies of PyPI that its operator set up)
# need `unsafe-best-match` beside PyPI; the lock's hashes still reject any file
# that is not the one locked, whichever index serves it. Any http(s) extra index
# keeps uv's default.
if [ -z "${UV_INDEX_STRATEGY:-}" ] && [ -n "${UV_EXTRA_INDEX_URL:-}${UV_FIND_LINKS:-}" ]; then
  remote_index=no
  for url in ${UV_EXTRA_INDEX_URL:-}; do
    case "$url" in file://*|/*) ;; *) remote_index=yes ;; esac
  done
  if [ "$remote_index" = no ]; then export UV_INDEX_STRATEGY=unsafe-best-match; fi
  unset remote_index url
fi
export UV_LINK_MODE=${UV_LINK_MODE:-hardlink}  # a second venv costs seconds, not GBs
