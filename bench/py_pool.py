# SPDX-License-Identifier: MIT
"""Python's Pool rows (start method fork, one worker per CPU, made before the
clock starts):

  py_pool.py map N         items/s: Pool.map of a trivial function over N ints
                           (the second of two maps of the same size is timed)
  py_pool.py chunk1 N      items/s: the same with chunksize=1
  py_pool.py async N       tasks/s: N apply_async submitted together, then get()
  py_pool.py roundtrip N   round trips/s: N apply one after another
  py_pool.py cpu N ITERS   speed-up (x) of N CPU-bound tasks over serial
"""
import multiprocessing as mp
import sys
import time


def add_one(x):
    return x + 1


def cpu(seed, iters):
    a, b = float(seed), 1.0000001
    for _ in range(iters):
        a = a * b + 1e-9
    return a


def main():
    mode, n = sys.argv[1], int(sys.argv[2])
    ctx = mp.get_context("fork")
    with ctx.Pool() as p:
        p.map(add_one, range(100))  # warm-up
        if mode in ("map", "chunk1"):
            chunksize = 1 if mode == "chunk1" else None
            p.map(add_one, range(n), chunksize=chunksize)  # the same map once, as libmp's row
            t0 = time.perf_counter_ns()
            out = p.map(add_one, range(n), chunksize=chunksize)
            s = (time.perf_counter_ns() - t0) / 1e9
            assert out[-1] == n
            fig = n / s
        elif mode == "async":
            t0 = time.perf_counter_ns()
            rs = [p.apply_async(add_one, (i,)) for i in range(n)]
            assert [r.get() for r in rs][-1] == n
            fig = n / ((time.perf_counter_ns() - t0) / 1e9)
        elif mode == "roundtrip":
            t0 = time.perf_counter_ns()
            for i in range(n):
                assert p.apply(add_one, (i,)) == i + 1
            fig = n / ((time.perf_counter_ns() - t0) / 1e9)
        elif mode == "cpu":
            iters = int(sys.argv[3])
            t0 = time.perf_counter_ns()
            a = [cpu(i, iters) for i in range(n)]
            serial = time.perf_counter_ns() - t0
            t0 = time.perf_counter_ns()
            b = p.starmap(cpu, [(i, iters) for i in range(n)], chunksize=1)
            pooled = time.perf_counter_ns() - t0
            assert a == b
            fig = serial / pooled
        else:
            sys.exit(f"unknown mode {mode}")
    print(f"{fig:.6g}")


if __name__ == "__main__":
    main()
