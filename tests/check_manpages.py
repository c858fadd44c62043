#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Every function a public header exports has a section-3 man page in the
Doxygen output (a page of its own or a link page to its header's)."""
import pathlib
import re
import sys

root = pathlib.Path(sys.argv[1])
man3 = pathlib.Path(sys.argv[2]) / "man3"
names = set()
for h in [*(root / "include").rglob("*.h"), *(root / "include").rglob("*.h.in")]:
    for m in re.finditer(r"^MP(?:_MPI)?_EXPORT\b[^;(]*?\b(mp_[a-z0-9_]+)\s*\(", h.read_text(), re.M):
        names.add(m.group(1))
missing = sorted(n for n in names if not (man3 / f"{n}.3").is_file())
for n in missing:
    print(f"no man page for {n}")
print(f"man pages: {len(names) - len(missing)} of {len(names)} exported functions")
sys.exit(1 if missing or not names else 0)
