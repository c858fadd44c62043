/* SPDX-License-Identifier: MIT */
/*
 * Pipe ends and end of file: close the ends you do not use.
 *
 * The Python original makes con1, con2 = Pipe() and hands both ends to a
 * child. Each process closes the end it does not use: the child con1, the
 * parent con2. The parent sends ten messages through con1 and closes it; the
 * child prints con2.recv() in a loop until recv() raises EOFError, which
 * happens once every copy of con1 is closed and every message has been read;
 * it then closes con2 and ends. Had the child kept its own copy of con1 open,
 * the EOFError would never come: the child itself could still send through
 * con1, so the pipe is not finished, and the child would wait forever.
 *
 * The C twin: mp_pipe_new() is Pipe(); a child started with mp_process_start()
 * has its own copy of both ends, and mp_connection_close() closes the calling
 * process's copy only. libmp reports end of file as -EPIPE from
 * mp_connection_recv() (Python's EOFError). The parent joins the child at the
 * end (Python joins it at exit) to check that it got every message.
 */
#include <mp.h>
#include <stdio.h>
#include <string.h>

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

/* con1, con2 = Pipe(): made before the child starts, so it has both ends. */
static mp_connection *con1, *con2;

/* Python: def func(con) */
static int func(void *arg) {
  (void)arg;
  TRY(mp_connection_close(con1)); /* con1.close(): the child only receives */
  int got = 0;
  for (;;) {
    char msg[32];
    int n = (int)mp_connection_recv(con2, msg, sizeof msg - 1, MP_FOREVER); /* con2.recv() */
    if (n == -EPIPE) {                                                      /* except EOFError: */
      printf("child: end of file (Python's EOFError) after %d messages\n", got);
      TRY(mp_connection_close(con2)); /* con2.close() */
      break;
    }
    TRY(n);
    msg[n] = '\0';
    printf("child: %s\n", msg); /* print(con2.recv()) */
    char want[32];
    snprintf(want, sizeof want, "message %d", got++);
    if (strcmp(msg, want) != 0) {
      fprintf(stderr, "child: got \"%s\", expected \"%s\"\n", msg, want);
      return 1;
    }
  }
  return got == N ? 0 : 1;
}

int main(void) {
  /* Each line goes out as soon as it is printed, so the processes' lines
   * show the order in which things happened. Children inherit the setting. */
  setvbuf(stdout, NULL, _IOLBF, 0);

  TRY(mp_pipe_new(1, &con1, &con2)); /* con1, con2 = Pipe() */
  mp_process *p;
  TRY(mp_process_new(func, NULL, NULL, &p)); /* p = Process(target=func, args=((con1, con2),)) */
  TRY(mp_process_start(p));
  TRY(mp_connection_close(con2)); /* con2.close(): the parent only sends */

  for (int i = 0; i < N; i++) {
    char msg[32];
    int len = snprintf(msg, sizeof msg, "message %d", i);
    TRY(mp_connection_send(con1, msg, (size_t)len, MP_FOREVER)); /* con1.send(...) */
  }
  TRY(mp_connection_close(con1)); /* con1.close(): the last copy, so the child sees EOF */
  printf("parent: sent %d messages and closed con1\n", N);

  TRY(mp_process_join(p, MP_FOREVER));
  int code = -1;
  TRY(mp_process_exitcode(p, &code));
  TRY(mp_process_free(p));
  return code;
}
