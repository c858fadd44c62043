/* SPDX-License-Identifier: MIT */
/*
 * Pipe ends and end of file: close the ends you do not use.
 *
 * The Python original makes con1, con2 = Pipe() and hands both ends to a
 * child. Each process closes the end it does not use: the child con1, the
 * parent con2. The parent sends ten messages through con1 and closes it; the
 * child prints con2.recv() in a loop until recv() raises EOFError, which
 * happens once every copy of con1 is closed and every message has been read.
 * Had the child kept its own copy of con1 open, that EOFError would never
 * come: the child itself could still send, so the pipe is not finished.
 *
 * The C twin hands both ends to two children, a writer and a reader, so that
 * the parent can show the rule at work from outside:
 *   - the writer closes con2, sends five messages through con1, closes con1;
 *   - the reader closes con1 and receives from con2 until end of file, which
 *     libmp reports as -EPIPE (Python's EOFError);
 *   - the parent closes con2 at once but keeps its copy of con1 a while: even
 *     after the writer has ended, the reader keeps waiting (a 0.2 s join
 *     times out). Only when the parent closes con1 too does the reader see
 *     end of file.
 * mp_connection_close() closes the calling process's copy only. A process
 * that ends closes its copies as well, SIGKILL included.
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

enum { N = 5 };

/* con1 = Pipe()[0] sends, con2 = Pipe()[1] receives; made before the children
 * start, so every process has its own copy of both. */
static mp_connection *con1, *con2;

static int writer(void *arg) {
  (void)arg;
  TRY(mp_connection_close(con2)); /* this process never receives */
  for (int i = 0; i < N; i++) {
    char msg[16];
    int len = snprintf(msg, sizeof msg, "message %d", i);
    TRY(mp_connection_send(con1, msg, (size_t)len, MP_FOREVER)); /* con1.send(...) */
  }
  TRY(mp_connection_close(con1)); /* con1.close() */
  printf("writer: sent %d messages and closed its con1\n", N);
  return 0;
}

static int reader(void *arg) {
  (void)arg;
  TRY(mp_connection_close(con1)); /* this process never sends */
  int got = 0;
  for (;;) {
    char msg[16];
    int n = (int)mp_connection_recv(con2, msg, sizeof msg - 1, MP_FOREVER); /* con2.recv() */
    if (n == -EPIPE)                                                        /* except EOFError: */
      break;
    TRY(n);
    msg[n] = '\0';
    char want[32];
    snprintf(want, sizeof want, "message %d", got);
    if (strcmp(msg, want) != 0) {
      fprintf(stderr, "reader: got \"%s\", expected \"%s\"\n", msg, want);
      return 1;
    }
    printf("reader: %s\n", msg);
    got++;
  }
  printf("reader: end of file (Python's EOFError) after %d messages\n", got);
  TRY(mp_connection_close(con2));
  return got == N ? 0 : 1;
}

/* Wait for a child, free its handle, and fail unless it exited with 0. */
static int join_ok(mp_process *p) {
  int code = -1;
  TRY(mp_process_join(p, MP_FOREVER));
  TRY(mp_process_exitcode(p, &code));
  TRY(mp_process_free(p));
  if (code != 0) {
    fprintf(stderr, "a child failed with exit code %d\n", code);
    return 1;
  }
  return 0;
}

int main(void) {
  /* Each line goes out as soon as it is printed, so the processes' lines
   * show the order in which things happened. Children inherit the setting. */
  setvbuf(stdout, NULL, _IOLBF, 0);

  TRY(mp_pipe_new(1, &con1, &con2)); /* con1, con2 = Pipe() */

  mp_process *w, *r;
  TRY(mp_process_new(writer, NULL, NULL, &w));
  TRY(mp_process_new(reader, NULL, NULL, &r));
  TRY(mp_process_start(w));
  TRY(mp_process_start(r));

  TRY(mp_connection_close(con2)); /* the parent never receives */

  /* The writer ends, but the parent still holds a copy of con1. */
  int failed = join_ok(w);
  int rc = mp_process_join(r, 0.2);
  if (rc != -ETIMEDOUT) {
    fprintf(stderr, "the reader did not wait: %s\n", mp_strerror(rc));
    return 1;
  }
  printf("parent: the writer has ended, but the reader still waits: my copy of con1 is open\n");

  printf("parent: closing my copy of con1\n");
  TRY(mp_connection_close(con1)); /* now every copy of con1 is closed */
  failed |= join_ok(r);
  return failed;
}
