/* SPDX-License-Identifier: MIT */
/* The version macros and the running library agree, and follow meson's. */
#include "testutil.h"

#include <mp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void test_version_macros_match_library(void **state) {
  (void)state;
  char want[32];
  snprintf(want, sizeof want, "%d.%d.%d", MP_VERSION_MAJOR, MP_VERSION_MINOR, MP_VERSION_PATCH);
  assert_string_equal(MP_VERSION_STRING, want);
  assert_string_equal(mp_version_string(), MP_VERSION_STRING);
  assert_int_equal(mp_version_number(), MP_VERSION_NUMBER);
  assert_int_equal(MP_VERSION_NUMBER,
                   MP_VERSION_MAJOR * 10000 + MP_VERSION_MINOR * 100 + MP_VERSION_PATCH);
  assert_true(mp_version_number() > 0);
}

/* meson passes its project version; the header must say the same. */
static void test_version_is_meson_project_version(void **state) {
  (void)state;
  const char *v = getenv("MP_MESON_VERSION");
  assert_non_null(v);
  assert_string_equal(mp_version_string(), v);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_version_macros_match_library),
      cmocka_unit_test(test_version_is_meson_project_version),
  };
  return TU_RUN("version", tests);
}
