#!/usr/bin/env python3
"""libmp's exported symbols are exactly those its headers declare MP_EXPORT and
its version script lists."""
import pathlib
import re
import subprocess
import sys

root = pathlib.Path(sys.argv[1])
lib = sys.argv[2]

declared = set()
for h in [*(root / "include").rglob("*.h"), *(root / "include").rglob("*.h.in")]:
    text = h.read_text()
    for m in re.finditer(r"^MP_EXPORT\b[^;(]*?\b(mp_[a-z0-9_]+)\s*\(", text, re.M):
        declared.add(m.group(1))

mapped = set(re.findall(r"^\s+(mp_[a-z0-9_]+);", (root / "src" / "libmp.map").read_text(), re.M))

out = subprocess.run(["nm", "-D", "--defined-only", lib], capture_output=True, text=True,
                     check=True).stdout
exported = set()
for line in out.splitlines():
    parts = line.split()
    if len(parts) >= 3 and parts[1] in "TtWDdBbRr":
        name = parts[2].split("@")[0]
        if name.startswith("mp_") or not name.startswith("_"):
            exported.add(name)

ok = True
def report(what, names):
    global ok
    if names:
        ok = False
        print(f"{what}: {' '.join(sorted(names))}")

report("declared MP_EXPORT but not in src/libmp.map", declared - mapped)
report("in src/libmp.map but not declared in a header", mapped - declared)
report("declared but not exported by the library", declared - exported)
report("exported but not declared", exported - declared)
print(f"{len(declared)} declared, {len(mapped)} in the map, {len(exported)} exported")
sys.exit(0 if ok else 1)
