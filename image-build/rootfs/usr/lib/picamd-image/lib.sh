# shellcheck shell=bash
# lib.sh — sourced by picamd-setup, picamd-update, picamd-persist and image-build/build: how
# a file on the boot partition is replaced, and how picamd.toml there ends. FAT has no
# journal, and a rename alone can reach the card before the new file's data does, so every
# replacement is: the new content under a temporary name, fsync it, rename it over the old
# name, fsync the directory. A power cut at any moment leaves the old file or the new one,
# whole (docs/read-only-root.md, section 2).

commit_file() {  # commit_file TMP DEST: TMP (already written) becomes DEST, whole
  sync -f "$1" && mv -f "$1" "$2" && sync -f "$(dirname "$2")"
}

put_file() {  # put_file SRC DEST: DEST becomes a copy of SRC
  cp "$1" "$2.tmp" && commit_file "$2.tmp" "$2"
}

put_text() {  # put_text DEST TEXT: DEST becomes TEXT and a newline
  printf '%s\n' "$2" >"$1.tmp" && commit_file "$1.tmp" "$1"
}

# The boot partition's picamd.toml ends with this line (build puts it there, picamd-setup
# keeps it last). A copy cut short by a power cut is often still valid TOML (cut inside a
# comment, or empty): picamd would start with its defaults, on another port and without the
# camera login. The line, last, tells a whole file from a cut one.
# shellcheck disable=SC2034 # used by the scripts that source this
END_LINE="# end of picamd.toml: keep this line last (without it the file is taken as cut short by a power cut, and picamd.toml.previous is used)"
