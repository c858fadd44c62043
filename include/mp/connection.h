/* SPDX-License-Identifier: MIT */
/**
 * @file mp/connection.h
 * @brief (being written)
 */
#ifndef MP_CONNECTION_H
#define MP_CONNECTION_H

#include "common.h"

#ifdef __cplusplus
extern "C" {
#endif

#ifdef __cplusplus
}
#endif

#endif /* MP_CONNECTION_H */
