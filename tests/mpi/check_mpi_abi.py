#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""libmp-mpi exports exactly the functions include/mp-mpi.h declares
MP_MPI_EXPORT, and its version script lists exactly those."""
import pathlib
import re
import subprocess
import sys

root = pathlib.Path(sys.argv[1])
lib = sys.argv[2]
text = (root / "include" / "mp-mpi.h").read_text()
declared = set(re.findall(r"^MP_MPI_EXPORT\b[^;(]*?\b(mp_mpi_[a-z0-9_]+)\s*\(", text, re.M))
mapped = set(re.findall(r"^\s+(mp_mpi_[a-z0-9_]+);",
                        (root / "src" / "mpi" / "libmp-mpi.map").read_text(), re.M))
out = subprocess.run(["nm", "-D", "--defined-only", lib], capture_output=True, text=True,
                     check=True).stdout
exported = {l.split()[2].split("@")[0] for l in out.splitlines()
            if len(l.split()) >= 3 and l.split()[1] in "TtWDdBbRr"
            and not l.split()[2].startswith("_")}
exported -= {"LIBMP_MPI_0"}
ok = True
for what, names in [("declared but not in libmp-mpi.map", declared - mapped),
                    ("in libmp-mpi.map but not declared", mapped - declared),
                    ("declared but not exported", declared - exported),
                    ("exported but not declared", exported - declared)]:
    if names:
        ok = False
        print(f"{what}: {' '.join(sorted(names))}")
print(f"{len(declared)} declared, {len(mapped)} in the map, {len(exported)} exported")
sys.exit(0 if ok else 1)
