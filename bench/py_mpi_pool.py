# SPDX-License-Identifier: MIT
"""The MPI Pool rows: launcher for libmp-mpi's program, and mpi4py's side.

  py_mpi_pool.py run PROGRAM ARGS...   mpiexec -n 3 PROGRAM ARGS (1 master, 2
                                       workers) with this machine's MPI
                                       options; prints the program's figure
  py_mpi_pool.py mpi4py MODE N         mpi4py's MPIPoolExecutor under the same
                                       mpiexec and ranks (python3 -m
                                       mpi4py.futures: rank 0 runs this
                                       script, ranks 1-2 serve)

MODE (mpi4py), figures as libmp-mpi-pool's:
  map N       items/s: executor.map(add_one, range(N), chunksize=1000) (the
              chunk size of the issue's reference figure), second of two maps
  chunk1 N    items/s: the same with chunksize=1
  async N     tasks/s: N executor.submit(add_one, i), then every result()

Open MPI as root needs OMPI_ALLOW_RUN_AS_ROOT(_CONFIRM); three ranks on two
cores need --oversubscribe; no CMA single copy in a container
(btl_vader_single_copy_mechanism=none). Standard library plus mpi4py
(Debian: python3-mpi4py).
"""
import os
import subprocess
import sys
import time

RANKS = 3


def mpi_cmd(argv):
    env = dict(os.environ)
    out = subprocess.run(["mpiexec", "--version"], capture_output=True, text=True).stdout
    cmd = ["mpiexec", "-n", str(RANKS)]
    if "Open MPI" in out or "OpenRTE" in out:
        env.setdefault("OMPI_ALLOW_RUN_AS_ROOT", "1")
        env.setdefault("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        env.setdefault("OMPI_MCA_btl_vader_single_copy_mechanism", "none")
        cmd.append("--oversubscribe")
    return cmd + argv, env


def launch(argv):
    cmd, env = mpi_cmd(argv)
    r = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, text=True, timeout=300)
    lines = r.stdout.strip().splitlines()
    if r.returncode or not lines:
        sys.exit(f"{' '.join(cmd)}: exit status {r.returncode}")
    print(lines[-1])


def mpi4py_python():
    """This interpreter if it has mpi4py, else the system's (Debian's
    python3-mpi4py is installed for /usr/bin/python3)."""
    for exe in (sys.executable, "/usr/bin/python3"):
        if subprocess.run([exe, "-c", "import mpi4py.futures"],
                          capture_output=True).returncode == 0:
            return exe
    sys.exit("mpi4py is not installed (Debian: python3-mpi4py)")


def add_one(x):
    return x + 1


def bench(mode, n):
    from mpi4py.futures import MPIPoolExecutor
    with MPIPoolExecutor() as ex:
        list(ex.map(add_one, range(100)))  # warm-up: workers connected
        if mode in ("map", "chunk1"):
            chunksize = 1 if mode == "chunk1" else 1000
            list(ex.map(add_one, range(n), chunksize=chunksize))
            t0 = time.perf_counter_ns()
            out = list(ex.map(add_one, range(n), chunksize=chunksize))
            s = (time.perf_counter_ns() - t0) / 1e9
            assert out[-1] == n and len(out) == n
        elif mode == "async":
            t0 = time.perf_counter_ns()
            fs = [ex.submit(add_one, i) for i in range(n)]
            out = [f.result() for f in fs]
            s = (time.perf_counter_ns() - t0) / 1e9
            assert out[-1] == n
        else:
            sys.exit(f"unknown mode {mode}")
    print(f"{n / s:.6g}", flush=True)


def main():
    what = sys.argv[1]
    if what == "run":
        launch(sys.argv[2:])
    elif what == "mpi4py":
        launch([mpi4py_python(), "-m", "mpi4py.futures", os.path.abspath(__file__), "bench",
                *sys.argv[2:]])
    elif what == "bench":
        bench(sys.argv[2], int(sys.argv[3]))
    else:
        sys.exit(f"unknown command {what}")


if __name__ == "__main__":
    main()
