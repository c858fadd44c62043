/* SPDX-License-Identifier: MIT */
/*
 * Value and Array: memory that parent and children really share.
 *
 * The Python originals, in four parts:
 *   1. result = Array('i', 4) and square_sum = Value('i'); a child writes the
 *      squares of [1, 2, 3, 4] into result and their sum into
 *      square_sum.value; the parent then reads [1, 4, 9, 16] and 30.
 *   2. Value('i', 10) starts at 10 instead of 0.
 *   3. num = Value('d', 0.0) and arr = Array('i', range(10)); ten children
 *      each sleep 1 s, set num.value = i * i and arr[i] = -i for every i;
 *      the parent prints 81.0 and [0, -1, ..., -9].
 *   4. num = Value('i', 123); a child does num.value += 1: 124.
 *
 * In C a Value or Array is a plain typed pointer into libmp's shared heap:
 * `int *result` for Array('i', 4), `double *num` for Value('d'). Python's
 * result[i] and num.value are just result[i] and *num. The pointer is valid in
 * every process libmp starts, so it can be handed to a child as its argument.
 * Each Value/Array comes with a lock (Python's get_lock()) for read-modify-write
 * sequences; integers also have mp_value_add(), one atomic step.
 */
#include <mp.h>
#include <stdio.h>
#include <unistd.h>

/* Stop with a message when a libmp call fails (they return a negative errno,
 * explained by mp_strerror()). Used in the parent and in children alike: both
 * return an exit status. On such an error the program ends and the system
 * reclaims what was left. */
#define TRY(call)                                                                                  \
  do {                                                                                             \
    int r_ = (int)(call);                                                                          \
    if (r_ < 0) {                                                                                  \
      fprintf(stderr, "%s failed: %s\n", #call, mp_strerror(r_));                                  \
      return 1;                                                                                    \
    }                                                                                              \
  } while (0)

/* Wait for a child, free its handle, and fail unless it exited with 0. */
static int join_ok(mp_process *p) {
  int code = -1;
  TRY(mp_process_join(p, MP_FOREVER));
  TRY(mp_process_exitcode(p, &code));
  TRY(mp_process_free(p));
  if (code != 0) {
    fprintf(stderr, "a child failed with exit code %d\n", code);
    return 1;
  }
  return 0;
}

/* Print an int Array like Python's print(arr[:]). */
static void print_ints(const char *label, const int *arr, size_t len) {
  printf("%s[", label);
  for (size_t i = 0; i < len; i++)
    printf("%s%d", i ? ", " : "", arr[i]);
  printf("]\n");
}

/* ---- Part 1: Array('i', 4) and Value('i') filled by a child -------------- */

struct squares_args {
  int mylist[4];
  int *result;     /* Array('i', 4) */
  int *square_sum; /* Value('i') */
};

static int square_list(void *arg) {
  struct squares_args *a = arg;
  int sum = 0;
  for (int i = 0; i < 4; i++) {
    a->result[i] = a->mylist[i] * a->mylist[i]; /* result[idx] = num * num */
    sum += a->result[i];
  }
  *a->square_sum = sum; /* square_sum.value = sum(result) */
  print_ints("Result (in the child): ", a->result, 4);
  printf("Sum of squares (in the child): %d\n", *a->square_sum);
  return 0;
}

static int part1(void) {
  struct squares_args a = {.mylist = {1, 2, 3, 4}};
  TRY(mp_array_new('i', 4, NULL, NULL, &a.result));  /* result = Array('i', 4) */
  TRY(mp_value_new('i', NULL, NULL, &a.square_sum)); /* square_sum = Value('i') */

  mp_process *p1;
  TRY(mp_process_new(square_list, &a, NULL, &p1));
  TRY(mp_process_start(p1));
  if (join_ok(p1))
    return 1;

  /* The child's writes are visible here: the memory is shared. */
  print_ints("Result (in the parent): ", a.result, 4);
  printf("Sum of squares (in the parent): %d\n", *a.square_sum);
  int ok = a.result[0] == 1 && a.result[1] == 4 && a.result[2] == 9 && a.result[3] == 16 &&
           *a.square_sum == 30;

  TRY(mp_array_free(a.result));
  TRY(mp_value_free(a.square_sum));
  if (!ok) {
    fprintf(stderr, "part 1: the parent did not see the child's results\n");
    return 1;
  }
  return 0;
}

/* ---- Part 2: an initial value ------------------------------------------- */

static int part2(void) {
  int ten = 10, seen = 0;
  int *v;
  TRY(mp_value_new('i', &ten, NULL, &v)); /* Value('i', 10) */
  TRY(mp_value_load(v, &seen));           /* v.value, read under its lock */
  printf("Value('i', 10) starts at %d\n", seen);
  TRY(mp_value_free(v));
  if (seen != 10) {
    fprintf(stderr, "part 2: expected 10\n");
    return 1;
  }
  return 0;
}

/* ---- Part 3: ten children write one Value('d') and one Array('i') -------- */

struct f_args {
  double *num; /* Value('d', 0.0) */
  int *arr;    /* Array('i', range(10)) */
  int name;    /* the child's number, 0..9 */
};

static int f(void *arg) {
  const struct f_args *a = arg;
  sleep(1);

  /* Python sets num.value = name * name, so the result is whichever child
   * writes last (usually 9: 81.0). To make the result certain, each child
   * here keeps the largest square, a read-modify-write done under the
   * Value's own lock (Python: with num.get_lock(): ...). */
  mp_lock *lock;
  TRY(mp_value_get_lock(a->num, &lock));
  TRY(mp_lock_acquire(lock, MP_FOREVER));
  if (*a->num < a->name * a->name)
    *a->num = a->name * a->name;
  TRY(mp_lock_release(lock));

  ssize_t len = mp_array_len(a->arr); /* len(a) */
  TRY(len);
  for (ssize_t i = 0; i < len; i++)
    a->arr[i] = (int)-i; /* a[i] = -i */
  return 0;
}

static int part3(void) {
  double zero = 0.0;
  int range10[10] = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9};
  double *num;
  int *arr;
  TRY(mp_value_new('d', &zero, NULL, &num));       /* num = Value('d', 0.0) */
  TRY(mp_array_new('i', 10, range10, NULL, &arr)); /* arr = Array('i', range(10)) */

  struct f_args args[10];
  mp_process *procs[10];
  for (int i = 0; i < 10; i++) {
    args[i] = (struct f_args){.num = num, .arr = arr, .name = i};
    TRY(mp_process_new(f, &args[i], NULL, &procs[i]));
    TRY(mp_process_start(procs[i]));
  }
  for (int i = 0; i < 10; i++)
    if (join_ok(procs[i]))
      return 1;

  printf("num.value = %.1f\n", *num);
  print_ints("arr[:] = ", arr, 10);
  int ok = *num == 81.0;
  for (int i = 0; i < 10; i++)
    ok = ok && arr[i] == -i;

  TRY(mp_value_free(num));
  TRY(mp_array_free(arr));
  if (!ok) {
    fprintf(stderr, "part 3: unexpected results\n");
    return 1;
  }
  return 0;
}

/* ---- Part 4: Value('i', 123) incremented by a child ---------------------- */

static int func1(void *arg) {
  int *num = arg;
  printf("child: num.value = %d\n", *num);
  /* Python's num.value += 1 reads, then writes; mp_value_add() does both in
   * one atomic step, so no other process can slip in between. */
  TRY(mp_value_add(num, 1, NULL));
  printf("child: num.value = %d\n", *num);
  return 0;
}

static int part4(void) {
  int init = 123;
  int *num;
  TRY(mp_value_new('i', &init, NULL, &num)); /* num = Value('i', 123) */
  mp_process *p;
  TRY(mp_process_new(func1, num, NULL, &p));
  TRY(mp_process_start(p));
  if (join_ok(p))
    return 1;
  printf("parent: num.value = %d\n", *num);
  int ok = *num == 124;
  TRY(mp_value_free(num));
  if (!ok) {
    fprintf(stderr, "part 4: expected 124\n");
    return 1;
  }
  return 0;
}

int main(void) {
  if (part1() || part2() || part3() || part4())
    return 1;
  return 0;
}
