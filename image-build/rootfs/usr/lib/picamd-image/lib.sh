# shellcheck shell=bash
# lib.sh — sourced by picamd-setup, picamd-update and picamd-persist: how a file on the boot
# partition is replaced. FAT has no journal, and a rename alone can reach the card before
# the new file's data does, so every replacement is: the new content under a temporary name,
# fsync it, rename it over the old name, fsync the directory. A power cut at any moment
# leaves the old file or the new one, whole (docs/read-only-root.md, section 2).

commit_file() {  # commit_file TMP DEST: TMP (already written) becomes DEST, whole
  sync -f "$1" && mv -f "$1" "$2" && sync -f "$(dirname "$2")"
}

put_file() {  # put_file SRC DEST: DEST becomes a copy of SRC
  cp "$1" "$2.tmp" && commit_file "$2.tmp" "$2"
}

put_text() {  # put_text DEST TEXT: DEST becomes TEXT and a newline
  printf '%s\n' "$2" >"$1.tmp" && commit_file "$1.tmp" "$1"
}
