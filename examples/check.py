#!/usr/bin/env python3
"""Run one libmp example and check its output against an expectations file.

    check.py EXAMPLE_BINARY EXPECTATIONS_FILE

The example's output is always printed, followed by one line per check, so
running the examples is also a way to see what they do. Exit status 0 when
every check passes, 1 otherwise.

Expectations file: one directive per line; blank lines and lines starting with
`#` are ignored. Every REGEX is Python `re` syntax and must match a WHOLE line
(re.fullmatch), except for `whole`, which must match the whole output.

    exit N            the example's exit status (default: exit 0)
    timeout S         kill the example after S seconds (default: 60)
    elapsed A B       wall time from start until the example and everything it
                      started have closed their output, in seconds: A <= t <= B
    line REGEX        a line matches; each `line` must match after the line the
                      previous `line` matched (the lines appear in this order)
    count N REGEX     exactly N lines match
    never REGEX       no line matches
    only REGEX        every line matches at least one of the `only` patterns
                      (so no line is broken or mixed with another)
    whole REGEX       the entire output matches (lines joined with \\n, the
                      last line ends with \\n as well)
    gone REGEX        REGEX has one group, a pid printed by the example; once
                      the example has exited, that process must be gone (or a
                      zombie) within 2 seconds
    stderr-ok         allow output on stderr (default: stderr must be empty)
"""
import os
import re
import signal
import subprocess
import sys
import time


def parse(path):
    """Return the list of (directive, args, line number) in the file."""
    items = []
    with open(path, encoding="utf-8") as f:
        for n, raw in enumerate(f, 1):
            line = raw.rstrip("\n")
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            word, _, rest = line.partition(" ")
            if word in ("exit", "timeout"):
                items.append((word, [float(rest)], n))
            elif word == "elapsed":
                lo, hi = rest.split()
                items.append((word, [float(lo), float(hi)], n))
            elif word == "count":
                num, _, rx = rest.partition(" ")
                items.append((word, [int(num), re.compile(rx)], n))
            elif word in ("line", "never", "only", "gone"):
                items.append((word, [re.compile(rest)], n))
            elif word == "whole":
                items.append((word, [re.compile(rest, re.S)], n))
            elif word == "stderr-ok":
                items.append((word, [], n))
            else:
                raise SystemExit(f"{path}:{n}: unknown directive {word!r}")
    return items


def process_running(pid, binary):
    """Whether pid is a live (not zombie) process running binary."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as f:
            stat = f.read()
    except OSError:
        return False
    # The state follows the command name, which is in parentheses.
    state = stat[stat.rindex(")") + 2:].split()[0]
    if state in ("Z", "X", "x"):
        return False
    try:
        # A recycled pid would run another program.
        return os.path.samefile(f"/proc/{pid}/exe", binary)
    except OSError:
        return True  # cannot tell: count it as running


def run(binary, timeout):
    """Run binary in a process group of its own; return (status, stdout,
    stderr, elapsed, timed_out, process group id)."""
    start = time.monotonic()
    p = subprocess.Popen([binary], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, start_new_session=True)
    timed_out = False
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        # Children may hold the output pipes open: kill the whole group.
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        out, err = p.communicate()
    elapsed = time.monotonic() - start
    return (p.returncode, out.decode(errors="replace"), err.decode(errors="replace"), elapsed,
            timed_out, p.pid)


def main():
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    binary, expect = os.path.abspath(sys.argv[1]), sys.argv[2]
    items = parse(expect)
    timeout = next((a[0] for d, a, _ in items if d == "timeout"), 60.0)
    want_exit = int(next((a[0] for d, a, _ in items if d == "exit"), 0))

    try:
        status, out, err, elapsed, timed_out, pgid = run(binary, timeout)
    except OSError as e:
        print(f"FAIL  cannot run {binary}: {e}")
        return 1
    lines = out.splitlines()

    name = os.path.basename(binary)
    print(f"==== {name}: output ====")
    sys.stdout.write(out if out.endswith("\n") or not out else out + "\n")
    if err:
        print(f"==== {name}: stderr ====")
        sys.stdout.write(err if err.endswith("\n") else err + "\n")
    print(f"==== {name}: checks ====")

    failures = 0

    def report(ok, what):
        nonlocal failures
        print(("ok    " if ok else "FAIL  ") + what)
        if not ok:
            failures += 1

    report(not timed_out, f"finished within {timeout:g} s")
    report(status == want_exit, f"exit status {status}, expected {want_exit}")
    if not any(d == "stderr-ok" for d, _, _ in items):
        report(err == "", "nothing on stderr")

    pos = 0  # where the next `line` directive starts looking
    only = [a[0] for d, a, _ in items if d == "only"]
    for d, a, n in items:
        if d == "elapsed":
            lo, hi = a
            report(lo <= elapsed <= hi, f"took {elapsed:.2f} s, expected {lo:g} to {hi:g} s")
        elif d == "line":
            rx = a[0]
            found = next((i for i in range(pos, len(lines)) if rx.fullmatch(lines[i])), None)
            if found is None:
                report(False, f"a line (after line {pos}) matches /{rx.pattern}/")
            else:
                report(True, f"line {found + 1} matches /{rx.pattern}/")
                pos = found + 1
        elif d == "count":
            want, rx = a
            got = sum(1 for ln in lines if rx.fullmatch(ln))
            report(got == want, f"{got} lines match /{rx.pattern}/, expected {want}")
        elif d == "never":
            rx = a[0]
            bad = [ln for ln in lines if rx.fullmatch(ln)]
            report(not bad, f"no line matches /{rx.pattern}/"
                   + (f" (but {bad[0]!r} does)" if bad else ""))
        elif d == "whole":
            rx = a[0]
            report(rx.fullmatch(out) is not None, f"the whole output matches /{rx.pattern}/")
        elif d == "gone":
            rx = a[0]
            pids = [int(m.group(1)) for m in map(rx.fullmatch, lines) if m]
            if not pids:
                report(False, f"a line matches /{rx.pattern}/ and gives a pid")
                continue
            for pid in pids:
                deadline = time.monotonic() + 2.0
                while process_running(pid, binary) and time.monotonic() < deadline:
                    time.sleep(0.02)
                report(not process_running(pid, binary),
                       f"process {pid} is gone after the example exited")
    if only:
        bad = [ln for ln in lines if not any(rx.fullmatch(ln) for rx in only)]
        report(not bad, "every line is one of the expected forms"
               + (f" (but {bad[0]!r} is not)" if bad else ""))

    # Leave nothing behind, whatever the example did.
    try:
        os.killpg(pgid, signal.SIGKILL)
    except OSError:
        pass
    print(f"==== {name}: {'PASSED' if not failures else f'{failures} check(s) FAILED'} ====")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
