/* SPDX-License-Identifier: MIT */
/*
 * A Pipe between two processes: send messages until "END".
 *
 * The Python original makes parent_conn, child_conn = Pipe() and starts two
 * processes: a sender, given one end and a list of messages ending with
 * "END", which sends each with conn.send(msg) and prints it; and a receiver,
 * given the other end, which loops on msg = conn.recv(), stops at "END" and
 * prints every other message. Each end is used by one process only, which is
 * how a pipe is meant to be used.
 *
 * The C twin: mp_pipe_new(1, ...) is Pipe() (duplex: both ends may send and
 * receive). A message is bytes: the sender sends each string's characters and
 * the receiver adds the terminating '\0' itself. Children inherit both ends;
 * the parent uses neither, so it closes its own copies (mp_connection_close()
 * closes only the calling process's copy). The receiver also checks that the
 * messages come whole and in the order they were sent.
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

/* msgs = ["hello", "hey", "how are you?", "END"] */
static const char *const msgs[] = {"hello", "hey", "how are you?", "END"};
enum { NMSGS = sizeof msgs / sizeof msgs[0] };

/* Python: def sender(conn, msgs) */
static int sender(void *arg) {
  mp_connection *conn = arg;
  for (int i = 0; i < NMSGS; i++) {
    TRY(mp_connection_send(conn, msgs[i], strlen(msgs[i]), MP_FOREVER)); /* conn.send(msg) */
    printf("Sent the message: %s\n", msgs[i]);
  }
  TRY(mp_connection_close(conn)); /* conn.close() */
  return 0;
}

/* Python: def receiver(conn) */
static int receiver(void *arg) {
  mp_connection *conn = arg;
  for (int i = 0;; i++) {
    char msg[64];
    int n = (int)mp_connection_recv(conn, msg, sizeof msg - 1, MP_FOREVER); /* conn.recv() */
    TRY(n);
    msg[n] = '\0';
    if (i >= NMSGS || strcmp(msg, msgs[i]) != 0) {
      fprintf(stderr, "receiver: unexpected message \"%s\"\n", msg);
      return 1;
    }
    if (strcmp(msg, "END") == 0)
      break;
    printf("Received the message: %s\n", msg);
  }
  TRY(mp_connection_close(conn));
  return 0;
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
  /* Each line goes out as soon as it is printed, so the two processes' lines
   * appear in the order they happened. Children inherit the setting. */
  setvbuf(stdout, NULL, _IOLBF, 0);

  mp_connection *parent_conn, *child_conn;
  TRY(mp_pipe_new(1, &parent_conn, &child_conn)); /* parent_conn, child_conn = Pipe() */

  mp_process *p1, *p2;
  TRY(mp_process_new(sender, parent_conn, NULL, &p1));  /* Process(target=sender, ...) */
  TRY(mp_process_new(receiver, child_conn, NULL, &p2)); /* Process(target=receiver, ...) */
  TRY(mp_process_start(p1));
  TRY(mp_process_start(p2));

  /* The children have their own copies now; the parent uses neither end. */
  TRY(mp_connection_close(parent_conn));
  TRY(mp_connection_close(child_conn));

  int failed = join_ok(p1);
  failed |= join_ok(p2);
  return failed;
}
