/* SPDX-License-Identifier: MIT */
/* mp_strerror: every code libmp gives a meaning has its own explanation. */
#include "testutil.h"

#include <limits.h>
#include <mp.h>
#include <string.h>

static void test_errors_success_codes(void **state) {
  (void)state;
  assert_string_equal(mp_strerror(0), "success");
  assert_string_equal(mp_strerror(7), "success"); /* lengths, counts, indices */
}

static void test_errors_libmp_codes_are_explained(void **state) {
  (void)state;
  const struct {
    int code;
    const char *word;
  } codes[] = {
      {-ETIMEDOUT, "timed out"}, {-EPIPE, "end of file"},  {-EMSGSIZE, "too small"},
      {-EPERM, "not permitted"}, {-EOVERFLOW, "over"},     {-EOWNERDEAD, "died"},
      {-ECHILD, "process"},      {-EINVAL, "invalid"},     {-ECANCELED, "barrier"},
      {-EDEADLK, "already holds"}, {-ENOLCK, "no lock"},   {-ERANGE, "range"},
      {-EALREADY, "already"},    {-EBUSY, "busy"},         {-ENOMEM, "memory"},
  };
  for (size_t i = 0; i < sizeof codes / sizeof codes[0]; i++) {
    const char *s = mp_strerror(codes[i].code);
    assert_non_null(s);
    if (!strstr(s, codes[i].word))
      fail_msg("mp_strerror(%d) = \"%s\" lacks \"%s\"", codes[i].code, s, codes[i].word);
    for (size_t j = 0; j < i; j++)
      assert_string_not_equal(s, mp_strerror(codes[j].code));
  }
}

static void test_errors_other_codes_fall_back(void **state) {
  (void)state;
  assert_string_equal(mp_strerror(-ENOTDIR), "Not a directory"); /* no libmp meaning */
  assert_non_null(mp_strerror(-100000)); /* unknown: still a string */
  assert_string_equal(mp_strerror(-100000), "unknown error");
}

/* The most negative int has no positive twin: negating it would be undefined
 * behaviour (the UBSan build halts on it). */
static void test_errors_int_min_is_unknown(void **state) {
  (void)state;
  assert_string_equal(mp_strerror(INT_MIN), "unknown error");
  assert_string_equal(mp_strerror(INT_MIN + 1), "unknown error");
  assert_string_equal(mp_strerror(-INT_MAX), "unknown error");
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_errors_success_codes),
      cmocka_unit_test(test_errors_libmp_codes_are_explained),
      cmocka_unit_test(test_errors_other_codes_fall_back),
      cmocka_unit_test(test_errors_int_min_is_unknown),
  };
  return TU_RUN("errors", tests);
}
