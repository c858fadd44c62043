/* SPDX-License-Identifier: MIT */
/*
 * A Semaphore(4) lets at most four processes in at once.
 *
 * The Python original is a restaurant with four seats: s = Semaphore(4) and
 * ten customer processes. Each acquires the semaphore (takes a seat), prints
 * "customer i is eating", eats for 1 s, prints "customer i has finished",
 * waits another second and releases the semaphore (leaves the seat). At most
 * four customers eat at any moment; the others wait at the door.
 *
 * The C twin: mp_semaphore_new(4) and mp_semaphore_acquire/release. To show
 * the limit holds, the customers also keep two shared integers (raw Values):
 * how many eat right now and the most that ever ate at once. The atomic
 * mp_value_add() and mp_value_compare_exchange() update them without a lock.
 * The parent prints the maximum and checks it is at most 4. The times are
 * halved (0.5 s eating, 0.5 s lingering) to keep the run short.
 */
#include <mp.h>
#include <stdio.h>
#include <time.h>

/* Stop with a message when a libmp call fails (they return a negative errno,
 * explained by mp_strerror()). Used in the parent and in children alike. */
#define TRY(call)                                                                                  \
  do {                                                                                             \
    int r_ = (call);                                                                               \
    if (r_ < 0) {                                                                                  \
      fprintf(stderr, "%s failed: %s\n", #call, mp_strerror(r_));                                  \
      return 1;                                                                                    \
    }                                                                                              \
  } while (0)

enum { N = 10, SEATS = 4 };

struct customer {
  int id;
  mp_semaphore *seats; /* Semaphore(4) */
  int *eating;         /* how many eat now */
  int *most;           /* the most that ever ate at once */
};

static void nap(double seconds) {
  struct timespec t = {(time_t)seconds, (long)((seconds - (double)(time_t)seconds) * 1e9)};
  while (nanosleep(&t, &t) != 0) {
  }
}

/* Raise *most to at least n, atomically. */
static int record_max(int *most, long long n) {
  long long seen = 0; /* a first guess; a failed exchange corrects it */
  for (;;) {
    if (seen >= n)
      return 0;
    /* Replaces *most only if it still equals `seen`; otherwise `seen` gets
     * the newer value and we look again. */
    int r = mp_value_compare_exchange(most, &seen, n);
    if (r != 0)
      return r < 0 ? r : 0;
  }
}

/* Python: def fun(s, i), run in each customer's process. */
static int fun(void *arg) {
  const struct customer *c = arg;
  long long before;

  TRY(mp_semaphore_acquire(c->seats, MP_FOREVER)); /* s.acquire(): take a seat */
  TRY(mp_value_add(c->eating, 1, &before));
  TRY(record_max(c->most, before + 1));
  printf("customer %d is eating (%lld at the tables)\n", c->id, before + 1);
  fflush(stdout);
  nap(0.5);
  printf("customer %d has finished\n", c->id);
  fflush(stdout);
  TRY(mp_value_add(c->eating, -1, NULL)); /* count out before freeing the seat */
  nap(0.5);
  TRY(mp_semaphore_release(c->seats)); /* s.release(): leave the seat */
  return 0;
}

int main(void) {
  mp_semaphore *seats;
  int *eating, *most;
  TRY(mp_semaphore_new(SEATS, &seats)); /* s = Semaphore(4) */
  TRY(mp_raw_value_new('i', NULL, &eating));
  TRY(mp_raw_value_new('i', NULL, &most));

  struct customer customers[N];
  mp_process *procs[N];
  for (int i = 0; i < N; i++) {
    customers[i] = (struct customer){.id = i, .seats = seats, .eating = eating, .most = most};
    TRY(mp_process_new(fun, &customers[i], NULL, &procs[i]));
    TRY(mp_process_start(procs[i]));
  }

  int failed = 0;
  for (int i = 0; i < N; i++) {
    int code = -1;
    TRY(mp_process_join(procs[i], MP_FOREVER));
    TRY(mp_process_exitcode(procs[i], &code));
    TRY(mp_process_free(procs[i]));
    failed |= code != 0;
  }

  int free_seats = mp_semaphore_get_value(seats);
  TRY(free_seats);
  printf("at most %d customers ate at once (seats: %d); %d seats free at closing\n", *most, SEATS,
         free_seats);
  if (*most > SEATS || *most < 1 || free_seats != SEATS || *eating != 0) {
    fprintf(stderr, "the semaphore did not keep the count\n");
    failed = 1;
  }

  TRY(mp_value_free(eating));
  TRY(mp_value_free(most));
  TRY(mp_semaphore_free(seats));
  return failed;
}
