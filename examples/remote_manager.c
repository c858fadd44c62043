/* SPDX-License-Identifier: MIT */
/*
 * A remote manager, as the Python tutorial shows it: a server program holds
 * one queue under the name 'get_queue'; one program connects and puts
 * 'hello' into it; a separate program connects and gets it. All three are
 * separate programs (remote_manager_server, remote_manager_put,
 * remote_manager_get, beside this one) on 127.0.0.1 with the key
 * 'abracadabra'; this program runs them in turn, then a client with a wrong
 * key (refused: Python's AuthenticationError), then stops the server.
 *
 * Nothing is sent before the key is checked in both directions (HMAC-SHA256
 * challenges); the key itself never travels. The key proves identity, it
 * does not encrypt: use TCP only on networks you trust.
 */
#include <mp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#define TRY(call)                                                                                  \
  do {                                                                                             \
    int r_ = (int)(call);                                                                          \
    if (r_ < 0) {                                                                                  \
      fprintf(stderr, "%s failed: %s\n", #call, mp_strerror(r_));                                  \
      return 1;                                                                                    \
    }                                                                                              \
  } while (0)

static const char key[] = "abracadabra";
static char dir[4096];

/* Run the program NAME beside this one with two arguments; wait for it and
 * return its exit status (-1 when it did not exit). */
static int run(const char *name, const char *a1, const char *a2) {
  char path[4200];
  snprintf(path, sizeof path, "%s/%s", dir, name);
  fflush(stdout);
  pid_t pid = fork();
  if (pid == 0) {
    execl(path, path, a1, a2, (char *)NULL);
    _exit(127);
  }
  int st;
  if (pid < 0 || waitpid(pid, &st, 0) < 0)
    return -1;
  return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/* Connect with the key and ask the server to shut down. */
static int stop(const char *addr) {
  mp_manager_options o = {.address = addr, .authkey = key, .authkey_len = strlen(key)};
  mp_manager *m;
  TRY(mp_manager_new(&o, &m));
  TRY(mp_manager_connect(m));
  TRY(mp_manager_shutdown(m));
  TRY(mp_manager_free(m));
  return 0;
}

int main(void) {
  ssize_t n = readlink("/proc/self/exe", dir, sizeof dir - 1);
  if (n < 0)
    return 1;
  dir[n] = 0;
  char *slash = strrchr(dir, '/'); /* the directory this program is in */
  if (!slash)
    return 1;
  *slash = 0;

  /* the server, its output through a pipe to read its address */
  int pfd[2];
  if (pipe(pfd) < 0)
    return 1;
  fflush(stdout);
  pid_t srv = fork();
  if (srv == 0) {
    char path[4200];
    snprintf(path, sizeof path, "%s/remote_manager_server", dir);
    dup2(pfd[1], 1);
    close(pfd[0]);
    close(pfd[1]);
    execl(path, path, "127.0.0.1:0", key, (char *)NULL);
    _exit(127);
  }
  close(pfd[1]);
  FILE *out = fdopen(pfd[0], "r");
  char line[256], addr[128];
  if (!out || !fgets(line, sizeof line, out) ||
      sscanf(line, "server: serving a queue as 'get_queue' on %127s", addr) != 1)
    return 1;
  printf("server: serving a queue as 'get_queue' on 127.0.0.1:<port>\n");
  int bad = run("remote_manager_put", addr, key) != 0;
  bad |= run("remote_manager_get", addr, key) != 0;
  bad |= run("remote_manager_put", addr, "a wrong guess") != 3; /* refused */
  bad |= stop(addr) != 0;
  while (fgets(line, sizeof line, out))
    fputs(line, stdout);
  int st;
  waitpid(srv, &st, 0);
  fclose(out);
  return bad || !WIFEXITED(st) || WEXITSTATUS(st) != 0;
}
