#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Python's multiprocessing.Process for the process-start-join workload.

  py_process.py N   microseconds per Process(target=f).start() + join()
                    of a process whose target returns at once ('fork' method)

Prints the figure as the last line of stdout (bench/run reads it).
"""
import multiprocessing as mp
import sys
import time


def target():
    pass


def one(ctx):
    p = ctx.Process(target=target)
    p.start()
    p.join()
    if p.exitcode != 0:
        sys.exit(f"child failed with exit code {p.exitcode}")


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 100
    ctx = mp.get_context("fork")
    for _ in range(n // 10 + 1):  # warm-up
        one(ctx)
    t0 = time.perf_counter_ns()
    for _ in range(n):
        one(ctx)
    print(f"{(time.perf_counter_ns() - t0) / 1e3 / n:.6g}")


if __name__ == "__main__":
    main()
