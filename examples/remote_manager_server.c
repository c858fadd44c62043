/* SPDX-License-Identifier: MIT */
/*
 * The server program of the remote-manager tutorial (run by remote_manager).
 *
 * Python:
 *   queue = queue.Queue()
 *   class QueueManager(BaseManager): pass
 *   QueueManager.register('get_queue', callable=lambda: queue)
 *   m = QueueManager(address=('', 50000), authkey=b'abracadabra')
 *   m.get_server().serve_forever()
 *
 * Usage: remote_manager_server ADDRESS KEY   (ADDRESS "127.0.0.1:0": the
 * kernel chooses the port; the program prints the address it listens on).
 */
#include <mp.h>
#include <stdio.h>
#include <string.h>

#define TRY(call)                                                                                  \
  do {                                                                                             \
    int r_ = (int)(call);                                                                          \
    if (r_ < 0) {                                                                                  \
      fprintf(stderr, "%s failed: %s\n", #call, mp_strerror(r_));                                  \
      return 1;                                                                                    \
    }                                                                                              \
  } while (0)

int main(int argc, char **argv) {
  if (argc != 3) {
    fprintf(stderr, "usage: %s ADDRESS KEY\n", argv[0]);
    return 2;
  }
  mp_manager_options o = {.address = argv[1], .authkey = argv[2], .authkey_len = strlen(argv[2])};
  mp_manager *m;
  TRY(mp_manager_new(&o, &m));
  /* one queue, created once in the server, the same for every client */
  TRY(mp_manager_register_object(m, "get_queue", "Queue", NULL));
  TRY(mp_manager_listen(m));
  char addr[128];
  TRY(mp_manager_address(m, addr, sizeof addr));
  printf("server: serving a queue as 'get_queue' on %s\n", addr);
  fflush(stdout);
  TRY(mp_manager_serve_forever(m)); /* until a client asks it to stop */
  printf("server: shut down\n");
  TRY(mp_manager_free(m));
  return 0;
}
