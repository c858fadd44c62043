/* SPDX-License-Identifier: MIT */
/*
 * Processes do not share memory.
 *
 * The Python original keeps a global list `result`. A child process appends
 * the squares of [1, 2, 3, 4] to it and prints it: [1, 4, 9, 16]. The parent
 * waits for the child, prints the same global list, and finds it empty: the
 * child changed its own copy of the parent's memory, not the parent's.
 *
 * The C twin does the same with a global array. mp_process_new() + _start()
 * is Python's Process(target=..., args=...).start(): libmp forks, and the
 * child runs the target function on a copy of everything the parent had.
 * To share data on purpose, see value_array.c.
 */
#include <mp.h>
#include <stdio.h>

/* Stop with a message when a libmp call fails; every libmp function returns a
 * negative errno on failure, and mp_strerror() explains it. Used in main and
 * in the child's target alike: both return an exit status. */
#define TRY(call)                                                                                  \
  do {                                                                                             \
    int r_ = (call);                                                                               \
    if (r_ < 0) {                                                                                  \
      fprintf(stderr, "%s failed: %s\n", #call, mp_strerror(r_));                                  \
      return 1;                                                                                    \
    }                                                                                              \
  } while (0)

/* Python: result = [] at module level. */
static int result[4];
static int result_len;

static void print_list(const char *who) {
  printf("Result (in %s): [", who);
  for (int i = 0; i < result_len; i++)
    printf("%s%d", i ? ", " : "", result[i]);
  printf("]\n");
}

/* The child's target (Python: def square_list(mylist)). Its return value
 * becomes the child's exit code. */
static int square_list(void *arg) {
  const int *mylist = arg; /* the parent's array, as it was at start */
  for (int i = 0; i < 4; i++)
    result[result_len++] = mylist[i] * mylist[i];
  print_list("the child");
  return 0;
}

int main(void) {
  int mylist[4] = {1, 2, 3, 4};

  mp_process *p1;
  TRY(mp_process_new(square_list, mylist, NULL, &p1)); /* Process(target=..., args=(mylist,)) */
  TRY(mp_process_start(p1));                           /* p1.start() */
  TRY(mp_process_join(p1, MP_FOREVER));                /* p1.join() */

  int code = -1; /* stays -1 if the exit code were unknown */
  TRY(mp_process_exitcode(p1, &code));
  TRY(mp_process_free(p1));
  if (code != 0) {
    fprintf(stderr, "the child failed with exit code %d\n", code);
    return 1;
  }

  print_list("the parent"); /* still empty: the child's appends stayed in the child */
  if (result_len != 0) {
    fprintf(stderr, "the parent's list changed: memory was shared after all\n");
    return 1;
  }
  return 0;
}
