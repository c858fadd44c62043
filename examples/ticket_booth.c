/* SPDX-License-Identifier: MIT */
/*
 * Ten customers race for one ticket; a Lock lets exactly one buy it.
 *
 * The Python original keeps the number of tickets left in a file holding "1".
 * For each of ten customers the parent first reads the file ("customer i sees
 * 1 ticket left") and then starts a Process that buys: it sleeps 1 s, so all
 * ten try at about the same moment, then, holding a shared Lock, reads the
 * file, buys the ticket if there is one and writes the new count back. The
 * lock makes read-check-write one step: without it several customers could
 * read "1" before anyone writes "0", and all of them would "buy" the ticket.
 *
 * The C twin does the same with a file in a fresh temporary directory
 * (removed at the end) and an mp_lock. It also counts the buyers in a shared
 * integer (a raw Value, bumped with the atomic mp_value_add()) and checks
 * that exactly one customer bought the ticket and that the file says 0.
 */
#include <mp.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

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

enum { N = 10 };

/* What each customer process gets (Python: args=(i, lo)). */
struct customer {
  int id;
  mp_lock *lock;    /* one Lock shared by all */
  const char *path; /* the ticket file */
  int *buyers;      /* shared count of customers who got a ticket */
};

/* Read the number of tickets left; -1 on error. */
static int read_tickets(const char *path) {
  FILE *f = fopen(path, "r");
  if (!f) {
    perror(path);
    return -1;
  }
  int n = -1;
  if (fscanf(f, "%d", &n) != 1)
    n = -1;
  fclose(f);
  return n;
}

/* Write the number of tickets left; -1 on error. */
static int write_tickets(const char *path, int n) {
  FILE *f = fopen(path, "w");
  if (!f) {
    perror(path);
    return -1;
  }
  int ok = fprintf(f, "%d", n) > 0;
  if (fclose(f) != 0)
    ok = 0;
  return ok ? 0 : -1;
}

/* The part that must run under the lock: read, check, write. 0 or -1. */
static int buy_locked(const struct customer *c) {
  int left = read_tickets(c->path);
  if (left < 0)
    return -1;
  if (left == 0) {
    printf("customer %d: sold out\n", c->id);
    return 0;
  }
  if (write_tickets(c->path, left - 1) < 0)
    return -1;
  printf("customer %d bought the ticket\n", c->id);
  return mp_value_add(c->buyers, 1, NULL) < 0 ? -1 : 0;
}

/* Python: def fun(i, lo), run in each customer's process. */
static int buy(void *arg) {
  const struct customer *c = arg;
  sleep(1);
  TRY(mp_lock_acquire(c->lock, MP_FOREVER)); /* lo.acquire() */
  int r = buy_locked(c);
  TRY(mp_lock_release(c->lock)); /* lo.release() */
  return r < 0 ? 1 : 0;
}

int main(void) {
  /* A private directory for the ticket file: mkdtemp picks a fresh name. */
  const char *tmp = getenv("TMPDIR");
  char dir[PATH_MAX], path[PATH_MAX + 16];
  snprintf(dir, sizeof dir, "%s/libmp-tickets-XXXXXX", tmp && *tmp ? tmp : "/tmp");
  if (!mkdtemp(dir)) {
    perror("mkdtemp");
    return 1;
  }
  snprintf(path, sizeof path, "%s/tickets.txt", dir);
  int failed = write_tickets(path, 1) < 0; /* one ticket for sale */

  mp_lock *lock = NULL;
  int *buyers = NULL;
  mp_process *procs[N] = {NULL};
  struct customer customers[N];
  int started = 0, r = 0;

  if (!failed && (r = mp_lock_new(&lock)) < 0) /* lo = Lock() */
    fprintf(stderr, "mp_lock_new: %s\n", mp_strerror(r));
  else if (!failed && (r = mp_raw_value_new('i', NULL, &buyers)) < 0)
    fprintf(stderr, "mp_raw_value_new: %s\n", mp_strerror(r));
  failed |= r < 0;

  for (int i = 0; i < N && !failed; i++) {
    /* Python: fun1(i), the customer looks at the tickets left. */
    printf("customer %d sees %d ticket(s) left\n", i, read_tickets(path));
    customers[i] = (struct customer){.id = i, .lock = lock, .path = path, .buyers = buyers};
    if ((r = mp_process_new(buy, &customers[i], NULL, &procs[i])) < 0 ||
        (r = mp_process_start(procs[i])) < 0) {
      fprintf(stderr, "starting customer %d: %s\n", i, mp_strerror(r));
      failed = 1;
    } else {
      started++;
    }
  }

  /* Wait for every customer that was started, even after a failure. */
  for (int i = 0; i < N; i++) {
    int code = -1;
    if (i < started && ((r = mp_process_join(procs[i], MP_FOREVER)) < 0 ||
                        (r = mp_process_exitcode(procs[i], &code)) < 0)) {
      fprintf(stderr, "customer %d: %s\n", i, mp_strerror(r));
      failed = 1;
    } else if (i < started && code != 0) {
      fprintf(stderr, "customer %d failed with exit code %d\n", i, code);
      failed = 1;
    }
    if ((r = mp_process_free(procs[i])) < 0) {
      fprintf(stderr, "mp_process_free: %s\n", mp_strerror(r));
      failed = 1;
    }
  }

  if (!failed) {
    int left = read_tickets(path);
    printf("tickets left: %d; customers who bought one: %d\n", left, *buyers);
    if (left != 0 || *buyers != 1) {
      fprintf(stderr, "expected exactly one buyer and no ticket left\n");
      failed = 1;
    }
  }

  if ((r = mp_value_free(buyers)) < 0 || (r = mp_lock_free(lock)) < 0) {
    fprintf(stderr, "free: %s\n", mp_strerror(r));
    failed = 1;
  }
  if ((unlink(path) != 0 && !failed) || rmdir(dir) != 0) {
    perror("removing the ticket file");
    failed = 1;
  }
  return failed;
}
