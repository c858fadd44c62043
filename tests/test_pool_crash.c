/* SPDX-License-Identifier: MIT */
/* Pool under worker kills: 100 rounds in a row, a random worker SIGKILLed at a
 * random moment while tasks run. The task it held fails with -ECONNABORTED
 * within a second and its error callback runs; every other task completes
 * with the right result; the pool stays usable. Then the same for maps whose
 * workers write straight into the caller's memory: a kill leaves at most the
 * victim's chunk unwritten and never a byte outside the results.
 *
 * Then a worker killed at each step of the task-entry kill table in
 * src/pool_internal.h (crash points "pool.*", in src/pool_worker.c): only
 * the victim's task fails, the other results are exact, no heap block is
 * left behind, the pool stays usable and nothing waits longer than a bounded
 * time. And the full ring whose publishing stopped at the entry of a worker
 * that then died. */
#include "crashutil.h"
#include "internal.h"

#include <errno.h>
#include <fcntl.h>
#include <mp.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

enum { ROUNDS = 100, TASKS = 12, WORKERS = 3 };

/* Per task, in the heap: which worker started it and whether it got to the
 * end of its work. Allocated before the pool so every worker sees it. */
struct track {
  atomic_int running_pid[TASKS];
  atomic_int finished[TASKS];
};
static struct track *tr;

static int work(const void *arg, size_t len, mp_pool_out *out, void *ctx) {
  (void)len;
  (void)ctx;
  int id = ((const int *)arg)[0], ms = ((const int *)arg)[1];
  atomic_store(&tr->running_pid[id], (int)getpid());
  tu_sleep(ms / 1000.0);
  int v = id * 2 + 1;
  atomic_store(&tr->finished[id], 1);
  return mp_pool_out_set(out, &v, sizeof v) < 0 ? -ENOMEM : id;
}

static atomic_int errors_seen[TASKS];

static int on_error(mp_async_result *r, int status, void *arg) {
  (void)r;
  if (status == -ECONNABORTED)
    atomic_fetch_add(&errors_seen[(intptr_t)arg], 1);
  return 0;
}

static void test_pool_crash_random_worker_kills(void **state) {
  (void)state;
  tr = mp_heap_calloc(1, sizeof *tr);
  assert_non_null(tr);
  mp_pool *p;
  assert_int_equal(mp_pool_new(WORKERS, NULL, &p), 0);
  srand(12345);
  int total_failed = 0;
  double start = tu_now();
  for (int round = 0; round < ROUNDS; round++) {
    memset(tr, 0, sizeof *tr);
    mp_async_result *r[TASKS];
    int failed_this_round = 0;
    for (int i = 0; i < TASKS; i++) {
      atomic_store(&errors_seen[i], 0);
      int arg[2] = {i, 1 + rand() % 15};
      mp_pool_callbacks cb = {NULL, on_error, (void *)(intptr_t)i};
      assert_int_equal(mp_pool_apply_async(p, work, arg, sizeof arg, NULL, &cb, &r[i]), 0);
    }
    tu_sleep((rand() % 30) / 1000.0);
    int pids[WORKERS];
    assert_int_equal(mp_pool_worker_pids(p, pids, WORKERS), WORKERS);
    int victim = pids[rand() % WORKERS];
    assert_int_equal(kill(victim, SIGKILL), 0);
    double killed_at = tu_now();
    /* The task the victim held (if it held one) fails within a second. */
    for (int i = 0; i < TASKS; i++) {
      if (atomic_load(&tr->running_pid[i]) == victim && !atomic_load(&tr->finished[i])) {
        assert_int_equal(mp_async_result_get(r[i], 5), -ECONNABORTED);
        assert_true(tu_now() - killed_at < 1.0 + 0.5 /* a loaded shared machine */);
      }
    }
    for (int i = 0; i < TASKS; i++) {
      int st = mp_async_result_get(r[i], 10);
      if (st == -ECONNABORTED) {
        /* only the victim's task (0: claimed by the victim, killed before the
         * task's first line ran), at most one per round, and its error
         * callback ran */
        int who = atomic_load(&tr->running_pid[i]);
        assert_true(who == victim || who == 0);
        assert_int_equal(++failed_this_round, 1);
        assert_int_equal(atomic_load(&errors_seen[i]), 1);
        total_failed++;
      } else {
        assert_int_equal(st, i);
        const void *d;
        size_t len;
        assert_int_equal(mp_async_result_data(r[i], &d, &len), 0);
        assert_int_equal(len, sizeof(int));
        assert_int_equal(*(const int *)d, i * 2 + 1);
        assert_int_equal(atomic_load(&errors_seen[i]), 0);
      }
      assert_int_equal(mp_async_result_free(r[i]), 0);
    }
    /* still usable, with all its workers */
    assert_int_equal(mp_pool_apply(p, work, (int[]){0, 0}, 2 * sizeof(int), NULL, NULL, NULL), 0);
    assert_int_equal(mp_pool_worker_pids(p, NULL, 0), WORKERS);
  }
  print_message("pool crash: %d rounds, %d tasks failed with their worker, %.1f s\n", ROUNDS,
                total_failed, tu_now() - start);
  assert_true(total_failed > 0); /* the kills did hit running tasks */
  assert_int_equal(mp_pool_close(p), 0);
  assert_int_equal(mp_pool_join(p, 30), 0);
  assert_int_equal(mp_pool_free(p), 0);
  mp_heap_free(tr);
}

static int add_one_slowly(const void *item, void *result, void *ctx) {
  (void)ctx;
  volatile int spin = 0;
  for (int i = 0; i < 10; i++)
    spin += i;
  *(int *)result = *(const int *)item + 1;
  return 0;
}

/* 9 MB of items and of results: too big to stage through the heap, so the
 * workers copy them directly (see mp_pool_map). */
enum { MAP_ROUNDS = 40, MAP_N = 2250000, MAP_CHUNK = 50000, GUARD = 4096 };

static void test_pool_crash_kills_during_direct_maps(void **state) {
  (void)state;
  mp_pool *p;
  assert_int_equal(mp_pool_new(WORKERS, NULL, &p), 0);
  int *in = malloc(MAP_N * sizeof *in);
  int *mem = malloc((MAP_N + 2 * GUARD) * sizeof *mem), *out = mem + GUARD;
  assert_non_null(in);
  assert_non_null(mem);
  for (int i = 0; i < MAP_N; i++)
    in[i] = i;
  srand(4242);
  int failed = 0;
  for (int round = 0; round < MAP_ROUNDS; round++) {
    for (int i = 0; i < MAP_N + 2 * GUARD; i++)
      mem[i] = -1;
    mp_async_result *r;
    assert_int_equal(mp_pool_map_async(p, add_one_slowly, NULL, in, MAP_N, sizeof *in, out,
                                       sizeof *out, MAP_CHUNK, NULL, &r),
                     0);
    tu_sleep((rand() % 15) / 1000.0);
    int pids[WORKERS];
    assert_int_equal(mp_pool_worker_pids(p, pids, WORKERS), WORKERS);
    assert_int_equal(kill(pids[rand() % WORKERS], SIGKILL), 0);
    int st = mp_async_result_get(r, 30);
    assert_int_equal(mp_async_result_free(r), 0);
    assert_true(st == 0 || st == -ECONNABORTED);
    for (int i = 0; i < GUARD; i++) {
      assert_int_equal(mem[i], -1);
      assert_int_equal(out[MAP_N + i], -1);
    }
    /* every result right or unwritten; unwritten ones only in one chunk, and
     * only when the map failed */
    long hole = -1;
    for (int i = 0; i < MAP_N; i++) {
      if (out[i] == i + 1)
        continue;
      assert_int_equal(out[i], -1);
      assert_int_equal(st, -ECONNABORTED);
      if (hole < 0)
        hole = i / MAP_CHUNK;
      assert_int_equal(i / MAP_CHUNK, hole);
    }
    failed += st != 0;
    assert_int_equal(
        mp_pool_map(p, add_one_slowly, NULL, in, MAP_N, sizeof *in, out, sizeof *out, MAP_CHUNK),
        0);
    assert_int_equal(out[MAP_N - 1], MAP_N);
    assert_int_equal(mp_pool_worker_pids(p, NULL, 0), WORKERS);
  }
  print_message("pool crash: %d of %d direct maps lost a chunk to the kill\n", failed, MAP_ROUNDS);
  assert_true(failed > 0);
  free(in);
  free(mem);
  assert_int_equal(mp_pool_free(p), 0);
}

/* ------------------------------------------------------------ the kill table */

enum { ROW_TASKS = 8, ROW_WORKERS = 2, BIG = 256 /* > the inline result size */ };

static size_t heap_used(void) {
  mp_heap_stats st;
  assert_int_equal(mp_heap_stats_get(&st), 0);
  return st.used;
}

/* Arm `point` for the family's nth pass, start a pool whose workers inherit
 * the arming, and mute this process: only a worker can fire. */
static mp_pool *armed_pool(const char *point, unsigned nth, enum mp__crash_action action) {
  assert_int_equal(mp__crash_arm(point, nth, action), 0);
  mp_pool *p = NULL;
  assert_int_equal(mp_pool_new(ROW_WORKERS, NULL, &p), 0);
  mp__crash_mute();
  return p;
}

/* Wait (bounded) until the pool has all its workers again and `victim` is
 * not one of them. */
static void assert_replaced(mp_pool *p, pid_t victim) {
  int pids[ROW_WORKERS] = {0};
  double until = tu_now() + 10;
  int n;
  for (;;) {
    n = mp_pool_worker_pids(p, pids, ROW_WORKERS);
    if ((n == ROW_WORKERS && pids[0] != victim && pids[1] != victim) || tu_now() > until)
      break;
    tu_sleep(0.005);
  }
  assert_int_equal(n, ROW_WORKERS);
  assert_true(pids[0] != victim && pids[1] != victim);
}

/* Apply: a BIG-byte result (a heap block) whose bytes are arg + k. */
static int big_result(const void *arg, size_t len, mp_pool_out *out, void *ctx) {
  (void)len;
  (void)ctx;
  int id = *(const int *)arg;
  unsigned char *buf;
  if (mp_pool_out_alloc(out, BIG, (void **)&buf) < 0)
    return -ENOMEM;
  for (int k = 0; k < BIG; k++)
    buf[k] = (unsigned char)(id + k);
  return id;
}

static void assert_big_result(mp_async_result *r, int id) {
  const void *d;
  size_t len;
  assert_int_equal(mp_async_result_data(r, &d, &len), 0);
  assert_int_equal(len, BIG);
  for (int k = 0; k < BIG; k++)
    assert_int_equal(((const unsigned char *)d)[k], (unsigned char)(id + k));
}

/* A worker dies at `point` on the family's first pass there, during
 * ROW_TASKS applies: the victim's task fails with -ECONNABORTED unless the
 * point lies after its completion, every other one is exact, no heap block
 * leaks (a heap result the victim had recorded is freed), the pool goes on. */
static void kill_during_applies(const char *point, int victim_completes) {
  size_t used0 = heap_used();
  mp_pool *p = armed_pool(point, 1, MP__CRASH_KILL);
  mp_async_result *r[ROW_TASKS];
  for (int i = 0; i < ROW_TASKS; i++)
    assert_int_equal(mp_pool_apply_async(p, big_result, &i, sizeof i, NULL, NULL, &r[i]), 0);
  int failed = 0;
  double t0 = tu_now();
  for (int i = 0; i < ROW_TASKS; i++) {
    int st = mp_async_result_get(r[i], 10);
    if (st == -ECONNABORTED) {
      failed++;
    } else {
      assert_int_equal(st, i);
      assert_big_result(r[i], i);
    }
    assert_int_equal(mp_async_result_free(r[i]), 0);
  }
  assert_true(tu_now() - t0 < 5); /* bounded: no one waited for a lost wake-up */
  assert_int_equal(failed, victim_completes ? 0 : 1);
  pid_t victim = mp__crash_fired();
  assert_true(victim > 0 && victim != getpid());
  assert_replaced(p, victim);
  int k = 42;
  mp_async_result *again;
  assert_int_equal(mp_pool_apply_async(p, big_result, &k, sizeof k, NULL, NULL, &again), 0);
  assert_int_equal(mp_async_result_get(again, 10), k);
  assert_big_result(again, k);
  assert_int_equal(mp_async_result_free(again), 0);
  assert_int_equal(mp_pool_free(p), 0);
  mp__crash_disarm();
  assert_int_equal(mp__heap_check(), 0);
  assert_int_equal(heap_used(), used0);
}

/* A task that arms a heap crash point in its own worker, then asks for a
 * large result block: the worker dies inside the allocation (before or after
 * its commit). */
static int result_alloc_killed(const void *arg, size_t len, mp_pool_out *out, void *ctx) {
  (void)len;
  (void)ctx;
  if (mp__crash_arm((const char *)arg, 1, MP__CRASH_KILL) < 0)
    return -1;
  void *buf;
  return mp_pool_out_alloc(out, BIG, &buf) < 0 ? -2 : 0;
}

/* Killed while its result block is allocated: the task fails, and the block
 * (taken or not) is not leaked: res_ptr is written in the same journaled step
 * as the allocation, so the parent frees exactly what was taken. */
static void test_pool_crash_kill_inside_result_alloc(void **state) {
  (void)state;
  static const char *const points[] = {"heap.alloc.journaled", "heap.alloc.committed"};
  for (size_t k = 0; k < 2; k++) {
    size_t used0 = heap_used();
    mp_pool *p = NULL;
    assert_int_equal(mp_pool_new(ROW_WORKERS, NULL, &p), 0);
    mp_async_result *r;
    const char *pt = points[k];
    assert_int_equal(mp_pool_apply_async(p, result_alloc_killed, pt, strlen(pt) + 1, NULL, NULL, &r), 0);
    assert_int_equal(mp_async_result_get(r, 10), -ECONNABORTED);
    assert_int_equal(mp_async_result_free(r), 0);
    int i = 7;
    mp_async_result *again;
    assert_int_equal(mp_pool_apply_async(p, big_result, &i, sizeof i, NULL, NULL, &again), 0);
    assert_int_equal(mp_async_result_get(again, 10), i);
    assert_big_result(again, i);
    assert_int_equal(mp_async_result_free(again), 0);
    assert_int_equal(mp_pool_free(p), 0);
    assert_int_equal(mp__heap_check(), 0);
    if (heap_used() != used0)
      fail_msg("%s: %zu bytes leaked", pt, heap_used() - used0);
  }
}

static void test_pool_crash_kill_after_claim(void **state) {
  (void)state;
  kill_during_applies("pool.claim.taken", 0);
}

static void test_pool_crash_kill_after_head_advanced(void **state) {
  (void)state;
  kill_during_applies("pool.claim.advanced", 0);
}

static void test_pool_crash_kill_after_result_stored(void **state) {
  (void)state;
  kill_during_applies("pool.result.stored", 0);
}

static void test_pool_crash_kill_after_task_ran(void **state) {
  (void)state;
  kill_during_applies("pool.task.ran", 0);
}

static void test_pool_crash_kill_after_done_appended(void **state) {
  (void)state;
  kill_during_applies("pool.done.appended", 1);
}

static int write_hello(int fd, const void *arg, size_t len, mp_pool_out *out, void *ctx) {
  (void)arg;
  (void)len;
  (void)out;
  (void)ctx;
  return write(fd, "hello", 5) == 5 ? 0 : -errno;
}

/* A worker dies having asked for its task's descriptor: that task fails, the
 * pool's copy of the descriptor is closed (the pipe's reader sees end of
 * file), the other fd tasks write through theirs. */
static void test_pool_crash_kill_after_fd_wanted(void **state) {
  (void)state;
  enum { FD_TASKS = 4 };
  mp_pool *p = armed_pool("pool.fd.wanted", 1, MP__CRASH_KILL);
  int rd[FD_TASKS];
  mp_async_result *r[FD_TASKS];
  for (int i = 0; i < FD_TASKS; i++) {
    int fds[2];
    assert_int_equal(pipe2(fds, O_CLOEXEC), 0);
    rd[i] = fds[0];
    assert_int_equal(mp_pool_apply_async_fd(p, write_hello, fds[1], NULL, 0, NULL, NULL, &r[i]), 0);
    close(fds[1]);
  }
  int failed = 0;
  for (int i = 0; i < FD_TASKS; i++) {
    int st = mp_async_result_get(r[i], 10);
    char buf[8] = {0};
    if (st == -ECONNABORTED) {
      failed++;
      assert_int_equal(read(rd[i], buf, sizeof buf), 0); /* every copy closed */
    } else {
      assert_int_equal(st, 0);
      assert_int_equal(read(rd[i], buf, sizeof buf), 5);
      assert_memory_equal(buf, "hello", 5);
      assert_int_equal(read(rd[i], buf, sizeof buf), 0);
    }
    close(rd[i]);
    assert_int_equal(mp_async_result_free(r[i]), 0);
  }
  assert_int_equal(failed, 1);
  pid_t victim = mp__crash_fired();
  assert_true(victim > 0 && victim != getpid());
  assert_replaced(p, victim);
  assert_int_equal(mp_pool_free(p), 0);
  mp__crash_disarm();
}

static int plus_one(const void *item, void *result, void *ctx) {
  (void)ctx;
  *(int *)result = *(const int *)item + 1;
  return 0;
}

/* A worker dies while announcing that it goes to sleep, leaving `sleepers`
 * one too high: no task is lost, none waits, later idle periods cost
 * nothing worse. */
static void test_pool_crash_kill_while_falling_asleep(void **state) {
  (void)state;
  mp_pool *p = armed_pool("pool.sleep.counted", 1, MP__CRASH_KILL);
  double until = tu_now() + 10;
  while (!mp__crash_fired() && tu_now() < until)
    tu_sleep(0.005); /* idle workers spin, then sleep */
  pid_t victim = mp__crash_fired();
  assert_true(victim > 0 && victim != getpid());
  assert_replaced(p, victim);
  enum { N = 1000 };
  int in[N], out[N];
  for (int i = 0; i < N; i++)
    in[i] = i;
  for (int round = 0; round < 3; round++) {
    tu_sleep(0.05); /* every worker asleep again */
    memset(out, 0, sizeof out);
    double t0 = tu_now();
    assert_int_equal(mp_pool_map(p, plus_one, NULL, in, N, sizeof *in, out, sizeof *out, 10), 0);
    for (int i = 0; i < N; i++)
      assert_int_equal(out[i], i + 1);
    int k = round;
    mp_async_result *r;
    assert_int_equal(mp_pool_apply_async(p, big_result, &k, sizeof k, NULL, NULL, &r), 0);
    assert_int_equal(mp_async_result_get(r, 10), k);
    assert_big_result(r, k);
    assert_int_equal(mp_async_result_free(r), 0);
    assert_true(tu_now() - t0 < 5);
  }
  assert_int_equal(mp_pool_free(p), 0);
  mp__crash_disarm();
}

/* ------------------------------------------------------------ the full ring */

/* The pool's task ring (RING_CAP in src/pool_internal.h). */
enum { RING = 2048, HANG_N = 3000 };

static atomic_int *chunks_run; /* in the heap: seen by every worker */

static int count_chunk(const void *item, void *result, void *ctx) {
  (void)item;
  (void)ctx;
  atomic_fetch_add(chunks_run, 1);
  *(int *)result = 1;
  return 0;
}

static int seven(const void *arg, size_t len, mp_pool_out *out, void *ctx) {
  (void)arg;
  (void)len;
  (void)out;
  (void)ctx;
  return 7;
}

struct map_call {
  mp_pool *p;
  int *out;
  int status;
};

static void *run_map(void *arg) {
  struct map_call *c = arg;
  c->status = mp_pool_map(c->p, count_chunk, NULL, NULL, HANG_N, 0, c->out, sizeof(int), 1);
  return NULL;
}

static int stopped(pid_t pid) {
  char path[64], buf[512];
  snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
  FILE *f = fopen(path, "re");
  if (!f)
    return 0;
  size_t k = fread(buf, 1, sizeof buf - 1, f);
  fclose(f);
  buf[k] = 0;
  const char *close_paren = strrchr(buf, ')');
  return close_paren && close_paren[1] == ' ' && close_paren[2] == 'T';
}

/* The ring is full and publishing stopped at the entry a worker holds; the
 * worker dies there. Its task fails and the worker is replaced; the backlog
 * must be published into the freed entry, or a blocking mp_pool_map() of the
 * rest never returns. The victim stops at "pool.claim.taken" on its first
 * claim (the only task then), the map fills the rest of the ring and its
 * backlog waits behind the victim's entry; when everything else has run, the
 * victim is killed. */
static void test_pool_crash_full_ring_backlog_after_kill(void **state) {
  (void)state;
  chunks_run = mp_heap_calloc(1, sizeof *chunks_run);
  assert_non_null(chunks_run);
  mp_pool *p = armed_pool("pool.claim.taken", 1, MP__CRASH_STOP);
  mp_async_result *first;
  assert_int_equal(mp_pool_apply_async(p, seven, NULL, 0, NULL, NULL, &first), 0);
  double until = tu_now() + 10;
  while (!(mp__crash_fired() && stopped(mp__crash_fired())) && tu_now() < until)
    tu_sleep(0.002);
  pid_t victim = mp__crash_fired();
  assert_true(victim > 0 && victim != getpid());
  assert_true(stopped(victim));

  struct map_call c = {p, calloc(HANG_N, sizeof(int)), 1};
  assert_non_null(c.out);
  pthread_t t;
  assert_int_equal(pthread_create(&t, NULL, run_map, &c), 0);
  /* the other worker runs the RING - 1 chunks the ring had room for */
  until = tu_now() + 30;
  while (atomic_load(chunks_run) < RING - 1 && tu_now() < until)
    tu_sleep(0.005);
  tu_sleep(0.2);
  assert_int_equal(atomic_load(chunks_run), RING - 1); /* publishing stopped at the victim */

  assert_int_equal(kill(victim, SIGKILL), 0);
  assert_int_equal(mp_async_result_get(first, 10), -ECONNABORTED);
  struct timespec by;
  clock_gettime(CLOCK_REALTIME, &by);
  by.tv_sec += 15;
  assert_int_equal(pthread_timedjoin_np(t, NULL, &by), 0); /* the map returned */
  assert_int_equal(c.status, 0);
  assert_int_equal(atomic_load(chunks_run), HANG_N);
  for (int i = 0; i < HANG_N; i++)
    assert_int_equal(c.out[i], 1);
  assert_replaced(p, victim);
  assert_int_equal(mp_pool_apply(p, seven, NULL, 0, NULL, NULL, NULL), 7);
  assert_int_equal(mp_async_result_free(first), 0);
  assert_int_equal(mp_pool_free(p), 0);
  mp__crash_disarm();
  free(c.out);
  mp_heap_free(chunks_run);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_pool_crash_random_worker_kills),
      cmocka_unit_test(test_pool_crash_kills_during_direct_maps),
      cmocka_unit_test(test_pool_crash_kill_after_claim),
      cmocka_unit_test(test_pool_crash_kill_inside_result_alloc),
      cmocka_unit_test(test_pool_crash_kill_after_head_advanced),
      cmocka_unit_test(test_pool_crash_kill_after_fd_wanted),
      cmocka_unit_test(test_pool_crash_kill_after_result_stored),
      cmocka_unit_test(test_pool_crash_kill_after_task_ran),
      cmocka_unit_test(test_pool_crash_kill_after_done_appended),
      cmocka_unit_test(test_pool_crash_kill_while_falling_asleep),
      cmocka_unit_test(test_pool_crash_full_ring_backlog_after_kill),
  };
  return TU_RUN("pool_crash", tests);
}
