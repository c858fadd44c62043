#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Python's multiprocessing.Lock for the lock workloads.

  py_lock.py uncontended N   lock.acquire(); lock.release() in a loop, ns per pair
  py_lock.py contended N     two processes, each on its own CPU, N
                             `with lock: v.value += 1` each on a RawValue,
                             total increments per second

Prints the figure as the last line of stdout (bench/run reads it). Uses the
'fork' start method, as libmp does.
"""
import multiprocessing as mp
import os
import sys
import time

CONTENDERS = 2


def uncontended(ctx, n):
    lock = ctx.Lock()
    for _ in range(n // 10):  # warm-up
        lock.acquire()
        lock.release()
    t0 = time.perf_counter_ns()
    for _ in range(n):
        lock.acquire()
        lock.release()
    return (time.perf_counter_ns() - t0) / n


def pin_nth_cpu(index):
    """Each contender on its own CPU, as in bench.h (bench_pin_nth_cpu)."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) >= 2:
        os.sched_setaffinity(0, {cpus[index % len(cpus)]})


def contender(lock, counter, ready, go, end_ns, index, n):
    pin_nth_cpu(index)
    ready.release()
    go.wait()
    for _ in range(n):
        with lock:
            counter.value += 1
    end_ns[index] = time.monotonic_ns()


def contended(ctx, n):
    lock = ctx.Lock()
    counter = ctx.RawValue("l", 0)
    ready = ctx.Semaphore(0)
    go = ctx.Event()
    end_ns = ctx.RawArray("q", CONTENDERS)
    procs = [ctx.Process(target=contender, args=(lock, counter, ready, go, end_ns, k, n))
             for k in range(CONTENDERS)]
    for p in procs:
        p.start()
    for _ in procs:
        ready.acquire()
    t0 = time.monotonic_ns()
    go.set()
    for p in procs:
        p.join()
        if p.exitcode != 0:
            sys.exit(f"contender failed with exit code {p.exitcode}")
    if counter.value != CONTENDERS * n:
        sys.exit(f"lost increments: {counter.value}, expected {CONTENDERS * n}")
    return CONTENDERS * n / ((max(end_ns) - t0) / 1e9)


def main():
    if len(sys.argv) < 2 or sys.argv[1] not in ("uncontended", "contended"):
        sys.exit("usage: py_lock.py uncontended|contended [N]")
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 1000000
    ctx = mp.get_context("fork")
    fn = uncontended if sys.argv[1] == "uncontended" else contended
    print(f"{fn(ctx, n):.6g}")


if __name__ == "__main__":
    main()
