/* SPDX-License-Identifier: MIT */
/**
 * @file mp/queue.h
 * @brief (being written)
 */
#ifndef MP_QUEUE_H
#define MP_QUEUE_H

#include "common.h"

#ifdef __cplusplus
extern "C" {
#endif

#ifdef __cplusplus
}
#endif

#endif /* MP_QUEUE_H */
