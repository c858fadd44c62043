/* SPDX-License-Identifier: MIT */
/*
 * Function and ctx identity (src/mpi/code.c), white-box and without MPI:
 * a pointer into a loaded object becomes (object, offset) and back; tables
 * of loaded objects that differ are refused.
 */
#include <setjmp.h> /* cmocka needs these first */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

static int global_counter = 5;
static const char literal[] = "hello";

static int some_task(int x) { return x + global_counter; }

static void test_mpi_code_refs_round_trip(void **state) {
  (void)state;
  int (*fn)(int) = some_task;
  void *fp;
  memcpy(&fp, &fn, sizeof fp);
  mpi__ref r;
  assert_int_equal(mpi__ref_of(fp, 1, &r), 0);
  assert_int_equal(r.mod, 0); /* the executable */
  assert_int_equal(r.exec, 1);
  mpi__ref g, l, n;
  assert_int_equal(mpi__ref_of(&global_counter, 0, &g), 0);
  assert_int_equal(mpi__ref_of(literal, 0, &l), 0);
  assert_int_equal(mpi__ref_of(NULL, 0, &n), 0);
  assert_int_equal(n.mod, MPI__REF_NULL);
  /* data is not a function */
  assert_int_equal(mpi__ref_of(&global_counter, 1, &g), -EINVAL);
  /* heap and stack are in no loaded object */
  void *heap = malloc(16);
  int local = 0;
  mpi__ref x;
  assert_int_equal(mpi__ref_of(heap, 0, &x), -EINVAL);
  assert_int_equal(mpi__ref_of(&local, 0, &x), -EINVAL);
  free(heap);
  /* a function of a shared library (libc) */
  size_t (*sl)(const char *) = strlen;
  void *slp;
  memcpy(&slp, &sl, sizeof slp);
  mpi__ref lib;
  assert_int_equal(mpi__ref_of(slp, 1, &lib), 0);
  assert_int_not_equal(lib.mod, 0);

  void *tab;
  size_t len;
  assert_int_equal(mpi__modtab_pack(&tab, &len), 0);
  assert_int_equal(mpi__modtab_match(tab, len), 0);
  void *back;
  assert_int_equal(mpi__ref_resolve(&r, 1, &back), 0);
  assert_ptr_equal(back, fp);
  mpi__ref as_data = mpi__ref_of(&global_counter, 0, &g) == 0 ? g : r;
  assert_int_equal(mpi__ref_resolve(&as_data, 0, &back), 0);
  assert_ptr_equal(back, &global_counter);
  assert_int_equal(mpi__ref_resolve(&as_data, 1, &back), -ENOEXEC); /* not code */
  assert_int_equal(mpi__ref_resolve(&lib, 1, &back), 0);
  assert_ptr_equal(back, slp);
  mpi__ref bad = {.mod = 100000, .off = 0};
  assert_int_equal(mpi__ref_resolve(&bad, 0, &back), -EINVAL);
  free(tab);
}

/* Change the build-id (or size) of entry `which` of a packed table. */
static void tamper(char *tab, uint32_t which) {
  char *p = tab + 4;
  for (uint32_t i = 0;; i++) {
    uint32_t nl, il;
    memcpy(&nl, p, 4);
    memcpy(&il, p + 4, 4);
    if (i == which) {
      if (il)
        p[16 + nl] ^= 1;
      else
        p[8] ^= 8; /* the image size */
      return;
    }
    p += 16 + nl + il;
  }
}

static void test_mpi_code_other_executable_refused(void **state) {
  (void)state;
  void *tab;
  size_t len;
  assert_int_equal(mpi__modtab_pack(&tab, &len), 0);
  tamper(tab, 0);
  assert_int_equal(mpi__modtab_match(tab, len), -ENOEXEC);
  assert_int_equal(mpi__modtab_match(tab, 3), -EPROTO);
  free(tab);
}

static void test_mpi_code_other_library_fails_its_tasks(void **state) {
  (void)state;
  size_t (*sl)(const char *) = strlen;
  void *slp;
  memcpy(&slp, &sl, sizeof slp);
  mpi__ref lib, exe;
  assert_int_equal(mpi__ref_of(slp, 1, &lib), 0);
  assert_int_equal(mpi__ref_of(literal, 0, &exe), 0);
  void *tab;
  size_t len;
  assert_int_equal(mpi__modtab_pack(&tab, &len), 0);
  tamper(tab, lib.mod);
  assert_int_equal(mpi__modtab_match(tab, len), 0); /* the pool starts */
  void *back;
  assert_int_equal(mpi__ref_resolve(&lib, 1, &back), -ENOEXEC); /* this task fails */
  assert_int_equal(mpi__ref_resolve(&exe, 0, &back), 0);        /* others run */
  assert_ptr_equal(back, literal);
  free(tab);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_mpi_code_refs_round_trip),
      cmocka_unit_test(test_mpi_code_other_executable_refused),
      cmocka_unit_test(test_mpi_code_other_library_fails_its_tasks),
  };
  return cmocka_run_group_tests_name("mpi_code", tests, NULL, NULL);
}
