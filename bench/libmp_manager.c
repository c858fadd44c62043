/* SPDX-License-Identifier: MIT */
/*
 * libmp's Manager for the manager-dict workloads: d[k] = v then d[k] round
 * trips to a manager's server, round trips per second.
 *
 *   libmp-manager unix N         one client, the default Unix socket (its
 *                                shared channel in the family heap)
 *   libmp-manager unix-socket N  the same with no_shared_channel: every
 *                                request through the socket
 *   libmp-manager tcp N          one client, TCP on 127.0.0.1
 *   libmp-manager clients N K    K client processes at once (Unix, 1 to
 *                                64), total round trips per second
 *                                (bench/scaling)
 *   libmp-manager 2clients N     two client processes at once (Unix), total
 */
#include <mp.h>
#include <sys/wait.h>

#include "bench.h"

/* n set+get pairs on keys 0..99: 2n round trips. */
static void run(mp_proxy *d, long n) {
  for (long i = 0; i < n; i++) {
    mp_obj *k = mp_obj_int(i % 100), *v = mp_obj_int(i), *got;
    BENCH_CHECK_MP(mp_dict_proxy_set(d, k, v));
    BENCH_CHECK_MP(mp_dict_proxy_get(d, k, &got));
    int64_t x;
    BENCH_CHECK_MP(mp_obj_get_int(got, &x));
    if (x != i)
      bench_die("got %lld, expected %ld", (long long)x, i);
    mp_obj_free(k);
    mp_obj_free(v);
    mp_obj_free(got);
  }
}

int main(int argc, char **argv) {
  if (argc < 2 || (strcmp(argv[1], "unix") && strcmp(argv[1], "unix-socket") &&
                   strcmp(argv[1], "tcp") && strcmp(argv[1], "2clients") &&
                   strcmp(argv[1], "clients")))
    bench_die("usage: libmp-manager unix|unix-socket|tcp|2clients [N] | clients N K");
  long n = bench_count(argc, argv, 2, 20000);
  int nclients = !strcmp(argv[1], "clients") ? (int)bench_count(argc, argv, 3, 2) : 2;
  if (nclients > 64)
    bench_die("at most 64 clients");
  mp_manager_options o = {.address = !strcmp(argv[1], "tcp") ? "127.0.0.1:0" : NULL,
                          .no_shared_channel = !strcmp(argv[1], "unix-socket")};
  mp_manager *m;
  BENCH_CHECK_MP(mp_manager_new(&o, &m));
  BENCH_CHECK_MP(mp_manager_start(m));
  mp_proxy *d;
  BENCH_CHECK_MP(mp_manager_dict(m, NULL, &d));
  run(d, n / 10); /* warm-up, and the connection of this process */
  double ops;
  if (strcmp(argv[1], "2clients") && strcmp(argv[1], "clients")) {
    int64_t t0 = bench_now_ns();
    run(d, n);
    ops = 2.0 * (double)n / ((double)(bench_now_ns() - t0) / 1e9);
  } else {
    /* each child connects, then waits for the start signal */
    int go[2];
    if (pipe(go) < 0)
      bench_die("pipe");
    pid_t pids[64];
    for (int c = 0; c < nclients; c++) {
      pids[c] = fork();
      if (pids[c] == 0) {
        mp_proxy *dd;
        BENCH_CHECK_MP(mp_manager_dict(m, NULL, &dd));
        run(dd, n / 10);
        char b;
        close(go[1]);
        if (read(go[0], &b, 1) < 0)
          _exit(1);
        run(dd, n);
        _exit(0);
      }
    }
    close(go[0]);
    usleep(300000 + 20000 * (useconds_t)nclients); /* all connected and warm */
    int64_t t0 = bench_now_ns();
    close(go[1]);
    for (int c = 0; c < nclients; c++) {
      int st;
      if (waitpid(pids[c], &st, 0) < 0 || !WIFEXITED(st) || WEXITSTATUS(st))
        bench_die("client %d failed", c);
    }
    ops = 2.0 * nclients * (double)n / ((double)(bench_now_ns() - t0) / 1e9);
  }
  bench_result(ops);
  mp_proxy_free(d);
  BENCH_CHECK_MP(mp_manager_free(m));
  return 0;
}
