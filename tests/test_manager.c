/* SPDX-License-Identifier: MIT */
/* Manager: typed values and their wire format, the server and every proxy
 * type from several processes, custom types, authentication, malformed and
 * oversized input, server death and lifetime, Listener/Client, TCP, and the
 * shared channel of same-family clients (white-box: it counts the calls the
 * channel answered). */
#include "testutil.h"

#include <arpa/inet.h>
#include <math.h>
#include <poll.h>
#include <fcntl.h>
#include <mp.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>

#include <pthread.h>
#include <stdatomic.h>

#include "internal.h" /* mp__manager_channel_calls() */
#include "wire.h"     /* raw requests, the dict index */

/* ---------------------------------------------------------------- helpers */

static mp_manager *start(void) {
  mp_manager *m;
  assert_int_equal(mp_manager_new(NULL, &m), 0);
  assert_int_equal(mp_manager_start(m), 0);
  return m;
}

static void check_repr(const mp_obj *o, const char *want) {
  char buf[512];
  assert_true(mp_obj_repr(o, buf, sizeof buf) >= 0);
  assert_string_equal(buf, want);
}

static int64_t as_int(const mp_obj *o) {
  int64_t v = -999;
  assert_int_equal(mp_obj_get_int(o, &v), 0);
  return v;
}

typedef int (*timed_op)(void *ctx, double timeout);

/* Timeout 0 fails at once; 0.2 s fails after 0.2 s and not wildly later; a
 * stream of signals during a 0.5 s wait neither ends it early nor stretches it. */
static void check_timeouts(timed_op op, void *ctx, int expect) {
  double t0 = tu_now();
  assert_int_equal(op(ctx, MP_NOWAIT), expect);
  assert_true(tu_now() - t0 < 0.5);

  t0 = tu_now();
  assert_int_equal(op(ctx, 0.2), expect);
  double el = tu_now() - t0;
  assert_true(el >= 0.2 - 0.01);
  assert_true(el < 2.0);

  tu_signals_start(0.05, 0.05);
  t0 = tu_now();
  int r = op(ctx, 0.5);
  el = tu_now() - t0;
  int n = tu_signals_stop();
  assert_int_equal(r, expect);
  assert_true(n >= 3);
  assert_true(el >= 0.5 - 0.01);
  assert_true(el < 2.5);
}

/* ------------------------------------------------------------------ values */

static void test_manager_obj_scalars(void **state) {
  (void)state;
  mp_obj *n = mp_obj_nil(), *b = mp_obj_bool(5), *i = mp_obj_int(-42), *f = mp_obj_float(81),
         *s = mp_obj_str("it's"), *sn = mp_obj_strn("a\0b", 3), *y = mp_obj_bytes("\x00\xff", 2);
  assert_int_equal(mp_obj_type(n), MP_OBJ_NIL);
  assert_int_equal(mp_obj_type(NULL), -EINVAL);
  int bv;
  assert_int_equal(mp_obj_get_bool(b, &bv), 0);
  assert_int_equal(bv, 1);
  assert_int_equal(mp_obj_get_bool(i, &bv), -EDOM);
  assert_int_equal(mp_obj_get_bool(NULL, &bv), -EINVAL);
  assert_int_equal(as_int(i), -42);
  int64_t iv;
  assert_int_equal(mp_obj_get_int(f, &iv), -EDOM);
  double fv;
  assert_int_equal(mp_obj_get_float(f, &fv), 0);
  assert_true(fv == 81.0);
  assert_int_equal(mp_obj_get_float(i, &fv), 0);
  assert_true(fv == -42.0);
  assert_int_equal(mp_obj_get_float(s, &fv), -EDOM);
  const char *sv;
  size_t len;
  assert_int_equal(mp_obj_get_str(sn, &sv, &len), 0);
  assert_int_equal(len, 3);
  assert_memory_equal(sv, "a\0b", 3);
  assert_int_equal(mp_obj_get_str(y, &sv, &len), -EDOM);
  const void *yv;
  assert_int_equal(mp_obj_get_bytes(y, &yv, &len), 0);
  assert_int_equal(len, 2);
  assert_int_equal(mp_obj_get_bytes(s, &yv, &len), -EDOM);
  assert_int_equal(mp_obj_len(s), 4);
  assert_int_equal(mp_obj_len(i), -EDOM);
  assert_int_equal(mp_obj_len(NULL), -EINVAL);
  assert_null(mp_obj_str(NULL));
  assert_null(mp_obj_strn(NULL, 1));
  assert_null(mp_obj_bytes(NULL, 1));
  check_repr(n, "None");
  check_repr(b, "True");
  check_repr(i, "-42");
  check_repr(f, "81.0");
  check_repr(s, "\"it's\"");
  check_repr(sn, "'a\\x00b'");
  check_repr(y, "b'\\x00\\xff'");
  mp_obj *g = mp_obj_float(0.1);
  check_repr(g, "0.1");
  char small[4];
  assert_int_equal(mp_obj_repr(s, small, sizeof small), 6);
  assert_string_equal(small, "\"it");
  assert_int_equal(mp_obj_repr(NULL, small, 4), -EINVAL);
  assert_int_equal(mp_obj_repr(s, NULL, 4), -EINVAL);
  assert_int_equal(mp_obj_repr(s, NULL, 0), 6);
  mp_obj *c = mp_obj_copy(sn);
  assert_int_equal(mp_obj_equal(c, sn), 1);
  assert_int_equal(mp_obj_equal(c, s), 0);
  assert_int_equal(mp_obj_equal(NULL, s), -EINVAL);
  mp_obj *one = mp_obj_int(1), *onef = mp_obj_float(1);
  assert_int_equal(mp_obj_equal(one, onef), 0);
  assert_null(mp_obj_copy(NULL));
  mp_obj *objs[] = {n, b, i, f, s, sn, y, g, c, one, onef};
  for (size_t k = 0; k < sizeof objs / sizeof objs[0]; k++)
    assert_int_equal(mp_obj_free(objs[k]), 0);
  assert_int_equal(mp_obj_free(NULL), 0);
}

static void test_manager_obj_containers(void **state) {
  (void)state;
  mp_obj *l = mp_obj_listv(3, mp_obj_int(1), mp_obj_str("two"), mp_obj_nil());
  assert_non_null(l);
  assert_int_equal(mp_obj_len(l), 3);
  const mp_obj *it;
  assert_int_equal(mp_obj_list_get(l, -1, &it), 0);
  assert_int_equal(mp_obj_type(it), MP_OBJ_NIL);
  assert_int_equal(mp_obj_list_get(l, 3, &it), -ERANGE);
  assert_int_equal(mp_obj_list_get(l, -4, &it), -ERANGE);
  assert_int_equal(mp_obj_list_append(l, NULL), -ENOMEM);
  assert_int_equal(mp_obj_list_append(NULL, mp_obj_int(1)), -EINVAL);
  mp_obj *d = mp_obj_dict();
  assert_int_equal(mp_obj_list_append(d, mp_obj_int(1)), -EDOM);
  assert_int_equal(mp_obj_list_get(d, 0, &it), -EDOM);
  assert_null(mp_obj_listv(2, mp_obj_int(1), NULL));
  /* a dict big enough to use its hash index, with a replaced key */
  for (int k = 0; k < 100; k++)
    assert_int_equal(mp_obj_dict_set(d, mp_obj_int(k), mp_obj_int(k * k)), 0);
  assert_int_equal(mp_obj_dict_set(d, mp_obj_int(7), mp_obj_str("seven")), 0);
  assert_int_equal(mp_obj_len(d), 100);
  mp_obj *key = mp_obj_int(99);
  assert_int_equal(mp_obj_dict_get(d, key, &it), 0);
  assert_int_equal(as_int(it), 9801);
  mp_obj *miss = mp_obj_int(100);
  assert_int_equal(mp_obj_dict_get(d, miss, &it), -ENOENT);
  assert_int_equal(mp_obj_dict_get(l, miss, &it), -EDOM);
  assert_int_equal(mp_obj_dict_set(d, NULL, mp_obj_int(1)), -ENOMEM);
  assert_int_equal(mp_obj_dict_set(l, mp_obj_int(1), mp_obj_int(1)), -EDOM);
  assert_int_equal(mp_obj_dict_set(NULL, mp_obj_int(1), mp_obj_int(1)), -EINVAL);
  const mp_obj *k2, *v2;
  assert_int_equal(mp_obj_dict_item(d, 7, &k2, &v2), 0);
  assert_int_equal(as_int(k2), 7);
  assert_int_equal(mp_obj_type(v2), MP_OBJ_STR);
  assert_int_equal(mp_obj_dict_item(d, 100, &k2, &v2), -ERANGE);
  assert_int_equal(mp_obj_dict_item(l, 0, &k2, &v2), -EDOM);
  mp_obj *sd = mp_obj_dict();
  assert_int_equal(mp_obj_dict_set(sd, mp_obj_str("name"), mp_obj_listv(1, mp_obj_bool(0))), 0);
  assert_int_equal(mp_obj_dict_get_str(sd, "name", &it), 0);
  assert_int_equal(mp_obj_dict_get_str(sd, "nope", &it), -ENOENT);
  assert_int_equal(mp_obj_dict_get_str(sd, NULL, &it), -EINVAL);
  check_repr(sd, "{'name': [False]}");
  check_repr(l, "[1, 'two', None]");
  mp_obj *c = mp_obj_copy(d);
  assert_int_equal(mp_obj_equal(c, d), 1);
  mp_obj_free(c);
  mp_obj_free(key);
  mp_obj_free(miss);
  mp_obj_free(d);
  mp_obj_free(sd);
  mp_obj_free(l);
}

static void test_manager_obj_encode_decode(void **state) {
  (void)state;
  mp_obj *inner = mp_obj_dict();
  assert_int_equal(mp_obj_dict_set(inner, mp_obj_bytes("k", 1), mp_obj_float(-2.5)), 0);
  mp_obj *o = mp_obj_listv(7, mp_obj_nil(), mp_obj_bool(1), mp_obj_int(INT64_MIN),
                           mp_obj_int(INT64_MAX), mp_obj_str("héllo"), inner, mp_obj_listv(0));
  assert_non_null(o);
  void *buf;
  size_t len;
  assert_int_equal(mp_obj_encode(o, &buf, &len), 0);
  mp_obj *back;
  assert_int_equal(mp_obj_decode(buf, len, &back), 0);
  assert_int_equal(mp_obj_equal(o, back), 1);
  /* every truncation is refused, and so are trailing bytes */
  for (size_t n = 0; n < len; n++) {
    mp_obj *x = NULL;
    assert_int_equal(mp_obj_decode(buf, n, &x), -EBADMSG);
    assert_null(x);
  }
  char *longer = malloc(len + 1);
  memcpy(longer, buf, len);
  longer[len] = 0;
  assert_int_equal(mp_obj_decode(longer, len + 1, &back), -EBADMSG);
  free(longer);
  mp_obj_free(back);
  free(buf);
  assert_int_equal(mp_obj_encode(NULL, &buf, &len), -EINVAL);
  assert_int_equal(mp_obj_decode(NULL, 1, &back), -EINVAL);
  /* extension types, the unused byte, a uint64 above INT64_MAX, a container
   * that claims more elements than bytes remain */
  static const unsigned char ext[] = {0xd4, 1, 2}, c1[] = {0xc1},
                             big[] = {0xcf, 0x80, 0, 0, 0, 0, 0, 0, 0},
                             lying[] = {0xdd, 0x7f, 0xff, 0xff, 0xff, 0},
                             lymap[] = {0xdf, 0, 0, 0, 2, 1, 1, 1},
                             blob[] = {0xc6, 0xff, 0xff, 0xff, 0xff, 1};
  assert_int_equal(mp_obj_decode(ext, sizeof ext, &back), -EBADMSG);
  assert_int_equal(mp_obj_decode(c1, sizeof c1, &back), -EBADMSG);
  assert_int_equal(mp_obj_decode(big, sizeof big, &back), -EBADMSG);
  assert_int_equal(mp_obj_decode(lying, sizeof lying, &back), -EBADMSG);
  assert_int_equal(mp_obj_decode(lymap, sizeof lymap, &back), -EBADMSG);
  assert_int_equal(mp_obj_decode(blob, sizeof blob, &back), -EBADMSG);
  assert_int_equal(mp_obj_decode(blob, 0, &back), -EBADMSG);
  mp_obj_free(o);
}

static void test_manager_obj_limits(void **state) {
  (void)state;
  /* nesting: MP_OBJ_MAX_DEPTH containers encode, one more does not */
  mp_obj *o = mp_obj_int(1);
  for (int d = 0; d < MP_OBJ_MAX_DEPTH; d++)
    o = mp_obj_listv(1, o);
  void *buf;
  size_t len;
  assert_int_equal(mp_obj_encode(o, &buf, &len), 0);
  mp_obj *back;
  assert_int_equal(mp_obj_decode(buf, len, &back), 0);
  mp_obj_free(back);
  free(buf);
  /* the deepest value also goes through a manager and back */
  mp_manager *m = start();
  mp_proxy *l;
  assert_int_equal(mp_manager_list(m, NULL, &l), 0);
  assert_int_equal(mp_list_proxy_append(l, o), 0);
  assert_int_equal(mp_list_proxy_get(l, 0, &back), 0);
  assert_int_equal(mp_obj_equal(back, o), 1);
  mp_obj_free(back);
  o = mp_obj_listv(1, o);
  assert_int_equal(mp_obj_encode(o, &buf, &len), -EMSGSIZE);
  assert_int_equal(mp_list_proxy_append(l, o), -EMSGSIZE);
  mp_obj_free(o);
  mp_proxy_free(l);
  mp_manager_free(m);
  /* the same depth in raw bytes is refused by the decoder */
  unsigned char deep[MP_OBJ_MAX_DEPTH + 2];
  memset(deep, 0x91, sizeof deep);
  deep[sizeof deep - 1] = 0;
  assert_int_equal(mp_obj_decode(deep, sizeof deep, &back), -EMSGSIZE);
  assert_int_equal(mp_obj_decode(deep + 1, sizeof deep - 1, &back), 0);
  mp_obj_free(back);
  /* size */
  char *huge = calloc(1, MP_OBJ_MAX_MESSAGE + 1);
  o = mp_obj_bytes(huge, MP_OBJ_MAX_MESSAGE + 1);
  assert_int_equal(mp_obj_encode(o, &buf, &len), -EMSGSIZE);
  assert_int_equal(mp_obj_decode(huge, MP_OBJ_MAX_MESSAGE + 1, &back), -EMSGSIZE);
  mp_obj_free(o);
  free(huge);
  /* item count */
  o = mp_obj_list();
  for (unsigned k = 0; k < MP_OBJ_MAX_ITEMS; k++)
    assert_int_equal(mp_obj_list_append(o, mp_obj_nil()), 0);
  assert_int_equal(mp_obj_encode(o, &buf, &len), -EMSGSIZE);
  mp_obj_free(o);
}

/* ---------------------------------------------------------------- manager */

static void test_manager_lifecycle_and_errors(void **state) {
  (void)state;
  mp_manager *m;
  assert_int_equal(mp_manager_new(NULL, NULL), -EINVAL);
  mp_manager_options bad = {.authkey = "k", .authkey_len = 0};
  assert_int_equal(mp_manager_new(&bad, &m), -EINVAL);
  mp_manager_options badaddr = {.address = "nocolon"};
  assert_int_equal(mp_manager_new(&badaddr, &m), -EINVAL);
  assert_int_equal(mp_manager_new(NULL, &m), 0);
  char addr[256];
  assert_int_equal(mp_manager_address(m, addr, sizeof addr), -ENOTCONN);
  assert_int_equal(mp_manager_shutdown(m), -ENOTCONN);
  assert_int_equal(mp_manager_pid(m), -ECHILD);
  mp_proxy *p;
  assert_int_equal(mp_manager_dict(m, NULL, &p), -ENOTCONN);
  assert_int_equal(mp_manager_connect(m), -EINVAL); /* no address */
  assert_int_equal(mp_manager_start(m), 0);
  assert_int_equal(mp_manager_start(m), -EALREADY);
  assert_int_equal(mp_manager_connect(m), -EALREADY);
  assert_int_equal(mp_manager_listen(m), -EALREADY);
  assert_int_equal(mp_manager_serve_forever(m), -EALREADY);
  assert_true(mp_manager_pid(m) > 0);
  ssize_t n = mp_manager_address(m, addr, sizeof addr);
  assert_true(n > 5);
  assert_memory_equal(addr, "unix:/", 6);
  assert_int_equal(mp_manager_address(m, addr, 4), -EMSGSIZE);
  assert_int_equal(mp_manager_address(NULL, addr, 4), -EINVAL);
  /* the private directory and the socket */
  struct stat st;
  assert_int_equal(stat(addr + 5, &st), 0);
  assert_true(S_ISSOCK(st.st_mode));
  assert_int_equal(st.st_mode & 0777, 0600);
  char dir[256];
  snprintf(dir, sizeof dir, "%s", addr + 5);
  *strrchr(dir, '/') = 0;
  assert_int_equal(stat(dir, &st), 0);
  assert_int_equal(st.st_mode & 0777, 0700);
  /* unknown types and methods */
  assert_int_equal(mp_manager_create(m, "NoSuchType", NULL, &p), -ENOENT);
  assert_int_equal(mp_manager_create(m, NULL, NULL, &p), -EINVAL);
  mp_obj *notlist = mp_obj_int(1);
  assert_int_equal(mp_manager_create(m, "dict", notlist, &p), -EINVAL);
  assert_int_equal(mp_manager_dict(m, notlist, &p), -EDOM);
  assert_int_equal(mp_manager_list(m, notlist, &p), -EDOM);
  assert_int_equal(mp_manager_array(m, notlist, &p), -EDOM);
  assert_int_equal(mp_manager_array(m, NULL, &p), -EINVAL);
  assert_int_equal(mp_manager_semaphore(m, -1, 0, &p), -EINVAL);
  assert_int_equal(mp_manager_dict(m, NULL, &p), 0);
  const char *type;
  assert_int_equal(mp_proxy_type(p, &type), 0);
  assert_string_equal(type, "dict");
  assert_int_equal(mp_proxy_type(NULL, &type), -EINVAL);
  assert_int_equal(mp_proxy_call(p, "no_such_method", NULL, MP_FOREVER, NULL), -EOPNOTSUPP);
  assert_int_equal(mp_proxy_call(p, "len", notlist, MP_FOREVER, NULL), -EINVAL);
  assert_int_equal(mp_proxy_call(p, NULL, NULL, MP_FOREVER, NULL), -EINVAL);
  assert_int_equal(mp_proxy_call(NULL, "len", NULL, MP_FOREVER, NULL), -EINVAL);
  /* a proxy of the wrong type */
  assert_int_equal(mp_list_proxy_len(p), -EINVAL);
  assert_int_equal(mp_lock_proxy_acquire(p, 0), -EINVAL);
  /* wrong argument types reach the server and come back as -EINVAL */
  mp_obj *args = mp_obj_listv(1, mp_obj_int(1));
  assert_int_equal(mp_proxy_call(p, "set", args, MP_FOREVER, NULL), -EINVAL);
  mp_obj_free(args);
  mp_obj_free(notlist);
  assert_int_equal(mp_proxy_free(p), 0);
  assert_int_equal(mp_proxy_free(NULL), 0);
  int pid = mp_manager_pid(m);
  assert_int_equal(mp_manager_shutdown(m), 0);
  assert_int_equal(mp_manager_shutdown(m), -EPIPE);
  assert_int_equal(kill(pid, 0), -1); /* reaped */
  assert_int_equal(stat(dir, &st), -1);
  assert_int_equal(mp_manager_free(m), 0);
  assert_int_equal(mp_manager_free(NULL), 0);
}

static void test_manager_dict_methods(void **state) {
  (void)state;
  mp_manager *m = start();
  mp_obj *init = mp_obj_dict();
  mp_obj_dict_set(init, mp_obj_str("a"), mp_obj_int(1));
  mp_proxy *d;
  assert_int_equal(mp_manager_dict(m, init, &d), 0);
  mp_obj *k = mp_obj_str("b"), *v = mp_obj_listv(2, mp_obj_float(1.5), mp_obj_bytes("x", 1)),
         *ka = mp_obj_str("a"), *r;
  assert_int_equal(mp_dict_proxy_set(d, k, v), 0);
  assert_int_equal(mp_dict_proxy_len(d), 2);
  assert_int_equal(mp_dict_proxy_get(d, k, &r), 0);
  assert_int_equal(mp_obj_equal(r, v), 1);
  mp_obj_free(r);
  assert_int_equal(mp_dict_proxy_contains(d, k), 1);
  assert_int_equal(mp_dict_proxy_keys(d, &r), 0);
  check_repr(r, "['a', 'b']");
  mp_obj_free(r);
  assert_int_equal(mp_dict_proxy_items(d, &r), 0);
  check_repr(r, "[['a', 1], ['b', [1.5, b'x']]]");
  mp_obj_free(r);
  assert_int_equal(mp_dict_proxy_copy(d, &r), 0);
  check_repr(r, "{'a': 1, 'b': [1.5, b'x']}");
  mp_obj_free(r);
  assert_int_equal(mp_dict_proxy_pop(d, ka, &r), 0);
  assert_int_equal(as_int(r), 1);
  mp_obj_free(r);
  assert_int_equal(mp_dict_proxy_pop(d, ka, &r), -ENOENT);
  assert_int_equal(mp_dict_proxy_get(d, ka, &r), -ENOENT);
  assert_int_equal(mp_dict_proxy_del(d, ka), -ENOENT);
  assert_int_equal(mp_dict_proxy_contains(d, ka), 0);
  assert_int_equal(mp_dict_proxy_del(d, k), 0);
  assert_int_equal(mp_dict_proxy_len(d), 0);
  assert_int_equal(mp_dict_proxy_update(d, init), 0);
  assert_int_equal(mp_dict_proxy_update(d, k), -EDOM);
  assert_int_equal(mp_dict_proxy_len(d), 1);
  assert_int_equal(mp_dict_proxy_clear(d), 0);
  assert_int_equal(mp_dict_proxy_len(d), 0);
  assert_int_equal(mp_dict_proxy_set(d, NULL, v), -EINVAL);
  assert_int_equal(mp_dict_proxy_get(d, k, NULL), -EINVAL);
  assert_int_equal(mp_dict_proxy_len(NULL), -EINVAL);
  mp_obj_free(k);
  mp_obj_free(ka);
  mp_obj_free(v);
  mp_obj_free(init);
  mp_proxy_free(d);
  assert_int_equal(mp_manager_free(m), 0);
}

/* Ten children set d[i] = i*i through a proxy made before they were forked. */
struct dict_child {
  mp_proxy *d;
  int i;
};

static int dict_child(void *arg) {
  struct dict_child *c = arg;
  mp_obj *k = mp_obj_int(c->i), *v = mp_obj_int(c->i * c->i);
  CHILD_CHECK(mp_dict_proxy_set(c->d, k, v) == 0);
  mp_obj_free(k);
  mp_obj_free(v);
  mp_proxy_free(c->d); /* a child's free leaves the object alone */
  return 0;
}

static void test_manager_dict_from_children(void **state) {
  (void)state;
  mp_manager *m = start();
  mp_proxy *d;
  assert_int_equal(mp_manager_dict(m, NULL, &d), 0);
  struct dict_child cs[10];
  pid_t pids[10];
  for (int i = 0; i < 10; i++) {
    cs[i] = (struct dict_child){d, i};
    pids[i] = tu_fork(dict_child, &cs[i], 30);
    assert_true(pids[i] > 0);
  }
  for (int i = 0; i < 10; i++)
    assert_child_ok(pids[i]);
  assert_int_equal(mp_dict_proxy_len(d), 10);
  for (int i = 0; i < 10; i++) {
    mp_obj *k = mp_obj_int(i), *v;
    assert_int_equal(mp_dict_proxy_get(d, k, &v), 0);
    assert_int_equal(as_int(v), i * i);
    mp_obj_free(k);
    mp_obj_free(v);
  }
  mp_proxy_free(d);
  mp_manager_free(m);
}

static void test_manager_list_methods(void **state) {
  (void)state;
  mp_manager *m = start();
  mp_obj *init = mp_obj_listv(3, mp_obj_int(1), mp_obj_int(2), mp_obj_int(3)), *r;
  mp_proxy *l;
  assert_int_equal(mp_manager_list(m, init, &l), 0);
  mp_obj *x = mp_obj_str("x"), *two = mp_obj_int(2);
  assert_int_equal(mp_list_proxy_append(l, x), 0);
  assert_int_equal(mp_list_proxy_extend(l, init), 0);
  assert_int_equal(mp_list_proxy_extend(l, x), -EDOM);
  assert_int_equal(mp_list_proxy_len(l), 7);
  assert_int_equal(mp_list_proxy_get(l, -1, &r), 0);
  assert_int_equal(as_int(r), 3);
  mp_obj_free(r);
  assert_int_equal(mp_list_proxy_get(l, 7, &r), -ERANGE);
  assert_int_equal(mp_list_proxy_get(l, -8, &r), -ERANGE);
  assert_int_equal(mp_list_proxy_set(l, 0, x), 0);
  assert_int_equal(mp_list_proxy_set(l, 9, x), -ERANGE);
  assert_int_equal(mp_list_proxy_index(l, two), 1);
  assert_int_equal(mp_list_proxy_count(l, two), 2);
  assert_int_equal(mp_list_proxy_count(l, x), 2);
  assert_int_equal(mp_list_proxy_remove(l, two), 0);
  assert_int_equal(mp_list_proxy_count(l, two), 1);
  assert_int_equal(mp_list_proxy_insert(l, 0, two), 0);
  assert_int_equal(mp_list_proxy_insert(l, 100, two), 0);
  assert_int_equal(mp_list_proxy_insert(l, -100, x), 0);
  assert_int_equal(mp_list_proxy_copy(l, &r), 0);
  check_repr(r, "['x', 2, 'x', 3, 'x', 1, 2, 3, 2]");
  mp_obj_free(r);
  assert_int_equal(mp_list_proxy_pop(l, -1, &r), 0);
  assert_int_equal(as_int(r), 2);
  mp_obj_free(r);
  assert_int_equal(mp_list_proxy_pop(l, 0, &r), 0);
  mp_obj_free(r);
  assert_int_equal(mp_list_proxy_pop(l, 50, &r), -ERANGE);
  mp_obj *absent = mp_obj_int(77);
  assert_int_equal(mp_list_proxy_remove(l, absent), -ENOENT);
  assert_int_equal(mp_list_proxy_index(l, absent), -ENOENT);
  assert_int_equal(mp_list_proxy_count(l, absent), 0);
  assert_int_equal(mp_list_proxy_append(l, NULL), -EINVAL);
  mp_proxy *e;
  assert_int_equal(mp_manager_list(m, NULL, &e), 0);
  assert_int_equal(mp_list_proxy_pop(e, -1, &r), -ERANGE);
  mp_proxy_free(e);
  mp_obj_free(absent);
  mp_obj_free(x);
  mp_obj_free(two);
  mp_obj_free(init);
  mp_proxy_free(l);
  mp_manager_free(m);
}

/* 100 children each subtract 1 from l[0] under a manager Lock. */
struct counter {
  mp_proxy *l, *lock;
};

static int counter_child(void *arg) {
  struct counter *c = arg;
  CHILD_CHECK(mp_lock_proxy_acquire(c->lock, MP_FOREVER) == 0);
  mp_obj *v;
  CHILD_CHECK(mp_list_proxy_get(c->l, 0, &v) == 0);
  int64_t n;
  CHILD_CHECK(mp_obj_get_int(v, &n) == 0);
  mp_obj_free(v);
  v = mp_obj_int(n - 1);
  CHILD_CHECK(mp_list_proxy_set(c->l, 0, v) == 0);
  mp_obj_free(v);
  CHILD_CHECK(mp_lock_proxy_release(c->lock) == 0);
  return 0;
}

static void test_manager_list_and_lock_from_children(void **state) {
  (void)state;
  mp_manager *m = start();
  mp_obj *init = mp_obj_listv(1, mp_obj_int(40));
  struct counter c;
  assert_int_equal(mp_manager_list(m, init, &c.l), 0);
  assert_int_equal(mp_manager_lock(m, &c.lock), 0);
  pid_t pids[40];
  for (int i = 0; i < 40; i++)
    assert_true((pids[i] = tu_fork(counter_child, &c, 60)) > 0);
  for (int i = 0; i < 40; i++)
    assert_child_ok(pids[i]);
  mp_obj *v;
  assert_int_equal(mp_list_proxy_get(c.l, 0, &v), 0);
  assert_int_equal(as_int(v), 0);
  mp_obj_free(v);
  mp_obj_free(init);
  mp_proxy_free(c.l);
  mp_proxy_free(c.lock);
  mp_manager_free(m);
}

static int ns_child(void *arg) {
  mp_proxy *ns = arg;
  mp_obj *v = mp_obj_str("from child");
  CHILD_CHECK(mp_namespace_proxy_set(ns, "y", v) == 0);
  mp_obj_free(v);
  CHILD_CHECK(mp_namespace_proxy_get(ns, "x", &v) == 0);
  int64_t x;
  CHILD_CHECK(mp_obj_get_int(v, &x) == 0 && x == 10);
  mp_obj_free(v);
  return 0;
}

static void test_manager_namespace(void **state) {
  (void)state;
  mp_manager *m = start();
  mp_proxy *ns;
  assert_int_equal(mp_manager_namespace(m, &ns), 0);
  mp_obj *v = mp_obj_int(10), *r;
  assert_int_equal(mp_namespace_proxy_set(ns, "x", v), 0);
  pid_t pid = tu_fork(ns_child, ns, 30);
  assert_child_ok(pid);
  assert_int_equal(mp_namespace_proxy_get(ns, "y", &r), 0);
  check_repr(r, "'from child'");
  mp_obj_free(r);
  assert_int_equal(mp_namespace_proxy_del(ns, "y"), 0);
  assert_int_equal(mp_namespace_proxy_get(ns, "y", &r), -ENOENT);
  assert_int_equal(mp_namespace_proxy_del(ns, "y"), -ENOENT);
  assert_int_equal(mp_namespace_proxy_get(ns, NULL, &r), -EINVAL);
  assert_int_equal(mp_namespace_proxy_set(ns, "x", NULL), -EINVAL);
  mp_obj_free(v);
  mp_proxy_free(ns);
  mp_manager_free(m);
}

static int queue_get_op(void *ctx, double t) {
  mp_obj *r = NULL;
  int e = mp_queue_proxy_get(ctx, t, &r);
  mp_obj_free(r);
  return e;
}

static int queue_put_op(void *ctx, double t) {
  mp_obj *v = mp_obj_nil();
  int e = mp_queue_proxy_put(ctx, v, t);
  mp_obj_free(v);
  return e;
}

static int queue_child(void *arg) {
  mp_proxy *q = arg;
  for (int i = 0; i < 5; i++) {
    mp_obj *v = mp_obj_int(i * i);
    CHILD_CHECK(mp_queue_proxy_put(q, v, 10) == 0);
    mp_obj_free(v);
  }
  return 0;
}

static void test_manager_queue(void **state) {
  (void)state;
  mp_manager *m = start();
  mp_proxy *q;
  assert_int_equal(mp_manager_queue(m, 2, &q), 0);
  check_timeouts(queue_get_op, q, -ETIMEDOUT);
  pid_t pid = tu_fork(queue_child, q, 30);
  for (int i = 0; i < 5; i++) {
    mp_obj *r;
    assert_int_equal(mp_queue_proxy_get(q, 10, &r), 0);
    assert_int_equal(as_int(r), i * i);
    mp_obj_free(r);
  }
  assert_child_ok(pid);
  assert_int_equal(queue_put_op(q, 0), 0);
  assert_int_equal(queue_put_op(q, 0), 0);
  assert_int_equal(mp_queue_proxy_qsize(q), 2);
  check_timeouts(queue_put_op, q, -ETIMEDOUT);
  assert_int_equal(mp_queue_proxy_put(q, NULL, 0), -EINVAL);
  assert_int_equal(mp_queue_proxy_get(q, 0, NULL), -EINVAL);
  mp_proxy_free(q);
  mp_manager_free(m);
}

static int lock_acquire_op(void *ctx, double t) { return mp_lock_proxy_acquire(ctx, t); }

static int holder_child(void *arg) {
  mp_proxy *l = arg;
  CHILD_CHECK(mp_lock_proxy_acquire(l, 0) == 0);
  return 0; /* exits holding it: the server releases it */
}

static void test_manager_locks(void **state) {
  (void)state;
  mp_manager *m = start();
  mp_proxy *l, *rl, *s, *bs;
  assert_int_equal(mp_manager_lock(m, &l), 0);
  assert_int_equal(mp_manager_rlock(m, &rl), 0);
  assert_int_equal(mp_manager_semaphore(m, 2, 0, &s), 0);
  assert_int_equal(mp_manager_semaphore(m, 1, 1, &bs), 0);
  /* Lock */
  assert_int_equal(mp_lock_proxy_release(l), -EPERM);
  assert_int_equal(mp_lock_proxy_acquire(l, 0), 0);
  check_timeouts(lock_acquire_op, l, -ETIMEDOUT);
  assert_int_equal(mp_lock_proxy_release(l), 0);
  /* a child that dies holding the lock leaves it free */
  assert_child_ok(tu_fork(holder_child, l, 30));
  assert_int_equal(mp_lock_proxy_acquire(l, 5), 0);
  assert_int_equal(mp_lock_proxy_release(l), 0);
  /* RLock: recursive for its owner, refused for another connection */
  assert_int_equal(mp_lock_proxy_acquire(rl, 0), 0);
  assert_int_equal(mp_lock_proxy_acquire(rl, 0), 0);
  /* a child is another connection: it does not own the RLock */
  pid_t pid = fork();
  if (pid == 0) {
    alarm(30);
    CHILD_CHECK(mp_lock_proxy_release(rl) == -EPERM);
    CHILD_CHECK(mp_lock_proxy_acquire(rl, 0.1) == -ETIMEDOUT);
    _exit(0);
  }
  assert_child_ok(pid);
  assert_int_equal(mp_lock_proxy_release(rl), 0);
  assert_int_equal(mp_lock_proxy_release(rl), 0);
  assert_int_equal(mp_lock_proxy_release(rl), -EPERM);
  /* Semaphore */
  assert_int_equal(mp_lock_proxy_acquire(s, 0), 0);
  assert_int_equal(mp_lock_proxy_acquire(s, 0), 0);
  check_timeouts(lock_acquire_op, s, -ETIMEDOUT);
  assert_int_equal(mp_lock_proxy_release(s), 0);
  assert_int_equal(mp_lock_proxy_release(s), 0);
  assert_int_equal(mp_lock_proxy_release(s), 0); /* unbounded */
  /* BoundedSemaphore */
  assert_int_equal(mp_lock_proxy_release(bs), -EOVERFLOW);
  assert_int_equal(mp_lock_proxy_acquire(bs, 0), 0);
  assert_int_equal(mp_lock_proxy_release(bs), 0);
  mp_proxy_free(l);
  mp_proxy_free(rl);
  mp_proxy_free(s);
  mp_proxy_free(bs);
  mp_manager_free(m);
}

static int event_wait_op(void *ctx, double t) { return mp_event_proxy_wait(ctx, t); }

static int event_child(void *arg) {
  tu_sleep(0.2);
  CHILD_CHECK(mp_event_proxy_set(arg) == 0);
  return 0;
}

static void test_manager_event(void **state) {
  (void)state;
  mp_manager *m = start();
  mp_proxy *e;
  assert_int_equal(mp_manager_event(m, &e), 0);
  assert_int_equal(mp_event_proxy_is_set(e), 0);
  check_timeouts(event_wait_op, e, -ETIMEDOUT);
  pid_t pid = tu_fork(event_child, e, 30);
  assert_int_equal(mp_event_proxy_wait(e, 10), 0);
  assert_child_ok(pid);
  assert_int_equal(mp_event_proxy_is_set(e), 1);
  assert_int_equal(mp_event_proxy_wait(e, 0), 0);
  assert_int_equal(mp_event_proxy_clear(e), 0);
  assert_int_equal(mp_event_proxy_is_set(e), 0);
  assert_int_equal(mp_event_proxy_is_set(NULL), -EINVAL);
  mp_proxy_free(e);
  mp_manager_free(m);
}

static int cond_wait_op(void *ctx, double t) { return mp_condition_proxy_wait(ctx, t); }

struct cond_ctx {
  mp_proxy *c, *flag;
};

static int cond_child(void *arg) {
  struct cond_ctx *x = arg;
  tu_sleep(0.2);
  CHILD_CHECK(mp_lock_proxy_acquire(x->c, 10) == 0);
  mp_obj *v = mp_obj_bool(1);
  CHILD_CHECK(mp_value_proxy_set(x->flag, v) == 0);
  mp_obj_free(v);
  CHILD_CHECK(mp_condition_proxy_notify(x->c, 1) == 0);
  CHILD_CHECK(mp_lock_proxy_release(x->c) == 0);
  return 0;
}

static void test_manager_condition(void **state) {
  (void)state;
  mp_manager *m = start();
  struct cond_ctx x;
  assert_int_equal(mp_manager_condition(m, &x.c), 0);
  assert_int_equal(mp_manager_value(m, NULL, &x.flag), 0);
  assert_int_equal(mp_condition_proxy_wait(x.c, 0), -EPERM);
  assert_int_equal(mp_condition_proxy_notify(x.c, 1), -EPERM);
  assert_int_equal(mp_condition_proxy_notify_all(x.c), -EPERM);
  assert_int_equal(mp_lock_proxy_acquire(x.c, 0), 0);
  check_timeouts(cond_wait_op, x.c, -ETIMEDOUT);
  /* still held after the timeouts */
  assert_int_equal(mp_condition_proxy_notify_all(x.c), 0);
  pid_t pid = tu_fork(cond_child, &x, 30);
  int got = 0;
  for (int i = 0; i < 100 && !got; i++) {
    mp_obj *v;
    assert_int_equal(mp_value_proxy_get(x.flag, &v), 0);
    got = mp_obj_type(v) == MP_OBJ_BOOL;
    mp_obj_free(v);
    if (!got)
      assert_int_equal(mp_condition_proxy_wait(x.c, 10), 0);
  }
  assert_true(got);
  assert_int_equal(mp_lock_proxy_release(x.c), 0);
  assert_child_ok(pid);
  mp_proxy_free(x.c);
  mp_proxy_free(x.flag);
  mp_manager_free(m);
}

static void test_manager_value_array(void **state) {
  (void)state;
  mp_manager *m = start();
  mp_obj *init = mp_obj_float(0.5), *r;
  mp_proxy *v, *a;
  assert_int_equal(mp_manager_value(m, init, &v), 0);
  assert_int_equal(mp_value_proxy_get(v, &r), 0);
  check_repr(r, "0.5");
  mp_obj_free(r);
  mp_obj *x = mp_obj_int(124);
  assert_int_equal(mp_value_proxy_set(v, x), 0);
  assert_int_equal(mp_value_proxy_get(v, &r), 0);
  assert_int_equal(as_int(r), 124);
  mp_obj_free(r);
  assert_int_equal(mp_value_proxy_set(v, NULL), -EINVAL);
  mp_obj *arr = mp_obj_listv(3, mp_obj_int(0), mp_obj_int(0), mp_obj_int(0));
  assert_int_equal(mp_manager_array(m, arr, &a), 0);
  assert_int_equal(mp_array_proxy_len(a), 3);
  assert_int_equal(mp_array_proxy_set(a, -1, x), 0);
  assert_int_equal(mp_array_proxy_set(a, 3, x), -ERANGE);
  assert_int_equal(mp_array_proxy_get(a, 2, &r), 0);
  assert_int_equal(as_int(r), 124);
  mp_obj_free(r);
  assert_int_equal(mp_array_proxy_get(a, 3, &r), -ERANGE);
  /* an Array has no append */
  assert_int_equal(mp_proxy_call(a, "append", NULL, MP_FOREVER, NULL), -EOPNOTSUPP);
  mp_obj_free(arr);
  mp_obj_free(x);
  mp_obj_free(init);
  mp_proxy_free(v);
  mp_proxy_free(a);
  mp_manager_free(m);
}

/* ------------------------------------------------------------- custom types */

struct maths {
  int64_t calls;
};

static int maths_new(const mp_obj *args, void **self) {
  if (mp_obj_len(args) != 0)
    return -EINVAL;
  *self = calloc(1, sizeof(struct maths));
  return *self ? 0 : -ENOMEM;
}

static void maths_free(void *self) { free(self); }

static int two_ints(const mp_obj *args, int64_t *a, int64_t *b) {
  const mp_obj *x, *y;
  if (mp_obj_len(args) != 2 || mp_obj_list_get(args, 0, &x) < 0 ||
      mp_obj_list_get(args, 1, &y) < 0 || mp_obj_get_int(x, a) < 0 || mp_obj_get_int(y, b) < 0)
    return -EINVAL;
  return 0;
}

static int maths_add(void *self, const mp_obj *args, mp_obj **res) {
  int64_t a, b;
  if (two_ints(args, &a, &b) < 0)
    return -EINVAL;
  ((struct maths *)self)->calls++;
  *res = mp_obj_int(a + b);
  return 0;
}

static int maths_mul(void *self, const mp_obj *args, mp_obj **res) {
  int64_t a, b;
  if (two_ints(args, &a, &b) < 0)
    return -EINVAL;
  ((struct maths *)self)->calls++;
  *res = mp_obj_int(a * b);
  return 0;
}

static int maths_calls(void *self, const mp_obj *args, mp_obj **res) {
  (void)args;
  *res = mp_obj_int(((struct maths *)self)->calls);
  return 0;
}

static const mp_manager_method_def maths_methods[] = {
    {"add", maths_add}, {"mul", maths_mul}, {"calls", maths_calls}};

static void test_manager_custom_type(void **state) {
  (void)state;
  int r = mp_manager_register("Maths", maths_new, maths_free, maths_methods, 3);
  assert_true(r == 0 || r == -EEXIST);
  assert_int_equal(mp_manager_register("Maths", maths_new, NULL, maths_methods, 3), -EEXIST);
  assert_int_equal(mp_manager_register("dict", maths_new, NULL, maths_methods, 3), -EEXIST);
  assert_int_equal(mp_manager_register(NULL, maths_new, NULL, maths_methods, 3), -EINVAL);
  assert_int_equal(mp_manager_register("X", NULL, NULL, maths_methods, 3), -EINVAL);
  assert_int_equal(mp_manager_register("X", maths_new, NULL, NULL, 3), -EINVAL);
  mp_manager *m = start();
  mp_proxy *p;
  assert_int_equal(mp_manager_create(m, "Maths", NULL, &p), 0);
  mp_obj *args = mp_obj_listv(2, mp_obj_int(4), mp_obj_int(3)), *res;
  assert_int_equal(mp_proxy_call(p, "add", args, MP_FOREVER, &res), 0);
  assert_int_equal(as_int(res), 7);
  mp_obj_free(res);
  mp_obj_free(args);
  args = mp_obj_listv(2, mp_obj_int(7), mp_obj_int(8));
  assert_int_equal(mp_proxy_call(p, "mul", args, MP_FOREVER, &res), 0);
  assert_int_equal(as_int(res), 56);
  mp_obj_free(res);
  mp_obj_free(args);
  assert_int_equal(mp_proxy_call(p, "calls", NULL, MP_FOREVER, &res), 0);
  assert_int_equal(as_int(res), 2);
  mp_obj_free(res);
  assert_int_equal(mp_proxy_call(p, "add", NULL, MP_FOREVER, &res), -EINVAL);
  assert_int_equal(mp_proxy_call(p, "system", NULL, MP_FOREVER, &res), -EOPNOTSUPP);
  args = mp_obj_listv(1, mp_obj_int(1));
  assert_int_equal(mp_manager_create(m, "Maths", args, &p), -EINVAL); /* constructor's error */
  mp_obj_free(args);
  mp_proxy_free(p);
  mp_manager_free(m);
}


/* ------------------------------------------------------------ named objects */

/* A child of the starter: its own connection asks for the names and works
 * on the same objects the parent sees. */
static int named_child(void *arg) {
  mp_manager *m = arg;
  mp_proxy *d, *q;
  CHILD_CHECK(mp_manager_get(m, "table", &d) == 0);
  CHILD_CHECK(mp_manager_get(m, "get_queue", &q) == 0);
  mp_obj *k = mp_obj_str("from child"), *v = mp_obj_int(42);
  CHILD_CHECK(mp_dict_proxy_set(d, k, v) == 0);
  CHILD_CHECK(mp_queue_proxy_put(q, v, 5) == 0);
  mp_obj_free(k);
  mp_obj_free(v);
  mp_proxy_free(d); /* must not release the named object */
  mp_proxy_free(q);
  return 0;
}

static void test_manager_named_objects_shared(void **state) {
  (void)state;
  mp_manager_options o = {.address = "127.0.0.1:0", .authkey = "named", .authkey_len = 5};
  mp_manager *m;
  assert_int_equal(mp_manager_new(&o, &m), 0);
  mp_obj *init = mp_obj_dict();
  assert_int_equal(mp_obj_dict_set(init, mp_obj_str("a"), mp_obj_int(1)), 0);
  mp_obj *args = mp_obj_listv(1, init);
  assert_int_equal(mp_manager_register_object(m, "table", "dict", args), 0);
  mp_obj_free(args);
  assert_int_equal(mp_manager_register_object(m, "get_queue", "Queue", NULL), 0);
  /* registration errors */
  assert_int_equal(mp_manager_register_object(m, "table", "list", NULL), -EEXIST);
  assert_int_equal(mp_manager_register_object(m, "x", "NoSuchType", NULL), -ENOENT);
  args = mp_obj_listv(1, mp_obj_str("not a dict"));
  assert_int_equal(mp_manager_register_object(m, "x", "dict", args), -EINVAL);
  mp_obj_free(args);
  assert_int_equal(mp_manager_register_object(m, "", "dict", NULL), -EINVAL);
  assert_int_equal(mp_manager_register_object(NULL, "x", "dict", NULL), -EINVAL);
  char longname[80];
  memset(longname, 'n', sizeof longname - 1);
  longname[sizeof longname - 1] = 0;
  assert_int_equal(mp_manager_register_object(m, longname, "dict", NULL), -EINVAL);
  assert_int_equal(mp_manager_start(m), 0);
  assert_int_equal(mp_manager_register_object(m, "late", "dict", NULL), -EALREADY);

  pid_t pid = tu_fork(named_child, m, 30);
  assert_child_ok(pid);

  /* the parent and a separate connection see the child's changes */
  char addr[256];
  assert_true(mp_manager_address(m, addr, sizeof addr) > 0);
  mp_manager *c;
  o.address = addr;
  assert_int_equal(mp_manager_new(&o, &c), 0);
  assert_int_equal(mp_manager_connect(c), 0);
  mp_proxy *d, *q, *d2;
  assert_int_equal(mp_manager_get(m, "table", &d), 0);
  assert_int_equal(mp_manager_get(c, "table", &d2), 0);
  const char *type;
  assert_int_equal(mp_proxy_type(d2, &type), 0);
  assert_string_equal(type, "dict");
  mp_obj *all;
  assert_int_equal(mp_dict_proxy_copy(d2, &all), 0);
  check_repr(all, "{'a': 1, 'from child': 42}");
  mp_obj_free(all);
  assert_int_equal(mp_manager_get(c, "get_queue", &q), 0);
  mp_obj *got;
  assert_int_equal(mp_queue_proxy_get(q, 5, &got), 0);
  assert_int_equal(as_int(got), 42);
  mp_obj_free(got);
  /* typed calls check the kind the server reported */
  assert_int_equal(mp_queue_proxy_qsize(d), -EINVAL);
  assert_int_equal(mp_manager_get(c, "nothing here", &q), -ENOENT);
  assert_int_equal(mp_manager_get(c, "", &q), -EINVAL);
  assert_int_equal(mp_manager_get(c, longname, &q), -EINVAL);
  /* a change through one handle is seen through the other */
  mp_obj *k = mp_obj_str("b"), *v = mp_obj_int(2);
  assert_int_equal(mp_dict_proxy_set(d, k, v), 0);
  assert_int_equal(mp_dict_proxy_contains(d2, k), 1);
  mp_obj_free(k);
  mp_obj_free(v);
  mp_proxy_free(d);
  mp_proxy_free(d2);
  mp_proxy_free(q);
  mp_manager_free(c);
  mp_manager_free(m);
}

/* An existing object published by name; its creator's free no longer
 * releases it. */
static void test_manager_publish_existing_object(void **state) {
  (void)state;
  mp_manager *m = start();
  mp_proxy *l, *l2, *other;
  assert_int_equal(mp_manager_list(m, NULL, &l), 0);
  mp_obj *v = mp_obj_int(7);
  assert_int_equal(mp_list_proxy_append(l, v), 0);
  assert_int_equal(mp_proxy_publish(l, "numbers"), 0);
  assert_int_equal(mp_manager_list(m, NULL, &other), 0);
  assert_int_equal(mp_proxy_publish(other, "numbers"), -EEXIST);
  assert_int_equal(mp_proxy_publish(other, ""), -EINVAL);
  assert_int_equal(mp_proxy_publish(NULL, "x"), -EINVAL);
  mp_proxy_free(other);
  assert_int_equal(mp_proxy_free(l), 0); /* the creator lets go; the name keeps it */
  assert_int_equal(mp_manager_get(m, "numbers", &l2), 0);
  assert_int_equal(mp_list_proxy_count(l2, v), 1);
  mp_obj_free(v);
  mp_proxy_free(l2);
  mp_manager_free(m);
}

/* start(initializer): runs once, in the server, before any client. */
static int init_runs;
static pid_t init_pid;
static void count_init(void *arg) {
  init_runs += *(int *)arg;
  init_pid = getpid();
}
static int probe_new(const mp_obj *args, void **self) {
  (void)args;
  *self = NULL;
  return 0;
}
static int probe_get(void *self, const mp_obj *args, mp_obj **res) {
  (void)self;
  (void)args;
  *res = mp_obj_listv(2, mp_obj_int(init_runs), mp_obj_int(init_pid));
  return *res ? 0 : -ENOMEM;
}
static const mp_manager_method_def probe_methods[] = {{"get", probe_get}};

static void test_manager_start_initializer(void **state) {
  (void)state;
  int r = mp_manager_register("InitProbe", probe_new, NULL, probe_methods, 1);
  assert_true(r == 0 || r == -EEXIST);
  mp_manager *m;
  assert_int_equal(mp_manager_new(NULL, &m), 0);
  assert_int_equal(mp_manager_start_with(m, NULL, NULL), -EINVAL);
  int one = 1;
  assert_int_equal(mp_manager_start_with(m, count_init, &one), 0);
  assert_int_equal(mp_manager_start_with(m, count_init, &one), -EALREADY);
  mp_proxy *p;
  assert_int_equal(mp_manager_create(m, "InitProbe", NULL, &p), 0);
  mp_obj *res;
  assert_int_equal(mp_proxy_call(p, "get", NULL, MP_FOREVER, &res), 0);
  const mp_obj *runs, *pid;
  assert_int_equal(mp_obj_list_get(res, 0, &runs), 0);
  assert_int_equal(mp_obj_list_get(res, 1, &pid), 0);
  assert_int_equal(as_int(runs), 1);
  assert_int_equal(as_int(pid), mp_manager_pid(m));
  mp_obj_free(res);
  assert_int_equal(init_runs, 0); /* it ran in the server, not here */
  mp_proxy_free(p);
  mp_manager_free(m);
}


/* ---------------------------------------------------- more proxy methods */

static mp_obj *ints(size_t n, const int64_t *v) {
  mp_obj *l = mp_obj_list();
  for (size_t i = 0; i < n; i++)
    assert_int_equal(mp_obj_list_append(l, mp_obj_int(v[i])), 0);
  return l;
}

static void check_list(mp_proxy *l, const char *want) {
  mp_obj *all;
  assert_int_equal(mp_list_proxy_copy(l, &all), 0);
  check_repr(all, want);
  mp_obj_free(all);
}

static void test_manager_list_slices_and_order(void **state) {
  (void)state;
  mp_manager *m = start();
  const int64_t v[] = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9};
  mp_obj *init = ints(10, v), *got;
  mp_proxy *l;
  assert_int_equal(mp_manager_list(m, init, &l), 0);
  mp_obj_free(init);
  const int64_t N = MP_SLICE_NONE;
  assert_int_equal(mp_list_proxy_slice(l, 2, 5, N, &got), 0);
  check_repr(got, "[2, 3, 4]");
  mp_obj_free(got);
  assert_int_equal(mp_list_proxy_slice(l, N, N, -3, &got), 0);
  check_repr(got, "[9, 6, 3, 0]");
  mp_obj_free(got);
  assert_int_equal(mp_list_proxy_slice(l, -2, N, N, &got), 0);
  check_repr(got, "[8, 9]");
  mp_obj_free(got);
  assert_int_equal(mp_list_proxy_slice(l, 100, -100, -4, &got), 0);
  check_repr(got, "[9, 5, 1]");
  mp_obj_free(got);
  assert_int_equal(mp_list_proxy_slice(l, 5, 2, N, &got), 0);
  check_repr(got, "[]");
  mp_obj_free(got);
  assert_int_equal(mp_list_proxy_slice(l, N, N, 0, &got), -EINVAL);
  /* assignment: any length with step 1, the same length otherwise */
  const int64_t ab[] = {-1, -2};
  mp_obj *two = ints(2, ab);
  assert_int_equal(mp_list_proxy_set_slice(l, 1, 8, N, two), 0);
  check_list(l, "[0, -1, -2, 8, 9]");
  assert_int_equal(mp_list_proxy_set_slice(l, N, N, 2, two), -EINVAL); /* 3 slots, 2 items */
  assert_int_equal(mp_list_proxy_set_slice(l, 1, N, 2, two), 0);
  check_list(l, "[0, -1, -2, -2, 9]");
  mp_obj *d = mp_obj_dict();
  assert_int_equal(mp_list_proxy_set_slice(l, 0, 1, N, d), -EDOM);
  mp_obj_free(d);
  assert_int_equal(mp_list_proxy_set_slice(l, 5, 5, N, two), 0); /* insert at the end */
  check_list(l, "[0, -1, -2, -2, 9, -1, -2]");
  mp_obj_free(two);
  assert_int_equal(mp_list_proxy_del_slice(l, N, N, 3), 0);
  check_list(l, "[-1, -2, 9, -1]");
  assert_int_equal(mp_list_proxy_del_slice(l, -1, 0, -1), 0);
  check_list(l, "[-1]");
  assert_int_equal(mp_list_proxy_del_slice(l, 0, 1, 0), -EINVAL);
  /* *=, sort, reverse, clear */
  const int64_t three[] = {3, 1, 2};
  mp_obj *t = ints(3, three);
  assert_int_equal(mp_list_proxy_set_slice(l, N, N, N, t), 0);
  mp_obj_free(t);
  assert_int_equal(mp_list_proxy_imul(l, 2), 0);
  check_list(l, "[3, 1, 2, 3, 1, 2]");
  assert_int_equal(mp_list_proxy_imul(l, MP_OBJ_MAX_ITEMS), -EMSGSIZE);
  assert_int_equal(mp_list_proxy_len(l), 6);
  assert_int_equal(mp_list_proxy_sort(l, 0), 0);
  check_list(l, "[1, 1, 2, 2, 3, 3]");
  assert_int_equal(mp_list_proxy_sort(l, 1), 0);
  check_list(l, "[3, 3, 2, 2, 1, 1]");
  assert_int_equal(mp_list_proxy_reverse(l), 0);
  check_list(l, "[1, 1, 2, 2, 3, 3]");
  /* mixed numbers sort by value; a string among numbers is TypeError */
  mp_obj *mixed = mp_obj_listv(4, mp_obj_float(2.5), mp_obj_int(-1), mp_obj_bool(1),
                               mp_obj_float(-0.5));
  assert_int_equal(mp_list_proxy_set_slice(l, N, N, N, mixed), 0);
  mp_obj_free(mixed);
  assert_int_equal(mp_list_proxy_sort(l, 0), 0);
  check_list(l, "[-1, -0.5, True, 2.5]");
  mp_obj *sv = mp_obj_str("x");
  assert_int_equal(mp_list_proxy_append(l, sv), 0);
  mp_obj_free(sv);
  assert_int_equal(mp_list_proxy_sort(l, 0), -EDOM);
  check_list(l, "[-1, -0.5, True, 2.5, 'x']"); /* unchanged */
  mp_obj *strs = mp_obj_listv(3, mp_obj_str("pear"), mp_obj_str("apple"), mp_obj_str("app"));
  assert_int_equal(mp_list_proxy_set_slice(l, N, N, N, strs), 0);
  mp_obj_free(strs);
  assert_int_equal(mp_list_proxy_sort(l, 0), 0);
  check_list(l, "['app', 'apple', 'pear']");
  assert_int_equal(mp_list_proxy_imul(l, 0), 0);
  assert_int_equal(mp_list_proxy_len(l), 0);
  init = mp_obj_int(1);
  assert_int_equal(mp_list_proxy_append(l, init), 0);
  mp_obj_free(init);
  assert_int_equal(mp_list_proxy_clear(l), 0);
  assert_int_equal(mp_list_proxy_len(l), 0);
  mp_proxy *dp;
  assert_int_equal(mp_manager_dict(m, NULL, &dp), 0);
  assert_int_equal(mp_list_proxy_clear(dp), -EINVAL); /* a dict proxy */
  mp_proxy_free(dp);
  mp_proxy_free(l);
  mp_manager_free(m);
}

static mp_obj *pair_dict(const char *k1, int64_t v1, const char *k2, int64_t v2) {
  mp_obj *d = mp_obj_dict();
  assert_int_equal(mp_obj_dict_set(d, mp_obj_str(k1), mp_obj_int(v1)), 0);
  if (k2)
    assert_int_equal(mp_obj_dict_set(d, mp_obj_str(k2), mp_obj_int(v2)), 0);
  return d;
}

static void test_manager_dict_more_methods(void **state) {
  (void)state;
  mp_manager *m = start();
  mp_obj *init = pair_dict("a", 1, "b", 2), *got;
  mp_proxy *d;
  assert_int_equal(mp_manager_dict(m, init, &d), 0);
  mp_obj_free(init);
  assert_int_equal(mp_dict_proxy_values(d, &got), 0);
  check_repr(got, "[1, 2]");
  mp_obj_free(got);
  assert_int_equal(mp_dict_proxy_reversed(d, &got), 0);
  check_repr(got, "['b', 'a']");
  mp_obj_free(got);
  /* setdefault: the present value, or the default, set */
  mp_obj *ka = mp_obj_str("a"), *kc = mp_obj_str("c"), *nine = mp_obj_int(9);
  assert_int_equal(mp_dict_proxy_setdefault(d, ka, nine, &got), 0);
  assert_int_equal(as_int(got), 1);
  mp_obj_free(got);
  assert_int_equal(mp_dict_proxy_setdefault(d, kc, nine, &got), 0);
  assert_int_equal(as_int(got), 9);
  mp_obj_free(got);
  /* | and |= */
  mp_obj *other = pair_dict("a", 10, "z", 26);
  assert_int_equal(mp_dict_proxy_or(d, other, &got), 0);
  check_repr(got, "{'a': 10, 'b': 2, 'c': 9, 'z': 26}");
  mp_obj_free(got);
  assert_int_equal(mp_dict_proxy_len(d), 3); /* unchanged */
  assert_int_equal(mp_dict_proxy_or(d, ka, &got), -EDOM);
  mp_obj *pairs = mp_obj_listv(1, mp_obj_listv(2, mp_obj_str("b"), mp_obj_int(20)));
  assert_int_equal(mp_dict_proxy_ior(d, pairs), 0);
  mp_obj_free(pairs);
  mp_obj *badpairs = mp_obj_listv(2, mp_obj_listv(2, mp_obj_str("q"), mp_obj_int(1)),
                                  mp_obj_listv(1, mp_obj_str("short")));
  assert_int_equal(mp_dict_proxy_ior(d, badpairs), -EDOM);
  mp_obj_free(badpairs);
  assert_int_equal(mp_dict_proxy_ior(d, other), 0);
  mp_obj_free(other);
  assert_int_equal(mp_dict_proxy_copy(d, &got), 0);
  check_repr(got, "{'a': 10, 'b': 20, 'c': 9, 'z': 26}");
  mp_obj_free(got);
  /* popitem: last in, first out; KeyError when empty */
  assert_int_equal(mp_dict_proxy_popitem(d, &got), 0);
  check_repr(got, "['z', 26]");
  mp_obj_free(got);
  /* iteration: every key in order; a change of size is RuntimeError */
  mp_dict_iter it = MP_DICT_ITER_INIT;
  char keys[16] = "";
  mp_obj *k;
  int r;
  while ((r = mp_dict_proxy_next(d, &it, &k)) == 1) {
    const char *ks;
    assert_int_equal(mp_obj_get_str(k, &ks, NULL), 0);
    strcat(keys, ks);
    mp_obj_free(k);
  }
  assert_int_equal(r, 0);
  assert_string_equal(keys, "abc");
  mp_dict_iter it2 = MP_DICT_ITER_INIT;
  assert_int_equal(mp_dict_proxy_next(d, &it2, &k), 1);
  mp_obj_free(k);
  assert_int_equal(mp_dict_proxy_set(d, kc, nine), 0); /* same size: goes on */
  assert_int_equal(mp_dict_proxy_next(d, &it2, &k), 1);
  mp_obj_free(k);
  assert_int_equal(mp_dict_proxy_del(d, ka), 0);
  assert_int_equal(mp_dict_proxy_next(d, &it2, &k), -ESTALE);
  assert_int_equal(mp_dict_proxy_next(d, NULL, &k), -EINVAL);
  assert_int_equal(mp_dict_proxy_clear(d), 0);
  assert_int_equal(mp_dict_proxy_popitem(d, &got), -ENOENT);
  mp_proxy_free(d);
  /* fromkeys */
  mp_obj *ks = mp_obj_listv(2, mp_obj_str("x"), mp_obj_str("y"));
  assert_int_equal(mp_manager_dict_fromkeys(m, ks, nine, &d), 0);
  assert_int_equal(mp_dict_proxy_copy(d, &got), 0);
  check_repr(got, "{'x': 9, 'y': 9}");
  mp_obj_free(got);
  mp_proxy_free(d);
  assert_int_equal(mp_manager_dict_fromkeys(m, ks, NULL, &d), 0);
  assert_int_equal(mp_dict_proxy_copy(d, &got), 0);
  check_repr(got, "{'x': None, 'y': None}");
  mp_obj_free(got);
  mp_proxy_free(d);
  assert_int_equal(mp_manager_dict_fromkeys(m, ka, NULL, &d), -EDOM);
  mp_obj_free(ks);
  mp_obj_free(ka);
  mp_obj_free(kc);
  mp_obj_free(nine);
  mp_manager_free(m);
}

/* A consumer child marks each item done; join returns only then. */
static int jq_consumer(void *arg) {
  mp_proxy *q = arg;
  for (int i = 0; i < 3; i++) {
    mp_obj *v;
    CHILD_CHECK(mp_queue_proxy_get(q, 10, &v) == 0);
    mp_obj_free(v);
    tu_sleep(0.1);
    CHILD_CHECK(mp_queue_proxy_task_done(q) == 0);
  }
  return 0;
}

static void test_manager_queue_full_empty_joinable(void **state) {
  (void)state;
  mp_manager *m = start();
  mp_proxy *q, *jq;
  assert_int_equal(mp_manager_queue(m, 2, &q), 0);
  assert_int_equal(mp_queue_proxy_empty(q), 1);
  assert_int_equal(mp_queue_proxy_full(q), 0);
  mp_obj *v = mp_obj_int(1);
  assert_int_equal(mp_queue_proxy_put(q, v, 1), 0);
  assert_int_equal(mp_queue_proxy_empty(q), 0);
  assert_int_equal(mp_queue_proxy_full(q), 0);
  assert_int_equal(mp_queue_proxy_put(q, v, 1), 0);
  assert_int_equal(mp_queue_proxy_full(q), 1);
  assert_int_equal(mp_queue_proxy_task_done(q), -EINVAL); /* not joinable */
  assert_int_equal(mp_queue_proxy_join(q, 0), -EINVAL);
  assert_int_equal(mp_manager_joinable_queue(m, 0, &jq), 0);
  assert_int_equal(mp_queue_proxy_task_done(jq), -EOVERFLOW);
  assert_int_equal(mp_queue_proxy_join(jq, 0), 0); /* nothing unfinished */
  for (int i = 0; i < 3; i++)
    assert_int_equal(mp_queue_proxy_put(jq, v, 1), 0);
  assert_int_equal(mp_queue_proxy_full(jq), 0); /* unbounded */
  assert_int_equal(mp_queue_proxy_join(jq, 0.1), -ETIMEDOUT);
  pid_t pid = tu_fork(jq_consumer, jq, 30);
  double t0 = tu_now();
  assert_int_equal(mp_queue_proxy_join(jq, 20), 0);
  assert_true(tu_now() - t0 >= 0.25); /* three tasks of 0.1 s each */
  assert_int_equal(mp_queue_proxy_qsize(jq), 0);
  assert_child_ok(pid);
  assert_int_equal(mp_queue_proxy_task_done(jq), -EOVERFLOW);
  mp_obj_free(v);
  mp_proxy_free(q);
  mp_proxy_free(jq);
  mp_manager_free(m);
}


static void test_manager_set(void **state) {
  (void)state;
  mp_manager *m = start();
  mp_obj *init = mp_obj_listv(3, mp_obj_int(1), mp_obj_str("a"), mp_obj_int(1)), *got;
  mp_proxy *st;
  assert_int_equal(mp_manager_set(m, init, &st), 0);
  mp_obj_free(init);
  assert_int_equal(mp_set_proxy_len(st), 2);
  mp_obj *one = mp_obj_int(1), *two = mp_obj_int(2);
  assert_int_equal(mp_set_proxy_contains(st, one), 1);
  assert_int_equal(mp_set_proxy_contains(st, two), 0);
  assert_int_equal(mp_set_proxy_add(st, two), 0);
  assert_int_equal(mp_set_proxy_add(st, two), 0);
  assert_int_equal(mp_set_proxy_len(st), 3);
  assert_int_equal(mp_set_proxy_items(st, &got), 0);
  check_repr(got, "[1, 'a', 2]");
  mp_obj_free(got);
  assert_int_equal(mp_set_proxy_remove(st, one), 0);
  assert_int_equal(mp_set_proxy_remove(st, one), -ENOENT);
  assert_int_equal(mp_set_proxy_discard(st, one), 0);
  mp_obj *more = mp_obj_listv(2, mp_obj_int(2), mp_obj_int(3));
  assert_int_equal(mp_set_proxy_update(st, more), 0);
  assert_int_equal(mp_set_proxy_update(st, one), -EDOM);
  mp_obj_free(more);
  assert_int_equal(mp_set_proxy_pop(st, &got), 0);
  check_repr(got, "3");
  mp_obj_free(got);
  assert_int_equal(mp_set_proxy_clear(st), 0);
  assert_int_equal(mp_set_proxy_pop(st, &got), -ENOENT);
  assert_int_equal(mp_manager_set(m, one, &st), -EDOM);
  mp_proxy *l;
  assert_int_equal(mp_manager_list(m, NULL, &l), 0);
  assert_int_equal(mp_set_proxy_add(l, one), -EINVAL); /* not a set */
  mp_proxy_free(l);
  mp_obj_free(one);
  mp_obj_free(two);
  mp_proxy_free(st);
  mp_manager_free(m);
}

struct barrier_arg {
  mp_proxy *b, *d;
};

/* A party: records its arrival index in d[index] = 1. */
static int barrier_party(void *arg) {
  struct barrier_arg *a = arg;
  int r = mp_barrier_proxy_wait(a->b, 20);
  CHILD_CHECK(r >= 0 && r < 3);
  mp_obj *k = mp_obj_int(r), *v = mp_obj_int(1);
  CHILD_CHECK(mp_dict_proxy_set(a->d, k, v) == 0);
  mp_obj_free(k);
  mp_obj_free(v);
  return 0;
}

static int barrier_waiter(void *arg) {
  mp_proxy *b = arg;
  mp_barrier_proxy_wait(b, MP_FOREVER);
  return 99;
}

static void test_manager_barrier(void **state) {
  (void)state;
  mp_manager *m = start();
  mp_proxy *b, *d;
  assert_int_equal(mp_manager_barrier(m, 0, &b), -EINVAL);
  assert_int_equal(mp_manager_barrier(m, 3, &b), 0);
  assert_int_equal(mp_manager_dict(m, NULL, &d), 0);
  assert_int_equal(mp_barrier_proxy_parties(b), 3);
  /* three parties, two cycles: every index once per cycle */
  for (int cycle = 0; cycle < 2; cycle++) {
    struct barrier_arg a = {b, d};
    pid_t p1 = tu_fork(barrier_party, &a, 30), p2 = tu_fork(barrier_party, &a, 30);
    int idx = mp_barrier_proxy_wait(b, 20); /* the parent is the third */
    assert_true(idx >= 0 && idx < 3);
    mp_obj *k = mp_obj_int(idx), *v = mp_obj_int(1);
    assert_int_equal(mp_dict_proxy_set(d, k, v), 0);
    mp_obj_free(k);
    mp_obj_free(v);
    assert_child_ok(p1);
    assert_child_ok(p2);
    assert_int_equal(mp_dict_proxy_len(d), 3); /* three distinct indexes */
    assert_int_equal(mp_dict_proxy_clear(d), 0);
  }
  assert_int_equal(mp_barrier_proxy_n_waiting(b), 0);
  assert_int_equal(mp_barrier_proxy_broken(b), 0);
  /* a timeout breaks it for everyone */
  double t0 = tu_now();
  assert_int_equal(mp_barrier_proxy_wait(b, 0.2), -ECANCELED);
  assert_true(tu_now() - t0 >= 0.15);
  assert_int_equal(mp_barrier_proxy_broken(b), 1);
  assert_int_equal(mp_barrier_proxy_wait(b, 1), -ECANCELED);
  assert_int_equal(mp_barrier_proxy_reset(b), 0);
  assert_int_equal(mp_barrier_proxy_broken(b), 0);
  /* abort wakes a waiter */
  pid_t w = tu_fork(barrier_waiter, b, 30);
  for (int i = 0; i < 500 && mp_barrier_proxy_n_waiting(b) == 0; i++)
    tu_sleep(0.01);
  assert_int_equal(mp_barrier_proxy_n_waiting(b), 1);
  assert_int_equal(mp_barrier_proxy_abort(b), 0);
  assert_int_equal(tu_wait(w), 99);
  assert_int_equal(mp_barrier_proxy_reset(b), 0);
  /* a party killed while it waits breaks the barrier: no one waits for it */
  w = tu_fork(barrier_waiter, b, 30);
  for (int i = 0; i < 500 && mp_barrier_proxy_n_waiting(b) == 0; i++)
    tu_sleep(0.01);
  kill(w, SIGKILL);
  waitpid(w, NULL, 0);
  int broken = 0;
  for (int i = 0; i < 500 && (broken = mp_barrier_proxy_broken(b)) == 0; i++)
    tu_sleep(0.01);
  assert_int_equal(broken, 1);
  assert_int_equal(mp_barrier_proxy_wait(b, 5), -ECANCELED);
  mp_proxy_free(d);
  mp_proxy_free(b);
  mp_manager_free(m);
}


/* ------------------------------------------------------------ managed Pool */

static int pool_scale = 3; /* a function's ctx: a global, valid in the workers */

/* f(x) = x * x */
static int pf_square(const mp_obj *args, mp_obj **res, void *ctx) {
  (void)ctx;
  const mp_obj *x;
  int64_t v;
  if (mp_obj_list_get(args, 0, &x) < 0 || mp_obj_get_int(x, &v) < 0)
    return -EINVAL;
  *res = mp_obj_int(v * v);
  return 0;
}

/* f(a, b) = (a + b) * *ctx, with status 5 */
static int pf_add_scaled(const mp_obj *args, mp_obj **res, void *ctx) {
  const mp_obj *a, *b;
  int64_t x, y;
  if (mp_obj_list_get(args, 0, &a) < 0 || mp_obj_list_get(args, 1, &b) < 0 ||
      mp_obj_get_int(a, &x) < 0 || mp_obj_get_int(b, &y) < 0)
    return -EINVAL;
  *res = mp_obj_int((x + y) * *(int *)ctx);
  return 5;
}

/* the worker's pid, no result status */
static int pf_pid(const mp_obj *args, mp_obj **res, void *ctx) {
  (void)args, (void)ctx;
  *res = mp_obj_int(getpid());
  return 0;
}

/* fails with -EDOM for x == 3, else gives x */
static int pf_fail3(const mp_obj *args, mp_obj **res, void *ctx) {
  (void)ctx;
  const mp_obj *x;
  int64_t v;
  if (mp_obj_list_get(args, 0, &x) < 0 || mp_obj_get_int(x, &v) < 0)
    return -EINVAL;
  if (v == 3)
    return -EDOM;
  *res = mp_obj_int(v);
  return 0;
}

/* kills its worker for x == 3 (or no argument), else gives x */
static int pf_die3(const mp_obj *args, mp_obj **res, void *ctx) {
  (void)ctx;
  const mp_obj *x;
  int64_t v = 3;
  if (mp_obj_list_get(args, 0, &x) == 0)
    mp_obj_get_int(x, &v);
  if (v == 3)
    raise(SIGKILL);
  *res = mp_obj_int(v);
  return 0;
}

/* sleeps args[0] seconds; gives nil */
static int pf_sleep(const mp_obj *args, mp_obj **res, void *ctx) {
  (void)res, (void)ctx;
  const mp_obj *x;
  double t;
  if (mp_obj_list_get(args, 0, &x) < 0 || mp_obj_get_float(x, &t) < 0)
    return -EINVAL;
  tu_sleep(t);
  return 0;
}

/* Registration is process-wide and must precede start(): every pool test
 * registers (again: -EEXIST after the first). */
static void pool_register(void) {
  static const struct {
    const char *name;
    mp_manager_function fn;
  } fs[] = {{"square", pf_square}, {"add_scaled", pf_add_scaled}, {"pid", pf_pid},
            {"fail3", pf_fail3},   {"die3", pf_die3},             {"sleep", pf_sleep}};
  for (size_t i = 0; i < sizeof fs / sizeof fs[0]; i++) {
    int r = mp_manager_register_function(fs[i].name, fs[i].fn, &pool_scale);
    assert_true(r == 0 || r == -EEXIST);
  }
}

static mp_obj *int_list(int64_t from, int64_t to) {
  mp_obj *l = mp_obj_list();
  for (int64_t i = from; i < to; i++)
    mp_obj_list_append(l, mp_obj_int(i));
  return l;
}

static int pool_apply_int(mp_proxy *p, const char *fn, mp_obj *args, double timeout, int64_t *v) {
  mp_obj *res = NULL;
  int r = mp_pool_proxy_apply(p, fn, args, timeout, &res);
  mp_obj_free(args);
  if (r >= 0 && (mp_obj_get_int(res, v) < 0))
    r = -999;
  mp_obj_free(res);
  return r;
}

/* A map of square over 0..n-1 gives i*i in order. */
static bool map_squares_ok(mp_proxy *p, int64_t n, size_t chunksize) {
  mp_obj *items = int_list(0, n), *res = NULL;
  int r = mp_pool_proxy_map(p, "square", items, chunksize, 30, &res);
  mp_obj_free(items);
  bool ok = r == 0 && mp_obj_len(res) == n;
  for (int64_t i = 0; ok && i < n; i++) {
    const mp_obj *x;
    int64_t v;
    ok = mp_obj_list_get(res, i, &x) == 0 && mp_obj_get_int(x, &v) == 0 && v == i * i;
  }
  mp_obj_free(res);
  return ok;
}

struct pool_client {
  mp_proxy *pool;
  pid_t server;
};

/* A client process: apply and map through the pool; the work runs in
 * workers, neither here nor in the server. */
static int pool_client_main(void *arg) {
  struct pool_client *c = arg;
  int64_t v;
  CHILD_CHECK(pool_apply_int(c->pool, "square", mp_obj_listv(1, mp_obj_int(7)), 30, &v) == 0);
  CHILD_CHECK(v == 49);
  CHILD_CHECK(pool_apply_int(c->pool, "add_scaled",
                             mp_obj_listv(2, mp_obj_int(2), mp_obj_int(4)), 30, &v) == 5);
  CHILD_CHECK(v == 18);
  CHILD_CHECK(pool_apply_int(c->pool, "pid", NULL, 30, &v) == 0);
  CHILD_CHECK(v > 0 && v != getpid() && v != c->server);
  CHILD_CHECK(map_squares_ok(c->pool, 50, 3));
  CHILD_CHECK(map_squares_ok(c->pool, 50, 0));
  CHILD_CHECK(map_squares_ok(c->pool, 50, 100));
  CHILD_CHECK(map_squares_ok(c->pool, 0, 0));
  return 0;
}

static void test_manager_pool_apply_map(void **state) {
  (void)state;
  pool_register();
  mp_manager *m = start();
  mp_proxy *pool, *d;
  assert_int_equal(mp_manager_pool(m, -1, &pool), -EINVAL);
  assert_int_equal(mp_manager_pool(m, 2, &pool), 0);
  const char *type;
  assert_int_equal(mp_proxy_type(pool, &type), 0);
  assert_string_equal(type, "Pool");
  struct pool_client c = {pool, mp_manager_pid(m)};
  pid_t kids[3];
  for (int i = 0; i < 3; i++)
    kids[i] = tu_fork(pool_client_main, &c, 60);
  assert_int_equal(pool_client_main(&c), 0);
  for (int i = 0; i < 3; i++)
    assert_child_ok(kids[i]);
  /* 0 processes: the CPU count */
  mp_proxy *p0;
  assert_int_equal(mp_manager_pool(m, 0, &p0), 0);
  assert_true(map_squares_ok(p0, 20, 1));
  assert_int_equal(mp_proxy_free(p0), 0);
  /* only Pool proxies take the Pool calls; arguments are lists */
  assert_int_equal(mp_manager_dict(m, NULL, &d), 0);
  mp_obj *nil = mp_obj_nil(), *res = NULL;
  assert_int_equal(mp_pool_proxy_apply(d, "square", NULL, 5, &res), -EINVAL);
  assert_int_equal(mp_pool_proxy_apply(pool, NULL, NULL, 5, &res), -EINVAL);
  assert_int_equal(mp_pool_proxy_apply(pool, "square", nil, 5, &res), -EINVAL);
  assert_int_equal(mp_pool_proxy_map(pool, "square", NULL, 0, 5, &res), -EINVAL);
  assert_int_equal(mp_pool_proxy_map(pool, "square", nil, 0, 5, &res), -EINVAL);
  assert_null(res);
  mp_obj_free(nil);
  mp_proxy_free(d);
  assert_int_equal(mp_proxy_free(pool), 0);
  mp_manager_free(m);
}

static void test_manager_pool_registration(void **state) {
  (void)state;
  pool_register();
  assert_int_equal(mp_manager_register_function("square", pf_square, NULL), -EEXIST);
  assert_int_equal(mp_manager_register_function(NULL, pf_square, NULL), -EINVAL);
  assert_int_equal(mp_manager_register_function("", pf_square, NULL), -EINVAL);
  assert_int_equal(mp_manager_register_function("x", NULL, NULL), -EINVAL);
  char longname[80];
  memset(longname, 'a', sizeof longname - 1);
  longname[sizeof longname - 1] = 0;
  assert_int_equal(mp_manager_register_function(longname, pf_square, NULL), -EINVAL);
  /* a Pool published by name: any client reaches the same pool */
  mp_manager *m;
  assert_int_equal(mp_manager_new(NULL, &m), 0);
  mp_obj *bad = mp_obj_listv(1, mp_obj_int(-2)), *two = mp_obj_listv(1, mp_obj_int(2));
  assert_int_equal(mp_manager_register_object(m, "pool", "Pool", bad), -EINVAL);
  assert_int_equal(mp_manager_register_object(m, "pool", "Pool", two), 0);
  mp_obj_free(bad);
  mp_obj_free(two);
  assert_int_equal(mp_manager_start(m), 0);
  mp_proxy *p;
  assert_int_equal(mp_manager_get(m, "pool", &p), 0);
  int64_t v;
  assert_int_equal(pool_apply_int(p, "square", mp_obj_listv(1, mp_obj_int(9)), 30, &v), 0);
  assert_int_equal(v, 81);
  mp_proxy_free(p);
  mp_manager_free(m);
}

static void test_manager_pool_errors(void **state) {
  (void)state;
  pool_register();
  mp_manager *m = start();
  mp_proxy *pool;
  assert_int_equal(mp_manager_pool(m, 2, &pool), 0);
  mp_obj *res = NULL, *items = int_list(0, 10);
  /* an unknown name */
  assert_int_equal(mp_pool_proxy_apply(pool, "nope", NULL, 10, &res), -ENOENT);
  assert_int_equal(mp_pool_proxy_map(pool, "nope", items, 0, 10, &res), -ENOENT);
  /* a failing function: its status; in a map, the map's status */
  mp_obj *three = mp_obj_listv(1, mp_obj_int(3));
  assert_int_equal(mp_pool_proxy_apply(pool, "fail3", three, 10, &res), -EDOM);
  assert_int_equal(mp_pool_proxy_map(pool, "fail3", items, 2, 10, &res), -EDOM);
  assert_null(res);
  /* a function that kills its worker: -ECONNABORTED, and the pool serves on */
  assert_int_equal(mp_pool_proxy_apply(pool, "die3", three, 30, &res), -ECONNABORTED);
  assert_null(res);
  int64_t v;
  assert_int_equal(pool_apply_int(pool, "square", mp_obj_listv(1, mp_obj_int(5)), 30, &v), 0);
  assert_int_equal(v, 25);
  assert_int_equal(mp_pool_proxy_map(pool, "die3", items, 1, 30, &res), -ECONNABORTED);
  assert_true(map_squares_ok(pool, 30, 2));
  mp_obj *four = int_list(4, 8);
  assert_int_equal(mp_pool_proxy_map(pool, "die3", four, 1, 30, &res), 0);
  assert_int_equal(mp_obj_len(res), 4);
  mp_obj_free(res);
  mp_obj_free(four);
  /* close: no more tasks; terminate after close is fine */
  assert_int_equal(mp_pool_proxy_close(pool), 0);
  assert_int_equal(mp_pool_proxy_apply(pool, "square", three, 10, NULL), -EPIPE);
  assert_int_equal(mp_pool_proxy_terminate(pool), 0);
  assert_int_equal(mp_pool_proxy_map(pool, "square", items, 0, 10, NULL), -EPIPE);
  mp_obj_free(three);
  mp_obj_free(items);
  mp_proxy_free(pool);
  mp_manager_free(m);
}

struct pool_sleep {
  mp_proxy *pool;
  double secs;
};

static int pool_sleep_op(void *ctx, double timeout) {
  struct pool_sleep *ps = ctx;
  mp_obj *a = mp_obj_listv(1, mp_obj_float(ps->secs));
  int r = mp_pool_proxy_apply(ps->pool, "sleep", a, timeout, NULL);
  mp_obj_free(a);
  return r;
}

static int pool_map_sleep_op(void *ctx, double timeout) {
  struct pool_sleep *ps = ctx;
  mp_obj *a = mp_obj_listv(2, mp_obj_float(0), mp_obj_float(ps->secs));
  int r = mp_pool_proxy_map(ps->pool, "sleep", a, 1, timeout, NULL);
  mp_obj_free(a);
  return r;
}

/* A waiter of a terminated pool: its task ends with -ESHUTDOWN. */
static int pool_terminated_waiter(void *arg) {
  struct pool_sleep ps = {arg, 20};
  return -pool_sleep_op(&ps, 30);
}

static void test_manager_pool_timeouts(void **state) {
  (void)state;
  pool_register();
  mp_manager *m = start();
  mp_proxy *pool;
  assert_int_equal(mp_manager_pool(m, 4, &pool), 0);
  struct pool_sleep ps = {pool, 2.0};
  assert_int_equal(pool_sleep_op(&ps, NAN), -EINVAL);
  check_timeouts(pool_sleep_op, &ps, -ETIMEDOUT);
  check_timeouts(pool_map_sleep_op, &ps, -ETIMEDOUT);
  /* a task that ends in time: its result, also with no timeout */
  ps.secs = 0.05;
  assert_int_equal(pool_sleep_op(&ps, MP_FOREVER), 0);
  assert_int_equal(pool_sleep_op(&ps, 20), 0);
  assert_int_equal(pool_map_sleep_op(&ps, 20), 0);
  /* terminate ends a waiting call at once */
  pid_t w = tu_fork(pool_terminated_waiter, pool, 60);
  tu_sleep(0.5);
  double t0 = tu_now();
  assert_int_equal(mp_pool_proxy_terminate(pool), 0);
  assert_int_equal(tu_wait(w), ESHUTDOWN);
  assert_true(tu_now() - t0 < 10);
  mp_proxy_free(pool);
  mp_manager_free(m);
}

/* ------------------------------------------------- proxies inside containers */

struct nested {
  mp_manager *m;
  mp_proxy *d;
};

/* A child reads the list stored in d['l'] and appends through it. */
static int nested_child(void *arg) {
  struct nested *a = arg;
  mp_obj *k = mp_obj_str("l"), *ref = NULL;
  CHILD_CHECK(mp_dict_proxy_get(a->d, k, &ref) == 0);
  CHILD_CHECK(mp_obj_type(ref) == MP_OBJ_PROXY);
  mp_proxy *inner;
  CHILD_CHECK(mp_obj_get_proxy(a->m, ref, &inner) == 0);
  mp_obj *v = mp_obj_str("from child");
  CHILD_CHECK(mp_list_proxy_append(inner, v) == 0);
  mp_obj_free(v);
  mp_obj_free(ref);
  mp_obj_free(k);
  mp_proxy_free(inner); /* not the creator: the list stays */
  return 0;
}

static void test_manager_proxies_inside_containers(void **state) {
  (void)state;
  mp_manager *m = start();
  mp_proxy *d, *l, *q, *outer;
  assert_int_equal(mp_manager_dict(m, NULL, &d), 0);
  assert_int_equal(mp_manager_list(m, NULL, &l), 0);
  assert_int_equal(mp_manager_queue(m, 0, &q), 0);
  assert_int_equal(mp_manager_list(m, NULL, &outer), 0);
  /* a dict of lists: d['l'] = l */
  mp_obj *k = mp_obj_str("l"), *ref = mp_obj_proxy(l);
  assert_non_null(ref);
  assert_null(mp_obj_proxy(NULL));
  assert_int_equal(mp_dict_proxy_set(d, k, ref), 0);
  char buf[64];
  assert_true(mp_obj_repr(ref, buf, sizeof buf) > 0);
  assert_memory_equal(buf, "<proxy ", 7);
  mp_obj_free(ref);
  struct nested a = {m, d};
  pid_t pid = tu_fork(nested_child, &a, 30);
  assert_child_ok(pid);
  check_list(l, "['from child']"); /* seen by the holder of the list itself */
  /* a Queue proxy in a list: put through the reference, get through q */
  ref = mp_obj_proxy(q);
  assert_int_equal(mp_list_proxy_append(outer, ref), 0);
  mp_obj_free(ref);
  mp_obj *got, *v = mp_obj_int(5);
  assert_int_equal(mp_list_proxy_get(outer, 0, &got), 0);
  mp_proxy *qq;
  assert_int_equal(mp_obj_get_proxy(m, got, &qq), 0);
  mp_obj_free(got);
  const char *type;
  assert_int_equal(mp_proxy_type(qq, &type), 0);
  assert_string_equal(type, "Queue");
  assert_int_equal(mp_queue_proxy_put(qq, v, 1), 0);
  assert_int_equal(mp_queue_proxy_get(q, 1, &got), 0);
  assert_int_equal(as_int(got), 5);
  mp_obj_free(got);
  mp_proxy_free(qq);
  /* errors */
  assert_int_equal(mp_obj_get_proxy(m, v, &qq), -EDOM);
  assert_int_equal(mp_obj_get_proxy(NULL, v, &qq), -EINVAL);
  /* lifetime: the creator lets go of the list; d still holds it */
  mp_proxy *again;
  assert_int_equal(mp_proxy_free(l), 0);
  assert_int_equal(mp_dict_proxy_get(d, k, &ref), 0);
  assert_int_equal(mp_obj_get_proxy(m, ref, &again), 0);
  assert_int_equal(mp_list_proxy_len(again), 1);
  /* a list of dicts holding it too: two containers refer to it */
  assert_int_equal(mp_list_proxy_append(outer, ref), 0);
  assert_int_equal(mp_dict_proxy_del(d, k), 0);
  assert_int_equal(mp_list_proxy_len(again), 1); /* outer still refers */
  assert_int_equal(mp_list_proxy_pop(outer, -1, &got), 0); /* the last reference leaves */
  mp_obj_free(got);
  assert_int_equal(mp_list_proxy_len(again), -ESRCH); /* freed */
  assert_int_equal(mp_obj_get_proxy(m, ref, &qq), -ESRCH);
  mp_obj_free(ref);
  mp_proxy_free(again);
  /* a chain: outer -> d2 -> l2; freed together when outer goes */
  mp_proxy *d2, *l2;
  assert_int_equal(mp_manager_dict(m, NULL, &d2), 0);
  assert_int_equal(mp_manager_list(m, NULL, &l2), 0);
  ref = mp_obj_proxy(l2);
  assert_int_equal(mp_dict_proxy_set(d2, k, ref), 0);
  mp_obj_free(ref);
  ref = mp_obj_proxy(d2);
  assert_int_equal(mp_list_proxy_append(outer, ref), 0);
  mp_obj_free(ref);
  ref = mp_obj_proxy(l2);
  mp_proxy_free(d2);
  mp_proxy_free(l2);
  assert_int_equal(mp_obj_get_proxy(m, ref, &again), 0); /* alive through outer -> d2 */
  assert_int_equal(mp_list_proxy_append(again, v), 0);
  assert_int_equal(mp_proxy_free(outer), 0); /* the root goes: so do d2 and l2 */
  assert_int_equal(mp_list_proxy_len(again), -ESRCH);
  mp_proxy_free(again);
  mp_obj_free(ref);
  mp_obj_free(v);
  mp_obj_free(k);
  mp_proxy_free(q);
  mp_proxy_free(d);
  mp_manager_free(m);
}

static void test_manager_proxy_reference_wire(void **state) {
  (void)state;
  mp_manager *m = start();
  mp_proxy *l;
  assert_int_equal(mp_manager_list(m, NULL, &l), 0);
  mp_obj *ref = mp_obj_proxy(l), *back;
  void *buf;
  size_t len;
  assert_int_equal(mp_obj_encode(ref, &buf, &len), 0);
  assert_int_equal(len, 10); /* fixext 8 */
  assert_int_equal(mp_obj_decode(buf, len, &back), 0);
  assert_int_equal(mp_obj_equal(ref, back), 1);
  mp_obj_free(back);
  unsigned char *b = buf;
  b[1] = 2; /* another extension type */
  assert_int_equal(mp_obj_decode(buf, len, &back), -EBADMSG);
  b[1] = 1;
  memset(b + 2, 0, 8); /* id 0 */
  assert_int_equal(mp_obj_decode(buf, len, &back), -EBADMSG);
  b[2] = 0x80; /* negative */
  assert_int_equal(mp_obj_decode(buf, len, &back), -EBADMSG);
  free(buf);
  mp_obj *i = mp_obj_int(1);
  assert_int_equal(mp_obj_equal(ref, i), 0);
  mp_obj_free(i);
  /* a reference as a dict key works like any value */
  mp_obj *d = mp_obj_dict();
  assert_int_equal(mp_obj_dict_set(d, mp_obj_copy(ref), mp_obj_int(1)), 0);
  const mp_obj *found;
  assert_int_equal(mp_obj_dict_get(d, ref, &found), 0);
  mp_obj_free(d);
  mp_obj_free(ref);
  mp_proxy_free(l);
  mp_manager_free(m);
}

/* --------------------------------------------------------------- security */

static void test_manager_wrong_key_refused(void **state) {
  (void)state;
  mp_manager_options o = {.address = "127.0.0.1:0", .authkey = "right key", .authkey_len = 9};
  mp_manager *m;
  assert_int_equal(mp_manager_new(&o, &m), 0);
  assert_int_equal(mp_manager_start(m), 0);
  char addr[256];
  assert_true(mp_manager_address(m, addr, sizeof addr) > 0);
  assert_memory_equal(addr, "127.0.0.1:", 10);
  assert_true(atoi(addr + 10) > 0);
  mp_manager_options w = {.address = addr, .authkey = "wrong key", .authkey_len = 9};
  mp_manager *c;
  for (int i = 0; i < 3; i++) {
    assert_int_equal(mp_manager_new(&w, &c), 0);
    assert_int_equal(mp_manager_connect(c), -EACCES);
    assert_int_equal(mp_manager_free(c), 0);
  }
  /* no key at all */
  mp_manager_options nk = {.address = addr};
  assert_int_equal(mp_manager_new(&nk, &c), 0);
  assert_int_equal(mp_manager_connect(c), -EACCES);
  mp_manager_free(c);
  /* the right key still works, from a second handle */
  mp_manager_options ok = {.address = addr, .authkey = "right key", .authkey_len = 9};
  assert_int_equal(mp_manager_new(&ok, &c), 0);
  assert_int_equal(mp_manager_connect(c), 0);
  mp_proxy *d;
  assert_int_equal(mp_manager_dict(c, NULL, &d), 0);
  assert_int_equal(mp_dict_proxy_len(d), 0);
  mp_proxy_free(d);
  mp_manager_free(c);
  mp_manager_free(m);
}

/* A server without a key refuses a client that insists on one: the client
 * cannot tell it is the right server. */
static int open_server_child(void *arg) {
  mp_manager *m = arg;
  CHILD_CHECK(mp_manager_serve_forever(m) == 0);
  return 0;
}

static void test_manager_serve_forever_tcp(void **state) {
  (void)state;
  mp_manager_options o = {.address = "127.0.0.1:0", .authkey = "k3y", .authkey_len = 3};
  mp_manager *srv;
  assert_int_equal(mp_manager_new(&o, &srv), 0);
  assert_int_equal(mp_manager_listen(srv), 0);
  char addr[256];
  assert_true(mp_manager_address(srv, addr, sizeof addr) > 0);
  pid_t pid = tu_fork(open_server_child, srv, 60);
  assert_int_equal(mp_manager_free(srv), 0); /* our copy of the socket */
  mp_manager_options co = {.address = addr, .authkey = "k3y", .authkey_len = 3};
  mp_manager *c1, *c2;
  assert_int_equal(mp_manager_new(&co, &c1), 0);
  assert_int_equal(mp_manager_connect(c1), 0);
  assert_int_equal(mp_manager_new(&co, &c2), 0);
  assert_int_equal(mp_manager_connect(c2), 0);
  mp_proxy *q;
  assert_int_equal(mp_manager_queue(c1, 0, &q), 0);
  mp_obj *v = mp_obj_str("over tcp"), *r;
  assert_int_equal(mp_queue_proxy_put(q, v, 1), 0);
  assert_int_equal(mp_queue_proxy_get(q, 1, &r), 0);
  assert_int_equal(mp_obj_equal(v, r), 1);
  mp_obj_free(r);
  mp_obj_free(v);
  mp_proxy_free(q);
  assert_int_equal(mp_manager_pid(c1), -ECHILD);
  assert_int_equal(mp_manager_shutdown(c2), 0); /* serve_forever returns */
  assert_child_ok(pid);
  mp_manager_free(c2);
  mp_proxy *d;
  assert_int_equal(mp_manager_dict(c1, NULL, &d), -EPIPE);
  mp_manager_free(c1);
}

static void test_manager_open_server_and_keyed_client(void **state) {
  (void)state;
  mp_manager_options o = {.no_auth = 1};
  mp_manager *m;
  assert_int_equal(mp_manager_new(&o, &m), 0);
  assert_int_equal(mp_manager_start(m), 0);
  char addr[256];
  assert_true(mp_manager_address(m, addr, sizeof addr) > 0);
  mp_manager_options k = {.address = addr, .authkey = "x", .authkey_len = 1};
  mp_manager *c;
  assert_int_equal(mp_manager_new(&k, &c), 0);
  assert_int_equal(mp_manager_connect(c), -EACCES);
  mp_manager_free(c);
  mp_manager_options n = {.address = addr, .no_auth = 1};
  assert_int_equal(mp_manager_new(&n, &c), 0);
  assert_int_equal(mp_manager_connect(c), 0);
  mp_manager_free(c);
  mp_manager_free(m);
}

/* Raw bytes to the server: garbage in a frame gets an error reply and the
 * connection goes on; an oversized frame gets -EMSGSIZE and a hang-up; the
 * server serves on either way. */
static int raw_connect(const char *addr) {
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  struct sockaddr_un un = {.sun_family = AF_UNIX};
  size_t n = strlen(addr + 5);
  assert_true(n < sizeof un.sun_path);
  memcpy(un.sun_path, addr + 5, n + 1);
  assert_int_equal(connect(fd, (struct sockaddr *)&un, sizeof un), 0);
  return fd;
}

static void raw_send(int fd, const void *p, uint32_t n) {
  unsigned char h[4] = {(unsigned char)(n >> 24), (unsigned char)(n >> 16), (unsigned char)(n >> 8),
                        (unsigned char)n};
  assert_int_equal(write(fd, h, 4), 4);
  if (n)
    assert_int_equal(write(fd, p, n), (ssize_t)n);
}

/* Read one frame and decode the reply's status. */
static int raw_status(int fd) {
  unsigned char h[4];
  if (read(fd, h, 4) != 4)
    return 1;
  uint32_t n = (uint32_t)h[0] << 24 | (uint32_t)h[1] << 16 | (uint32_t)h[2] << 8 | h[3];
  char *b = malloc(n);
  size_t got = 0;
  while (got < n) {
    ssize_t r = read(fd, b + got, n - got);
    if (r <= 0)
      break;
    got += (size_t)r;
  }
  mp_obj *o;
  int st = 2;
  if (got == n && mp_obj_decode(b, n, &o) == 0) {
    const mp_obj *s;
    int64_t v;
    if (mp_obj_list_get(o, 0, &s) == 0 && mp_obj_get_int(s, &v) == 0)
      st = (int)v;
    mp_obj_free(o);
  }
  free(b);
  return st;
}

static void test_manager_malformed_and_oversized_input(void **state) {
  (void)state;
  mp_manager_options o = {.no_auth = 1};
  mp_manager *m;
  assert_int_equal(mp_manager_new(&o, &m), 0);
  assert_int_equal(mp_manager_start(m), 0);
  char addr[256];
  assert_true(mp_manager_address(m, addr, sizeof addr) > 0);
  int fd = raw_connect(addr);
  char hello[12];
  assert_int_equal(read(fd, hello, 12), 12); /* the open server's hello */
  raw_send(fd, "\xc1garbage", 8);
  assert_int_equal(raw_status(fd), -EBADMSG);
  raw_send(fd, "\x93\x01\x02\x03", 4); /* a list, but not a request */
  assert_int_equal(raw_status(fd), -EBADMSG);
  raw_send(fd, "\x95\x09\x01\xa1x\x90\xcb\0\0\0\0\0\0\0\0", 15); /* unknown op */
  assert_int_equal(raw_status(fd), -EBADMSG);
  raw_send(fd, "\x95\x02\x63\xa3len\x90\xcb\0\0\0\0\0\0\0\0", 17); /* no object 99 */
  assert_int_equal(raw_status(fd), -ESRCH);
  raw_send(fd, "", 0);
  assert_int_equal(raw_status(fd), -EBADMSG);
  /* oversized: a header claiming more than the limit */
  unsigned char h[4] = {0x7f, 0xff, 0xff, 0xff};
  assert_int_equal(write(fd, h, 4), 4);
  assert_int_equal(raw_status(fd), -EMSGSIZE);
  char c;
  assert_int_equal(read(fd, &c, 1), 0); /* hung up */
  close(fd);
  /* the server lives */
  mp_proxy *d;
  assert_int_equal(mp_manager_dict(m, NULL, &d), 0);
  assert_int_equal(mp_dict_proxy_len(d), 0);
  mp_proxy_free(d);
  /* a keyed server: garbage instead of the answer is refused */
  mp_manager *k = start();
  assert_true(mp_manager_address(k, addr, sizeof addr) > 0);
  fd = raw_connect(addr);
  char chal[4 + 40];
  assert_int_equal(read(fd, chal, sizeof chal), (ssize_t)sizeof chal);
  raw_send(fd, "not an hmac", 11);
  unsigned char verdict[12];
  assert_int_equal(read(fd, verdict, 12), 12);
  assert_memory_equal(verdict + 4, "MPFAILU", 7);
  assert_int_equal(read(fd, &c, 1), 0);
  close(fd);
  assert_int_equal(mp_manager_dict(k, NULL, &d), 0);
  mp_proxy_free(d);
  mp_manager_free(k);
  mp_manager_free(m);
}

/* ---------------------------------------------------------------- lifetime */

static void test_manager_server_killed_then_new_one(void **state) {
  (void)state;
  mp_manager *m = start();
  mp_proxy *d;
  assert_int_equal(mp_manager_dict(m, NULL, &d), 0);
  assert_int_equal(kill(mp_manager_pid(m), SIGKILL), 0);
  assert_int_equal(mp_dict_proxy_len(d), -EPIPE);
  assert_int_equal(mp_dict_proxy_len(d), -EPIPE);
  mp_proxy_free(d);
  assert_int_equal(mp_manager_shutdown(m), -EPIPE);
  mp_manager_free(m);
  m = start();
  assert_int_equal(mp_manager_dict(m, NULL, &d), 0);
  assert_int_equal(mp_dict_proxy_len(d), 0);
  mp_proxy_free(d);
  mp_manager_free(m);
}

/* An intermediate program starts a manager, reports the server's pid and
 * address, and waits to be killed. */
static int starter_child(void *arg) {
  int *pfd = arg;
  mp_manager *m;
  CHILD_CHECK(mp_manager_new(NULL, &m) == 0);
  CHILD_CHECK(mp_manager_start(m) == 0);
  struct {
    int pid;
    char addr[200];
  } msg = {mp_manager_pid(m), ""};
  CHILD_CHECK(mp_manager_address(m, msg.addr, sizeof msg.addr) > 0);
  CHILD_CHECK(write(pfd[1], &msg, sizeof msg) == (ssize_t)sizeof msg);
  pause();
  return 0;
}

static void test_manager_server_ends_with_its_program(void **state) {
  (void)state;
  int pfd[2];
  assert_int_equal(pipe2(pfd, O_CLOEXEC), 0);
  pid_t pid = tu_fork(starter_child, pfd, 60);
  struct {
    int pid;
    char addr[200];
  } msg;
  assert_int_equal(read(pfd[0], &msg, sizeof msg), (ssize_t)sizeof msg);
  close(pfd[0]);
  close(pfd[1]);
  assert_true(msg.pid > 0);
  assert_int_equal(kill(msg.pid, 0), 0);
  struct stat st;
  assert_int_equal(stat(msg.addr + 5, &st), 0);
  assert_int_equal(kill(pid, SIGKILL), 0);
  assert_int_equal(tu_wait(pid), 1000 + SIGKILL);
  double end = tu_now() + 10;
  while (kill(msg.pid, 0) == 0 && tu_now() < end)
    tu_sleep(0.01);
  assert_int_equal(kill(msg.pid, 0), -1);
  assert_int_equal(errno, ESRCH);
  assert_int_equal(stat(msg.addr + 5, &st), -1); /* its socket is gone too */
}

/* ------------------------------------------------------- Listener and Client */

struct lc {
  char addr[200];
  const char *key;
};

static int client_child(void *arg) {
  struct lc *x = arg;
  mp_connection *c;
  CHILD_CHECK(mp_client_connect(x->addr, x->key, x->key ? strlen(x->key) : 0, 10, &c) == 0);
  CHILD_CHECK(mp_connection_send(c, "hello", 5, 10) == 0);
  char buf[16];
  CHILD_CHECK(mp_connection_recv(c, buf, sizeof buf, 10) == 3 && !memcmp(buf, "ack", 3));
  mp_connection_close(c);
  return 0;
}

static void listener_round(const char *key) {
  struct lc x = {"", key};
  snprintf(x.addr, sizeof x.addr, "unix:/tmp/mp-test-listener-%d", (int)getpid());
  mp_listener *l;
  assert_int_equal(mp_listener_new(x.addr, key, key ? strlen(key) : 0, &l), 0);
  char got[200];
  assert_true(mp_listener_address(l, got, sizeof got) > 0);
  assert_string_equal(got, x.addr);
  struct stat st;
  assert_int_equal(stat(x.addr + 5, &st), 0);
  assert_int_equal(st.st_mode & 0777, 0600);
  pid_t pid = tu_fork(client_child, &x, 30);
  mp_connection *c;
  assert_int_equal(mp_listener_accept(l, 10, &c), 0);
  char buf[16];
  assert_int_equal(mp_connection_recv(c, buf, sizeof buf, 10), 5);
  assert_memory_equal(buf, "hello", 5);
  assert_int_equal(mp_connection_send(c, "ack", 3, 10), 0);
  assert_child_ok(pid);
  mp_connection_close(c);
  if (key) {
    /* a wrong key: -EACCES on both sides, and the listener goes on */
    mp_connection *bad = NULL;
    pid = fork();
    if (pid == 0) {
      alarm(30);
      CHILD_CHECK(mp_client_connect(x.addr, "nope", 4, 10, &bad) == -EACCES);
      _exit(0);
    }
    assert_int_equal(mp_listener_accept(l, 10, &c), -EACCES);
    assert_child_ok(pid);
    pid = tu_fork(client_child, &x, 30);
    assert_int_equal(mp_listener_accept(l, 10, &c), 0);
    assert_int_equal(mp_connection_recv(c, buf, sizeof buf, 10), 5);
    assert_int_equal(mp_connection_send(c, "ack", 3, 10), 0);
    assert_child_ok(pid);
    mp_connection_close(c);
  }
  assert_int_equal(mp_listener_close(l), 0);
  assert_int_equal(stat(x.addr + 5, &st), -1);
}

static void test_manager_listener_client(void **state) {
  (void)state;
  listener_round(NULL);
  listener_round("secret");
  mp_listener *l;
  assert_int_equal(mp_listener_new(NULL, NULL, 0, &l), -EINVAL);
  static const char big[1025];
  assert_int_equal(mp_listener_new("unix:/tmp/x", big, sizeof big, &l), -EINVAL);
  assert_int_equal(mp_listener_new("127.0.0.1:99999", NULL, 0, &l), -EINVAL);
  mp_connection *c;
  assert_int_equal(mp_client_connect("unix:/tmp/mp-test-nothing-here", NULL, 0, 1, &c), -ENOENT);
  assert_int_equal(mp_listener_close(NULL), 0);
}

static int tcp_client_child(void *arg) {
  struct lc *x = arg;
  mp_connection *c;
  CHILD_CHECK(mp_client_connect(x->addr, x->key, x->key ? strlen(x->key) : 0, 10, &c) == 0);
  CHILD_CHECK(mp_connection_send(c, "hello", 5, 10) == 0);
  CHILD_CHECK(mp_connection_send(c, NULL, 0, 10) == 0);
  size_t n = 300000;
  char *m = malloc(n);
  for (size_t i = 0; i < n; i++)
    m[i] = (char)(i * 7);
  CHILD_CHECK(mp_connection_send(c, m, n, 10) == 0);
  free(m);
  char buf[16];
  CHILD_CHECK(mp_connection_recv(c, buf, sizeof buf, 10) == 3 && !memcmp(buf, "ack", 3));
  int fd;
  CHILD_CHECK(mp_connection_recv_fd(c, &fd, 0) == -EOPNOTSUPP);
  mp_connection_close(c);
  return 0;
}

static int tcp_client_refused(void *arg) {
  struct lc *x = arg;
  mp_connection *c = NULL;
  CHILD_CHECK(mp_client_connect(x->addr, x->key, x->key ? strlen(x->key) : 0, 10, &c) == -EACCES);
  CHILD_CHECK(c == NULL);
  return 0;
}

/* Listener/Client over TCP: the kernel's port, messages with their
 * boundaries, the key checked both ways. */
static void tcp_listener_round(const char *key) {
  struct lc x = {"", key};
  mp_listener *l;
  assert_int_equal(mp_listener_new("127.0.0.1:0", key, key ? strlen(key) : 0, &l), 0);
  ssize_t n = mp_listener_address(l, x.addr, sizeof x.addr);
  assert_true(n > 10);
  assert_int_equal(strncmp(x.addr, "127.0.0.1:", 10), 0);
  assert_true(atoi(x.addr + 10) > 0);
  assert_int_equal(mp_listener_address(l, x.addr, 5), -EMSGSIZE);
  assert_int_equal(mp_listener_address(l, x.addr, sizeof x.addr), n);

  pid_t pid = tu_fork(tcp_client_child, &x, 30);
  assert_true(pid > 0);
  mp_connection *c = NULL;
  assert_int_equal(mp_listener_accept(l, 10, &c), 0);
  char buf[16];
  assert_int_equal(mp_connection_recv(c, buf, sizeof buf, 10), 5);
  assert_memory_equal(buf, "hello", 5);
  assert_int_equal(mp_connection_recv(c, buf, sizeof buf, 10), 0);
  assert_int_equal(mp_connection_peek_size(c, 10), 300000);
  void *m = NULL;
  assert_int_equal(mp_connection_recv_alloc(c, &m, 10), 300000);
  bool same = true;
  for (size_t i = 0; i < 300000; i++)
    same &= ((char *)m)[i] == (char)(i * 7);
  assert_true(same);
  free(m);
  assert_int_equal(mp_connection_send(c, "ack", 3, 10), 0);
  assert_child_ok(pid);
  assert_int_equal(mp_connection_recv(c, buf, sizeof buf, 10), -EPIPE);
  mp_connection_close(c);

  if (key) {
    /* a wrong key: -EACCES on both sides, and the listener goes on */
    struct lc bad = x;
    bad.key = "nope";
    pid = tu_fork(tcp_client_refused, &bad, 30);
    assert_true(pid > 0);
    assert_int_equal(mp_listener_accept(l, 10, &c), -EACCES);
    assert_child_ok(pid);
    /* no key against a listener with one: the client refuses, the listener
     * sees it leave */
    bad.key = NULL;
    pid = tu_fork(tcp_client_refused, &bad, 30);
    assert_true(pid > 0);
    assert_int_equal(mp_listener_accept(l, 10, &c), -EPIPE);
    assert_child_ok(pid);
  } else {
    /* a client with a key refuses a listener without one */
    struct lc keyed = x;
    keyed.key = "secret";
    pid = tu_fork(tcp_client_refused, &keyed, 30);
    assert_true(pid > 0);
    assert_int_equal(mp_listener_accept(l, 10, &c), 0);
    assert_int_equal(mp_connection_recv(c, buf, sizeof buf, 10), -EPIPE);
    assert_child_ok(pid);
    mp_connection_close(c);
  }
  /* a peer that does not speak the protocol is refused */
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  assert_true(fd >= 0);
  struct sockaddr_in sa;
  memset(&sa, 0, sizeof sa);
  sa.sin_family = AF_INET;
  sa.sin_port = htons((uint16_t)atoi(x.addr + 10));
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  assert_int_equal(connect(fd, (struct sockaddr *)&sa, sizeof sa), 0);
  assert_int_equal(write(fd, "GET / HTTP/1.0\r\n\r\n", 18), 18);
  assert_int_equal(mp_listener_accept(l, 10, &c), key ? -EACCES : 0);
  if (!key)
    mp_connection_close(c); /* without a key there is nothing to check */
  close(fd);

  /* and the listener still works */
  x.key = key;
  pid = tu_fork(tcp_client_child, &x, 30);
  assert_true(pid > 0);
  assert_int_equal(mp_listener_accept(l, 10, &c), 0);
  assert_int_equal(mp_connection_recv(c, buf, sizeof buf, 10), 5);
  assert_int_equal(mp_connection_recv(c, buf, sizeof buf, 10), 0);
  assert_int_equal(mp_connection_recv_alloc(c, &m, 10), 300000);
  free(m);
  assert_int_equal(mp_connection_send(c, "ack", 3, 10), 0);
  assert_child_ok(pid);
  mp_connection_close(c);
  assert_int_equal(mp_listener_close(l), 0);
  /* nothing listens there any more */
  assert_int_equal(mp_client_connect(x.addr, key, key ? strlen(key) : 0, 5, &c), -ECONNREFUSED);
}

static void test_manager_listener_client_tcp(void **state) {
  (void)state;
  tcp_listener_round(NULL);
  tcp_listener_round("secret");
}

static int accept_op(void *ctx, double t) {
  mp_connection *c;
  return mp_listener_accept(ctx, t, &c);
}

static void test_manager_listener_accept_timeouts(void **state) {
  (void)state;
  char addr[200];
  snprintf(addr, sizeof addr, "/tmp/mp-test-accept-%d", (int)getpid());
  mp_listener *l;
  assert_int_equal(mp_listener_new(addr, NULL, 0, &l), 0);
  check_timeouts(accept_op, l, -ETIMEDOUT);
  mp_listener_close(l);
}

/* ------------------------------------------------------- shared channel */

static size_t heap_blocks(void) {
  mp_heap_stats st;
  assert_int_equal(mp_heap_stats_get(&st), 0);
  return st.blocks;
}

/* Wait up to 2 s for the heap to hold `want` blocks (a server thread frees
 * a channel's block once it sees its client's end). */
static bool heap_blocks_become(size_t want) {
  for (int i = 0; i < 200; i++) {
    mp_heap_stats st;
    if (mp_heap_stats_get(&st) == 0 && st.blocks == want)
      return true;
    tu_sleep(0.01);
  }
  return false;
}

/* n set+get pairs on d; 0 or the first error. */
static int set_get(mp_proxy *d, int n, int64_t base) {
  for (int i = 0; i < n; i++) {
    mp_obj *k = mp_obj_int(i % 7), *v = mp_obj_int(base + i), *got = NULL;
    int r = mp_dict_proxy_set(d, k, v);
    if (r == 0)
      r = mp_dict_proxy_get(d, k, &got);
    int64_t x = -1;
    if (r == 0 && (mp_obj_get_int(got, &x) != 0 || x != base + i))
      r = -EBADMSG;
    mp_obj_free(k);
    mp_obj_free(v);
    mp_obj_free(got);
    if (r < 0)
      return r;
  }
  return 0;
}

static int channel_child(void *arg) {
  mp_proxy *d = arg;
  long before = mp__manager_channel_calls();
  CHILD_CHECK(set_get(d, 20, 100) == 0);
  /* this process's own connection, on its own channel */
  CHILD_CHECK(mp__manager_channel_calls() - before == 40);
  return 0;
}

static void test_manager_shared_channel_used(void **state) {
  (void)state;
  size_t base = heap_blocks();
  mp_manager *m = start();
  assert_int_equal(heap_blocks(), base + 1); /* this process's channel */
  mp_proxy *d;
  assert_int_equal(mp_manager_dict(m, NULL, &d), 0);
  long before = mp__manager_channel_calls();
  assert_int_equal(set_get(d, 50, 0), 0);
  assert_int_equal(mp__manager_channel_calls() - before, 100);
  pid_t pid = tu_fork(channel_child, d, 20);
  assert_true(pid > 0);
  assert_child_ok(pid);
  /* the child's block was freed by the server when the child ended */
  assert_true(heap_blocks_become(base + 1));
  mp_proxy_free(d);
  mp_manager_free(m);
  assert_true(heap_blocks_become(base));

  /* the option: the socket path, no block */
  mp_manager_options o = {.no_shared_channel = 1};
  assert_int_equal(mp_manager_new(&o, &m), 0);
  assert_int_equal(mp_manager_start(m), 0);
  assert_int_equal(heap_blocks(), base);
  assert_int_equal(mp_manager_dict(m, NULL, &d), 0);
  before = mp__manager_channel_calls();
  assert_int_equal(set_get(d, 20, 0), 0);
  assert_int_equal(mp__manager_channel_calls(), before);
  mp_proxy_free(d);
  assert_int_equal(mp_manager_shutdown(m), 0);
  mp_manager_free(m);

  /* TCP: the socket path */
  mp_manager_options t = {.address = "127.0.0.1:0"};
  assert_int_equal(mp_manager_new(&t, &m), 0);
  assert_int_equal(mp_manager_start(m), 0);
  assert_int_equal(mp_manager_dict(m, NULL, &d), 0);
  before = mp__manager_channel_calls();
  assert_int_equal(set_get(d, 20, 0), 0);
  assert_int_equal(mp__manager_channel_calls(), before);
  assert_int_equal(heap_blocks(), base);
  mp_proxy_free(d);
  mp_manager_free(m);

  /* a client that connects by address is of no known family: socket */
  mp_manager_options ko = {.authkey = "k3y", .authkey_len = 3};
  assert_int_equal(mp_manager_new(&ko, &m), 0);
  assert_int_equal(mp_manager_start(m), 0);
  char addr[256];
  assert_true(mp_manager_address(m, addr, sizeof addr) > 0);
  mp_manager *c;
  ko.address = addr;
  assert_int_equal(mp_manager_new(&ko, &c), 0);
  assert_int_equal(mp_manager_connect(c), 0);
  assert_int_equal(mp_manager_dict(c, NULL, &d), 0);
  before = mp__manager_channel_calls();
  assert_int_equal(set_get(d, 10, 0), 0);
  assert_int_equal(mp__manager_channel_calls(), before);
  assert_int_equal(heap_blocks(), base + 1); /* the starter's channel only */
  mp_proxy_free(d);
  mp_manager_free(c);
  mp_manager_free(m);
  assert_true(heap_blocks_become(base));
}

/* Values larger than the block, both ways, and small ones between them. */
static void test_manager_shared_channel_large_messages(void **state) {
  (void)state;
  mp_manager *m = start();
  mp_proxy *d;
  assert_int_equal(mp_manager_dict(m, NULL, &d), 0);
  size_t sizes[] = {10, 32 * 1024 - 200, 32 * 1024, 100 * 1000, 3 * 1000 * 1000, 5};
  long before = mp__manager_channel_calls();
  for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++) {
    unsigned char *buf = malloc(sizes[s]);
    assert_non_null(buf);
    for (size_t i = 0; i < sizes[s]; i++)
      buf[i] = (unsigned char)(i * 31 + s);
    mp_obj *k = mp_obj_int((int64_t)s), *v = mp_obj_bytes(buf, sizes[s]), *got = NULL;
    assert_int_equal(mp_dict_proxy_set(d, k, v), 0);
    assert_int_equal(mp_dict_proxy_get(d, k, &got), 0);
    const void *p;
    size_t n;
    assert_int_equal(mp_obj_get_bytes(got, &p, &n), 0);
    assert_int_equal(n, sizes[s]);
    assert_memory_equal(p, buf, n);
    mp_obj_free(k);
    mp_obj_free(v);
    mp_obj_free(got);
    free(buf);
  }
  assert_int_equal(mp__manager_channel_calls() - before, 12);
  /* and small calls still work after the large ones */
  assert_int_equal(set_get(d, 10, 7), 0);
  mp_proxy_free(d);
  mp_manager_free(m);
}

struct kill_ctx {
  mp_proxy *lock;
  mp_proxy *dict;
  int wfd;
};

/* Takes the lock, says so, then makes 50 set/get calls (killed somewhere
 * in them, or just after). */
static int doomed_child(void *arg) {
  struct kill_ctx *k = arg;
  CHILD_CHECK(mp_lock_proxy_acquire(k->lock, 5.0) == 0);
  CHILD_CHECK(write(k->wfd, "x", 1) == 1);
  CHILD_CHECK(set_get(k->dict, 50, 0) == 0);
  pause();
  return 0;
}

struct steady_ctx {
  int rfd, wfd;
  mp_proxy *dict;
};

static int steady_main(void *arg) {
  struct steady_ctx *s = arg;
  close(s->wfd); /* the parent's closing is the stop signal */
  long rounds = 0;
  for (;;) {
    struct pollfd p = {.fd = s->rfd, .events = POLLIN, .revents = 0};
    if (poll(&p, 1, 0) > 0)
      break;
    CHILD_CHECK(set_get(s->dict, 10, rounds * 10) == 0);
    rounds++;
  }
  CHILD_CHECK(rounds > 0);
  return 0;
}

static void test_manager_shared_channel_client_killed(void **state) {
  (void)state;
  size_t base = heap_blocks();
  mp_manager *m = start();
  struct kill_ctx k;
  mp_proxy *d2;
  assert_int_equal(mp_manager_lock(m, &k.lock), 0);
  assert_int_equal(mp_manager_dict(m, NULL, &k.dict), 0);
  assert_int_equal(mp_manager_dict(m, NULL, &d2), 0);
  int pfd[2];
  assert_int_equal(pipe(pfd), 0);
  struct steady_ctx sc = {pfd[0], pfd[1], d2};
  pid_t steady = tu_fork(steady_main, &sc, 60);
  assert_true(steady > 0);
  close(pfd[0]);
  int ready[2];
  assert_int_equal(pipe(ready), 0);
  k.wfd = ready[1];
  srand(12345);
  for (int round = 0; round < 20; round++) {
    pid_t pid = tu_fork(doomed_child, &k, 20);
    assert_true(pid > 0);
    char b;
    assert_int_equal(read(ready[0], &b, 1), 1);
    /* 50 calls take about 0.1 ms on the channel, more on a busy machine */
    tu_sleep((double)(rand() % 300) / 1e6);
    assert_int_equal(kill(pid, SIGKILL), 0);
    assert_int_equal(tu_wait(pid), 1000 + SIGKILL);
    /* the killed client's lock is released by the server */
    assert_int_equal(mp_lock_proxy_acquire(k.lock, 5.0), 0);
    assert_int_equal(mp_lock_proxy_release(k.lock), 0);
    assert_int_equal(set_get(k.dict, 5, round), 0);
  }
  close(ready[0]);
  close(ready[1]);
  close(pfd[1]); /* the steady client stops */
  assert_child_ok(steady);
  /* every killed client's block was freed by the server */
  assert_true(heap_blocks_become(base + 1));
  mp_proxy_free(d2);
  mp_proxy_free(k.dict);
  mp_proxy_free(k.lock);
  mp_manager_free(m);
  assert_true(heap_blocks_become(base));
}

struct waiter_ctx {
  mp_proxy *lock;
  int wfd; /* tells the parent the child is about to block */
};

static int blocked_child(void *arg) {
  struct waiter_ctx *w = arg;
  mp_proxy *l = w->lock;
  CHILD_CHECK(write(w->wfd, "x", 1) == 1);
  double t0 = tu_now();
  int r = mp_lock_proxy_acquire(l, MP_FOREVER); /* held by the parent */
  double el = tu_now() - t0;
  CHILD_CHECK(r == -EPIPE);
  CHILD_CHECK(el >= 0.3 - 0.01 && el < 2.3); /* killed 0.3 s in: within 2 s */
  CHILD_CHECK(mp_lock_proxy_release(l) == -EPIPE);
  return 0;
}

static void test_manager_shared_channel_server_killed(void **state) {
  (void)state;
  size_t base = heap_blocks();
  mp_manager *m = start();
  mp_proxy *l;
  assert_int_equal(mp_manager_lock(m, &l), 0);
  assert_int_equal(mp_lock_proxy_acquire(l, MP_FOREVER), 0);
  int pfd[2];
  assert_int_equal(pipe(pfd), 0);
  struct waiter_ctx w = {l, pfd[1]};
  pid_t pid = tu_fork(blocked_child, &w, 20);
  assert_true(pid > 0);
  char b;
  assert_int_equal(read(pfd[0], &b, 1), 1);
  tu_sleep(0.3);
  assert_int_equal(kill(mp_manager_pid(m), SIGKILL), 0);
  assert_child_ok(pid);
  /* this process learns it on its next call, and frees its block */
  assert_int_equal(mp_lock_proxy_release(l), -EPIPE);
  assert_true(heap_blocks_become(base));
  close(pfd[0]);
  close(pfd[1]);
  mp_proxy_free(l);
  assert_int_equal(mp_manager_shutdown(m), -EPIPE);
  mp_manager_free(m);
  /* a new manager works, on a new channel */
  m = start();
  mp_proxy *d;
  assert_int_equal(mp_manager_dict(m, NULL, &d), 0);
  long before = mp__manager_channel_calls();
  assert_int_equal(set_get(d, 5, 0), 0);
  assert_int_equal(mp__manager_channel_calls() - before, 10);
  mp_proxy_free(d);
  mp_manager_free(m);
  assert_true(heap_blocks_become(base));
}

/* ------------------------------------------ timeouts, deaths, bounds, rules */

/* A timed call gives up within its timeout plus the client's grace (2 s)
 * when the server does not answer at all, then reconnects. */
static void stopped_server_times_out(int no_sh) {
  mp_manager_options o = {.no_shared_channel = no_sh};
  mp_manager *m;
  assert_int_equal(mp_manager_new(&o, &m), 0);
  assert_int_equal(mp_manager_start(m), 0);
  mp_proxy *q, *l, *e;
  assert_int_equal(mp_manager_queue(m, 0, &q), 0);
  assert_int_equal(mp_manager_lock(m, &l), 0);
  assert_int_equal(mp_manager_event(m, &e), 0);
  mp_obj *v = mp_obj_int(7), *got = NULL;
  assert_int_equal(mp_queue_proxy_put(q, v, 1.0), 0);
  pid_t srv = mp_manager_pid(m);
  assert_int_equal(kill(srv, SIGSTOP), 0);
  int st;
  assert_int_equal(waitpid(srv, &st, WUNTRACED), srv); /* stopped now */
  assert_true(WIFSTOPPED(st));
  double t0 = tu_now();
  assert_int_equal(mp_queue_proxy_get(q, 0.3, &got), -ETIMEDOUT);
  double el = tu_now() - t0;
  assert_true(el >= 0.3 && el < 6.0);
  t0 = tu_now();
  assert_int_equal(mp_lock_proxy_acquire(l, MP_NOWAIT), -ETIMEDOUT);
  assert_int_equal(mp_event_proxy_wait(e, 0.2), -ETIMEDOUT);
  assert_true(tu_now() - t0 < 12.0);
  assert_int_equal(kill(srv, SIGCONT), 0);
  /* the abandoned get took nothing: its connection was gone when the
   * server resumed; the next call reconnects */
  assert_int_equal(mp_queue_proxy_get(q, 5.0, &got), 0);
  assert_int_equal(as_int(got), 7);
  mp_obj_free(got);
  assert_int_equal(mp_lock_proxy_acquire(l, 1.0), 0);
  assert_int_equal(mp_lock_proxy_release(l), 0);
  mp_obj_free(v);
  mp_proxy_free(q);
  mp_proxy_free(l);
  mp_proxy_free(e);
  mp_manager_free(m);
}

static void test_manager_timeout_with_stopped_server(void **state) {
  (void)state;
  stopped_server_times_out(0);
  stopped_server_times_out(1);
}

struct blocker {
  mp_proxy *q;
  int r;
};

static void *forever_get(void *arg) {
  struct blocker *b = arg;
  mp_obj *got = NULL;
  b->r = mp_queue_proxy_get(b->q, MP_FOREVER, &got);
  mp_obj_free(got);
  return NULL;
}

/* A thread's call that waits forever holds the handle's connection; another
 * thread's timed call still ends by its deadline. */
static void test_manager_timeout_while_connection_busy(void **state) {
  (void)state;
  mp_manager *m = start();
  mp_proxy *q, *e;
  assert_int_equal(mp_manager_queue(m, 0, &q), 0);
  assert_int_equal(mp_manager_event(m, &e), 0);
  struct blocker b = {q, 1};
  pthread_t th;
  assert_int_equal(pthread_create(&th, NULL, forever_get, &b), 0);
  tu_sleep(0.2);
  double t0 = tu_now();
  assert_int_equal(mp_event_proxy_wait(e, 0.2), -ETIMEDOUT);
  assert_true(tu_now() - t0 < 6.0);
  /* the server's end ends the forever get (shutdown would wait for it) */
  assert_int_equal(kill(mp_manager_pid(m), SIGKILL), 0);
  pthread_join(th, NULL);
  assert_int_equal(b.r, -EPIPE);
  mp_proxy_free(q);
  mp_proxy_free(e);
  mp_manager_free(m);
}

/* Threads of a forked child all start with calls at once: the handle's
 * mutex is set up again by exactly one of them. */
struct fork_threads {
  mp_proxy *d;
  int id;
  int r;
};

static void *fork_thread_main(void *arg) {
  struct fork_threads *f = arg;
  f->r = 0;
  for (int i = 0; i < 50 && f->r == 0; i++) { /* keys of its own */
    mp_obj *k = mp_obj_int(f->id * 100 + i % 7), *v = mp_obj_int(i), *got = NULL;
    f->r = mp_dict_proxy_set(f->d, k, v);
    if (f->r == 0)
      f->r = mp_dict_proxy_get(f->d, k, &got);
    int64_t x = -1;
    if (f->r == 0 && (mp_obj_get_int(got, &x) != 0 || x != i))
      f->r = -EBADMSG;
    mp_obj_free(k);
    mp_obj_free(v);
    mp_obj_free(got);
  }
  return NULL;
}

static int fork_threads_child(void *arg) {
  mp_proxy *d = arg;
  struct fork_threads f[4];
  pthread_t th[4];
  for (int i = 0; i < 4; i++) {
    f[i] = (struct fork_threads){d, i, 1};
    CHILD_CHECK(pthread_create(&th[i], NULL, fork_thread_main, &f[i]) == 0);
  }
  for (int i = 0; i < 4; i++) {
    pthread_join(th[i], NULL);
    CHILD_CHECK(f[i].r == 0);
  }
  return 0;
}

static void test_manager_fork_then_threads(void **state) {
  (void)state;
  mp_manager *m = start();
  mp_proxy *d;
  assert_int_equal(mp_manager_dict(m, NULL, &d), 0);
  for (int round = 0; round < 10; round++) {
    pid_t c = tu_fork(fork_threads_child, d, 30);
    assert_true(c > 0);
    assert_child_ok(c);
  }
  mp_proxy_free(d);
  mp_manager_free(m);
}

/* Binding a manager's Unix socket leaves the process's umask alone (other
 * threads create files meanwhile) and still makes the socket 0600. */
static atomic_int umask_stop;

static void *umask_watch(void *arg) {
  int *seen = arg;
  while (!atomic_load(&umask_stop)) {
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    while (f && fgets(line, sizeof line, f))
      if (!strncmp(line, "Umask:", 6) && strtol(line + 6, NULL, 8) != 022)
        *seen = 1;
    if (f)
      fclose(f);
  }
  return NULL;
}

static void test_manager_listen_keeps_umask(void **state) {
  (void)state;
  mode_t old = umask(022);
  int seen = 0;
  atomic_store(&umask_stop, 0);
  pthread_t th;
  assert_int_equal(pthread_create(&th, NULL, umask_watch, &seen), 0);
  for (int i = 0; i < 300; i++) {
    mp_manager *m;
    assert_int_equal(mp_manager_new(NULL, &m), 0);
    assert_int_equal(mp_manager_listen(m), 0);
    char addr[256];
    assert_true(mp_manager_address(m, addr, sizeof addr) > 0);
    struct stat st;
    assert_int_equal(stat(addr + 5, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
    mp_manager_free(m);
  }
  atomic_store(&umask_stop, 1);
  pthread_join(th, NULL);
  umask(old);
  assert_int_equal(seen, 0);
}

/* A client killed while its get (or acquire) waits takes nothing: each of
 * 20 killed getters leaves the next item to the next client. */
struct doomed_waiter {
  mp_proxy *p;
  int sem; /* acquire instead of get */
  int wfd; /* written just before blocking */
};

static int doomed_waiter_main(void *arg) {
  struct doomed_waiter *w = arg;
  CHILD_CHECK(write(w->wfd, "x", 1) == 1);
  if (w->sem)
    mp_lock_proxy_acquire(w->p, MP_FOREVER);
  else {
    mp_obj *got = NULL;
    mp_queue_proxy_get(w->p, MP_FOREVER, &got);
  }
  return 99; /* never: the parent kills it while it waits */
}

static void killed_waiters_take_nothing(int sem, int no_sh, const char *address) {
  mp_manager_options o = {.no_shared_channel = no_sh, .address = address};
  mp_manager *m;
  assert_int_equal(mp_manager_new(&o, &m), 0);
  assert_int_equal(mp_manager_start(m), 0);
  mp_proxy *p;
  if (sem)
    assert_int_equal(mp_manager_semaphore(m, 0, 0, &p), 0);
  else
    assert_int_equal(mp_manager_queue(m, 0, &p), 0);
  int pfd[2];
  assert_int_equal(pipe(pfd), 0);
  struct doomed_waiter w = {p, sem, pfd[1]};
  for (int round = 0; round < 20; round++) {
    pid_t c = tu_fork(doomed_waiter_main, &w, 20);
    assert_true(c > 0);
    char b;
    assert_int_equal(read(pfd[0], &b, 1), 1);
    tu_sleep(0.1); /* its request reaches the server and waits */
    kill(c, SIGKILL);
    assert_int_equal(tu_wait(c), 1000 + SIGKILL);
    /* one item (unit) now: the dead waiter must leave it */
    if (sem) {
      assert_int_equal(mp_lock_proxy_release(p), 0);
      tu_sleep(0.01);
      assert_int_equal(mp_lock_proxy_acquire(p, 5.0), 0);
    } else {
      mp_obj *v = mp_obj_int(round), *got = NULL;
      assert_int_equal(mp_queue_proxy_put(p, v, 1.0), 0);
      tu_sleep(0.01);
      assert_int_equal(mp_queue_proxy_get(p, 5.0, &got), 0);
      assert_int_equal(as_int(got), round);
      mp_obj_free(got);
      mp_obj_free(v);
    }
  }
  close(pfd[0]);
  close(pfd[1]);
  mp_proxy_free(p);
  mp_manager_free(m);
}

static void test_manager_killed_waiter_takes_nothing(void **state) {
  (void)state;
  killed_waiters_take_nothing(0, 0, NULL);
  killed_waiters_take_nothing(1, 0, NULL);
  killed_waiters_take_nothing(0, 1, NULL);
  killed_waiters_take_nothing(1, 1, NULL);
  killed_waiters_take_nothing(0, 0, "127.0.0.1:0"); /* TCP: the end is a FIN */
}

/* Idle connections that never authenticate do not lock out a client with
 * the key; a server whose slots all hold authenticated clients says so. */
static void test_manager_idle_connections_do_not_lock_out(void **state) {
  (void)state;
  mp_manager_options o = {
      .authkey = "k3y", .authkey_len = 3, .max_clients = 16, .max_handshakes = 8};
  mp_manager *m;
  assert_int_equal(mp_manager_new(&o, &m), 0);
  assert_int_equal(mp_manager_start(m), 0);
  char addr[256];
  assert_true(mp_manager_address(m, addr, sizeof addr) > 0);
  int idle[64];
  for (int i = 0; i < 64; i++)
    idle[i] = raw_connect(addr);
  mp_manager_options co = {.address = addr, .authkey = "k3y", .authkey_len = 3};
  for (int i = 0; i < 5; i++) {
    mp_manager *c;
    assert_int_equal(mp_manager_new(&co, &c), 0);
    double t0 = tu_now();
    assert_int_equal(mp_manager_connect(c), 0);
    assert_true(tu_now() - t0 < 5.0);
    mp_proxy *d;
    assert_int_equal(mp_manager_dict(c, NULL, &d), 0);
    assert_int_equal(mp_dict_proxy_len(d), 0);
    mp_proxy_free(d);
    mp_manager_free(c);
    /* the idle ones keep coming back */
    for (int j = 0; j < 16; j++) {
      close(idle[(i * 16 + j) % 64]);
      idle[(i * 16 + j) % 64] = raw_connect(addr);
    }
  }
  /* an idle connection is dropped after its handshake's 5 s */
  int fd = raw_connect(addr);
  struct pollfd p = {.fd = fd, .events = POLLRDHUP};
  double t0 = tu_now();
  char buf[128];
  for (;;) {
    assert_true(poll(&p, 1, 10000) == 1);
    if (recv(fd, buf, sizeof buf, MSG_DONTWAIT) <= 0)
      break;
  }
  assert_true(tu_now() - t0 < 8.0);
  close(fd);
  for (int i = 0; i < 64; i++)
    close(idle[i]);
  mp_manager_free(m);
}

static void test_manager_full_server_says_so(void **state) {
  (void)state;
  mp_manager_options o = {.authkey = "k3y", .authkey_len = 3, .max_clients = 3};
  mp_manager *m;
  assert_int_equal(mp_manager_new(&o, &m), 0);
  assert_int_equal(mp_manager_start(m), 0); /* its own connection: one slot */
  char addr[256];
  assert_true(mp_manager_address(m, addr, sizeof addr) > 0);
  mp_manager_options co = {.address = addr, .authkey = "k3y", .authkey_len = 3};
  mp_manager *c[3];
  for (int i = 0; i < 3; i++)
    assert_int_equal(mp_manager_new(&co, &c[i]), 0);
  assert_int_equal(mp_manager_connect(c[0]), 0);
  assert_int_equal(mp_manager_connect(c[1]), 0);
  assert_int_equal(mp_manager_connect(c[2]), -EUSERS);
  /* a wrong key still hears -EACCES only when there is room */
  mp_manager_free(c[1]);
  int r = -1;
  for (int i = 0; i < 200 && r != 0; i++) {
    mp_manager_free(c[2]);
    assert_int_equal(mp_manager_new(&co, &c[2]), 0);
    r = mp_manager_connect(c[2]);
    if (r != 0) {
      assert_int_equal(r, -EUSERS);
      tu_sleep(0.01);
    }
  }
  assert_int_equal(r, 0);
  mp_manager_free(c[0]);
  mp_manager_free(c[2]);
  mp_manager_free(m);
}

/* Any authenticated client may call any object (the authkey is the
 * boundary, as in Python); releasing needs the creator's connection, and an
 * id that does not exist is refused. A raw client on an open server. */
static int raw_request(int fd, int op, int64_t id, const char *name) {
  char *out;
  size_t len;
  assert_int_equal(mp__encode_request(op, id, name, NULL, -1.0, &out, &len), 0);
  assert_int_equal(send(fd, out, len, 0), (ssize_t)len);
  free(out);
  unsigned char h[4];
  assert_int_equal(recv(fd, h, 4, MSG_WAITALL), 4);
  size_t n = (size_t)h[0] << 24 | (size_t)h[1] << 16 | (size_t)h[2] << 8 | h[3];
  char *body = malloc(n);
  assert_non_null(body);
  assert_int_equal(recv(fd, body, n, MSG_WAITALL), (ssize_t)n);
  mp_obj *rep = NULL;
  assert_int_equal(mp_obj_decode(body, n, &rep), 0);
  free(body);
  const mp_obj *st;
  assert_int_equal(mp_obj_list_get(rep, 0, &st), 0);
  int64_t status = as_int(st);
  mp_obj_free(rep);
  return (int)status;
}

static void test_manager_release_needs_creator(void **state) {
  (void)state;
  mp_manager_options o = {.no_auth = 1};
  mp_manager *m;
  assert_int_equal(mp_manager_new(&o, &m), 0);
  assert_int_equal(mp_manager_start(m), 0);
  mp_proxy *d;
  assert_int_equal(mp_manager_dict(m, NULL, &d), 0); /* the server's object 1 */
  char addr[256];
  assert_true(mp_manager_address(m, addr, sizeof addr) > 0);
  int fd = raw_connect(addr);
  unsigned char hello[4 + MP__HS_MAGIC_LEN];
  assert_int_equal(recv(fd, hello, sizeof hello, MSG_WAITALL), (ssize_t)sizeof hello);
  assert_memory_equal(hello + 4, MP__HS_OPEN, MP__HS_MAGIC_LEN);
  assert_int_equal(raw_request(fd, MP__OP_CALL, 1, "len"), 0);
  assert_int_equal(raw_request(fd, MP__OP_RELEASE, 1, ""), -EPERM);
  assert_int_equal(raw_request(fd, MP__OP_RELEASE, 999, ""), -ESRCH);
  assert_int_equal(raw_request(fd, MP__OP_CALL, 999, "len"), -ESRCH);
  close(fd);
  /* the creator's object is still there, and its creator may release it */
  assert_int_equal(mp_dict_proxy_len(d), 0);
  mp_proxy_free(d);
  mp_manager_free(m);
}

/* Dict keys: many keys, removals among them, all found (or not) as they
 * should be; adversarial-looking keys (sharing long prefixes, differing in
 * one bit) finish quickly; removing every key is not quadratic. */
static void test_manager_dict_index(void **state) {
  (void)state;
  enum { N = 20000 };
  double t0 = tu_now();
  mp_obj *d = mp_obj_dict();
  char key[80];
  memset(key, 'a', sizeof key);
  for (int i = 0; i < N; i++) {
    snprintf(key + 60, 20, "%08x", (unsigned)i * 0x10001u);
    assert_int_equal(mp_obj_dict_set(d, mp_obj_str(key), mp_obj_int(i)), 0);
  }
  assert_int_equal(mp_obj_len(d), N);
  /* remove every third, from the front: entries keep their order */
  for (int i = 0; i < N; i += 3) {
    snprintf(key + 60, 20, "%08x", (unsigned)i * 0x10001u);
    mp_obj *k = mp_obj_str(key);
    ssize_t at = mp__obj_dict_find(d, k);
    assert_true(at >= 0);
    mp__obj_dict_remove(d, (size_t)at, NULL, NULL);
    assert_true(mp__obj_dict_find(d, k) < 0);
    mp_obj_free(k);
  }
  int live = N - (N + 2) / 3;
  assert_int_equal(mp_obj_len(d), live);
  for (int i = 0; i < N; i++) {
    snprintf(key + 60, 20, "%08x", (unsigned)i * 0x10001u);
    const mp_obj *v;
    int r = mp_obj_dict_get_str(d, key, &v);
    if (i % 3 == 0) {
      assert_int_equal(r, -ENOENT);
    } else {
      assert_int_equal(r, 0);
      assert_int_equal(as_int(v), i);
    }
  }
  /* positions are insertion order among the live ones */
  const mp_obj *k0, *v0;
  assert_int_equal(mp_obj_dict_item(d, 0, &k0, &v0), 0);
  assert_int_equal(as_int(v0), 1);
  assert_int_equal(mp_obj_dict_item(d, (size_t)live - 1, &k0, &v0), 0);
  assert_int_equal(as_int(v0), N - 1 - ((N - 1) % 3 == 0));
  /* a copy and an encode/decode round trip agree */
  mp_obj *c = mp_obj_copy(d);
  assert_int_equal(mp_obj_equal(c, d), 1);
  mp_obj_free(c);
  /* then all, from the front */
  for (int i = 0; i < N; i++) {
    if (i % 3 == 0)
      continue;
    snprintf(key + 60, 20, "%08x", (unsigned)i * 0x10001u);
    mp_obj *k = mp_obj_str(key);
    ssize_t at = mp__obj_dict_find(d, k);
    assert_true(at >= 0);
    mp__obj_dict_remove(d, (size_t)at, NULL, NULL);
    mp_obj_free(k);
  }
  assert_int_equal(mp_obj_len(d), 0);
  mp_obj_free(d);
  assert_true(tu_now() - t0 < 10.0);
}

/* The same through a manager's dict: pops of many keys stay fast and
 * right, and keys() after removals lists the rest in order. */
static void test_manager_dict_proxy_removals(void **state) {
  (void)state;
  mp_manager *m = start();
  mp_proxy *d;
  assert_int_equal(mp_manager_dict(m, NULL, &d), 0);
  enum { N = 300 };
  for (int i = 0; i < N; i++) {
    mp_obj *k = mp_obj_int(i), *v = mp_obj_int(-i);
    assert_int_equal(mp_dict_proxy_set(d, k, v), 0);
    mp_obj_free(k);
    mp_obj_free(v);
  }
  for (int i = 0; i < N; i += 2) {
    mp_obj *k = mp_obj_int(i), *got = NULL;
    assert_int_equal(mp_dict_proxy_pop(d, k, &got), 0);
    assert_int_equal(as_int(got), -i);
    mp_obj_free(got);
    assert_int_equal(mp_dict_proxy_contains(d, k), 0);
    mp_obj_free(k);
  }
  assert_int_equal(mp_dict_proxy_len(d), N / 2);
  mp_obj *keys = NULL;
  assert_int_equal(mp_dict_proxy_keys(d, &keys), 0);
  assert_int_equal(mp_obj_len(keys), N / 2);
  for (int i = 0; i < N / 2; i++) {
    const mp_obj *k;
    assert_int_equal(mp_obj_list_get(keys, i, &k), 0);
    assert_int_equal(as_int(k), 2 * i + 1);
  }
  mp_obj_free(keys);
  mp_proxy_free(d);
  mp_manager_free(m);
}

/* A notification that finds its waiter dead goes to the next waiter. */
struct cond_waiter {
  mp_proxy *c;
  int wfd;
  double timeout;
};

static int cond_waiter_main(void *arg) {
  struct cond_waiter *w = arg;
  CHILD_CHECK(mp_lock_proxy_acquire(w->c, 5.0) == 0);
  CHILD_CHECK(write(w->wfd, "x", 1) == 1);
  int r = mp_condition_proxy_wait(w->c, w->timeout);
  CHILD_CHECK(r == 0);
  CHILD_CHECK(mp_lock_proxy_release(w->c) == 0);
  return 0;
}

static void test_manager_notify_skips_dead_waiter(void **state) {
  (void)state;
  mp_manager *m = start();
  mp_proxy *c;
  assert_int_equal(mp_manager_condition(m, &c), 0);
  int pfd[2];
  assert_int_equal(pipe(pfd), 0);
  struct cond_waiter wa = {c, pfd[1], MP_FOREVER}, wb = {c, pfd[1], 5.0};
  char b;
  pid_t a = tu_fork(cond_waiter_main, &wa, 30);
  assert_true(a > 0);
  assert_int_equal(read(pfd[0], &b, 1), 1);
  tu_sleep(0.1); /* a waits */
  pid_t bb = tu_fork(cond_waiter_main, &wb, 30);
  assert_true(bb > 0);
  assert_int_equal(read(pfd[0], &b, 1), 1);
  tu_sleep(0.1); /* b waits behind a */
  kill(a, SIGKILL);
  assert_int_equal(tu_wait(a), 1000 + SIGKILL);
  /* at once, before a's request looks at its client by itself */
  assert_int_equal(mp_lock_proxy_acquire(c, 5.0), 0);
  assert_int_equal(mp_condition_proxy_notify(c, 1), 0);
  assert_int_equal(mp_lock_proxy_release(c), 0);
  assert_child_ok(bb);
  close(pfd[0]);
  close(pfd[1]);
  mp_proxy_free(c);
  mp_manager_free(m);
}

/* The server logs connections and refused keys, to its standard error
 * (which it keeps; a handler set in the parent is not carried over, as the
 * server closes the descriptors such a handler would write to). */
static void log_nowhere(int level, const char *message, void *arg) {
  (void)level;
  (void)message;
  (void)arg;
}

static void test_manager_logs_connections_and_refusals(void **state) {
  (void)state;
  int fds[2];
  assert_int_equal(pipe2(fds, O_CLOEXEC | O_NONBLOCK), 0);
  assert_int_equal(mp_log_set_handler(MP_LOG_INFO, log_nowhere, NULL), 0);
  fflush(stderr);
  int saved = dup(2);
  assert_true(saved >= 0);
  dup2(fds[1], 2); /* the server's standard error */
  mp_manager_options o = {.address = "127.0.0.1:0", .authkey = "right key", .authkey_len = 9};
  mp_manager *m, *c;
  int started = mp_manager_new(&o, &m) == 0 && mp_manager_start(m) == 0;
  dup2(saved, 2);
  close(saved);
  assert_int_equal(mp_log_to_stderr(MP_LOG_OFF), 0); /* this process: quiet again */
  assert_true(started);
  char addr[256];
  assert_true(mp_manager_address(m, addr, sizeof addr) > 0);
  mp_manager_options w = {.address = addr, .authkey = "wrong key", .authkey_len = 9};
  assert_int_equal(mp_manager_new(&w, &c), 0);
  assert_int_equal(mp_manager_connect(c), -EACCES);
  assert_int_equal(mp_manager_free(c), 0);
  mp_manager_options ok = {.address = addr, .authkey = "right key", .authkey_len = 9};
  assert_int_equal(mp_manager_new(&ok, &c), 0);
  assert_int_equal(mp_manager_connect(c), 0);
  assert_int_equal(mp_manager_free(c), 0);
  char buf[4096] = {0};
  size_t got = 0;
  double t0 = tu_now();
  while (tu_now() - t0 < 10 && !(strstr(buf, "refused") && strstr(buf, "disconnected"))) {
    ssize_t n = read(fds[0], buf + got, sizeof buf - 1 - got);
    if (n > 0)
      got += (size_t)n;
    else
      tu_sleep(0.01);
  }
  assert_non_null(strstr(buf, "[WARNING/"));
  assert_non_null(strstr(buf, "refused: wrong or missing authentication key"));
  assert_non_null(strstr(buf, "] manager: client "));
  assert_non_null(strstr(buf, "disconnected"));
  assert_int_equal(mp_manager_free(m), 0);
  close(fds[0]);
  close(fds[1]);
}

int main(void) {
  signal(SIGPIPE, SIG_IGN);
  if (getenv("MP_TEST_FILTER")) /* run one test: MP_TEST_FILTER=test_manager_queue */
    cmocka_set_test_filter(getenv("MP_TEST_FILTER"));
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_manager_logs_connections_and_refusals),
      cmocka_unit_test(test_manager_obj_scalars),
      cmocka_unit_test(test_manager_obj_containers),
      cmocka_unit_test(test_manager_obj_encode_decode),
      cmocka_unit_test(test_manager_obj_limits),
      cmocka_unit_test(test_manager_lifecycle_and_errors),
      cmocka_unit_test(test_manager_dict_methods),
      cmocka_unit_test(test_manager_dict_from_children),
      cmocka_unit_test(test_manager_list_methods),
      cmocka_unit_test(test_manager_list_and_lock_from_children),
      cmocka_unit_test(test_manager_namespace),
      cmocka_unit_test(test_manager_queue),
      cmocka_unit_test(test_manager_locks),
      cmocka_unit_test(test_manager_event),
      cmocka_unit_test(test_manager_condition),
      cmocka_unit_test(test_manager_value_array),
      cmocka_unit_test(test_manager_custom_type),
      cmocka_unit_test(test_manager_wrong_key_refused),
      cmocka_unit_test(test_manager_serve_forever_tcp),
      cmocka_unit_test(test_manager_open_server_and_keyed_client),
      cmocka_unit_test(test_manager_malformed_and_oversized_input),
      cmocka_unit_test(test_manager_server_killed_then_new_one),
      cmocka_unit_test(test_manager_server_ends_with_its_program),
      cmocka_unit_test(test_manager_listener_client),
      cmocka_unit_test(test_manager_listener_client_tcp),
      cmocka_unit_test(test_manager_listener_accept_timeouts),
      cmocka_unit_test(test_manager_shared_channel_used),
      cmocka_unit_test(test_manager_shared_channel_large_messages),
      cmocka_unit_test(test_manager_shared_channel_client_killed),
      cmocka_unit_test(test_manager_shared_channel_server_killed),
      cmocka_unit_test(test_manager_timeout_with_stopped_server),
      cmocka_unit_test(test_manager_timeout_while_connection_busy),
      cmocka_unit_test(test_manager_fork_then_threads),
      cmocka_unit_test(test_manager_listen_keeps_umask),
      cmocka_unit_test(test_manager_killed_waiter_takes_nothing),
      cmocka_unit_test(test_manager_idle_connections_do_not_lock_out),
      cmocka_unit_test(test_manager_full_server_says_so),
      cmocka_unit_test(test_manager_release_needs_creator),
      cmocka_unit_test(test_manager_dict_index),
      cmocka_unit_test(test_manager_dict_proxy_removals),
      cmocka_unit_test(test_manager_notify_skips_dead_waiter),
      cmocka_unit_test(test_manager_named_objects_shared),
      cmocka_unit_test(test_manager_publish_existing_object),
      cmocka_unit_test(test_manager_start_initializer),
      cmocka_unit_test(test_manager_list_slices_and_order),
      cmocka_unit_test(test_manager_dict_more_methods),
      cmocka_unit_test(test_manager_queue_full_empty_joinable),
      cmocka_unit_test(test_manager_set),
      cmocka_unit_test(test_manager_barrier),
      cmocka_unit_test(test_manager_proxies_inside_containers),
      cmocka_unit_test(test_manager_proxy_reference_wire),
      cmocka_unit_test(test_manager_pool_apply_map),
      cmocka_unit_test(test_manager_pool_registration),
      cmocka_unit_test(test_manager_pool_errors),
      cmocka_unit_test(test_manager_pool_timeouts),
  };
  return TU_RUN("manager", tests);
}
