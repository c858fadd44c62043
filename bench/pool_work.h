/* SPDX-License-Identifier: MIT */
/* The per-item work of the pool-cpu and pool-heap-map rows, shared by libmp's
 * program and the os:fork-split baseline so both run exactly the same code. */
#ifndef POOL_WORK_H
#define POOL_WORK_H

#include <math.h>
#include <stdint.h>

/* pool-heap-map: one double in, one double out. */
static inline double pool_work_item(double x) { return sqrt(x) * 1.5 + x * 0.25; }

/* pool-cpu: a CPU-bound task of about `iters` multiply-adds. */
static inline double pool_work_cpu(long iters, long seed) {
  double a = (double)seed, b = 1.0000001;
  for (long i = 0; i < iters; i++)
    a = a * b + 1e-9;
  return a;
}

#endif
