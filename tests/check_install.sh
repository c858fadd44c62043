#!/usr/bin/env bash
# libmp installs (headers, library, libmp.pc) and is usable both through
# pkg-config and as a meson subproject.
#   check_install.sh SOURCE_ROOT BUILD_ROOT
set -euo pipefail
# meson test points LD_LIBRARY_PATH at the build tree; the programs built here
# must find the libmp they were linked with instead.
unset LD_LIBRARY_PATH
src=$1
build=$2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

cat >"$tmp/use.c" <<'C'
#include <mp.h>
#include <stdio.h>
int main(void) {
  mp_lock *l;
  if (mp_lock_new(&l) != 0 || mp_lock_acquire(l, MP_NOWAIT) != 0 || mp_lock_release(l) != 0)
    return 1;
  puts(mp_strerror(-ETIMEDOUT));
  return mp_lock_free(l);
}
C

# 1. meson install into a staging directory, then build through pkg-config.
meson install -C "$build" --destdir "$tmp/stage" --no-rebuild >/dev/null
opt() {
  meson introspect "$build" --buildoptions | python3 -c \
    'import json,sys; print(next(o["value"] for o in json.load(sys.stdin) if o["name"]==sys.argv[1]))' "$1"
}
prefix=$(opt prefix)
# A sanitizer build's library needs its runtime in the program too.
san=$(opt b_sanitize)
sanflags=""
[ "$san" != none ] && sanflags="-fsanitize=$san"
pcdir=$(dirname "$(find "$tmp/stage" -name libmp.pc | head -n1)")
[ -f "$pcdir/libmp.pc" ] || { echo "no libmp.pc installed"; exit 1; }
[ -f "$tmp/stage$prefix/include/mp.h" ] || { echo "mp.h not installed"; exit 1; }
cflags=$(PKG_CONFIG_PATH="$pcdir" PKG_CONFIG_SYSROOT_DIR="$tmp/stage" pkg-config --cflags libmp)
libs=$(PKG_CONFIG_PATH="$pcdir" PKG_CONFIG_SYSROOT_DIR="$tmp/stage" pkg-config --libs libmp)
cc $sanflags $cflags "$tmp/use.c" -o "$tmp/use" $libs
libdir=$(dirname "$(find "$tmp/stage" -name 'libmp.so.0' | head -n1)")
LD_LIBRARY_PATH="$libdir" "$tmp/use" | grep -q "timed out"
echo "pkg-config: ok"

# 2. As a meson subproject: dependency('libmp') finds the override.
mkdir -p "$tmp/proj/subprojects"
ln -s "$src" "$tmp/proj/subprojects/libmp"
cp "$tmp/use.c" "$tmp/proj/use.c"
cat >"$tmp/proj/meson.build" <<'M'
project('uses-libmp', 'c', default_options: ['c_std=gnu11'])
libmp = dependency('libmp', fallback: ['libmp', 'libmp_dep'],
  default_options: ['tests=false', 'examples=false', 'bench=false'])
executable('use', 'use.c', dependencies: libmp)
M
meson setup "$tmp/proj/build" "$tmp/proj" >/dev/null
ninja -C "$tmp/proj/build" >/dev/null
"$tmp/proj/build/use" | grep -q "timed out"
echo "subproject: ok"
