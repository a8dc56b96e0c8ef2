# The shell library of .ci/, cross/ and image-build/: sourced, never run.
# shellcheck shell=bash
#
#   . "$(dirname "$0")/../lib/sh/picamd.sh"        # from .ci/, cross/, image-build/
#   . "$(dirname "$0")/../../lib/sh/picamd.sh"     # from image-build/vm/
#
# Why here (lib/sh/) and not in .ci/: cross/build and image-build/build are tools users run
# on their own machines, not only CI steps; all three folders are peers that share this.
#
# Sourcing it only defines the functions and variables below: it installs nothing, changes
# no directory, sets no shell option (the caller's `set -euo pipefail` stays its own) and
# sets no trap. Everything that touches the host (apt-get, binfmt_misc) happens only when the
# caller calls a function.
#
# Variables (PICAMD_REPO is the clone; the others take the environment's value when set, and
# the second names are older ones, still read):
#   PICAMD_CI_CACHE      /var/cache/picamd-ci: trixie trees, VM trees and runs, CI targets
#                        (also PICAMD_CACHE, which image-build/vm keeps using: same value)
#   PICAMD_CROSS_CACHE   /var/cache/picamd-cross: sysroot, libcamera, arm64 root filesystems
#   PICAMD_CROSS_OUT     $PICAMD_CROSS_CACHE/out: cross/build's install tree, cross/deb's .deb
#   PICAMD_IMAGE_CACHE   /var/cache/picamd-image: stand-in base images, image-e2e runs
#   PICAMD_DEBIAN_MIRROR the Debian archive every tree and sysroot comes from (also
#                        DEBIAN_MIRROR); unset: the host's own apt mirror, see debian_mirror
#   PICAMD_DEBIAN_SECURITY_MIRROR  bookworm-security for cross/build's sysroot
#   LOG_TAG              the caller's name in log lines (default: the script's file name)
#
# Functions: log, die, lap, print_help, free_port, need_root, need_pkgs, debian_mirror, ensure_binfmt, key12,
# section_hash, remove_stale, picamd_version, picamd_deb.

# The clone this library belongs to (a subshell's cd: the caller's directory stays).
PICAMD_REPO=$(CDPATH='' cd -- "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
PICAMD_CI_CACHE=${PICAMD_CI_CACHE:-${PICAMD_CACHE:-/var/cache/picamd-ci}}
PICAMD_CACHE=$PICAMD_CI_CACHE
PICAMD_CROSS_CACHE=${PICAMD_CROSS_CACHE:-/var/cache/picamd-cross}
PICAMD_CROSS_OUT=${PICAMD_CROSS_OUT:-$PICAMD_CROSS_CACHE/out}
PICAMD_IMAGE_CACHE=${PICAMD_IMAGE_CACHE:-/var/cache/picamd-image}
PICAMD_DEBIAN_MIRROR=${PICAMD_DEBIAN_MIRROR:-${DEBIAN_MIRROR:-}}
PICAMD_DEBIAN_SECURITY_MIRROR=${PICAMD_DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}

# The start of the outermost script: exported, so that the scripts it runs (image-e2e runs
# standin-base, which runs mkrootfs) log times on one clock.
_T0=${_T0:-$(date +%s.%N)}
export _T0

# --- messages ----------------------------------------------------------------------------------
# log MESSAGE...: "[tag  12.3s] message" on stderr (stdout is for results: several scripts print
# only a path there).
log() { printf '[%s %6.1fs] %s\n' "${LOG_TAG:-${0##*/}}" "$(lap "$_T0")" "$*" >&2; }
die() { log "error: $*"; exit 1; }
# lap START: seconds since START (a `date +%s.%N` or `date +%s`), one decimal.
lap() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }

# print_help: the script's leading comment block (its usage), for -h/--help.
print_help() { awk 'NR > 1 && !/^#/ { exit } NR > 1' "$0"; }

# free_port: a TCP port on 127.0.0.1 that is free now (for QEMU's host forwards).
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# need_root WHY: dies unless running as root.
need_root() { [[ $(id -u) -eq 0 ]] || die "run as root (${*:-it changes the host})"; }

# --- host packages -----------------------------------------------------------------------------
# need_pkgs [--recommends] PKG...: installs the Debian packages that are not installed yet, and
# only those, so a warm machine pays one dpkg-query. As root, or through sudo.
#   - `apt-get update` first, once per run: a fresh machine (a container) has no package lists;
#     _PICAMD_APT_UPDATED is exported so the scripts this one runs do not update again.
#   - Without recommends unless --recommends: name what is used (qemu-system-arm only
#     recommends ipxe-qemu, whose efi-virtio.rom its virtio NIC loads).
#   - /usr/sbin/policy-rc.d says "no" for the install when the host has no policy of its own:
#     nginx's package would start a daemon on port 80 and fail the install where it cannot.
#   - apt's output goes to a file, shown only when the install fails (callers' stdout carries
#     results).
need_pkgs() {
  local recommends=--no-install-recommends p missing=() sudo="" policy=/usr/sbin/policy-rc.d
  local guard="" rc=0 out
  if [[ ${1:-} == --recommends ]]; then recommends=--install-recommends; shift; fi
  for p in "$@"; do
    dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q '^install ok installed' || missing+=("$p")
  done
  ((${#missing[@]})) || return 0
  log "installing host packages: ${missing[*]}"
  [[ $(id -u) -eq 0 ]] || sudo=sudo
  if [[ -z ${_PICAMD_APT_UPDATED:-} ]]; then
    $sudo apt-get update -qq >&2 || die "apt-get update failed"
    export _PICAMD_APT_UPDATED=1
  fi
  if [[ ! -e $policy ]]; then
    printf '#!/bin/sh\nexit 101\n' | $sudo tee "$policy" >/dev/null && $sudo chmod 0755 "$policy" && guard=1
  fi
  out=$(mktemp)
  # env: sudo would drop DEBIAN_FRONTEND from the environment.
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$recommends" "${missing[@]}" \
    >"$out" 2>&1 || rc=$?
  if [[ -n $guard ]]; then $sudo rm -f "$policy"; fi
  if ((rc)); then
    cat "$out" >&2
    rm -f "$out"
    die "apt-get install ${missing[*]} failed (exit $rc)"
  fi
  rm -f "$out"
}

# --- the Debian mirror -------------------------------------------------------------------------
# debian_mirror: prints PICAMD_DEBIAN_MIRROR when set, else the first plain Debian archive URI
# in the host's enabled apt sources (deb822 or one-line; not debian-security), else
# http://deb.debian.org/debian. No trailing slash: the string is part of cache keys.
debian_mirror() {
  if [[ -n $PICAMD_DEBIAN_MIRROR ]]; then echo "${PICAMD_DEBIAN_MIRROR%/}"; return; fi
  local f uri
  for f in /etc/apt/sources.list.d/*.sources /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [[ -r $f ]] || continue
    uri=$(sed -nE \
      -e 's/^[[:space:]]*URIs:[[:space:]]*([^[:space:]]+).*/\1/p' \
      -e 's/^[[:space:]]*deb[[:space:]]+(\[[^]]*\][[:space:]]+)?([^[:space:]]+).*/\2/p' "$f" |
      grep -E '^https?://.*/debian/?$' | head -n1 || true)
    if [[ -n $uri ]]; then
      echo "${uri%/}"
      return
    fi
  done
  echo http://deb.debian.org/debian
}

# --- binfmt_misc -------------------------------------------------------------------------------
# ensure_binfmt ARCH: qemu-user registered in binfmt_misc for ARCH, as Debian names it (arm64,
# armhf, riscv64, ...) or as qemu does (aarch64, arm, ...). Nothing to do when the host runs it
# natively (its own architecture, or i386 on amd64). Otherwise installs qemu-user-static, mounts
# binfmt_misc when it is not, and registers qemu-<qarch> from qemu-user-static's
# /usr/lib/binfmt.d/qemu-<qarch>.conf unless it is registered already (where no systemd did it
# at boot: containers). That file carries the F flag: the kernel opens the interpreter at
# registration, so it works in any chroot without a copy of it there. As root.
ensure_binfmt() {
  local arch=${1:?usage: ensure_binfmt ARCH} qarch host b=/proc/sys/fs/binfmt_misc conf
  qarch=$(_binfmt_qarch "$arch") || die "no qemu-user mapping for architecture $arch"
  host=$(_binfmt_qarch "$(dpkg --print-architecture)") || host=$(uname -m)
  [[ $qarch == "$host" || ($host == x86_64 && $qarch == i386) ]] && return 0
  need_pkgs qemu-user-static
  [[ -e $b/qemu-$qarch ]] && return 0
  [[ -e $b/register ]] || mount -t binfmt_misc binfmt_misc "$b" || die "cannot mount binfmt_misc on $b"
  [[ -e $b/qemu-$qarch ]] && return 0
  conf=/usr/lib/binfmt.d/qemu-$qarch.conf
  [[ -f $conf ]] || die "qemu-user-static has no $conf"
  if ! grep -v '^#' "$conf" | grep . >"$b/register"; then
    # A concurrent run may have registered it in the meantime (the kernel then refuses).
    [[ -e $b/qemu-$qarch ]] || die "registering qemu-$qarch from $conf in binfmt_misc failed"
    return 0
  fi
  log "registered qemu-$qarch in binfmt_misc"
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

# --- cache keys and cache entries --------------------------------------------------------------
# key12: the first 12 hex digits of the SHA-256 of stdin, the suffix of every cache entry's
# name (printf '%s\n' INPUT... | key12).
key12() { sha256sum | cut -c1-12; }

# section_hash NAME [FILE]: key12 of the lines of FILE (default: the running script) from
# "# >>> NAME" to "# <<< NAME", so that a cache key covers the code that shapes the cached
# thing and not the driver around it (editing a message must not cost a 20-minute rebuild).
# The markers start their lines (no indentation). An absent section is an error, not the hash
# of nothing: call it as its own assignment (x=$(section_hash NAME)) so that set -e sees it.
section_hash() {
  local text
  text=$(sed -n "/^# >>> $1\$/,/^# <<< $1\$/p" "${2:-$0}")
  [[ -n $text ]] || die "no \"# >>> $1\" ... \"# <<< $1\" section in ${2:-$0}"
  printf '%s\n' "$text" | key12
}

# remove_stale KEEP PATH...: removes the cached trees PATH... other than KEEP (older keys of
# the same entry); one with anything mounted below it (a run using it) stays.
remove_stale() {
  local keep=$1 old
  shift
  for old in "$@"; do
    [[ -d $old && $old != "$keep" ]] || continue
    if grep -qF " $old/" /proc/self/mountinfo; then continue; fi
    log "removing the outdated $old"
    rm -rf --one-file-system "$old"
  done
}

# --- picamd itself -----------------------------------------------------------------------------
# picamd_version: the package version from the clone's Cargo.toml.
picamd_version() { sed -n 's/^version = "\(.*\)"/\1/p' "$PICAMD_REPO/Cargo.toml" | head -n1; }
# picamd_deb_version: the .deb's version (PICAMD_DEB_VERSION, default <version>-1).
picamd_deb_version() { echo "${PICAMD_DEB_VERSION:-$(picamd_version)-1}"; }
# picamd_deb [FLAVOUR]: where cross/deb writes the FLAVOUR's .deb (trixie, the default, or
# bookworm).
picamd_deb() { echo "$PICAMD_CROSS_OUT/picamd_$(picamd_deb_version)+${1:-trixie}_arm64.deb"; }
