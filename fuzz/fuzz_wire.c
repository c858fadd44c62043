/* SPDX-License-Identifier: MIT */
/*
 * libFuzzer target over everything a manager parses from the network before
 * and after authentication: the handshake messages and the MessagePack value
 * decoder (public values and whole manager messages). Every input that
 * decodes must encode again, decode again, and encode to the same bytes (not
 * mp_obj_equal(): a NaN is not equal to itself).
 *
 *   fuzz/run [seconds]     builds with clang and runs it over fuzz/corpus
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "wire.h"

static void roundtrip(const mp_obj *o, int depth) {
  void *buf;
  size_t len;
  /* a value decoded within the limits always encodes within them */
  if (mp_obj_encode(o, &buf, &len) != 0) {
    if (depth <= MP_OBJ_MAX_DEPTH)
      abort();
    return;
  }
  mp_obj *back;
  void *buf2;
  size_t len2;
  if (mp__obj_decode(buf, len, depth, &back) != 0 || mp_obj_encode(back, &buf2, &len2) != 0 ||
      len2 != len || memcmp(buf, buf2, len) != 0)
    abort();
  free(buf2);
  char repr[256];
  if (mp_obj_repr(back, repr, sizeof repr) < 0)
    abort();
  mp_obj_free(back);
  free(buf);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  mp_obj *o;
  if (mp_obj_decode(data, size, &o) == 0) {
    roundtrip(o, MP_OBJ_MAX_DEPTH);
    mp_obj_free(o);
  }
  if (mp__obj_decode(data, size, MP__MSG_DEPTH, &o) == 0) {
    mp_obj *copy = mp_obj_copy(o);
    if (!copy || mp_obj_type(copy) != mp_obj_type(o))
      abort();
    mp_obj_free(copy);
    mp_obj_free(o);
  }
  uint8_t nonce[MP__NONCE_LEN] = {0};
  int r = mp__hs_parse_challenge(data, size, nonce);
  if (r < -1000 || r > 1)
    abort();
  static const char key[] = "fuzz key";
  /* a random answer never passes */
  if (mp__hs_check(key, sizeof key - 1, 'C', nonce, data, size) == 0)
    abort();
  mp__hs_parse_verdict(data, size);
  return 0;
}
