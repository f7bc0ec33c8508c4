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
# The lock pins every version exactly, so taking a version from whichever
# index has it cannot pick a different package than the lock names.
export UV_INDEX_STRATEGY=${UV_INDEX_STRATEGY:-unsafe-best-match}
export UV_LINK_MODE=${UV_LINK_MODE:-hardlink}  # a second venv costs seconds, not GBs
