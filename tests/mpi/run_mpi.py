#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Run one libmp-mpi test program the way its launch model needs, with the
options this machine needs, under a timeout of its own.

  run_mpi.py --mpiexec PATH --np N PROGRAM [ARGS]     mpiexec -n N PROGRAM
  run_mpi.py --mpiexec PATH --alone PROGRAM [ARGS]    PROGRAM alone (it spawns)
  run_mpi.py ... --kill-worker ...                    kill a worker rank mid-map

Open MPI: run as root only with OMPI_ALLOW_RUN_AS_ROOT(_CONFIRM); more ranks
than cores need oversubscription (also for the slots MPI_Comm_spawn takes);
both are set here through the environment, which mpiexec and singletons
read alike. MPICH's hydra needs neither.

--kill-worker: the program prints `workers PID PID` and then `mapping`
while a long map runs; this script kills the first worker with SIGKILL and
requires the whole job to end with a non-zero status within 20 s, with a
message that names the dead process, and no process of the job left.
"""
import argparse
import os
import re
import signal
import subprocess
import sys
import threading
import time



def mpi_env(mpiexec):
    env = dict(os.environ)
    # Under AddressSanitizer (MP_SANITIZE=1 scripts/test), MPI's own
    # allocations that live until exit are not libmp-mpi's leaks.
    if "ASAN_OPTIONS" in env:
        env["ASAN_OPTIONS"] += ":detect_leaks=0"
    out = subprocess.run([mpiexec, "--version"], capture_output=True, text=True).stdout
    openmpi = "Open MPI" in out or "OpenRTE" in out
    if openmpi:
        env.setdefault("OMPI_ALLOW_RUN_AS_ROOT", "1")
        env.setdefault("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        env.setdefault("OMPI_MCA_rmaps_base_oversubscribe", "1")
        # Shared memory between ranks of one job, TCP between a singleton and
        # the workers it spawns (another job); no CMA single copy, which
        # containers often forbid (ptrace restrictions).
        env.setdefault("OMPI_MCA_btl", "self,vader,tcp")
        env.setdefault("OMPI_MCA_btl_vader_single_copy_mechanism", "none")
    return env, openmpi


def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[1][0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mpiexec", required=True)
    ap.add_argument("--np", type=int)
    ap.add_argument("--alone", action="store_true")
    ap.add_argument("--kill-worker", action="store_true")
    ap.add_argument("--expect", help="a regex the whole output (lines of the program) must match")
    ap.add_argument("--status", type=int, default=0, help="the exit status the job must end with")
    ap.add_argument("--timeout", type=float, default=50,
                    help="seconds before the job counts as hung (under meson's timeout)")
    ap.add_argument("program", nargs=argparse.REMAINDER)
    a = ap.parse_args()
    env, openmpi = mpi_env(a.mpiexec)
    if a.alone:
        argv = a.program
    else:
        argv = [a.mpiexec, "-n", str(a.np)]
        if openmpi:
            argv += ["--oversubscribe"]
        argv += a.program
    print("+", " ".join(argv), flush=True)
    p = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         text=True, start_new_session=True)
    lines = []
    workers = []
    killed_at = None

    def reader():
        nonlocal killed_at
        for line in p.stdout:
            sys.stdout.write(line)
            sys.stdout.flush()
            lines.append(line)
            m = re.match(r"workers ((?:\d+ ?)+)$", line.strip())
            if m:
                workers.extend(int(x) for x in m.group(1).split())
            if a.kill_worker and line.strip() == "mapping" and workers and killed_at is None:
                time.sleep(0.3)
                print(f"run_mpi: killing worker {workers[0]} with SIGKILL", flush=True)
                os.kill(workers[0], signal.SIGKILL)
                killed_at = time.monotonic()

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    try:
        status = p.wait(timeout=a.timeout)
    except subprocess.TimeoutExpired:
        print(f"run_mpi: the job hung for {a.timeout} s; killing it", flush=True)
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
        t.join(2)
        return 1
    t.join(5)
    ended = time.monotonic()
    print(f"run_mpi: exit status {status}", flush=True)
    if not a.kill_worker:
        out = "".join(l for l in lines if not l.startswith("+ "))
        if a.expect and not re.fullmatch(a.expect, out, re.S):
            print(f"run_mpi: the output does not match {a.expect!r}")
            return 1
        return 0 if status == a.status else 1
    if killed_at is None:
        print("run_mpi: the program never reached its map (no `mapping` line)")
        return 1
    ok = True
    if status == 0:
        print("run_mpi: the job ended with status 0 after a worker died")
        ok = False
    if ended - killed_at > 20:
        print(f"run_mpi: the job took {ended - killed_at:.1f} s to end after the kill")
        ok = False
    text = "".join(lines)
    if not re.search(r"signal 9|Killed|KILLED|BAD TERMINATION|died|terminated", text):
        print("run_mpi: no message says a process died")
        ok = False
    time.sleep(0.5)
    left = [w for w in workers if alive(w)]
    if left:
        print(f"run_mpi: processes of the job left behind: {left}")
        ok = False
    print(f"run_mpi: the job ended {ended - killed_at:.1f} s after the kill" if ok else
          "run_mpi: FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
