#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Python's multiprocessing.Manager for the manager-dict workloads.

  py_manager.py unix N       d[k] = v then d[k], one client, round trips per second
  py_manager.py tcp N        the same through a BaseManager on 127.0.0.1 TCP
  py_manager.py 2clients N   two client processes at once, total round trips per second

Prints the figure as the last line of stdout (bench/run reads it).
"""
import multiprocessing as mp
import multiprocessing.managers as mm
import sys
import time


def run(d, n):
    for i in range(n):
        d[i % 100] = i
        if d[i % 100] != i:
            sys.exit("wrong value")


def client(m, n, go):
    d = m.dict()  # made in the child: a proxy inherited by fork is not counted
    run(d, n // 10)
    go.wait()
    run(d, n)


def main():
    mode = sys.argv[1]
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 5000
    ctx = mp.get_context("fork")
    if mode == "tcp":
        m = mm.SyncManager(address=("127.0.0.1", 0), ctx=ctx)
    else:
        m = mm.SyncManager(ctx=ctx)
    m.start()
    d = m.dict()
    run(d, n // 10)
    if mode != "2clients":
        t0 = time.perf_counter()
        run(d, n)
        ops = 2 * n / (time.perf_counter() - t0)
    else:
        go = ctx.Event()
        ps = [ctx.Process(target=client, args=(m, n, go)) for _ in range(2)]
        for p in ps:
            p.start()
        time.sleep(1.0)
        t0 = time.perf_counter()
        go.set()
        for p in ps:
            p.join()
            if p.exitcode != 0:
                sys.exit("client failed")
        ops = 4 * n / (time.perf_counter() - t0)
    m.shutdown()
    print(f"{ops:.6g}")


if __name__ == "__main__":
    main()
