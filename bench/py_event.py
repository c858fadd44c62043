#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Python's multiprocessing.Event for the event-wake workload.

  py_event.py ROUNDS   median set-to-wake latency between two processes, us

The protocol is the C programs' (bench.h, bench_wake_run): each round the
waiter clears the event, says it is ready and blocks; the setter waits ~1 ms so
that the waiter has settled asleep, takes a CLOCK_MONOTONIC timestamp and sets
the event; the waiter takes its timestamp when it wakes. The first rounds are a
warm-up. Both processes share one CPU: $BENCH_WAKE_CPU, by default the lowest
allowed one, or "none" to leave placement to the scheduler (bench.h,
bench_pin_wake_cpu, tells why). Prints the figure as the last line of stdout.
"""
import multiprocessing as mp
import os
import statistics
import sys
import time

WARMUP = 5


def waiter(ev, ready, set_ns, latency_us, rounds):
    for i in range(rounds):
        ev.clear()
        ready.value = i + 1
        ev.wait()
        now = time.monotonic_ns()
        latency_us[i] = (now - set_ns.value) / 1e3


def pin_wake_cpu():
    env = os.environ.get("BENCH_WAKE_CPU", "")
    if env == "none":
        return
    cpu = int(env) if env else min(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cpu})


def main():
    rounds = (int(sys.argv[1]) if len(sys.argv) > 1 else 200) + WARMUP
    ctx = mp.get_context("fork")
    ev = ctx.Event()
    ready = ctx.RawValue("l", 0)
    set_ns = ctx.RawValue("q", 0)
    latency_us = ctx.RawArray("d", rounds)
    pin_wake_cpu()
    p = ctx.Process(target=waiter, args=(ev, ready, set_ns, latency_us, rounds))
    p.start()
    for i in range(rounds):
        while ready.value != i + 1:
            time.sleep(0.00002)
        time.sleep(0.001)
        set_ns.value = time.monotonic_ns()
        ev.set()
    p.join()
    if p.exitcode != 0:
        sys.exit(f"waiter failed with exit code {p.exitcode}")
    print(f"{statistics.median(latency_us[WARMUP:]):.6g}")


if __name__ == "__main__":
    main()
