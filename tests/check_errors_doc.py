#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""docs/errors.md cannot drift from the headers or from mp_strerror():
every error code a public header documents has a row in errors.md's tables,
and every code with a row there is explained in libmp's own words by
src/error.c (a `case` of its own in mp_strerror, not the system's text)."""
import pathlib
import re
import sys

root = pathlib.Path(sys.argv[1])
codes_in_headers = {}
for h in sorted([*(root / "include").rglob("*.h"), *(root / "include").rglob("*.h.in")]):
    for m in re.finditer(r"`?-(E[A-Z0-9]+)`?", h.read_text()):
        codes_in_headers.setdefault(m.group(1), h.name)

doc = (root / "docs" / "errors.md").read_text()
rows = set()
for cell in re.findall(r"^\|([^|]*)\|", doc, re.M):  # a table row's first cell
    if re.fullmatch(r"\s*`-E[A-Z0-9]+`(\s*,\s*`-E[A-Z0-9]+`)*\s*", cell):
        rows.update(re.findall(r"-(E[A-Z0-9]+)", cell))
cases = set(re.findall(r"case\s+(E[A-Z0-9]+)\s*:", (root / "src" / "error.c").read_text()))

# Codes that are one number on Linux: one case serves both.
aliases = {"ENOTSUP": "EOPNOTSUPP", "EWOULDBLOCK": "EAGAIN", "EDEADLOCK": "EDEADLK"}
cases |= {a for a, b in aliases.items() if b in cases}

bad = []
for code, where in sorted(codes_in_headers.items()):
    if code not in rows:
        bad.append(f"-{code} (documented in include/.../{where}) has no row in docs/errors.md")
for code in sorted(rows - cases):
    bad.append(f"-{code} has a row in docs/errors.md but no case of its own in mp_strerror")
for b in bad:
    print("errors:", b)
print(f"errors: {len(codes_in_headers)} codes in the headers, {len(rows)} rows, "
      f"{len(cases)} mp_strerror cases; {len(bad)} problems")
sys.exit(1 if bad else 0)
