/* SPDX-License-Identifier: MIT */
/*
 * SharedMemory: a named block of memory that any process can attach to.
 *
 * The Python original:
 *   shm_a = shared_memory.SharedMemory(create=True, size=10)
 *   buffer = shm_a.buf;  len(buffer) == 10
 *   buffer[:4] = bytearray([22, 33, 44, 55]);  buffer[4] = 100
 *   shm_b = shared_memory.SharedMemory(shm_a.name)     # attach by name
 *   array.array('b', shm_b.buf[:5])  ->  [22, 33, 44, 55, 100]
 *   shm_b.buf[:5] = b'howdy'
 *   bytes(shm_a.buf[:5])  ->  b'howdy'
 *   shm_b.close(); shm_a.close()
 *   shm_a.unlink()            # only once, to free the block
 *
 * In C, mp_shared_memory_buf() is the block's memory (Python's buf) and any
 * program of the same user can attach to it by its name, as shm_b does here.
 * Closing releases one process's view; unlinking removes the name. A C handle
 * is gone once closed, so the block is unlinked through shm_a's handle just
 * before closing it (mp_shared_memory_unlink_name() works without a handle).
 * Had the program forgotten to unlink, libmp would have unlinked the block
 * when the program ended.
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

int main(void) {
  mp_shared_memory *shm_a, *shm_b;
  TRY(mp_shared_memory_new(NULL, 10, NULL, &shm_a)); /* create=True, size=10 */
  unsigned char *buffer = mp_shared_memory_buf(shm_a);
  printf("created %s, len(buffer) = %zd\n", mp_shared_memory_name(shm_a),
         mp_shared_memory_size(shm_a));
  memcpy(buffer, (unsigned char[]){22, 33, 44, 55}, 4); /* modify several at once */
  buffer[4] = 100;                                      /* modify a single byte */

  /* Attach to the existing block by its name. */
  TRY(mp_shared_memory_attach(mp_shared_memory_name(shm_a), NULL, &shm_b));
  const signed char *b = mp_shared_memory_buf(shm_b);
  printf("shm_b sees array('b', [%d, %d, %d, %d, %d])\n", b[0], b[1], b[2], b[3], b[4]);

  memcpy(mp_shared_memory_buf(shm_b), "howdy", 5); /* modify through shm_b */
  printf("shm_a sees b'%.5s'\n", (const char *)buffer);
  int ok = memcmp(buffer, "howdy", 5) == 0;

  char name[MP_SHARED_MEMORY_NAME_MAX + 1];
  snprintf(name, sizeof name, "%s", mp_shared_memory_name(shm_a));
  TRY(mp_shared_memory_close(shm_b));  /* close each view */
  TRY(mp_shared_memory_unlink(shm_a)); /* unlink once, to free the block */
  TRY(mp_shared_memory_close(shm_a));

  mp_shared_memory *again;
  int r = mp_shared_memory_attach(name, NULL, &again);
  printf("attaching %s after unlink: %s\n", name, r == -ENOENT ? "no such block" : "found?!");
  if (r == 0)
    mp_shared_memory_close(again);
  return ok && r == -ENOENT ? 0 : 1;
}
