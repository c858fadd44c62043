/* SPDX-License-Identifier: MIT */
/*
 * Ten children send through one end of a Pipe; the parent receives ten.
 *
 * The Python original makes parent_conn, child_conn = Pipe() and starts ten
 * processes, each given child_conn and its number; each sleeps 1 s, sends a
 * greeting with child_conn.send(['hello' + str(name)]) and prints its parent's
 * pid and its own. The parent joins the ten, then prints parent_conn.recv()
 * ten times.
 *
 * The C twin: every child inherits child_conn and sends through its own copy.
 * Several processes may send through copies of one end at once: a message of
 * at most MP_CONNECTION_ATOMIC_MAX bytes always arrives whole, never mixed
 * with another. The 1 s sleep is left out: it only makes the program slower.
 * The parent checks that each greeting came exactly once, and that nothing
 * else is waiting (mp_connection_poll() with timeout 0 is Python's poll()).
 */
#include <mp.h>
#include <stdio.h>
#include <unistd.h>

/* Stop with a message when a libmp call fails (they return a negative errno,
 * explained by mp_strerror()). Used in the parent and in children alike: both
 * return an exit status. On such an error the program ends and the system
 * reclaims what was left. */
#define TRY(call)                                                                                  \
  do {                                                                                             \
    int r_ = (int)(call);                                                                          \
    if (r_ < 0) {                                                                                  \
      fprintf(stderr, "%s failed: %s\n", #call, mp_strerror(r_));                                  \
      return 1;                                                                                    \
    }                                                                                              \
  } while (0)

enum { N = 10 };

/* Made before the children start, so they all have them. */
static mp_connection *parent_conn, *child_conn;

/* Python: def f(conn, name) */
static int f(void *arg) {
  int name = (int)(long)arg; /* the number travels in the pointer argument */
  char greeting[16];
  int len = snprintf(greeting, sizeof greeting, "hello%d", name);
  TRY(mp_connection_send(child_conn, greeting, (size_t)len, MP_FOREVER)); /* conn.send(...) */
  printf("child %d: parent pid %d, pid %d\n", name, (int)getppid(), (int)getpid());
  return 0;
}

int main(void) {
  TRY(mp_pipe_new(1, &parent_conn, &child_conn)); /* parent_conn, child_conn = Pipe() */

  mp_process *process_list[N];
  for (int i = 0; i < N; i++) {
    TRY(mp_process_new(f, (void *)(long)i, NULL, &process_list[i]));
    TRY(mp_process_start(process_list[i]));
  }
  int failed = 0;
  for (int i = 0; i < N; i++) {
    int code = -1;
    TRY(mp_process_join(process_list[i], MP_FOREVER));
    TRY(mp_process_exitcode(process_list[i], &code));
    TRY(mp_process_free(process_list[i]));
    failed |= code != 0;
  }

  /* for p in range(10): print(parent_conn.recv()) */
  int seen[N] = {0};
  for (int i = 0; i < N; i++) {
    char msg[32];
    int n = (int)mp_connection_recv(parent_conn, msg, sizeof msg - 1, MP_FOREVER);
    TRY(n);
    msg[n] = '\0';
    printf("%s\n", msg);
    int name = -1;
    if (sscanf(msg, "hello%d", &name) != 1 || name < 0 || name >= N || seen[name]++) {
      fprintf(stderr, "unexpected message \"%s\"\n", msg);
      failed = 1;
    }
  }
  int more = mp_connection_poll(parent_conn, MP_NOWAIT); /* 0: nothing else was sent */
  TRY(more);

  TRY(mp_connection_close(parent_conn));
  TRY(mp_connection_close(child_conn));
  return failed || more;
}
