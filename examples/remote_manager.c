/* SPDX-License-Identifier: MIT */
/*
 * A remote manager: a standalone server on 127.0.0.1 with an authentication
 * key, and separate programs that connect to it over TCP.
 *
 * The Python original: a server program runs
 * BaseManager(address=('', 50000), authkey=b'abc').get_server().serve_forever(),
 * and a client program calls connect() with the same key and uses the shared
 * objects; a client with a wrong key gets AuthenticationError.
 *
 * The C twin is one binary in four roles, each run as its own program (exec):
 *   remote_manager server          listen on 127.0.0.1 (a port the kernel
 *                                  chooses), print the address, serve
 *   remote_manager client ADDR KEY connect with KEY and use a shared queue
 *   remote_manager stop ADDR       connect and shut the server down
 *   remote_manager                 run the others: a client with the right
 *                                  key, one with a wrong key, then stop
 * Nothing is sent before the key is checked in both directions (HMAC-SHA256
 * challenges); the key itself never travels.
 */
#include <mp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

/* Stop with a message when a libmp call fails (they return a negative errno,
 * explained by mp_strerror()). Used in the parent and in the children alike. */
#define TRY(call)                                                                                  \
  do {                                                                                             \
    int r_ = (int)(call);                                                                          \
    if (r_ < 0) {                                                                                  \
      fprintf(stderr, "%s failed: %s\n", #call, mp_strerror(r_));                                  \
      return 1;                                                                                    \
    }                                                                                              \
  } while (0)

static const char key[] = "a shared secret";

static int server(void) {
  mp_manager_options o = {.address = "127.0.0.1:0", .authkey = key, .authkey_len = strlen(key)};
  mp_manager *m;
  TRY(mp_manager_new(&o, &m));
  TRY(mp_manager_listen(m));
  char addr[128];
  TRY(mp_manager_address(m, addr, sizeof addr));
  printf("server: listening on %s\n", addr);
  fflush(stdout);
  TRY(mp_manager_serve_forever(m)); /* until a client asks it to stop */
  printf("server: shut down\n");
  TRY(mp_manager_free(m));
  return 0;
}

static int client(const char *addr, const char *k) {
  mp_manager_options o = {.address = addr, .authkey = k, .authkey_len = strlen(k)};
  mp_manager *m;
  TRY(mp_manager_new(&o, &m));
  int r = mp_manager_connect(m);
  if (r < 0) {
    printf("client with key '%s': refused: %s\n", k, mp_strerror(r));
    mp_manager_free(m);
    return r == -EACCES ? 0 : 1;
  }
  mp_proxy *q;
  TRY(mp_manager_queue(m, 0, &q));
  mp_obj *v = mp_obj_str("hello over TCP");
  TRY(v ? 0 : -ENOMEM);
  TRY(mp_queue_proxy_put(q, v, 5));
  mp_obj_free(v);
  TRY(mp_queue_proxy_get(q, 5, &v));
  char buf[64];
  TRY(mp_obj_repr(v, buf, sizeof buf));
  printf("client with key '%s': connected, queue gave %s\n", k, buf);
  mp_obj_free(v);
  mp_proxy_free(q);
  TRY(mp_manager_free(m));
  return 0;
}

static int stop(const char *addr) {
  mp_manager_options o = {.address = addr, .authkey = key, .authkey_len = strlen(key)};
  mp_manager *m;
  TRY(mp_manager_new(&o, &m));
  TRY(mp_manager_connect(m));
  TRY(mp_manager_shutdown(m));
  TRY(mp_manager_free(m));
  return 0;
}

/* Run this binary again as a separate program; wait for it. */
static int run(const char *self, const char *a1, const char *a2, const char *a3) {
  fflush(stdout);
  pid_t pid = fork();
  if (pid == 0) {
    execl(self, self, a1, a2, a3, (char *)NULL);
    _exit(127);
  }
  int st;
  if (pid < 0 || waitpid(pid, &st, 0) < 0)
    return -1;
  return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

int main(int argc, char **argv) {
  if (argc >= 2 && !strcmp(argv[1], "server"))
    return server();
  if (argc >= 4 && !strcmp(argv[1], "client"))
    return client(argv[2], argv[3]);
  if (argc >= 3 && !strcmp(argv[1], "stop"))
    return stop(argv[2]);

  char self[4096];
  ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
  if (n < 0)
    return 1;
  self[n] = 0;
  /* the server, with its output through a pipe to read its address */
  int pfd[2];
  if (pipe(pfd) < 0)
    return 1;
  fflush(stdout);
  pid_t srv = fork();
  if (srv == 0) {
    dup2(pfd[1], 1);
    close(pfd[0]);
    close(pfd[1]);
    execl(self, self, "server", (char *)NULL);
    _exit(127);
  }
  close(pfd[1]);
  FILE *out = fdopen(pfd[0], "r");
  char line[256], addr[128];
  if (!out || !fgets(line, sizeof line, out) ||
      sscanf(line, "server: listening on %127s", addr) != 1)
    return 1;
  printf("server: listening on 127.0.0.1:<port>\n");
  int bad = run(self, "client", addr, key) != 0;
  bad |= run(self, "client", addr, "a wrong guess") != 0;
  bad |= run(self, "stop", addr, NULL) != 0;
  while (fgets(line, sizeof line, out))
    fputs(line, stdout);
  int st;
  waitpid(srv, &st, 0);
  fclose(out);
  return bad || !WIFEXITED(st) || WEXITSTATUS(st) != 0;
}
