/* SPDX-License-Identifier: MIT */
/*
 * A Manager list of records shared by two processes.
 *
 * The Python original: with Manager() as manager, a list of records (name,
 * score); one process appends a new record, then another prints every record.
 *
 * The C twin: mp_manager_start() forks the manager's server; the list lives
 * there and both children reach it through the same proxy, each over its own
 * connection (made at its first call). Records are dicts of typed values.
 */
#include <mp.h>
#include <stdio.h>

/* Stop with a message when a libmp call fails (they return a negative errno,
 * explained by mp_strerror()). Used in the parent and in the children alike. */
#define TRY(call)                                                                                  \
  do {                                                                                             \
    int r_ = (int)(call);                                                                          \
    if (r_ < 0) {                                                                                  \
      fprintf(stderr, "%s failed: %s\n", #call, mp_strerror(r_));                                  \
      return 1;                                                                                    \
    }                                                                                              \
  } while (0)

static mp_obj *record(const char *name, int64_t score) {
  mp_obj *r = mp_obj_dict();
  mp_obj_dict_set(r, mp_obj_str("name"), mp_obj_str(name));
  mp_obj_dict_set(r, mp_obj_str("score"), mp_obj_int(score));
  return r;
}

/* Python: def insert_record(record, records): records.append(record) */
static int insert_record(void *arg) {
  mp_proxy *records = arg;
  mp_obj *r = record("Sam", 10);
  TRY(r ? 0 : -ENOMEM);
  TRY(mp_list_proxy_append(records, r));
  printf("New record added!\n");
  mp_obj_free(r);
  return 0;
}

/* Python: def print_records(records): for record in records: print(...) */
static int print_records(void *arg) {
  mp_proxy *records = arg;
  mp_obj *all;
  TRY(mp_list_proxy_copy(records, &all));
  for (ssize_t i = 0; i < mp_obj_len(all); i++) {
    const mp_obj *rec, *name, *score;
    const char *n;
    int64_t s;
    TRY(mp_obj_list_get(all, i, &rec));
    TRY(mp_obj_dict_get_str(rec, "name", &name));
    TRY(mp_obj_dict_get_str(rec, "score", &score));
    TRY(mp_obj_get_str(name, &n, NULL));
    TRY(mp_obj_get_int(score, &s));
    printf("Name: %s\nScore: %lld\n\n", n, (long long)s);
  }
  mp_obj_free(all);
  return 0;
}

int main(void) {
  setvbuf(stdout, NULL, _IOLBF, 0);
  mp_manager *manager;
  TRY(mp_manager_new(NULL, &manager));
  TRY(mp_manager_start(manager)); /* with Manager() as manager: */
  mp_obj *init = mp_obj_listv(3, record("Adam", 10), record("Kevin", 9), record("Ana", 8));
  TRY(init ? 0 : -ENOMEM);
  mp_proxy *records;
  TRY(mp_manager_list(manager, init, &records)); /* records = manager.list([...]) */
  mp_obj_free(init);

  mp_process *p1, *p2;
  TRY(mp_process_new(insert_record, records, NULL, &p1));
  TRY(mp_process_start(p1));
  TRY(mp_process_join(p1, MP_FOREVER));
  TRY(mp_process_new(print_records, records, NULL, &p2));
  TRY(mp_process_start(p2));
  TRY(mp_process_join(p2, MP_FOREVER));
  int c1 = -1, c2 = -1;
  TRY(mp_process_exitcode(p1, &c1));
  TRY(mp_process_exitcode(p2, &c2));
  mp_process_free(p1);
  mp_process_free(p2);
  mp_proxy_free(records);
  TRY(mp_manager_free(manager)); /* the end of the with block: shutdown */
  return c1 != 0 || c2 != 0;
}
