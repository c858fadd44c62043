/* SPDX-License-Identifier: MIT */
/*
 * A one-way Pipe: Pipe(duplex=False).
 *
 * Pipe() makes two connected ends. By default (duplex=True) both ends send
 * and receive. With duplex=False the pipe goes one way: the first end only
 * receives, the second only sends. The Python original makes
 * parent_conn, child_conn = Pipe(), starts a child given child_conn that
 * sends a list with conn.send([...]) and closes its end, prints
 * parent_conn.recv() in the parent and joins the child.
 *
 * The C twin uses mp_pipe_new(0, ...), duplex=False: parent_conn only
 * receives and child_conn only sends; mp_connection_readable() and
 * mp_connection_writable() say which end may do what. A message is bytes: the
 * child sends an int array as its bytes, and the parent learns how many ints
 * came from the message's length. Using an end the wrong way is an error,
 * -EBADF, never a hang or a lost message (Python raises OSError there).
 */
#include <mp.h>
#include <stdio.h>

/* Stop with a message when a libmp call fails (they return a negative errno,
 * explained by mp_strerror()). Used in the parent and in the child alike: both
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

/* The "list" the child sends. */
static const int list[] = {3, 1, 4, 1, 5, 9, 2, 6};
enum { LEN = sizeof list / sizeof list[0] };

/* Python: def myfunction(conn) */
static int myfunction(void *arg) {
  mp_connection *conn = arg;
  TRY(mp_connection_send(conn, list, sizeof list, MP_FOREVER)); /* conn.send([...]) */
  TRY(mp_connection_close(conn));                               /* conn.close() */
  return 0;
}

/* Print which way an end goes; stop unless it is as expected. */
static int show(const char *name, mp_connection *c, int want_readable, int want_writable) {
  int readable = mp_connection_readable(c), writable = mp_connection_writable(c);
  TRY(readable);
  TRY(writable);
  printf("%s: readable=%s writable=%s\n", name, readable ? "True" : "False",
         writable ? "True" : "False");
  return readable != want_readable || writable != want_writable;
}

int main(void) {
  mp_connection *parent_conn, *child_conn;
  TRY(mp_pipe_new(0, &parent_conn, &child_conn)); /* Pipe(duplex=False) */
  if (show("parent_conn", parent_conn, 1, 0) || show("child_conn", child_conn, 0, 1))
    return 1;

  /* The wrong way round: the receiving end cannot send, the sending end
   * cannot receive. Both fail at once, and nothing is sent or consumed. */
  int dummy = 0;
  int r = mp_connection_send(parent_conn, &dummy, sizeof dummy, MP_FOREVER);
  printf("parent_conn send: %s (%s)\n", r == -EBADF ? "-EBADF" : "unexpected", mp_strerror(r));
  if (r != -EBADF)
    return 1;
  r = (int)mp_connection_recv(child_conn, &dummy, sizeof dummy, MP_FOREVER);
  printf("child_conn recv: %s (%s)\n", r == -EBADF ? "-EBADF" : "unexpected", mp_strerror(r));
  if (r != -EBADF)
    return 1;

  mp_process *p;
  TRY(mp_process_new(myfunction, child_conn, NULL, &p)); /* Process(..., args=(child_conn,)) */
  TRY(mp_process_start(p));
  TRY(mp_connection_close(child_conn)); /* the child has its copy; the parent never sends */

  int got[LEN + 1]; /* room for one more int, so a longer message would show */
  int n = (int)mp_connection_recv(parent_conn, got, sizeof got, MP_FOREVER); /* recv() */
  TRY(n);
  int count = n / (int)sizeof(int);
  printf("parent received: [");
  for (int i = 0; i < count; i++)
    printf("%s%d", i ? ", " : "", got[i]);
  printf("]\n");
  int failed = n != (int)sizeof list;
  for (int i = 0; !failed && i < LEN; i++)
    failed = got[i] != list[i];

  int code = -1;
  TRY(mp_process_join(p, MP_FOREVER)); /* p.join() */
  TRY(mp_process_exitcode(p, &code));
  TRY(mp_process_free(p));
  TRY(mp_connection_close(parent_conn));
  return failed || code != 0;
}
