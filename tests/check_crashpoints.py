#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Every crash point in src/crashpoints.def marks exactly one step in src/
(MP__CRASH(ID)) and is killed at by name in at least one test under tests/;
no source or test names a point the list lacks."""
import os
import re
import sys

root = sys.argv[1]
src = os.path.join(root, "src")
tests = os.path.join(root, "tests")
points = re.findall(r'^MP__CRASH_POINT\((\w+),\s*"([^"]+)"\)', open(
    os.path.join(src, "crashpoints.def")).read(), re.M)
ids = {i for i, _ in points}
names = {n for _, n in points}


def read_all(folder, exts):
    out = {}
    for dirpath, _, files in os.walk(folder):
        for f in files:
            if f.endswith(exts):
                out[os.path.join(dirpath, f)] = open(os.path.join(dirpath, f)).read()
    return out


# crash.h defines the macro itself.
srcs = {p: t for p, t in read_all(src, (".c", ".h")).items() if not p.endswith("crash.h")}
used = {}
for path, text in srcs.items():
    for m in re.finditer(r"\bMP__CRASH\((\w+)\)", text):
        used.setdefault(m.group(1), []).append(path)
# crashutil.h only shows how to call the helpers.
test_text = "\n".join(t for p, t in read_all(tests, (".c", ".h")).items()
                      if not p.endswith("crashutil.h"))

bad = []
if len(ids) != len(points) or len(names) != len(points):
    bad.append("crashpoints.def repeats an id or a name")
for i, n in points:
    if len(used.get(i, [])) != 1:
        bad.append(f"{i} ({n}) is marked {len(used.get(i, []))} times in src/, not once")
    if f'"{n}"' not in test_text:
        bad.append(f"{n} is killed at by no test under tests/")
for i in used:
    if i not in ids:
        bad.append(f"MP__CRASH({i}) in src/ is not in crashpoints.def")
for n in set(re.findall(r'cu_fork_(?:armed|stopped_at)\(\s*"([^"]+)"', test_text)) | set(
        re.findall(r'mp__crash_arm\(\s*"([^"]+)"', test_text)):
    if n not in names:
        bad.append(f'tests name "{n}", which crashpoints.def lacks')
for b in bad:
    print("crash points:", b)
print(f"crash points: {len(points)} listed, {len(bad)} problems")
sys.exit(1 if bad else 0)
