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
# PKG_CONFIG_LIBDIR empty: only libmp.pc is visible, as on a machine without
# the -dev packages of libmp's private dependencies (msgpack-c, libsodium).
pc() { PKG_CONFIG_LIBDIR= PKG_CONFIG_PATH="$pcdir" PKG_CONFIG_SYSROOT_DIR="$tmp/stage" pkg-config "$@"; }
cflags=$(pc --cflags libmp)
libs=$(pc --libs libmp)
want=$(meson introspect "$build" --projectinfo | python3 -c 'import json,sys; print(json.load(sys.stdin)["version"])')
[ "$(pc --modversion libmp)" = "$want" ] || { echo "libmp.pc says $(pc --modversion libmp), meson $want"; exit 1; }
grep -q '^Requires' "$pcdir/libmp.pc" && { echo "libmp.pc requires other .pc files"; exit 1; }
cc $sanflags $cflags "$tmp/use.c" -o "$tmp/use" $libs
libdir=$(dirname "$(find "$tmp/stage" -name 'libmp.so.[0-9]' | head -n1)")
LD_LIBRARY_PATH="$libdir" "$tmp/use" | grep -q "timed out"
echo "pkg-config: ok"

# 1b. A static link: libmp.a (from a default_library=both build) with the
# private dependencies pkg-config --static names.
if [ "$(opt default_library)" != shared ]; then
  [ -n "$(find "$tmp/stage" -name libmp.a | head -n1)" ] || { echo "no libmp.a installed"; exit 1; }
  static_libs=$(pc --static --libs libmp)
  cc $sanflags $cflags "$tmp/use.c" -o "$tmp/use-static" \
    -Wl,-Bstatic -lmp -Wl,-Bdynamic ${static_libs//-lmp/}
  ! ldd "$tmp/use-static" | grep -q 'libmp\.so' || { echo "static link used libmp.so"; exit 1; }
  "$tmp/use-static" | grep -q "timed out"
  echo "static: ok"
else
  echo "static: not built here (default_library=shared; scripts/test builds both)"
fi

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

# 3. As a subproject with no options at all: libmp's tests, examples and
# benchmarks are off, so the consumer's `meson test` lists none of them.
cat >"$tmp/proj/meson.build" <<'M'
project('uses-libmp', 'c', default_options: ['c_std=gnu11'])
libmp = dependency('libmp', fallback: ['libmp', 'libmp_dep'])
executable('use', 'use.c', dependencies: libmp)
test('mine', find_program('true'))
M
meson setup "$tmp/proj/build2" "$tmp/proj" >/dev/null
ninja -C "$tmp/proj/build2" >/dev/null
listed=$(meson test -C "$tmp/proj/build2" --no-rebuild --list 2>/dev/null)
[ "$(echo "$listed" | grep -c .)" = 1 ] && echo "$listed" | grep -q mine || {
  echo "a subproject consumer lists libmp's tests:"; echo "$listed"; exit 1; }
[ ! -e "$tmp/proj/build2/subprojects/libmp/examples" ] || { echo "examples built"; exit 1; }
echo "subproject defaults: ok"
