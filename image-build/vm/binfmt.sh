# ensure_binfmt ARCH: qemu-user registered in binfmt_misc for ARCH (sourced, not run; as root).
# shellcheck shell=bash
#
# Sourced by image-build/vm/mkrootfs, image-build/build and cross/arm64-rootfs, and part of the
# cache keys of the trees the first and last build. A file of its own rather than common.sh:
# sourcing common.sh sets PICAMD_CACHE and exports _T0, which cross/ has no use for. Defines
# nothing but ensure_binfmt and _binfmt_*; messages go through the caller's log and die, and
# packages through its need_pkgs, when it has them (common.sh's), else plain stderr and apt-get.

# ARCH as Debian names it (arm64, armhf, armel, amd64, i386, riscv64, ppc64el, s390x, ...) or as
# qemu does (aarch64, arm, x86_64, ...). Nothing to do when the host runs it natively (its own
# architecture, or i386 on amd64). Otherwise installs qemu-user-static when missing, mounts
# binfmt_misc when it is not, and registers qemu-<qarch> from qemu-user-static's
# /usr/lib/binfmt.d/qemu-<qarch>.conf unless it is registered already. That file carries the F
# flag: the kernel opens the interpreter at registration, so it works in any chroot without a
# copy of it there.
ensure_binfmt() {
  local arch=${1:?usage: ensure_binfmt ARCH} qarch host b=/proc/sys/fs/binfmt_misc conf
  qarch=$(_binfmt_qarch "$arch") || _binfmt_die "no qemu-user mapping for architecture $arch"
  host=$(_binfmt_qarch "$(dpkg --print-architecture)") || host=$(uname -m)
  [[ $qarch == "$host" || ($host == x86_64 && $qarch == i386) ]] && return 0
  _binfmt_need_pkgs qemu-user-static
  [[ -e $b/qemu-$qarch ]] && return 0
  [[ -e $b/register ]] || mount -t binfmt_misc binfmt_misc "$b" || _binfmt_die "cannot mount binfmt_misc on $b"
  [[ -e $b/qemu-$qarch ]] && return 0
  conf=/usr/lib/binfmt.d/qemu-$qarch.conf
  [[ -f $conf ]] || _binfmt_die "qemu-user-static has no $conf"
  if ! grep -v '^#' "$conf" | grep . >"$b/register"; then
    # A concurrent run may have registered it in the meantime (the kernel then refuses).
    [[ -e $b/qemu-$qarch ]] || _binfmt_die "registering qemu-$qarch from $conf in binfmt_misc failed"
    return 0
  fi
  _binfmt_log "registered qemu-$qarch in binfmt_misc"
}

# The qemu name of a Debian (or qemu, or uname -m) architecture name; fails for unknown ones.
_binfmt_qarch() {
  case $1 in
    arm64|aarch64) echo aarch64 ;;
    armhf|armel|arm|armv7l) echo arm ;;
    amd64|x86_64) echo x86_64 ;;
    i386|i686) echo i386 ;;
    ppc64el|ppc64le) echo ppc64le ;;
    riscv64|s390x|mips64el|mipsel|ppc64|sparc64|alpha|m68k|sh4|hppa) echo "$1" ;;
    loong64|loongarch64) echo loongarch64 ;;
    *) return 1 ;;
  esac
}

_binfmt_log() {
  if declare -F log >/dev/null; then log "$@"; else printf '%s\n' "$*" >&2; fi
}
_binfmt_die() {
  if declare -F die >/dev/null; then die "$@"; fi
  printf '%s: %s\n' "$0" "$*" >&2
  exit 1
}
_binfmt_need_pkgs() {
  if declare -F need_pkgs >/dev/null; then need_pkgs "$@"; return; fi
  local missing=() p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  ((${#missing[@]})) || return 0
  _binfmt_log "installing host packages: ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2 ||
    _binfmt_die "apt-get install ${missing[*]} failed"
}
