/* SPDX-License-Identifier: MIT */
/*
 * An echo server that starts a process per client.
 *
 * The Python original accepts TCP connections in a loop and hands each to a
 * new Process that echoes the client's lines until the client sends "over".
 * The C twin listens on 127.0.0.1 (a port the kernel picks) and drives its own
 * clients: two client processes connect, send a few lines and "over", and
 * print what comes back. The server accepts two connections and starts an
 * mp_process for each; the accepted socket is inherited by the fork.
 */
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

enum { CLIENTS = 2 };
static int port;

/* The server's process for one connection: echo until "over". */
static int serve(void *arg) {
  int fd = (int)(long)arg;
  char line[256], reply[300];
  while (echo_read_line(fd, line, sizeof line) >= 0) {
    snprintf(reply, sizeof reply, "echo from %d: %s", (int)getpid(), line);
    echo_write_line(fd, reply);
    if (!strcmp(line, "over"))
      break;
  }
  close(fd);
  return 0;
}

/* A client: send three lines and "over", print the answers. */
static int client(void *arg) {
  int id = (int)(long)arg;
  int fd = echo_connect(port);
  if (fd < 0)
    return 1;
  char line[256], reply[300];
  for (int i = 0; i <= 3; i++) {
    if (i < 3)
      snprintf(line, sizeof line, "client %d line %d", id, i);
    else
      snprintf(line, sizeof line, "over");
    echo_write_line(fd, line);
    if (echo_read_line(fd, reply, sizeof reply) < 0)
      return 2;
    printf("client %d got: %s\n", id, reply);
  }
  close(fd);
  return 0;
}

int main(void) {
  int ls = echo_listen(&port);
  if (ls < 0)
    return 1;
  mp_process *clients[CLIENTS], *servers[CLIENTS];
  for (int i = 0; i < CLIENTS; i++) {
    TRY(mp_process_new(client, (void *)(long)i, NULL, &clients[i]));
    TRY(mp_process_start(clients[i]));
  }
  for (int i = 0; i < CLIENTS; i++) {
    int fd = accept4(ls, NULL, NULL, SOCK_CLOEXEC);
    if (fd < 0)
      return 1;
    TRY(mp_process_new(serve, (void *)(long)fd, NULL, &servers[i]));
    TRY(mp_process_start(servers[i]));
    close(fd); /* the child has its own copy */
  }
  int failed = 0;
  for (int i = 0; i < CLIENTS; i++) {
    int code = 1;
    TRY(mp_process_join(clients[i], MP_FOREVER));
    TRY(mp_process_exitcode(clients[i], &code));
    failed |= code;
    TRY(mp_process_join(servers[i], MP_FOREVER));
    TRY(mp_process_free(clients[i]));
    TRY(mp_process_free(servers[i]));
  }
  close(ls);
  printf("served %d clients, one process each\n", CLIENTS);
  return failed;
}
