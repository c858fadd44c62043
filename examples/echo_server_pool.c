/* SPDX-License-Identifier: MIT */
/*
 * An echo server on a Pool of 4: six clients, four served at a time.
 *
 * The Python original hands each accepted connection to a Pool(4); each
 * worker upper-cases the client's lines until "over". With six clients, two
 * wait until a worker is free, and only four distinct worker pids ever answer.
 * The C twin passes the accepted socket to a worker with
 * mp_pool_apply_async_fd() (the descriptor crosses by SCM_RIGHTS); the task's
 * result is the pid of the worker that served it.
 */
#include <ctype.h>
#include <mp.h>
#include <stdio.h>
#include <unistd.h>

#include "echo_common.h"

#define TRY(call)                                                                                  \
  do {                                                                                             \
    int r_ = (call);                                                                               \
    if (r_ < 0) {                                                                                  \
      fprintf(stderr, "%s failed: %s\n", #call, mp_strerror(r_));                                  \
      return 1;                                                                                    \
    }                                                                                              \
  } while (0)

enum { CLIENTS = 6, WORKERS = 4 };
static int port;

/* A worker serves one connection: upper-case each line until "over". */
static int serve(int fd, const void *arg, size_t len, mp_pool_out *out, void *ctx) {
  (void)arg;
  (void)len;
  (void)ctx;
  char line[256];
  while (echo_read_line(fd, line, sizeof line) >= 0) {
    for (char *c = line; *c; c++)
      *c = (char)toupper((unsigned char)*c);
    echo_write_line(fd, line);
    if (!strcmp(line, "OVER"))
      break;
    usleep(100 * 1000); /* slow enough that clients 5 and 6 must wait */
  }
  int pid = (int)getpid();
  return mp_pool_out_set(out, &pid, sizeof pid);
}

static int client(void *arg) {
  int id = (int)(long)arg;
  int fd = echo_connect(port);
  if (fd < 0)
    return 1;
  char line[64], reply[64];
  snprintf(line, sizeof line, "hello from client %d", id);
  echo_write_line(fd, line);
  if (echo_read_line(fd, reply, sizeof reply) < 0)
    return 2;
  printf("client %d got: %s\n", id, reply);
  echo_write_line(fd, "over");
  echo_read_line(fd, reply, sizeof reply);
  close(fd);
  return 0;
}

int main(void) {
  int ls = echo_listen(&port);
  if (ls < 0)
    return 1;
  mp_pool *pool;
  TRY(mp_pool_new(WORKERS, NULL, &pool)); /* forked before any connection exists */
  mp_process *clients[CLIENTS];
  for (int i = 0; i < CLIENTS; i++) {
    TRY(mp_process_new(client, (void *)(long)(i + 1), NULL, &clients[i]));
    TRY(mp_process_start(clients[i]));
  }
  mp_async_result *served[CLIENTS];
  for (int i = 0; i < CLIENTS; i++) {
    int fd = accept4(ls, NULL, NULL, SOCK_CLOEXEC);
    if (fd < 0)
      return 1;
    TRY(mp_pool_apply_async_fd(pool, serve, fd, NULL, 0, NULL, NULL, &served[i]));
    close(fd); /* the pool holds its own copy until the worker has it */
  }
  int pids[CLIENTS], distinct = 0;
  for (int i = 0; i < CLIENTS; i++) {
    TRY(mp_async_result_get(served[i], MP_FOREVER));
    const void *d;
    TRY(mp_async_result_data(served[i], &d, NULL));
    int pid = *(const int *)d, seen = 0;
    for (int k = 0; k < distinct; k++)
      seen |= pids[k] == pid;
    if (!seen)
      pids[distinct++] = pid;
    TRY(mp_async_result_free(served[i]));
  }
  int failed = 0;
  for (int i = 0; i < CLIENTS; i++) {
    int code = 1;
    TRY(mp_process_join(clients[i], MP_FOREVER));
    TRY(mp_process_exitcode(clients[i], &code));
    failed |= code;
    TRY(mp_process_free(clients[i]));
  }
  TRY(mp_pool_close(pool));
  TRY(mp_pool_join(pool, MP_FOREVER));
  TRY(mp_pool_free(pool));
  close(ls);
  printf("%d clients served by %d distinct workers\n", CLIENTS, distinct);
  return failed;
}
