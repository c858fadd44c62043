/* SPDX-License-Identifier: MIT */
/*
 * Raw POSIX shared memory for the shm-create-attach workload: what libmp's
 * SharedMemory does with nothing around it (no tracking).
 *
 *   os-shm N   microseconds per shm_open(O_CREAT|O_EXCL) + ftruncate + mmap +
 *              close, write, shm_open + fstat + mmap + close, read, munmap
 *              both, shm_unlink (4096 bytes)
 */
#include <fcntl.h>
#include <sys/stat.h>

#include "bench.h"

static unsigned long counter;

static void one(void) {
  char name[64];
  snprintf(name, sizeof name, "/bench_os_shm_%d_%lu", (int)getpid(), counter++);
  int fd = shm_open(name, O_CREAT | O_EXCL | O_RDWR | O_CLOEXEC, 0600);
  if (fd < 0 || ftruncate(fd, 4096) < 0)
    bench_die("create %s: %s", name, strerror(errno));
  unsigned char *a = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (a == MAP_FAILED)
    bench_die("mmap: %s", strerror(errno));
  close(fd);
  a[100] = 42;
  fd = shm_open(name, O_RDWR | O_CLOEXEC, 0);
  struct stat st;
  if (fd < 0 || fstat(fd, &st) < 0)
    bench_die("attach %s: %s", name, strerror(errno));
  unsigned char *b = mmap(NULL, (size_t)st.st_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (b == MAP_FAILED)
    bench_die("mmap: %s", strerror(errno));
  close(fd);
  if (st.st_size != 4096 || b[100] != 42)
    bench_die("the attached block does not hold what was written");
  munmap(b, 4096);
  if (shm_unlink(name) < 0)
    bench_die("unlink: %s", strerror(errno));
  munmap(a, 4096);
}

int main(int argc, char **argv) {
  long n = bench_count(argc, argv, 1, 20000);
  for (long i = 0; i < n / 10 + 1; i++) /* warm-up */
    one();
  int64_t t0 = bench_now_ns();
  for (long i = 0; i < n; i++)
    one();
  bench_result((double)(bench_now_ns() - t0) / 1e3 / (double)n);
  return 0;
}
