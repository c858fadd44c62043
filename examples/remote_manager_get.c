/* SPDX-License-Identifier: MIT */
/*
 * A client program of the remote-manager tutorial (run by remote_manager):
 * it gets from the server's queue what another program put there.
 *
 * Python:
 *   QueueManager.register('get_queue')
 *   m = QueueManager(address=('foo.bar.org', 50000), authkey=b'abracadabra')
 *   m.connect()
 *   queue = m.get_queue()
 *   queue.get()          # 'hello'
 *
 * Usage: remote_manager_get ADDRESS KEY.
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
  TRY(mp_manager_connect(m));
  mp_proxy *queue;
  TRY(mp_manager_get(m, "get_queue", &queue));
  mp_obj *v;
  TRY(mp_queue_proxy_get(queue, 10, &v));
  char buf[64];
  TRY(mp_obj_repr(v, buf, sizeof buf));
  printf("get: %s\n", buf);
  mp_obj_free(v);
  mp_proxy_free(queue);
  TRY(mp_manager_free(m));
  return 0;
}
