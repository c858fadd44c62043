/* SPDX-License-Identifier: MIT */
/**
 * @file mp.h
 * @brief libmp: Python's multiprocessing for C, on fork, shared memory and
 *        futexes. Include this one header.
 */
#ifndef MP_H
#define MP_H

#include "mp/common.h"
#include "mp/connection.h"
#include "mp/heap.h"
#include "mp/log.h"
#include "mp/manager.h"
#include "mp/pool.h"
#include "mp/process.h"
#include "mp/queue.h"
#include "mp/shared.h"
#include "mp/shm.h"
#include "mp/sync.h"
#include "mp/version.h"

#endif /* MP_H */
