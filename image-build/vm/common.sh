# Shared helpers for image-build/vm/* (sourced, not run).
# shellcheck shell=bash

# Where built rootfs trees, images and VM run directories are kept, outside any clone.
PICAMD_CACHE=${PICAMD_CACHE:-${PICAMD_CI_CACHE:-/var/cache/picamd-ci}}

log() { printf '[%s %6.1fs] %s\n' "${LOG_TAG:-vm}" "$(elapsed)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# Seconds since the script started (bash's SECONDS is whole seconds; use the clock instead).
_T0=${_T0:-$(date +%s.%N)}
export _T0
elapsed() { awk -v a="$_T0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }

# need_pkgs PKG... : apt-get install the Debian packages that are missing (as root, or sudo).
need_pkgs() {
  local missing=() p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  ((${#missing[@]})) || return 0
  log "installing host packages: ${missing[*]}"
  local sudo=""
  [[ $(id -u) -eq 0 ]] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# The Debian mirror: the one this host's apt uses (deb.debian.org unless configured otherwise).
debian_mirror() {
  if [[ -n ${DEBIAN_MIRROR:-} ]]; then echo "$DEBIAN_MIRROR"; return; fi
  local m
  m=$(grep -hsE '^(URIs:|deb )' /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources 2>/dev/null |
      grep -oE 'https?://[^ ]*/debian/?( |$)' | grep -v security | head -n1 | tr -d ' ')
  echo "${m:-http://deb.debian.org/debian}"
}
