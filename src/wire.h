/* SPDX-License-Identifier: MIT */
/*
 * Internals of typed values shared by their files and the manager's
 * (src/manager_*.c) and the fuzz target: the value structure, container
 * helpers, the framed encoding, and the pure parts of the authentication
 * handshake.
 *
 * Where typed values live (public header mp/manager.h -> file):
 *   obj.c   the value tree (constructors, accessors, lists, dicts with a
 *           hash index) and repr
 *   wire.c  MessagePack encoding and decoding, the handshake's pure parts,
 *           the manager's framed requests and replies
 */
#ifndef MP_WIRE_H
#define MP_WIRE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "mp/manager.h"

/* A value. Scalars hold their value; str and bytes a private NUL-terminated
 * copy; lists and dicts own their items. The encoder (wire.c) walks the
 * tree directly; everything else goes through obj.c's functions. */
struct mp__obj_pair {
  mp_obj *key, *value;
};

struct mp__obj_index; /* a dict's hash index (obj.c) */

struct mp_obj {
  int type;
  union {
    int b;
    int64_t i;
    double f;
    struct {
      char *p;
      size_t n;
    } s; /* str and bytes; p is NUL-terminated */
    struct {
      mp_obj **v;
      size_t n, cap;
    } l;
    struct {
      struct mp__obj_pair *v;
      size_t n, cap;
      struct mp__obj_index *idx; /* NULL while small */
      size_t idx_cap;
      size_t holes; /* removed entries (key NULL) among v[0..n); only with idx */
    } d;
  } u;
};

/* Frames on a stream socket: a 4-byte big-endian length, then the payload. */
#define MP__FRAME_HDR 4

/* Check that buf holds exactly one MessagePack value within libmp's limits
 * and at most max_depth containers deep, without allocating. 0, -EBADMSG or
 * -EMSGSIZE. */
int mp__wire_validate(const void *buf, size_t len, int max_depth);
/* Manager messages wrap values two levels deep (request, arguments). */
#define MP__MSG_DEPTH (MP_OBJ_MAX_DEPTH + 2)
/* Decode a value allowed max_depth containers deep. As mp_obj_decode(). */
int mp__obj_decode(const void *buf, size_t len, int max_depth, mp_obj **ret);

/* The index of key in dict d, or -1. */
ssize_t mp__obj_dict_find(const mp_obj *d, const mp_obj *key);
/* Remove entry i of dict d and hand back its key and value (either may be
 * NULL: it is freed). Mends the hash index in place (no rehash of the
 * whole index). */
void mp__obj_dict_remove(mp_obj *d, size_t i, mp_obj **key, mp_obj **value);
/* Borrow the key and value of entry i (an index from mp__obj_dict_find()).
 * After removals a dict's entry indexes are not its positions (the removed
 * entries stay as holes until compacted); mp_obj_dict_item() takes
 * positions, in linear time while holes remain: compact before a walk. */
void mp__obj_dict_entry(const mp_obj *d, size_t i, const mp_obj **key, const mp_obj **value);
void mp__obj_dict_compact(mp_obj *d);
/* Insert item (taken over) at position i (0..len) of list l. 0 or -ENOMEM. */
int mp__obj_list_insert(mp_obj *l, size_t i, mp_obj *item);
/* Remove and return item i of list l. */
mp_obj *mp__obj_list_take(mp_obj *l, size_t i);
/* Replace item i of list l with item (taken over); the old one is freed. */
void mp__obj_list_replace(mp_obj *l, size_t i, mp_obj *item);
/* Borrow item i of a list (no checks). */
mp_obj *mp__obj_list_at(const mp_obj *l, size_t i);
/* Python's order of a and b in *cmp (-1, 0, 1): 0, or -EDOM when they are
 * not ordered (TypeError). */
int mp__obj_compare(const mp_obj *a, const mp_obj *b, int *cmp);
/* Sort list l stably (Python's list.sort). 0; -EDOM (items not ordered:
 * the list is unchanged); -ENOMEM. */
int mp__obj_list_sort(mp_obj *l, bool reverse);
/* Reverse list l in place. */
void mp__obj_list_reverse(mp_obj *l);
/* A proxy reference (MP_OBJ_PROXY) travels as MessagePack fixext 8 of this
 * type, holding the object id (> 0) big-endian; no other extension is
 * accepted. */
#define MP__EXT_PROXY 1
/* A new proxy reference to object id; NULL when out of memory. */
mp_obj *mp__obj_ref(int64_t id);
/* The object id of a proxy reference (no checks). */
int64_t mp__obj_ref_id(const mp_obj *o);
/* Call fn(id, ctx) for every proxy reference in the tree o. */
void mp__obj_each_ref(const mp_obj *o, void (*fn)(int64_t id, void *ctx), void *ctx);
/* Empty a list or dict. */
void mp__obj_clear(mp_obj *o);
/* Draw a new random secret for the dict indexes this process builds from
 * now on (a manager server calls it as it starts: its key is its own, not
 * the one inherited from the process that forked it). */
void mp__obj_hash_rekey(void);

/* ------------------------------------------------------------- handshake */

#define MP__NONCE_LEN 32
#define MP__MAC_LEN 32
/* Hello: the server's first message. With a key, MAGIC_AUTH then a nonce;
 * without, MAGIC_OPEN alone. */
#define MP__HS_MAGIC_LEN 8
#define MP__HS_AUTH "MPAUTH1"
#define MP__HS_OPEN "MPOPEN1"
#define MP__HS_WELCOME "MPWELCO"
#define MP__HS_FAILURE "MPFAILU"
/* In place of the hello: a manager whose client slots are all taken by
 * authenticated clients turns the connection away (-EUSERS). */
#define MP__HS_FULL "MPFULL1"
/* The largest handshake message. */
#define MP__HS_MAX 64

/* Parse a challenge. Returns 1 with the nonce stored (authenticated), 0 for
 * an open server, -EUSERS for a full server (MP__HS_FULL), -EBADMSG for
 * anything else. */
int mp__hs_parse_challenge(const void *buf, size_t len, uint8_t nonce[MP__NONCE_LEN]);
/* The answer to a challenge: HMAC-SHA256(key, label || nonce). 0 or -ENOMEM. */
int mp__hs_answer(const void *key, size_t keylen, char label, const uint8_t *nonce,
                  uint8_t mac[MP__MAC_LEN]);
/* Check an answer received for nonce. 0 when it is right, -EACCES otherwise
 * (wrong length included). Constant time in the answer's contents. */
int mp__hs_check(const void *key, size_t keylen, char label, const uint8_t *nonce,
                 const void *answer, size_t len);
/* Parse a verdict: 0 for welcome, -EACCES for anything else. */
int mp__hs_parse_verdict(const void *buf, size_t len);
/* Fill buf with n random bytes (getrandom). 0 or -errno. */
int mp__random_bytes(void *buf, size_t n);

/* Manager requests and replies (src/manager_*.c), encoded as frames:
 *   request  [op, target, name, args, timeout]  target: object id (0 for
 *            none); name: the type (CREATE), method (CALL) or object name
 *            (LOOKUP, PUBLISH)
 *   reply    [status, value]  LOOKUP's value: [id, type name]
 * args is borrowed (NULL sends an empty list). Op 5 is the manager's
 * MP__SH_OP_OFFER (src/manager_internal.h). */
enum {
  MP__OP_CREATE = 1,
  MP__OP_CALL = 2,
  MP__OP_RELEASE = 3,
  MP__OP_SHUTDOWN = 4,
  MP__OP_LOOKUP = 6,  /* the object published under name */
  MP__OP_PUBLISH = 7, /* publish object target under name */
};
int mp__encode_request(int op, int64_t id, const char *name, const mp_obj *args, double timeout,
                       char **buf, size_t *len);
int mp__encode_reply(int status, const mp_obj *value, char **buf, size_t *len);

#endif /* MP_WIRE_H */
