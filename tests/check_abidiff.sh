#!/usr/bin/env bash
# libmp's ABI is the one stored in abi/libmp.abi: libabigail's abidiff compares
# a fresh dump of the built library (scripts/abi-dump) with it, so that no
# signature or public struct (an options struct's fields) changes silently.
# An intended change regenerates the stored dump in the same commit.
#   check_abidiff.sh SOURCE_ROOT BUILD_ROOT
set -euo pipefail
src=$1
build=$2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
[ -f "$src/abi/libmp.abi" ] || { echo "no stored ABI dump: run scripts/abi-dump"; exit 1; }
"$src/scripts/abi-dump" "$build" "$tmp/now.abi"
if abidiff "$src/abi/libmp.abi" "$tmp/now.abi" >"$tmp/diff.txt"; then
  echo "abidiff: the ABI matches abi/libmp.abi"
  exit 0
fi
echo "the ABI differs from abi/libmp.abi (if intended: scripts/abi-dump, and commit it):"
cat "$tmp/diff.txt"
exit 1
