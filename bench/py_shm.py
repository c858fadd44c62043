#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Python's multiprocessing.shared_memory for the shm-create-attach workload.

  py_shm.py N   microseconds per SharedMemory(create=True, size=4096) + write +
                SharedMemory(name) + read + close both + unlink

Prints the figure as the last line of stdout (bench/run reads it).
"""
import sys
import time
from multiprocessing import shared_memory


def one():
    a = shared_memory.SharedMemory(create=True, size=4096)
    a.buf[100] = 42
    b = shared_memory.SharedMemory(a.name)
    if b.size < 4096 or b.buf[100] != 42:
        sys.exit("the attached block does not hold what was written")
    b.close()
    a.close()
    a.unlink()


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    for _ in range(n // 10 + 1):  # warm-up
        one()
    t0 = time.perf_counter_ns()
    for _ in range(n):
        one()
    print(f"{(time.perf_counter_ns() - t0) / 1e3 / n:.6g}")


if __name__ == "__main__":
    main()
