/* SPDX-License-Identifier: MIT */
/*
 * SharedMemory registry and ShareableList crash points (white-box): a
 * process killed at each step of creating, adopting, unlinking and sweeping
 * blocks, and of writing a ShareableList slot. What the survivors must see:
 * no name left in /dev/shm once a survivor sweeps, a well-formed registry
 * (counted entry by entry), a consistent heap, and list readers and writers
 * that never wait on a dead writer, nor longer than their bound on a live one.
 */
#include "crashutil.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <mp.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "internal.h"

/* ------------------------------------------------------------ helpers */

/* A name unique to this run and tag. */
static const char *name_of(const char *tag) {
  static char buf[8][96];
  static int next;
  char *b = buf[next++ % 8];
  snprintf(b, sizeof buf[0], "mp_test_shmcrash_%d_%s", (int)getpid(), tag);
  return b;
}

static bool exists(const char *name) {
  char path[512];
  snprintf(path, sizeof path, "/dev/shm/%s", name);
  return access(path, F_OK) == 0;
}

/* Entries in /dev/shm whose names start with this run's prefix. */
static int leftovers(void) {
  char prefix[64];
  snprintf(prefix, sizeof prefix, "mp_test_shmcrash_%d_", (int)getpid());
  DIR *d = opendir("/dev/shm");
  if (!d)
    return -1;
  int n = 0;
  struct dirent *e;
  while ((e = readdir(d)))
    n += strncmp(e->d_name, prefix, strlen(prefix)) == 0;
  closedir(d);
  return n;
}

/* What a survivor does: any attach sweeps the registry first. */
static void survivor_sweeps(void) {
  mp_shared_memory *h;
  assert_int_equal(mp_shared_memory_attach(name_of("nothing"), NULL, &h), -ENOENT);
}

static int setup(void **state) {
  (void)state;
  assert_int_equal(mp__heap_ensure(), 0);
  return 0;
}

static int teardown(void **state) {
  (void)state;
  survivor_sweeps();
  assert_int_equal(mp__shm_registry_entries(0), mp__shm_registry_entries(getpid()));
  assert_int_equal(mp__heap_check(), 0);
  return 0;
}

/* ------------------------------------------------------------ registry */

static int create_named(void *arg) {
  mp_shared_memory *h;
  CHILD_CHECK(mp_shared_memory_new(arg, 4096, NULL, &h) == 0);
  return 0;
}

/* Killed after recording the block, before naming it: no name exists, and
 * the entry goes at the next sweep. */
static void test_shm_crash_creator_killed_after_record(void **state) {
  (void)state;
  const char *name = name_of("rec");
  pid_t c = cu_fork_armed("shm.create.recorded", 1, create_named, (void *)name, 30);
  cu_assert_killed_at(c);
  assert_false(exists(name));
  assert_int_equal(mp__shm_registry_entries(c), 1);
  survivor_sweeps();
  assert_int_equal(mp__shm_registry_entries(c), 0);
  assert_false(exists(name));
}

/* Killed right after naming it: the name exists, the registry knows it, and
 * the next sweep unlinks it. */
static void test_shm_crash_creator_killed_after_naming(void **state) {
  (void)state;
  const char *name = name_of("named");
  pid_t c = cu_fork_armed("shm.create.named", 1, create_named, (void *)name, 30);
  cu_assert_killed_at(c);
  assert_true(exists(name));
  assert_int_equal(mp__shm_registry_entries(c), 1);
  survivor_sweeps();
  assert_false(exists(name));
  assert_int_equal(mp__shm_registry_entries(c), 0);
}

static int adopt_named(void *arg) {
  mp_shared_memory *h;
  mp_shared_memory_options o = {.adopt = 1};
  CHILD_CHECK(mp_shared_memory_attach(arg, &o, &h) == 0);
  return 0;
}

/* An adopter killed after linking its entry, before dropping the creator's:
 * the block is the (dead) adopter's, and the next sweep unlinks it. */
static void test_shm_crash_adopter_killed_after_link(void **state) {
  (void)state;
  const char *name = name_of("adopt");
  mp_shared_memory *h;
  assert_int_equal(mp_shared_memory_new(name, 4096, NULL, &h), 0);
  long mine = mp__shm_registry_entries(getpid());
  pid_t c = cu_fork_armed("shm.adopt.linked", 1, adopt_named, (void *)name, 30);
  cu_assert_killed_at(c);
  assert_int_equal(mp__shm_registry_entries(c), 1);
  assert_int_equal(mp__shm_registry_entries(getpid()), mine);
  survivor_sweeps();
  assert_false(exists(name));
  assert_int_equal(mp__shm_registry_entries(c), 0);
  assert_int_equal(mp_shared_memory_unlink(h), -ENOENT);
  assert_int_equal(mp_shared_memory_close(h), 0);
  mp__shm_at_exit(); /* drops this process's entry, whose name is gone */
  assert_int_equal(mp__shm_registry_entries(getpid()), 0);
}

static int create_then_unlink(void *arg) {
  mp_shared_memory *h;
  CHILD_CHECK(mp_shared_memory_new(arg, 4096, NULL, &h) == 0);
  CHILD_CHECK(mp_shared_memory_unlink(h) == 0);
  return 0;
}

/* Killed after unlinking the name, before forgetting the entry: the next
 * sweep finds the name gone and drops the entry. */
static void test_shm_crash_unlinker_killed_after_unlink(void **state) {
  (void)state;
  const char *name = name_of("unl");
  pid_t c = cu_fork_armed("shm.unlink.unlinked", 1, create_then_unlink, (void *)name, 30);
  cu_assert_killed_at(c);
  assert_false(exists(name));
  assert_int_equal(mp__shm_registry_entries(c), 1);
  survivor_sweeps();
  assert_int_equal(mp__shm_registry_entries(c), 0);
}

/* Killed in the registry's removal of an entry, after unlinking it from the
 * list and before freeing it: the list is well-formed, the entry leaked. */
static void test_shm_crash_killed_between_unlink_and_free(void **state) {
  (void)state;
  const char *name = name_of("free");
  pid_t c = cu_fork_armed("shm.reg.unlinked", 1, create_then_unlink, (void *)name, 30);
  cu_assert_killed_at(c);
  assert_false(exists(name));
  assert_int_equal(mp__shm_registry_entries(c), 0);
  assert_true(mp__shm_registry_entries(0) >= 0);
  assert_int_equal(mp__heap_check(), 0);
}

static int create_and_vanish(void *arg) {
  mp_shared_memory *h;
  CHILD_CHECK(mp_shared_memory_new(arg, 4096, NULL, &h) == 0);
  _exit(0); /* no exit handler: the block stays, its owner is dead */
}

static int sweep_once(void *arg) {
  (void)arg;
  mp_shared_memory *h;
  CHILD_CHECK(mp_shared_memory_attach("mp_test_shmcrash_none", NULL, &h) == -ENOENT);
  return 0;
}

/* A sweeper killed after unlinking a dead owner's name, before dropping its
 * entry: the next sweep drops it. */
static void test_shm_crash_sweeper_killed_after_unlink(void **state) {
  (void)state;
  const char *name = name_of("sweep");
  pid_t owner = tu_fork(create_and_vanish, (void *)name, 30);
  assert_true(owner > 0);
  assert_child_ok(owner);
  assert_true(exists(name));
  assert_int_equal(mp__shm_registry_entries(owner), 1);
  pid_t c = cu_fork_armed("shm.sweep.unlinked", 1, sweep_once, NULL, 30);
  cu_assert_killed_at(c);
  assert_false(exists(name));
  assert_int_equal(mp__shm_registry_entries(owner), 1);
  survivor_sweeps();
  assert_int_equal(mp__shm_registry_entries(owner), 0);
}

/* Creators killed at random instants while creating (200 of them): once a
 * survivor has swept, none of their names is left in /dev/shm. */
static int create_and_wait(void *arg) {
  mp_shared_memory *h;
  CHILD_CHECK(mp_shared_memory_new(arg, 4096, NULL, &h) == 0);
  for (;;)
    pause();
  return 0;
}

static void test_shm_crash_creators_killed_at_random_leave_no_name(void **state) {
  (void)state;
  unsigned seed = (unsigned)getpid();
  int created = 0;
  for (int i = 0; i < 200; i++) {
    char tag[16];
    snprintf(tag, sizeof tag, "r%d", i);
    const char *name = name_of(tag);
    pid_t c = tu_fork(create_and_wait, (void *)name, 30);
    assert_true(c > 0);
    usleep((useconds_t)(rand_r(&seed) % 1500));
    kill(c, SIGKILL);
    assert_int_equal(tu_wait(c), 1000 + SIGKILL);
    created += exists(name);
  }
  survivor_sweeps();
  assert_int_equal(leftovers(), 0);
  print_message("%d of 200 creators had named their block when killed\n", created);
}

/* ------------------------------------------------------------ ShareableList */

struct list_arg {
  mp_shareable_list *l;
  const char *value;
};

static int set_slot0(void *arg) {
  struct list_arg *a = arg;
  mp_item v = mp_item_str(a->value);
  CHILD_CHECK(mp_shareable_list_set(a->l, 0, &v) == 0);
  return 0;
}

static mp_shareable_list *new_list(void) {
  mp_item items[] = {mp_item_str("old"), mp_item_int(1)};
  items[0].cap = 16;
  mp_shareable_list *l;
  assert_int_equal(mp_shareable_list_new(NULL, items, 2, NULL, &l), 0);
  return l;
}

static void drop_list(mp_shareable_list *l) {
  assert_int_equal(mp_shareable_list_unlink(l), 0);
  assert_int_equal(mp_shareable_list_close(l), 0);
}

static void expect_str(mp_shareable_list *l, int first, const char *want) {
  mp_item it;
  char buf[32];
  double t0 = tu_now();
  assert_int_equal(mp_shareable_list_get(l, 0, &it, buf, sizeof buf), first);
  if (first != 0)
    assert_int_equal(mp_shareable_list_get(l, 0, &it, buf, sizeof buf), 0);
  assert_int_equal(it.type, MP_ITEM_STR);
  assert_string_equal(buf, want);
  assert_true(tu_now() - t0 < 5);
}

/* A writer killed at each step of a set: readers see the old value (slot
 * taken, seq even), or repair the slot once (-EOWNERDEAD) and see what it
 * left; a later writer takes over at once. */
static void list_writer_killed(const char *point, int first, const char *after) {
  mp_shareable_list *l = new_list();
  struct list_arg a = {l, "newvalue"};
  pid_t c = cu_fork_armed(point, 1, set_slot0, &a, 30);
  cu_assert_killed_at(c);
  expect_str(l, first, after);
  mp_item v = mp_item_str("again");
  double t0 = tu_now();
  assert_int_equal(mp_shareable_list_set(l, 0, &v), 0);
  assert_true(tu_now() - t0 < 5);
  expect_str(l, 0, "again");
  drop_list(l);
}

static void test_shm_crash_list_writer_killed_after_lock(void **state) {
  (void)state;
  list_writer_killed("shm.list.set.locked", 0, "old");
}

static void test_shm_crash_list_writer_killed_after_seq(void **state) {
  (void)state;
  list_writer_killed("shm.list.set.seq", -EOWNERDEAD, "old");
}

static void test_shm_crash_list_writer_killed_after_write(void **state) {
  (void)state;
  list_writer_killed("shm.list.set.written", -EOWNERDEAD, "newvalue");
}

/* A writer killed after taking the slot, met by a writer first. */
static void test_shm_crash_list_writer_takes_over_dead_writer(void **state) {
  (void)state;
  mp_shareable_list *l = new_list();
  struct list_arg a = {l, "newvalue"};
  pid_t c = cu_fork_armed("shm.list.set.seq", 1, set_slot0, &a, 30);
  cu_assert_killed_at(c);
  mp_item v = mp_item_str("mine");
  assert_int_equal(mp_shareable_list_set(l, 0, &v), 0);
  expect_str(l, 0, "mine");
  drop_list(l);
}

/* A writer stopped in the middle of a write (alive): readers and writers
 * give up after their bound with -ETIMEDOUT instead of waiting forever; once
 * it is killed, the slot is repaired. */
static void test_shm_crash_list_stopped_writer_bounds_waits(void **state) {
  (void)state;
  mp_shareable_list *l = new_list();
  struct list_arg a = {l, "newvalue"};
  pid_t c = cu_fork_stopped_at("shm.list.set.written", 1, set_slot0, &a, 30);
  double saved = mp__shm_list_wait_s;
  mp__shm_list_wait_s = 0.5;
  mp_item it;
  char buf[32];
  double t0 = tu_now();
  assert_int_equal(mp_shareable_list_get(l, 0, &it, buf, sizeof buf), -ETIMEDOUT);
  mp_item v = mp_item_str("mine");
  assert_int_equal(mp_shareable_list_set(l, 0, &v), -ETIMEDOUT);
  mp_item probe = mp_item_str("x");
  assert_int_equal(mp_shareable_list_count(l, &probe), -ETIMEDOUT);
  double took = tu_now() - t0;
  assert_true(took >= 1.5 && took < 10);
  mp__shm_list_wait_s = saved;
  assert_int_equal(kill(c, SIGKILL), 0);
  cu_assert_killed_at(c);
  expect_str(l, -EOWNERDEAD, "newvalue");
  drop_list(l);
}

/* The start time (field 22 of /proc/<pid>/stat) of pid. */
static uint64_t start_of(pid_t pid) {
  char path[64], st[1024];
  snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
  FILE *f = fopen(path, "re");
  assert_non_null(f);
  size_t n = fread(st, 1, sizeof st - 1, f);
  fclose(f);
  st[n] = 0;
  char *p = strrchr(st, ')');
  assert_non_null(p);
  p += 2;
  for (int field = 3; field < 22; field++) {
    p = strchr(p, ' ');
    assert_non_null(p);
    p++;
  }
  return strtoull(p, NULL, 10);
}

static int sleep_until_killed(void *arg) {
  (void)arg;
  for (;;)
    pause();
  return 0;
}

/* A dead writer whose pid now belongs to another live process: known dead by
 * its start time, so the reader repairs at once instead of spinning. */
static void test_shm_crash_list_writer_pid_recycled(void **state) {
  (void)state;
  mp_shareable_list *l = new_list();
  struct list_arg a = {l, "newvalue"};
  pid_t c = cu_fork_armed("shm.list.set.seq", 1, set_slot0, &a, 30);
  cu_assert_killed_at(c);
  pid_t other = tu_fork(sleep_until_killed, NULL, 30);
  assert_true(other > 0);
  uint64_t start = start_of(other);
  /* The writer word of slot 0 (struct sl_slot in src/shm_list.c: after the
   * 32-byte header, at offset 8 of the 40-byte descriptor). */
  char *base = mp_shared_memory_buf(mp_shareable_list_shm(l));
  _Atomic uint64_t *writer = (_Atomic uint64_t *)(base + 32 + 8);
  assert_int_equal((uint32_t)atomic_load(writer), (uint32_t)c);
  /* The same pid as a live process, another start time: a recycled pid. */
  atomic_store(writer, (uint64_t)(uint32_t)other | (uint64_t)(uint32_t)(start + 1) << 32);
  expect_str(l, -EOWNERDEAD, "old");
  /* That live process itself (pid and start time): waited for, within the
   * bound. */
  mp_item v = mp_item_str("held");
  assert_int_equal(mp_shareable_list_set(l, 0, &v), 0);
  _Atomic uint32_t *seq = (_Atomic uint32_t *)(base + 32);
  atomic_store(seq, atomic_load(seq) + 1);
  atomic_store(writer, (uint64_t)(uint32_t)other | (uint64_t)(uint32_t)start << 32);
  double saved = mp__shm_list_wait_s;
  mp__shm_list_wait_s = 0.5;
  mp_item it;
  char buf[32];
  assert_int_equal(mp_shareable_list_get(l, 0, &it, buf, sizeof buf), -ETIMEDOUT);
  mp__shm_list_wait_s = saved;
  kill(other, SIGKILL);
  assert_int_equal(tu_wait(other), 1000 + SIGKILL);
  expect_str(l, -EOWNERDEAD, "held");
  drop_list(l);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_shm_crash_creator_killed_after_record, setup, teardown),
      cmocka_unit_test_setup_teardown(test_shm_crash_creator_killed_after_naming, setup, teardown),
      cmocka_unit_test_setup_teardown(test_shm_crash_adopter_killed_after_link, setup, teardown),
      cmocka_unit_test_setup_teardown(test_shm_crash_unlinker_killed_after_unlink, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(test_shm_crash_killed_between_unlink_and_free, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(test_shm_crash_sweeper_killed_after_unlink, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(test_shm_crash_creators_killed_at_random_leave_no_name,
                                      setup, teardown),
      cmocka_unit_test_setup_teardown(test_shm_crash_list_writer_killed_after_lock, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(test_shm_crash_list_writer_killed_after_seq, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(test_shm_crash_list_writer_killed_after_write, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(test_shm_crash_list_writer_takes_over_dead_writer, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(test_shm_crash_list_stopped_writer_bounds_waits, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(test_shm_crash_list_writer_pid_recycled, setup, teardown),
  };
  return TU_RUN("shm_crash", tests);
}
