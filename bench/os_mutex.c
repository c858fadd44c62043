/* SPDX-License-Identifier: MIT */
/*
 * Raw OS baselines os:pthread-mutex and os:pthread-mutex-robust: glibc's
 * process-shared mutex, plain or robust, in shared memory.
 *
 *   os-mutex uncontended plain|robust N   acquire + release, ns per pair
 *   os-mutex contended plain|robust N     two processes, N increments each,
 *                                         total increments per second
 */
#include <pthread.h>

#include "bench.h"

static pthread_mutex_t *mutex_new(int robust) {
  pthread_mutex_t *m = bench_shared(sizeof *m);
  pthread_mutexattr_t a;
  BENCH_CHECK_ERRNO(pthread_mutexattr_init(&a));
  BENCH_CHECK_ERRNO(pthread_mutexattr_setpshared(&a, PTHREAD_PROCESS_SHARED));
  if (robust)
    BENCH_CHECK_ERRNO(pthread_mutexattr_setrobust(&a, PTHREAD_MUTEX_ROBUST));
  BENCH_CHECK_ERRNO(pthread_mutex_init(m, &a));
  pthread_mutexattr_destroy(&a);
  return m;
}

static void lock(void *m) {
  int r = pthread_mutex_lock(m);
  if (r)
    bench_die("pthread_mutex_lock: %s", strerror(r));
}

static void unlock(void *m) { pthread_mutex_unlock(m); }

static double uncontended(pthread_mutex_t *m, long n) {
  for (long i = 0; i < n / 10; i++) { /* warm-up */
    pthread_mutex_lock(m);
    pthread_mutex_unlock(m);
  }
  int64_t t0 = bench_now_ns();
  for (long i = 0; i < n; i++) {
    pthread_mutex_lock(m);
    pthread_mutex_unlock(m);
  }
  return (double)(bench_now_ns() - t0) / (double)n;
}

int main(int argc, char **argv) {
  if (argc < 3 || (strcmp(argv[2], "plain") && strcmp(argv[2], "robust")))
    bench_die("usage: os-mutex uncontended|contended plain|robust [N]");
  pthread_mutex_t *m = mutex_new(!strcmp(argv[2], "robust"));
  if (!strcmp(argv[1], "uncontended"))
    bench_result(uncontended(m, bench_count(argc, argv, 3, 5000000)));
  else if (!strcmp(argv[1], "contended"))
    bench_result(bench_contended_run((bench_lock_ops){lock, unlock, m},
                                     bench_count(argc, argv, 3, 1000000)));
  else
    bench_die("unknown mode '%s'", argv[1]);
  return 0;
}
