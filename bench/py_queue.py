#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Python's multiprocessing.Queue, SimpleQueue and Pipe for the queue and pipe
workloads.

  py_queue.py stream queue|simple LEN N       one producer process to one
                                              consumer process, messages per second
  py_queue.py mpmc queue|simple LEN N         two producers, two consumers, N
                                              messages in all, messages per second
  py_queue.py pingpong queue|simple|pipe LEN N
                                              round trip, us: through a pair of
                                              queues, or a duplex Pipe

`queue` is multiprocessing.Queue() (unbounded, with its feeder thread),
`simple` is SimpleQueue(), `pipe` is Pipe() with send_bytes / recv_bytes.
Messages are bytes objects, made and checked as the C programs do (bench.h,
"messages"): an 8-byte stamp (producer << 56 | sequence number) at the start,
its complement at the end, a pseudo-random middle of one of four patterns,
compared whole for messages up to 64 bytes and for every 32nd message above.
The protocols, warm-ups and pinning are the C programs' (bench_stream_run,
bench_mpmc_run, bench_pingpong_run). Uses the 'fork' start method, as libmp
does. Prints the figure as the last line of stdout.
"""
import ctypes
import multiprocessing as mp
import os
import random
import signal
import sys
import time

VARIANTS = 4
FULL_CHECK = 32
SEQ_MASK = (1 << 56) - 1
MASK64 = (1 << 64) - 1
END_MARK = 0xFF
SIDES = 2
PR_SET_PDEATHSIG = 1


def die_with_parent():
    """In a child: be killed when the parent dies, as bench.h's bench_fork
    does, so a run the harness kills leaves no child blocked forever."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (AttributeError, OSError):
        pass


def pin_nth_cpu(index):
    """As bench.h's bench_pin_nth_cpu: the index-th allowed CPU (modulo)."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) >= 2:
        os.sched_setaffinity(0, {cpus[index % len(cpus)]})


def warmup(n):
    return max(n // 10, 10)


def stamp_of(producer, seq):
    return producer << 56 | (seq & SEQ_MASK)


class Msgs:
    def __init__(self, length):
        if length < 8:
            sys.exit("messages must have at least 8 bytes")
        self.len = length
        mid = max(length - 16, 0) if length >= 16 else length - 8
        self.mid = [random.Random(v).randbytes(mid) for v in range(VARIANTS)]
        self.received = 0

    def make(self, stamp):
        head = stamp.to_bytes(8, "little")
        if self.len < 16:
            return head + self.mid[stamp % VARIANTS]
        return head + self.mid[stamp % VARIANTS] + (stamp ^ MASK64).to_bytes(8, "little")

    def check(self, msg):
        """Check one received message; return its stamp."""
        n = self.len
        full = n <= 64 or self.received % FULL_CHECK == 0
        self.received += 1
        if len(msg) != n:
            sys.exit(f"message {self.received}: {len(msg)} bytes, expected {n}")
        stamp = int.from_bytes(msg[:8], "little")
        if n >= 16:
            if int.from_bytes(msg[-8:], "little") != stamp ^ MASK64:
                sys.exit(f"message {self.received}: torn")
            if full and msg[8:-8] != self.mid[stamp % VARIANTS]:
                sys.exit(f"message {self.received}: corrupt contents")
        elif full and msg[8:] != self.mid[stamp % VARIANTS]:
            sys.exit(f"message {self.received}: corrupt contents")
        return stamp


def expect(got, want, what):
    if got != want:
        sys.exit(f"{what}: got stamp {got:#x}, expected {want:#x}")


# ------------------------------------------------------------ one to one

def stream_producer(q, m, total):
    die_with_parent()
    pin_nth_cpu(0)
    for i in range(total):
        q.put(m.make(stamp_of(0, i)))


def stream(ctx, kind, m, n):
    q = ctx.Queue() if kind == "queue" else ctx.SimpleQueue()
    warm = warmup(n)
    p = ctx.Process(target=stream_producer, args=(q, m, warm + n))
    p.start()
    pin_nth_cpu(1)
    t0 = 0
    for i in range(warm + n):
        if i == warm:
            t0 = time.perf_counter_ns()
        expect(m.check(q.get()), stamp_of(0, i), "out of order")
    t1 = time.perf_counter_ns()
    p.join()
    if p.exitcode != 0:
        sys.exit(f"producer failed with exit code {p.exitcode}")
    return n / ((t1 - t0) / 1e9)


# ------------------------------------------------------------ many to many

def mpmc_producer(q, m, index, per, ready, go):
    die_with_parent()
    pin_nth_cpu(index)
    ready.release()
    go.wait()
    for i in range(per):
        q.put(m.make(stamp_of(index, i)))


def mpmc_consumer(q, m, index, per, ready, go, tally):
    # tally: per consumer, per producer: count, sum, sum of squares; then end time
    die_with_parent()
    pin_nth_cpu(index)
    nxt = [0] * SIDES
    count = [0] * SIDES
    total = [0] * SIDES
    squares = [0] * SIDES
    end = 0
    ready.release()
    go.wait()
    while True:
        stamp = m.check(q.get())
        p, seq = stamp >> 56, stamp & SEQ_MASK
        if p == END_MARK:
            break
        if p >= SIDES or seq < nxt[p] or seq >= per:
            sys.exit(f"consumer {index}: stamp {stamp:#x} out of order or unknown")
        nxt[p] = seq + 1
        count[p] += 1
        total[p] += seq
        squares[p] += seq * seq
        end = time.monotonic_ns()
    base = index * (3 * SIDES + 1)
    for p in range(SIDES):
        tally[base + 3 * p:base + 3 * p + 3] = [count[p], total[p], squares[p]]
    tally[base + 3 * SIDES] = end


def mpmc(ctx, kind, m, n):
    q = ctx.Queue() if kind == "queue" else ctx.SimpleQueue()
    per = n // SIDES
    ready = ctx.Semaphore(0)
    go = ctx.Event()
    tally = ctx.RawArray("q", SIDES * (3 * SIDES + 1))
    cons = [ctx.Process(target=mpmc_consumer, args=(q, m, k, per, ready, go, tally))
            for k in range(SIDES)]
    prod = [ctx.Process(target=mpmc_producer, args=(q, m, k, per, ready, go))
            for k in range(SIDES)]
    for p in cons + prod:
        p.start()
    for _ in cons + prod:
        ready.acquire()
    t0 = time.monotonic_ns()
    go.set()
    for p in prod:
        p.join()
    for _ in cons:
        q.put(m.make(stamp_of(END_MARK, 0)))
    for p in cons:
        p.join()
    for p in cons + prod:
        if p.exitcode != 0:
            sys.exit(f"a producer or consumer failed with exit code {p.exitcode}")
    want = [per, per * (per - 1) // 2, sum(i * i for i in range(per))]
    for p in range(SIDES):
        got = [sum(tally[k * (3 * SIDES + 1) + 3 * p + j] for k in range(SIDES)) for j in range(3)]
        if got != want:
            sys.exit(f"producer {p}: {got[0]} messages arrived (expected {per}) or some twice")
    end = max(tally[k * (3 * SIDES + 1) + 3 * SIDES] for k in range(SIDES))
    return SIDES * per / ((end - t0) / 1e9)


# ------------------------------------------------------------ ping-pong

def ends(ctx, kind):
    """(send, recv) for the pinger and for the ponger."""
    if kind == "pipe":
        a, b = ctx.Pipe(duplex=True)
        return (a.send_bytes, a.recv_bytes), (b.send_bytes, b.recv_bytes)
    make = ctx.Queue if kind == "queue" else ctx.SimpleQueue
    there, back = make(), make()
    return (there.put, back.get), (back.put, there.get)


def ponger(end, m, total):
    die_with_parent()
    pin_nth_cpu(1)
    send, recv = end
    for i in range(total):
        expect(m.check(recv()), stamp_of(0, i), "ping")
        send(m.make(stamp_of(1, i)))


def pingpong(ctx, kind, m, n):
    mine, theirs = ends(ctx, kind)
    warm = warmup(n)
    p = ctx.Process(target=ponger, args=(theirs, m, warm + n))
    p.start()
    pin_nth_cpu(0)
    send, recv = mine
    t0 = 0
    for i in range(warm + n):
        if i == warm:
            t0 = time.perf_counter_ns()
        send(m.make(stamp_of(0, i)))
        expect(m.check(recv()), stamp_of(1, i), "pong")
    t1 = time.perf_counter_ns()
    p.join()
    if p.exitcode != 0:
        sys.exit(f"ponger failed with exit code {p.exitcode}")
    return (t1 - t0) / 1e3 / n


def main():
    modes = {"stream": (stream, ("queue", "simple")), "mpmc": (mpmc, ("queue", "simple")),
             "pingpong": (pingpong, ("queue", "simple", "pipe"))}
    if len(sys.argv) != 5 or sys.argv[1] not in modes or sys.argv[2] not in modes[sys.argv[1]][1]:
        sys.exit(__doc__)
    fn = modes[sys.argv[1]][0]
    length, n = int(sys.argv[3]), int(sys.argv[4])
    ctx = mp.get_context("fork")
    print(f"{fn(ctx, sys.argv[2], Msgs(length), n):.6g}")


if __name__ == "__main__":
    main()
