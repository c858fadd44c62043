/* SPDX-License-Identifier: MIT */
/*
 * A crawler: a Pool fetches pages, a callback in the parent parses each.
 *
 * The Python original fetches web pages with a Pool and parses each in a
 * callback. With no network here, the "pages" are local files the program
 * writes first: a worker fetches one (reads the file, returns its bytes of any
 * size), and the callback, in the parent, counts its links and words.
 */
#include <mp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define TRY(call)                                                                                  \
  do {                                                                                             \
    int r_ = (call);                                                                               \
    if (r_ < 0) {                                                                                  \
      fprintf(stderr, "%s failed: %s\n", #call, mp_strerror(r_));                                  \
      return 1;                                                                                    \
    }                                                                                              \
  } while (0)

enum { PAGES = 6 };
static char dir[] = "/tmp/mp-crawler-XXXXXX";
static pid_t parent;

/* The worker: fetch the page named by the argument. */
static int fetch(const void *arg, size_t len, mp_pool_out *out, void *ctx) {
  (void)ctx;
  char path[256];
  snprintf(path, sizeof path, "%s/%.*s", dir, (int)len, (const char *)arg);
  FILE *f = fopen(path, "r");
  if (!f)
    return -2; /* -ENOENT */
  char buf[4096];
  size_t n = fread(buf, 1, sizeof buf, f);
  fclose(f);
  return mp_pool_out_set(out, buf, n);
}

/* The callback, in the parent: parse the page. */
static int parse(mp_async_result *res, int status, void *arg) {
  (void)status;
  const char *name = arg;
  const void *data;
  size_t len;
  if (mp_async_result_data(res, &data, &len) < 0)
    return -1;
  int links = 0, words = 0, in_word = 0;
  const char *s = data;
  for (size_t i = 0; i < len; i++) {
    if (i + 5 < len && !memcmp(s + i, "href=", 5))
      links++;
    int space = s[i] == ' ' || s[i] == '\n';
    words += !space && !in_word;
    in_word = !space;
  }
  printf("%s: %zu bytes, %d links, %d words (parsed in the parent: %s)\n", name, len, links, words,
         getpid() == parent ? "yes" : "no");
  return 0;
}

static int failed(mp_async_result *res, int status, void *arg) {
  (void)res;
  printf("%s: fetch failed: %s\n", (const char *)arg, mp_strerror(status));
  return 0;
}

int main(void) {
  parent = getpid();
  if (!mkdtemp(dir))
    return 1;
  static char names[PAGES][32];
  for (int i = 0; i < PAGES; i++) {
    snprintf(names[i], sizeof names[i], "page%d.html", i);
    char path[256];
    snprintf(path, sizeof path, "%s/%s", dir, names[i]);
    FILE *f = fopen(path, "w");
    if (!f)
      return 1;
    fprintf(f, "<html><body>page %d\n", i);
    for (int k = 0; k <= i; k++)
      fprintf(f, "<a href=\"page%d.html\">link %d</a>\n", k, k);
    fprintf(f, "</body></html>\n");
    fclose(f);
  }
  mp_pool *p;
  TRY(mp_pool_new(3, NULL, &p));
  mp_async_result *r[PAGES];
  for (int i = 0; i < PAGES; i++) {
    mp_pool_callbacks cb = {parse, failed, names[i]};
    TRY(mp_pool_apply_async(p, fetch, names[i], strlen(names[i]), NULL, &cb, &r[i]));
  }
  TRY(mp_pool_close(p));
  TRY(mp_pool_join(p, MP_FOREVER));
  for (int i = 0; i < PAGES; i++) {
    char path[256];
    snprintf(path, sizeof path, "%s/%s", dir, names[i]);
    unlink(path);
    TRY(mp_async_result_free(r[i]));
  }
  rmdir(dir);
  TRY(mp_pool_free(p));
  printf("crawled %d pages\n", PAGES);
  return 0;
}
