/* SPDX-License-Identifier: MIT */
/*
 * A client program of the remote-manager tutorial (run by remote_manager):
 * it puts 'hello' into the server's queue.
 *
 * Python:
 *   QueueManager.register('get_queue')
 *   m = QueueManager(address=('foo.bar.org', 50000), authkey=b'abracadabra')
 *   m.connect()
 *   queue = m.get_queue()
 *   queue.put('hello')
 *
 * Usage: remote_manager_put ADDRESS KEY. A wrong key: the program says it
 * was refused (Python's AuthenticationError) and exits with 3.
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
  int r = mp_manager_connect(m);
  if (r == -EACCES) {
    printf("put: key '%s' refused: %s\n", argv[2], mp_strerror(r));
    mp_manager_free(m);
    return 3;
  }
  TRY(r);
  mp_proxy *queue;
  TRY(mp_manager_get(m, "get_queue", &queue));
  mp_obj *v = mp_obj_str("hello");
  TRY(v ? 0 : -ENOMEM);
  TRY(mp_queue_proxy_put(queue, v, MP_FOREVER));
  mp_obj_free(v);
  printf("put: 'hello'\n");
  mp_proxy_free(queue); /* the queue stays: the server holds it by name */
  TRY(mp_manager_free(m));
  return 0;
}
