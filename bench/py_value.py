#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Python's multiprocessing.Value for the value-increment workload.

  py_value.py N   `with v.get_lock(): v.value += 1` in one process, ns per increment

Prints the figure as the last line of stdout (bench/run reads it).
"""
import multiprocessing as mp
import sys
import time


def run(v, n):
    for _ in range(n):
        with v.get_lock():
            v.value += 1


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 300000
    v = mp.get_context("fork").Value("i", 0)
    run(v, n // 10)  # warm-up
    t0 = time.perf_counter_ns()
    run(v, n)
    ns = (time.perf_counter_ns() - t0) / n
    if v.value != n + n // 10:
        sys.exit(f"value is {v.value}, expected {n + n // 10}")
    print(f"{ns:.6g}")


if __name__ == "__main__":
    main()
