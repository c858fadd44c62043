/* SPDX-License-Identifier: MIT */
/*
 * A worker rank dies (run_mpi.py --kill-worker kills it with SIGKILL when
 * the program prints `mapping`): the caller must not hang. The program
 * prints the workers' pids and `mapping`, then maps 2000 tasks of 5 ms (or,
 * with the argument `between`, frees its pool first and makes a new one a
 * second later: the death happens between two pools); the job must end,
 * non-zero, within seconds of the kill, with a message naming the dead
 * rank. Reaching the end of main() is a failure.
 */
#include <errno.h>
#include <mp-mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int pid_of(const void *item, void *result, void *ctx) {
  (void)item;
  (void)ctx;
  usleep(1000);
  *(int *)result = (int)getpid();
  return 0;
}

static int slow(const void *item, void *result, void *ctx) {
  (void)ctx;
  usleep(5000);
  *(int *)result = *(const int *)item;
  return 0;
}

int main(int argc, char **argv) {
  int between = argc > 1 && !strcmp(argv[argc - 1], "between");
  int r = mp_mpi_pool_serve();
  mp_mpi_pool *p;
  if (r == 0)
    r = mp_mpi_pool_new(2, NULL, &p);
  if (r < 0) {
    fprintf(stderr, "pool: %s\n", strerror(-r));
    return 1;
  }
  /* The workers' pids: tasks with chunk size 1 spread over both. */
  static int in[2000], out[2000];
  int a = 0, b = 0;
  for (int tries = 0; tries < 20 && !b; tries++) {
    r = mp_mpi_pool_map(p, pid_of, NULL, in, 64, sizeof(int), out, sizeof(int), 1);
    if (r < 0)
      break;
    for (int i = 0; i < 64; i++) {
      if (!a)
        a = out[i];
      else if (out[i] != a && !b)
        b = out[i];
    }
  }
  if (r < 0 || !b) {
    fprintf(stderr, "could not find two workers (%d)\n", r);
    return 1;
  }
  printf("rank0 %d\nworkers %d %d\n", (int)getpid(), a, b);
  if (between) {
    mp_mpi_pool_free(p);
    printf("mapping\n");
    fflush(stdout);
    sleep(1);
    r = mp_mpi_pool_new(2, NULL, &p);
    if (r < 0) {
      printf("mp_mpi_pool_new: %s after a worker died\n", strerror(-r));
      return 0;
    }
  } else {
    printf("mapping\n");
  }
  fflush(stdout);
  for (int i = 0; i < 2000; i++)
    in[i] = i;
  r = mp_mpi_pool_map(p, slow, NULL, in, 2000, sizeof(int), out, sizeof(int), 1);
  printf("map returned %d after a worker died\n", r);
  mp_mpi_pool_free(p);
  return 0;
}
