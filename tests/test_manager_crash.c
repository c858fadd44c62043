/* SPDX-License-Identifier: MIT */
/*
 * Crash points of the Manager's shared channel (src/manager_channel.c): one
 * test per row of its "what a SIGKILL leaves behind" table. A client is
 * killed in a child armed at a client-side point; the server is killed by
 * arming before mp_manager_start() (the server inherits the arming) and
 * muting the test process right after. Each test then checks what the
 * survivors see: the data, the locks, the channel's block freed, and that
 * every call ends within a bound. The same for clients of a named
 * JoinableQueue: a client killed between its get and its task_done leaves
 * the task unfinished, never finished twice or lost.
 */
#include "crashutil.h"

#include <errno.h>
#include <mp.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

/* ---------------------------------------------------------------- helpers */

static size_t heap_blocks(void) {
  mp_heap_stats st;
  assert_int_equal(mp_heap_stats_get(&st), 0);
  return st.blocks;
}

/* Wait up to 5 s for the heap to hold `want` blocks (a server thread frees
 * a dead client's block once it sees the client's end). */
static bool heap_blocks_become(size_t want) {
  for (int i = 0; i < 500; i++) {
    mp_heap_stats st;
    if (mp_heap_stats_get(&st) == 0 && st.blocks == want)
      return true;
    tu_sleep(0.01);
  }
  return false;
}

static mp_manager *start(void) {
  mp_manager *m;
  assert_int_equal(mp_manager_new(NULL, &m), 0);
  assert_int_equal(mp_manager_start(m), 0);
  return m;
}

static int dict_set(mp_proxy *d, int64_t k, int64_t v) {
  mp_obj *ko = mp_obj_int(k), *vo = mp_obj_int(v);
  int r = mp_dict_proxy_set(d, ko, vo);
  mp_obj_free(ko);
  mp_obj_free(vo);
  return r;
}

static int dict_has(mp_proxy *d, int64_t k) {
  mp_obj *ko = mp_obj_int(k);
  int r = mp_dict_proxy_contains(d, ko);
  mp_obj_free(ko);
  return r;
}

struct objs {
  mp_proxy *d, *l, *q;
};

static struct objs make_objs(mp_manager *m) {
  struct objs o;
  assert_int_equal(mp_manager_dict(m, NULL, &o.d), 0);
  assert_int_equal(mp_manager_lock(m, &o.l), 0);
  assert_int_equal(mp_manager_queue(m, 0, &o.q), 0);
  return o;
}

static void free_objs(struct objs *o) {
  mp_proxy_free(o->d);
  mp_proxy_free(o->l);
  mp_proxy_free(o->q);
}

/* The survivor's calls work, promptly: the server goes on. */
static void server_goes_on(struct objs *o) {
  double t0 = tu_now();
  assert_int_equal(dict_set(o->d, 99, 1), 0);
  assert_int_equal(dict_has(o->d, 99), 1);
  assert_int_equal(mp_lock_proxy_acquire(o->l, 5.0), 0);
  assert_int_equal(mp_lock_proxy_release(o->l), 0);
  assert_true(tu_now() - t0 < 5.0);
}

/* Killed clients: the child's first call opens its own connection and
 * channel (the parent's are the parent's). */
static int child_set(void *arg) {
  struct objs *o = arg;
  dict_set(o->d, 1, 1);
  return 99; /* never: killed above */
}

/* Takes the lock (first request), then sets key 1 (second). */
static int child_lock_then_set(void *arg) {
  struct objs *o = arg;
  CHILD_CHECK(mp_lock_proxy_acquire(o->l, 5.0) == 0);
  tu_sleep(0.05); /* the server's thread goes to sleep on the socket */
  dict_set(o->d, 1, 1);
  return 99;
}

static int child_get(void *arg) {
  struct objs *o = arg;
  mp_obj *got = NULL;
  mp_queue_proxy_get(o->q, MP_FOREVER, &got); /* the queue is empty */
  return 99;
}

struct objs_and_manager {
  struct objs o;
  mp_manager *m;
};

static int child_set_then_free(void *arg) {
  struct objs_and_manager *a = arg;
  mp_manager *m = a->m;
  CHILD_CHECK(dict_set(a->o.d, 2, 2) == 0);
  mp_manager_free(m); /* lets go of its channel: killed after marking it */
  return 99;
}

/* ------------------------------------------------------------ client side */

static void test_manager_crash_client_offer_sent(void **state) {
  (void)state;
  size_t base = heap_blocks();
  mp_manager *m = start();
  struct objs o = make_objs(m);
  size_t with = heap_blocks(); /* and this process's channel */
  pid_t c = cu_fork_armed("manager.sh.offer.sent", 1, child_set, &o, 30);
  cu_assert_killed_at(c);
  /* the server took the offered block, then saw the end and freed it */
  assert_true(heap_blocks_become(with));
  assert_int_equal(dict_has(o.d, 1), 0);
  server_goes_on(&o);
  free_objs(&o);
  mp_manager_free(m);
  assert_true(heap_blocks_become(base));
}

static void test_manager_crash_client_request_written(void **state) {
  (void)state;
  size_t base = heap_blocks();
  mp_manager *m = start();
  struct objs o = make_objs(m);
  size_t with = heap_blocks();
  pid_t c = cu_fork_armed("manager.sh.request.written", 2, child_lock_then_set, &o, 30);
  cu_assert_killed_at(c);
  /* never published: not carried out; its lock released; block freed */
  server_goes_on(&o);
  assert_int_equal(dict_has(o.d, 1), 0);
  assert_true(heap_blocks_become(with));
  free_objs(&o);
  mp_manager_free(m);
  assert_true(heap_blocks_become(base));
}

static void test_manager_crash_client_request_published(void **state) {
  (void)state;
  size_t base = heap_blocks();
  mp_manager *m = start();
  struct objs o = make_objs(m);
  size_t with = heap_blocks();
  pid_t c = cu_fork_armed("manager.sh.request.published", 2, child_lock_then_set, &o, 30);
  cu_assert_killed_at(c);
  /* published: carried out all the same (within a bound) */
  int has = 0;
  for (int i = 0; i < 200 && (has = dict_has(o.d, 1)) == 0; i++)
    tu_sleep(0.01);
  assert_int_equal(has, 1);
  server_goes_on(&o);
  assert_true(heap_blocks_become(with));
  free_objs(&o);
  mp_manager_free(m);
  assert_true(heap_blocks_become(base));
}

static void test_manager_crash_client_asleep(void **state) {
  (void)state;
  size_t base = heap_blocks();
  mp_manager *m = start();
  struct objs o = make_objs(m);
  size_t with = heap_blocks();
  pid_t c = cu_fork_armed("manager.sh.wait.client_asleep", 1, child_get, &o, 30);
  cu_assert_killed_at(c);
  /* the dead client's get still waits in the server: it must take nothing */
  mp_obj *v = mp_obj_int(42), *got = NULL;
  assert_int_equal(mp_queue_proxy_put(o.q, v, 1.0), 0);
  assert_int_equal(mp_queue_proxy_get(o.q, 5.0, &got), 0);
  int64_t x = 0;
  assert_int_equal(mp_obj_get_int(got, &x), 0);
  assert_int_equal(x, 42);
  mp_obj_free(got);
  mp_obj_free(v);
  server_goes_on(&o);
  assert_true(heap_blocks_become(with));
  free_objs(&o);
  mp_manager_free(m);
  assert_true(heap_blocks_become(base));
}

static void test_manager_crash_client_release_marked(void **state) {
  (void)state;
  size_t base = heap_blocks();
  mp_manager *m = start();
  struct objs o = make_objs(m);
  size_t with = heap_blocks();
  struct objs_and_manager arg = {o, m};
  pid_t c = cu_fork_armed("manager.sh.release.marked", 1, child_set_then_free, &arg, 30);
  cu_assert_killed_at(c);
  /* the client marked the block first: the server frees it at the end */
  assert_true(heap_blocks_become(with));
  assert_int_equal(dict_has(o.d, 2), 1);
  server_goes_on(&o);
  free_objs(&o);
  mp_manager_free(m);
  assert_true(heap_blocks_become(base));
}

/* ------------------------------------------------------------ server side */

/* Arm a server-side point for the server about to be started. */
static mp_manager *start_armed(const char *point, unsigned nth) {
  assert_int_equal(mp__crash_arm(point, nth, MP__CRASH_KILL), 0);
  mp_manager *m = start();
  mp__crash_mute();
  return m;
}

/* The server died at the point; this process's calls fail with -EPIPE
 * within a bound and its block is freed. */
static void server_gone(mp_manager *m, size_t base) {
  pid_t srv = mp_manager_pid(m);
  cu_assert_killed_at(srv);
  double t0 = tu_now();
  mp_proxy *d;
  assert_int_equal(mp_manager_dict(m, NULL, &d), -EPIPE);
  assert_true(tu_now() - t0 < 3.0);
  assert_true(heap_blocks_become(base));
  assert_int_equal(mp_manager_shutdown(m), -EPIPE);
  mp_manager_free(m);
}

static int child_first_call_epipe(void *arg) {
  mp_proxy *d = arg;
  double t0 = tu_now();
  mp_obj *k = mp_obj_int(1), *v = mp_obj_int(1);
  int r = mp_dict_proxy_set(d, k, v);
  CHILD_CHECK(r == -EPIPE);
  CHILD_CHECK(tu_now() - t0 < 3.0);
  mp_obj_free(k);
  mp_obj_free(v);
  return 0;
}

static void test_manager_crash_server_offer_accepted(void **state) {
  (void)state;
  size_t base = heap_blocks();
  /* pass 1 is the starter's own offer; pass 2 the child's */
  mp_manager *m = start_armed("manager.sh.offer.accepted", 2);
  mp_proxy *d;
  assert_int_equal(mp_manager_dict(m, NULL, &d), 0);
  size_t with = heap_blocks();
  pid_t c = tu_fork(child_first_call_epipe, d, 30);
  assert_true(c > 0);
  assert_child_ok(c);
  /* the child freed the block the dead server had taken */
  assert_true(heap_blocks_become(with));
  mp_proxy_free(d);
  server_gone(m, base);
}

static void test_manager_crash_server_asleep(void **state) {
  (void)state;
  size_t base = heap_blocks();
  /* the server thread of the starter's connection goes to sleep as soon
   * as the starter is idle */
  mp_manager *m = start_armed("manager.sh.next.server_asleep", 1);
  server_gone(m, base);
}

static void test_manager_crash_server_reply_written(void **state) {
  (void)state;
  size_t base = heap_blocks();
  /* the first reply through the block is the first call's (the offer's
   * answer goes on the socket) */
  mp_manager *m = start_armed("manager.sh.reply.written", 1);
  double t0 = tu_now();
  mp_proxy *d;
  assert_int_equal(mp_manager_dict(m, NULL, &d), -EPIPE); /* nothing torn */
  assert_true(tu_now() - t0 < 3.0);
  server_gone(m, base);
}

static void test_manager_crash_server_reply_published(void **state) {
  (void)state;
  size_t base = heap_blocks();
  mp_manager *m = start_armed("manager.sh.reply.published", 2);
  mp_proxy *e;
  assert_int_equal(mp_manager_event(m, &e), 0); /* reply 1 */
  /* reply 2 comes after 0.3 s, to a client asleep on it; the server dies
   * before it wakes the client, whose slice still ends with the reply */
  double t0 = tu_now();
  assert_int_equal(mp_event_proxy_wait(e, 0.3), -ETIMEDOUT);
  double el = tu_now() - t0;
  assert_true(el >= 0.3 && el < 2.5);
  mp_proxy_free(e);
  server_gone(m, base);
}


/* ------------------------------------------------- named objects, tasks */

/* A server holding a JoinableQueue under the name "jobs", one item in it. */
static mp_manager *start_with_jobs(mp_proxy **jobs) {
  mp_manager *m;
  assert_int_equal(mp_manager_new(NULL, &m), 0);
  assert_int_equal(mp_manager_register_object(m, "jobs", "JoinableQueue", NULL), 0);
  assert_int_equal(mp_manager_start(m), 0);
  assert_int_equal(mp_manager_get(m, "jobs", jobs), 0);
  mp_obj *v = mp_obj_int(7);
  assert_int_equal(mp_queue_proxy_put(*jobs, v, 1.0), 0);
  mp_obj_free(v);
  return m;
}

/* Asks for "jobs" (request 1), takes the item (2), marks it done (3). */
static int child_take_job(void *arg) {
  mp_manager *m = arg;
  mp_proxy *q;
  CHILD_CHECK(mp_manager_get(m, "jobs", &q) == 0);
  mp_obj *v = NULL;
  CHILD_CHECK(mp_queue_proxy_get(q, 5.0, &v) == 0);
  mp_queue_proxy_task_done(q);
  return 99;
}

static void test_manager_crash_client_task_done_written(void **state) {
  (void)state;
  mp_proxy *q;
  mp_manager *m = start_with_jobs(&q);
  pid_t c = cu_fork_armed("manager.sh.request.written", 3, child_take_job, m, 30);
  cu_assert_killed_at(c);
  /* the get was carried out, the task_done never published: the task is
   * still unfinished, and the named queue still serves */
  assert_int_equal(mp_queue_proxy_qsize(q), 0);
  assert_int_equal(mp_queue_proxy_join(q, 0.2), -ETIMEDOUT);
  assert_int_equal(mp_queue_proxy_task_done(q), 0);
  assert_int_equal(mp_queue_proxy_join(q, 5.0), 0);
  assert_int_equal(mp_queue_proxy_task_done(q), -EOVERFLOW); /* nothing counted twice */
  mp_proxy_free(q);
  mp_manager_free(m);
}

static void test_manager_crash_client_task_done_published(void **state) {
  (void)state;
  mp_proxy *q;
  mp_manager *m = start_with_jobs(&q);
  pid_t c = cu_fork_armed("manager.sh.request.published", 3, child_take_job, m, 30);
  cu_assert_killed_at(c);
  /* published: carried out all the same, once */
  assert_int_equal(mp_queue_proxy_join(q, 5.0), 0);
  assert_int_equal(mp_queue_proxy_task_done(q), -EOVERFLOW);
  mp_proxy_free(q);
  mp_manager_free(m);
}

/* Asks for "jobs", then waits in a get on it (the queue is empty). */
static int child_wait_job(void *arg) {
  mp_manager *m = arg;
  mp_proxy *q;
  if (mp_manager_get(m, "jobs", &q) < 0)
    return 98;
  mp_obj *v = NULL;
  mp_queue_proxy_get(q, MP_FOREVER, &v);
  return 99;
}

static void test_manager_crash_client_asleep_on_named_queue(void **state) {
  (void)state;
  mp_proxy *q;
  mp_manager *m = start_with_jobs(&q);
  mp_obj *got = NULL;
  assert_int_equal(mp_queue_proxy_get(q, 1.0, &got), 0); /* empty it */
  mp_obj_free(got);
  pid_t c = cu_fork_armed("manager.sh.wait.client_asleep", 1, child_wait_job, m, 30);
  cu_assert_killed_at(c);
  /* the dead client's get takes nothing; the unfinished count is the
   * parent's one put */
  mp_obj *v = mp_obj_int(42);
  assert_int_equal(mp_queue_proxy_put(q, v, 1.0), 0);
  assert_int_equal(mp_queue_proxy_get(q, 5.0, &got), 0);
  assert_int_equal(mp_obj_equal(v, got), 1);
  mp_obj_free(got);
  mp_obj_free(v);
  assert_int_equal(mp_queue_proxy_task_done(q), 0);
  assert_int_equal(mp_queue_proxy_task_done(q), 0);
  assert_int_equal(mp_queue_proxy_join(q, 5.0), 0);
  mp_proxy_free(q);
  mp_manager_free(m);
}

/* ------------------------------------------------------------ managed Pool */

/* sleeps args[0] seconds, gives it back */
static int pf_nap(const mp_obj *args, mp_obj **res, void *ctx) {
  (void)ctx;
  const mp_obj *x;
  double t;
  if (mp_obj_list_get(args, 0, &x) < 0 || mp_obj_get_float(x, &t) < 0)
    return -EINVAL;
  tu_sleep(t);
  *res = mp_obj_float(t);
  return 0;
}

static int pool_map_naps(mp_proxy *pool, double each, int n, mp_obj **res) {
  mp_obj *items = mp_obj_list();
  for (int i = 0; i < n; i++)
    mp_obj_list_append(items, mp_obj_float(each));
  int r = mp_pool_proxy_map(pool, "nap", items, 1, 30, res);
  mp_obj_free(items);
  return r;
}

static int pool_mapper(void *arg) {
  pool_map_naps(arg, 1.0, 4, NULL); /* killed while it waits */
  return 0;
}

/* A live client whose map keeps both workers busy for 1.5 s. */
static int pool_long_client(void *arg) {
  mp_obj *res = NULL;
  CHILD_CHECK(pool_map_naps(arg, 1.5, 2, &res) == 0);
  CHILD_CHECK(mp_obj_len(res) == 2);
  mp_obj_free(res);
  return 0;
}

static int pool_other_client(void *arg) {
  mp_obj *res = NULL;
  CHILD_CHECK(pool_map_naps(arg, 0.01, 6, &res) == 0);
  CHILD_CHECK(mp_obj_len(res) == 6);
  mp_obj_free(res);
  return 0;
}

/* A client killed while its map runs: its tasks may run, their results are
 * dropped; the server, the pool and the other clients go on. */
static void test_manager_crash_client_killed_in_pool_map(void **state) {
  (void)state;
  int r = mp_manager_register_function("nap", pf_nap, NULL);
  assert_true(r == 0 || r == -EEXIST);
  mp_manager *m = start();
  mp_proxy *pool, *d;
  assert_int_equal(mp_manager_pool(m, 2, &pool), 0);
  assert_int_equal(mp_manager_dict(m, NULL, &d), 0);
  pid_t l = tu_fork(pool_long_client, pool, 60);
  tu_sleep(0.3); /* l's naps hold both workers */
  pid_t c = tu_fork(pool_mapper, pool, 60);
  tu_sleep(0.3); /* c's map is waiting: its four naps queued */
  kill(c, SIGKILL);
  assert_int_equal(tu_wait(c), 1000 + SIGKILL);
  /* the server answers at once, while l still waits for its map (a thread
   * waits on the pool without the server's lock) */
  double t0 = tu_now();
  assert_int_equal(dict_set(d, 1, 2), 0);
  assert_int_equal(dict_has(d, 1), 1);
  assert_true(tu_now() - t0 < 0.5);
  /* other clients' maps complete (behind the dead client's tasks) */
  pid_t o = tu_fork(pool_other_client, pool, 60);
  mp_obj *res = NULL;
  t0 = tu_now();
  assert_int_equal(pool_map_naps(pool, 0.01, 3, &res), 0);
  assert_int_equal(mp_obj_len(res), 3);
  assert_true(tu_now() - t0 < 10);
  mp_obj_free(res);
  assert_child_ok(o);
  assert_child_ok(l);
  mp_proxy_free(d);
  mp_proxy_free(pool);
  assert_int_equal(mp_manager_shutdown(m), 0);
  mp_manager_free(m);
}

int main(void) {
  signal(SIGPIPE, SIG_IGN);
  if (!mp__crash_enabled()) {
    fprintf(stderr, "built without crash points\n");
    return 1;
  }
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_manager_crash_client_offer_sent),
      cmocka_unit_test(test_manager_crash_client_request_written),
      cmocka_unit_test(test_manager_crash_client_request_published),
      cmocka_unit_test(test_manager_crash_client_asleep),
      cmocka_unit_test(test_manager_crash_client_release_marked),
      cmocka_unit_test(test_manager_crash_server_offer_accepted),
      cmocka_unit_test(test_manager_crash_server_asleep),
      cmocka_unit_test(test_manager_crash_server_reply_written),
      cmocka_unit_test(test_manager_crash_server_reply_published),
      cmocka_unit_test(test_manager_crash_client_task_done_written),
      cmocka_unit_test(test_manager_crash_client_task_done_published),
      cmocka_unit_test(test_manager_crash_client_asleep_on_named_queue),
      cmocka_unit_test(test_manager_crash_client_killed_in_pool_map),
  };
  return TU_RUN("manager_crash", tests);
}
