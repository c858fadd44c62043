/* SPDX-License-Identifier: MIT */
/*
 * The wire format of typed values (mp_obj, obj.c), MessagePack through
 * msgpack-c, and the manager's framed requests and replies and the pure
 * parts of its handshake.
 *
 * Map of this file:
 *   1. encoding (msgpack_packer) with the limits checked
 *   2. decoding: a validator that bounds what msgpack-c may allocate, then
 *      msgpack_unpack_next and a conversion to mp_obj
 *   3. the pure parts of the handshake (HMAC-SHA256 from libsodium)
 *   4. the manager's requests and replies, as frames
 * No crash points: encoding and decoding touch only private memory.
 * Tests: tests/test_manager.c, tests/test_python_wire.c; fuzz/fuzz_wire.c.
 *
 * Untrusted input: mp_obj_decode() first walks the bytes without allocating
 * (mp__wire_validate): every length must fit in what is left, containers
 * claim no more elements than bytes remain, nesting and the total count of
 * values are bounded, extension types are refused. Only then does msgpack-c
 * decode, so its allocations are bounded by a small multiple of the input.
 */
#include <errno.h>
#include <msgpack.h>
#include <sodium.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include "internal.h"
#include "wire.h"

/* -------------------------------------------------------------- 1. encoding */

static int pack(msgpack_packer *pk, const mp_obj *o, int depth, size_t *items) {
  if (++*items > MP_OBJ_MAX_ITEMS)
    return -EMSGSIZE;
  int r = 0;
  switch (o->type) {
  case MP_OBJ_NIL: r = msgpack_pack_nil(pk); break;
  case MP_OBJ_BOOL: r = o->u.b ? msgpack_pack_true(pk) : msgpack_pack_false(pk); break;
  case MP_OBJ_INT: r = msgpack_pack_int64(pk, o->u.i); break;
  case MP_OBJ_FLOAT: r = msgpack_pack_double(pk, o->u.f); break;
  case MP_OBJ_PROXY: {
    /* fixext 8 of type MP__EXT_PROXY: the object id, big-endian */
    unsigned char b[8];
    for (int k = 0; k < 8; k++)
      b[k] = (unsigned char)((uint64_t)o->u.i >> (56 - 8 * k));
    r = msgpack_pack_ext(pk, 8, MP__EXT_PROXY) || msgpack_pack_ext_body(pk, b, 8);
    break;
  }
  case MP_OBJ_STR:
  case MP_OBJ_BYTES:
    if (o->u.s.n > MP_OBJ_MAX_MESSAGE)
      return -EMSGSIZE;
    if (o->type == MP_OBJ_STR)
      r = msgpack_pack_str(pk, o->u.s.n) || msgpack_pack_str_body(pk, o->u.s.p, o->u.s.n);
    else
      r = msgpack_pack_bin(pk, o->u.s.n) || msgpack_pack_bin_body(pk, o->u.s.p, o->u.s.n);
    break;
  case MP_OBJ_LIST:
    if (depth >= MP_OBJ_MAX_DEPTH || o->u.l.n > MP_OBJ_MAX_ITEMS)
      return -EMSGSIZE;
    if (msgpack_pack_array(pk, o->u.l.n))
      return -ENOMEM;
    for (size_t i = 0; i < o->u.l.n; i++)
      if ((r = pack(pk, o->u.l.v[i], depth + 1, items)) < 0)
        return r;
    return 0;
  case MP_OBJ_DICT:
    if (depth >= MP_OBJ_MAX_DEPTH || o->u.d.n - o->u.d.holes > MP_OBJ_MAX_ITEMS)
      return -EMSGSIZE;
    if (msgpack_pack_map(pk, o->u.d.n - o->u.d.holes))
      return -ENOMEM;
    for (size_t i = 0; i < o->u.d.n; i++) {
      if (!o->u.d.v[i].key)
        continue; /* a hole */
      if ((r = pack(pk, o->u.d.v[i].key, depth + 1, items)) < 0 ||
          (r = pack(pk, o->u.d.v[i].value, depth + 1, items)) < 0)
        return r;
    }
    return 0;
  default: return -EINVAL;
  }
  return r ? -ENOMEM : 0;
}

/* Encode into a new buffer, after `prefix` reserved bytes. */
static int encode(const mp_obj *o, size_t prefix, char **buf, size_t *len) {
  msgpack_sbuffer sb;
  msgpack_sbuffer_init(&sb);
  msgpack_packer pk;
  msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
  static const char zero[8];
  size_t items = 0;
  int r = prefix ? (msgpack_sbuffer_write(&sb, zero, prefix) ? -ENOMEM : 0) : 0;
  if (r == 0)
    r = pack(&pk, o, 0, &items);
  if (r == 0 && sb.size - prefix > MP_OBJ_MAX_MESSAGE)
    r = -EMSGSIZE;
  if (r < 0) {
    msgpack_sbuffer_destroy(&sb);
    return r;
  }
  if (!sb.data) { /* cannot happen: something was written */
    msgpack_sbuffer_destroy(&sb);
    return -ENOMEM;
  }
  *len = sb.size;
  *buf = msgpack_sbuffer_release(&sb);
  return 0;
}

MP_EXPORT int mp_obj_encode(const mp_obj *o, void **ret, size_t *len) {
  if (!o || !ret || !len)
    return -EINVAL;
  char *b;
  size_t n;
  int r = encode(o, 0, &b, &n);
  if (r < 0)
    return r;
  *ret = b;
  *len = n;
  return 0;
}

/* -------------------------------------------------------------- 2. decoding */

static uint64_t be(const unsigned char *p, int n) {
  uint64_t v = 0;
  for (int i = 0; i < n; i++)
    v = v << 8 | p[i];
  return v;
}

int mp__wire_validate(const void *buf, size_t len, int max_depth) {
  const unsigned char *p = buf, *end = p + len;
  /* pending[d]: values still to read at depth d; the top level wants one */
  uint64_t pending[MP__MSG_DEPTH + 2];
  if (max_depth > MP__MSG_DEPTH)
    max_depth = MP__MSG_DEPTH;
  int depth = 0;
  pending[0] = 1;
  uint64_t items = 0;
  if (len > MP_OBJ_MAX_MESSAGE)
    return -EMSGSIZE;
  while (depth >= 0) {
    if (pending[depth] == 0) {
      depth--;
      continue;
    }
    pending[depth]--;
    if (p == end)
      return -EBADMSG;
    if (++items > MP_OBJ_MAX_ITEMS)
      return -EMSGSIZE;
    unsigned c = *p++;
    size_t left = (size_t)(end - p);
    uint64_t skip = 0, count = 0;
    bool container = false, map = false;
    if (c <= 0x7f || c >= 0xe0 || c == 0xc0 || c == 0xc2 || c == 0xc3) {
      /* fixint, nil, bool */
    } else if (c >= 0x80 && c <= 0x9f) {
      container = true;
      map = c <= 0x8f;
      count = c & 0x0f;
    } else if (c >= 0xa0 && c <= 0xbf) {
      skip = c & 0x1f;
    } else {
      int w;
      switch (c) {
      case 0xc4:                   /* bin 8/16/32 */
      case 0xd9: w = 1; goto blob; /* str 8/16/32 */
      case 0xc5:
      case 0xda: w = 2; goto blob;
      case 0xc6:
      case 0xdb:
        w = 4;
      blob:
        if (left < (size_t)w)
          return -EBADMSG;
        skip = be(p, w);
        p += w;
        left -= (size_t)w;
        break;
      case 0xca: skip = 4; break;
      case 0xcb: skip = 8; break;
      case 0xcc:
      case 0xd0: skip = 1; break;
      case 0xcd:
      case 0xd1: skip = 2; break;
      case 0xce:
      case 0xd2: skip = 4; break;
      case 0xd3: skip = 8; break;
      case 0xcf: /* uint64: only within int64 */
        if (left < 8 || (p[0] & 0x80))
          return -EBADMSG;
        skip = 8;
        break;
      case 0xdc:
      case 0xdd:
      case 0xde:
      case 0xdf:
        w = (c == 0xdc || c == 0xde) ? 2 : 4;
        if (left < (size_t)w)
          return -EBADMSG;
        count = be(p, w);
        p += w;
        left -= (size_t)w;
        container = true;
        map = c >= 0xde;
        break;
      case 0xd7: /* fixext 8: only a proxy reference, to an id > 0 */
        if (left < 9 || p[0] != MP__EXT_PROXY || (p[1] & 0x80) || be(p + 1, 8) == 0)
          return -EBADMSG;
        skip = 9;
        break;
      default: return -EBADMSG; /* 0xc1 (never used) and other extension types */
      }
    }
    if (container) {
      if (map)
        count *= 2;
      /* each value takes at least one byte */
      if (count > left)
        return -EBADMSG;
      /* an empty container counts as a level too, as the encoder counts it */
      if (count > MP_OBJ_MAX_ITEMS || depth + 1 > max_depth)
        return -EMSGSIZE;
      if (count)
        pending[++depth] = count;
    } else {
      if (skip > left)
        return -EBADMSG;
      p += skip;
    }
  }
  return p == end ? 0 : -EBADMSG;
}

static mp_obj *convert(const msgpack_object *m) {
  switch (m->type) {
  case MSGPACK_OBJECT_NIL: return mp_obj_nil();
  case MSGPACK_OBJECT_BOOLEAN: return mp_obj_bool(m->via.boolean);
  case MSGPACK_OBJECT_POSITIVE_INTEGER: return mp_obj_int((int64_t)m->via.u64);
  case MSGPACK_OBJECT_NEGATIVE_INTEGER: return mp_obj_int(m->via.i64);
  case MSGPACK_OBJECT_FLOAT32:
  case MSGPACK_OBJECT_FLOAT64: return mp_obj_float(m->via.f64);
  case MSGPACK_OBJECT_STR: return mp_obj_strn(m->via.str.ptr, m->via.str.size);
  case MSGPACK_OBJECT_BIN: return mp_obj_bytes(m->via.bin.ptr, m->via.bin.size);
  case MSGPACK_OBJECT_EXT:
    /* the validator let through only proxy references */
    if (m->via.ext.type != MP__EXT_PROXY || m->via.ext.size != 8)
      return NULL;
    return mp__obj_ref((int64_t)be((const unsigned char *)m->via.ext.ptr, 8));
  case MSGPACK_OBJECT_ARRAY: {
    mp_obj *l = mp_obj_list();
    for (uint32_t i = 0; l && i < m->via.array.size; i++)
      if (mp_obj_list_append(l, convert(&m->via.array.ptr[i])) < 0) {
        mp_obj_free(l);
        l = NULL;
      }
    return l;
  }
  case MSGPACK_OBJECT_MAP: {
    mp_obj *d = mp_obj_dict();
    for (uint32_t i = 0; d && i < m->via.map.size; i++)
      if (mp_obj_dict_set(d, convert(&m->via.map.ptr[i].key), convert(&m->via.map.ptr[i].val)) <
          0) {
        mp_obj_free(d);
        d = NULL;
      }
    return d;
  }
  default: return NULL;
  }
}

MP_EXPORT int mp_obj_decode(const void *buf, size_t len, mp_obj **ret) {
  return mp__obj_decode(buf, len, MP_OBJ_MAX_DEPTH, ret);
}

int mp__obj_decode(const void *buf, size_t len, int max_depth, mp_obj **ret) {
  if ((!buf && len) || !ret)
    return -EINVAL;
  int r = mp__wire_validate(buf, len, max_depth);
  if (r < 0)
    return r;
  msgpack_unpacked u;
  msgpack_unpacked_init(&u);
  size_t off = 0;
  msgpack_unpack_return ur = msgpack_unpack_next(&u, buf, len, &off);
  mp_obj *o = NULL;
  if (ur == MSGPACK_UNPACK_SUCCESS && off == len) {
    o = convert(&u.data);
    r = o ? 0 : -ENOMEM;
  } else {
    r = ur == MSGPACK_UNPACK_NOMEM_ERROR ? -ENOMEM : -EBADMSG;
  }
  msgpack_unpacked_destroy(&u);
  if (r == 0)
    *ret = o;
  return r;
}

/* ------------------------------------------------------------- 3. handshake */

int mp__hs_parse_challenge(const void *buf, size_t len, uint8_t nonce[MP__NONCE_LEN]) {
  if (len == MP__HS_MAGIC_LEN && !memcmp(buf, MP__HS_OPEN, MP__HS_MAGIC_LEN))
    return 0;
  if (len == MP__HS_MAGIC_LEN + MP__NONCE_LEN && !memcmp(buf, MP__HS_AUTH, MP__HS_MAGIC_LEN)) {
    memcpy(nonce, (const char *)buf + MP__HS_MAGIC_LEN, MP__NONCE_LEN);
    return 1;
  }
  if (len == MP__HS_MAGIC_LEN && !memcmp(buf, MP__HS_FULL, MP__HS_MAGIC_LEN))
    return -EUSERS;
  return -EBADMSG;
}

int mp__hs_answer(const void *key, size_t keylen, char label, const uint8_t *nonce,
                  uint8_t mac[MP__MAC_LEN]) {
  uint8_t msg[1 + MP__NONCE_LEN];
  msg[0] = (uint8_t)label;
  memcpy(msg + 1, nonce, MP__NONCE_LEN);
  _Static_assert(MP__MAC_LEN == crypto_auth_hmacsha256_BYTES, "the MAC is an HMAC-SHA256");
  /* sodium_init() is idempotent and thread-safe; -1 only when no entropy
   * source can be opened, which HMAC itself does not need. */
  if (sodium_init() < 0)
    return -ENOMEM;
  crypto_auth_hmacsha256_state st;
  crypto_auth_hmacsha256_init(&st, key, keylen);
  crypto_auth_hmacsha256_update(&st, msg, sizeof msg);
  crypto_auth_hmacsha256_final(&st, mac);
  sodium_memzero(&st, sizeof st);
  return 0;
}

int mp__hs_check(const void *key, size_t keylen, char label, const uint8_t *nonce,
                 const void *answer, size_t len) {
  uint8_t want[MP__MAC_LEN];
  if (mp__hs_answer(key, keylen, label, nonce, want) < 0)
    return -EACCES;
  if (len != MP__MAC_LEN || sodium_memcmp(want, answer, MP__MAC_LEN) != 0)
    return -EACCES;
  return 0;
}

int mp__hs_parse_verdict(const void *buf, size_t len) {
  return len == MP__HS_MAGIC_LEN && !memcmp(buf, MP__HS_WELCOME, MP__HS_MAGIC_LEN) ? 0 : -EACCES;
}

int mp__random_bytes(void *buf, size_t n) {
  char *p = buf;
  while (n) {
    ssize_t r = getrandom(p, n, 0);
    if (r < 0) {
      if (errno == EINTR)
        continue;
      return -errno;
    }
    p += r;
    n -= (size_t)r;
  }
  return 0;
}

/* ------------------------------------------------- 4. requests and replies */

static int frame_start(msgpack_sbuffer *sb, msgpack_packer *pk) {
  static const char zero[MP__FRAME_HDR];
  msgpack_sbuffer_init(sb);
  msgpack_packer_init(pk, sb, msgpack_sbuffer_write);
  return msgpack_sbuffer_write(sb, zero, sizeof zero) ? -ENOMEM : 0;
}

static int frame_end(msgpack_sbuffer *sb, int r, char **buf, size_t *len) {
  if (r == 0 && sb->size - MP__FRAME_HDR > MP_OBJ_MAX_MESSAGE)
    r = -EMSGSIZE;
  if (r < 0) {
    msgpack_sbuffer_destroy(sb);
    return r;
  }
  uint32_t pay = (uint32_t)(sb->size - MP__FRAME_HDR);
  sb->data[0] = (char)(pay >> 24);
  sb->data[1] = (char)(pay >> 16);
  sb->data[2] = (char)(pay >> 8);
  sb->data[3] = (char)pay;
  *len = sb->size;
  *buf = msgpack_sbuffer_release(sb);
  return 0;
}

int mp__encode_request(int op, int64_t id, const char *name, const mp_obj *args, double timeout,
                       char **buf, size_t *len) {
  msgpack_sbuffer sb;
  msgpack_packer pk;
  int r = frame_start(&sb, &pk);
  size_t items = 0;
  size_t nl = name ? strlen(name) : 0;
  if (r == 0 &&
      (msgpack_pack_array(&pk, 5) || msgpack_pack_int(&pk, op) || msgpack_pack_int64(&pk, id) ||
       msgpack_pack_str(&pk, nl) || msgpack_pack_str_body(&pk, name ? name : "", nl)))
    r = -ENOMEM;
  if (r == 0) {
    size_t n = args ? args->u.l.n : 0;
    if (args && args->type != MP_OBJ_LIST)
      r = -EINVAL;
    else if (msgpack_pack_array(&pk, n))
      r = -ENOMEM;
    /* each argument may nest MP_OBJ_MAX_DEPTH deep on its own */
    for (size_t i = 0; r == 0 && i < n; i++)
      r = pack(&pk, args->u.l.v[i], 0, &items);
  }
  if (r == 0 && msgpack_pack_double(&pk, timeout))
    r = -ENOMEM;
  return frame_end(&sb, r, buf, len);
}

int mp__encode_reply(int status, const mp_obj *value, char **buf, size_t *len) {
  msgpack_sbuffer sb;
  msgpack_packer pk;
  int r = frame_start(&sb, &pk);
  size_t items = 0;
  if (r == 0 && (msgpack_pack_array(&pk, 2) || msgpack_pack_int(&pk, status)))
    r = -ENOMEM;
  if (r == 0) {
    if (value)
      r = pack(&pk, value, 0, &items);
    else if (msgpack_pack_nil(&pk))
      r = -ENOMEM;
  }
  return frame_end(&sb, r, buf, len);
}
