/* SPDX-License-Identifier: MIT */
/*
 * Both ends of a Pipe in one process.
 *
 * The Python original makes con1, con2 = Pipe() and, in a single process,
 * sends '123' with con1.send() and prints con2.recv(), then sends '456' with
 * con2.send() and prints con1.recv(). What goes in at one end comes out at
 * the other end, never at the end that sent it.
 *
 * The C twin: mp_pipe_new(1, ...) is Pipe() (duplex: both ends send and
 * receive). A message is bytes: the strings are sent without their '\0' and
 * the receiver adds it. mp_connection_poll() with timeout 0 (Python's poll())
 * shows that the sending end has nothing to receive.
 */
#include <mp.h>
#include <stdio.h>
#include <string.h>

/* Stop with a message when a libmp call fails (they return a negative errno,
 * explained by mp_strerror()). On such an error the program ends and the
 * system reclaims what was left. */
#define TRY(call)                                                                                  \
  do {                                                                                             \
    int r_ = (int)(call);                                                                          \
    if (r_ < 0) {                                                                                  \
      fprintf(stderr, "%s failed: %s\n", #call, mp_strerror(r_));                                  \
      return 1;                                                                                    \
    }                                                                                              \
  } while (0)

/* Send `text` on `from`, receive it on `to` and print it; stop unless it came
 * back whole and only at `to`. */
static int relay(const char *from_name, mp_connection *from, const char *to_name, mp_connection *to,
                 const char *text) {
  TRY(mp_connection_send(from, text, strlen(text), MP_FOREVER)); /* from.send(text) */
  int echo = mp_connection_poll(from, MP_NOWAIT); /* 0: the sender gets nothing back */
  TRY(echo);
  char msg[16];
  int n = (int)mp_connection_recv(to, msg, sizeof msg - 1, MP_FOREVER); /* to.recv() */
  TRY(n);
  msg[n] = '\0';
  printf("%s.send('%s') -> %s.recv() = '%s'\n", from_name, text, to_name, msg);
  if (echo || strcmp(msg, text) != 0) {
    fprintf(stderr, "expected '%s' at %s only\n", text, to_name);
    return 1;
  }
  return 0;
}

int main(void) {
  mp_connection *con1, *con2;
  TRY(mp_pipe_new(1, &con1, &con2)); /* con1, con2 = Pipe() */

  if (relay("con1", con1, "con2", con2, "123") || relay("con2", con2, "con1", con1, "456"))
    return 1;

  TRY(mp_connection_close(con1));
  TRY(mp_connection_close(con2));
  return 0;
}
