/* SPDX-License-Identifier: MIT */
/*
 * libmp-mpi: MPI setup (the roles are described in pool_internal.h).
 *
 * Map of this file:
 *   the state      MPI as found or made, the spawned-worker cache
 *   init and exit  mp__mpi_lib_init, the finalize hook, atexit, a worker's exit
 *   launch models  mpiexec ranks serve at init; spawned workers: the
 *                  command line they get, the cache that keeps them between
 *                  pools, a freed pool's communicator
 * No crash points.
 */
#include <errno.h>
#include <mpi.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "pool_internal.h"

struct mp__mpi_global mp__mpi_g;
pthread_mutex_t mp__mpi_mu = PTHREAD_MUTEX_INITIALIZER;
struct mp__mpi_spawned mp__mpi_spawned;

static void send_exit_to_world(void) {
  if (mp__mpi_g.exit_sent || mp__mpi_g.size <= 1 || mp__mpi_g.rank != 0)
    return;
  mp__mpi_g.exit_sent = 1;
  struct ctrl c = {.op = CTRL_EXIT};
  for (int r = 1; r < mp__mpi_g.size; r++)
    MPI_Send(&c, sizeof c, MPI_BYTE, r, TAG_CTRL, mp__mpi_g.world);
}

/* Attributes of MPI_COMM_SELF are deleted first thing in MPI_Finalize, while
 * communication still works: the standard hook to release the workers. */
static int on_finalize(MPI_Comm comm, int key, void *val, void *extra) {
  (void)comm;
  (void)key;
  (void)val;
  (void)extra;
  send_exit_to_world();
  pthread_mutex_lock(&mp__mpi_mu);
  mp__mpi_spawned_release_cache();
  pthread_mutex_unlock(&mp__mpi_mu);
  return MPI_SUCCESS;
}

static void at_exit(void) {
  int fin = 0;
  MPI_Finalized(&fin);
  if (fin)
    return;
  mp__mpi_free_live_pools();
  pthread_mutex_lock(&mp__mpi_mu);
  mp__mpi_spawned_release_cache();
  pthread_mutex_unlock(&mp__mpi_mu);
  if (mp__mpi_g.we_init)
    MPI_Finalize();
}

static void worker_exit(int code) {
  int fin = 0;
  MPI_Finalized(&fin);
  if (!fin)
    MPI_Finalize();
  fflush(NULL);
  _exit(code);
}

/* Initialize MPI and libmp-mpi once. A worker rank never returns from here:
 * it serves, finalizes and exits. */
int mp__mpi_lib_init(void) {
  if (mp__mpi_g.inited)
    return 0;
  int init = 0, prov = 0;
  MPI_Initialized(&init);
  if (!init) {
    if (MPI_Init_thread(NULL, NULL, MPI_THREAD_MULTIPLE, &prov) != MPI_SUCCESS)
      return -EPROTO;
    mp__mpi_g.we_init = 1;
    atexit(at_exit);
  } else {
    MPI_Query_thread(&prov);
  }
  if (prov < MPI_THREAD_SERIALIZED)
    return -ENOTSUP;
  mp__mpi_g.prov = prov;
  MPI_Comm parent;
  MPI_Comm_get_parent(&parent);
  if (parent != MPI_COMM_NULL) { /* a spawned worker */
    MPI_Comm comm;
    if (MPI_Intercomm_merge(parent, 1, &comm) != MPI_SUCCESS) {
      fprintf(stderr, "libmp-mpi: a spawned worker could not join its pool\n");
      worker_exit(1);
    }
    int r = mp__mpi_serve(comm);
    MPI_Comm_free(&comm);
    MPI_Comm_disconnect(&parent);
    worker_exit(r < 0 ? 1 : 0);
  }
  MPI_Comm_rank(MPI_COMM_WORLD, &mp__mpi_g.rank);
  MPI_Comm_size(MPI_COMM_WORLD, &mp__mpi_g.size);
  if (MPI_Comm_dup(MPI_COMM_WORLD, &mp__mpi_g.world) != MPI_SUCCESS)
    return -EPROTO;
  mp__mpi_g.inited = 1;
  if (mp__mpi_g.rank != 0) {
    int r = mp__mpi_serve(mp__mpi_g.world);
    worker_exit(r < 0 ? 1 : 0);
  }
  int key;
  MPI_Comm_create_keyval(MPI_COMM_NULL_COPY_FN, on_finalize, &key, NULL);
  MPI_Comm_set_attr(MPI_COMM_SELF, key, NULL);
  return 0;
}

int mp_mpi_pool_serve(void) {
  pthread_mutex_lock(&mp__mpi_mu);
  int r = mp__mpi_lib_init();
  pthread_mutex_unlock(&mp__mpi_mu);
  return r;
}

/* The command line of this process, for spawned workers: argv[1..]. */
char **mp__mpi_own_args(char **storage) {
  FILE *f = fopen("/proc/self/cmdline", "re");
  if (!f)
    return NULL;
  size_t cap = 4096, n = 0;
  char *buf = malloc(cap);
  size_t k;
  while (buf && (k = fread(buf + n, 1, cap - n, f)) > 0) {
    n += k;
    if (n == cap) {
      char *nb = realloc(buf, cap *= 2);
      if (!nb) {
        free(buf);
        buf = NULL;
      }
      buf = nb;
    }
  }
  fclose(f);
  if (!buf)
    return NULL;
  size_t cnt = 0;
  for (size_t i = 0; i < n; i++)
    cnt += !buf[i];
  char **argv = calloc(cnt + 1, sizeof *argv);
  if (!argv) {
    free(buf);
    return NULL;
  }
  size_t a = 0;
  int first = 1;
  for (size_t i = 0; i < n; i += strlen(buf + i) + 1) {
    if (first) { /* skip argv[0] */
      first = 0;
      continue;
    }
    argv[a++] = buf + i;
  }
  argv[a] = NULL;
  *storage = buf;
  return argv;
}

/* Let spawned workers go: they exit, and the communicators with them. */
static void spawned_release(MPI_Comm *comm, MPI_Comm *inter, int n) {
  struct ctrl c = {.op = CTRL_EXIT};
  for (int r = 1; r <= n; r++)
    MPI_Send(&c, sizeof c, MPI_BYTE, r, TAG_CTRL, *comm);
  MPI_Comm_free(comm);
  MPI_Comm_disconnect(inter);
}

/* A freed pool's spawned workers wait in the cache for the next pool (they
 * are idle between pools, like mpiexec workers): a program that makes pool
 * after pool spawns once, and spawning, the slow and fragile part, happens
 * once per program. (mp__mpi_mu) */
void mp__mpi_spawned_release_cache(void) {
  if (mp__mpi_spawned.n && !mp__mpi_spawned.busy) {
    spawned_release(&mp__mpi_spawned.comm, &mp__mpi_spawned.inter, mp__mpi_spawned.n);
    mp__mpi_spawned.n = 0;
    free(mp__mpi_spawned.pids);
    mp__mpi_spawned.pids = NULL;
  }
}

void mp__mpi_pool_comm_free(mp_mpi_pool *p) {
  pthread_mutex_lock(&mp__mpi_mu);
  if (p->inter == MPI_COMM_NULL) {
    mp__mpi_g.world_busy = 0;
  } else if (p->cached) {
    for (int i = 0; i < p->nworkers; i++)
      mp__mpi_spawned.pids[i] = p->w[i].pid;
    mp__mpi_spawned.busy = 0;
  } else if (!mp__mpi_spawned.n &&
             (mp__mpi_spawned.pids = calloc((size_t)p->nworkers, sizeof(int)))) {
    mp__mpi_spawned.comm = p->comm;
    mp__mpi_spawned.inter = p->inter;
    mp__mpi_spawned.n = p->nworkers;
    mp__mpi_spawned.busy = 0;
    for (int i = 0; i < p->nworkers; i++)
      mp__mpi_spawned.pids[i] = p->w[i].pid;
  } else {
    spawned_release(&p->comm, &p->inter, p->nworkers);
  }
  pthread_mutex_unlock(&mp__mpi_mu);
}
