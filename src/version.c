/* SPDX-License-Identifier: MIT */
/* The running library's version (mp/version.h, generated from meson's). */
#include "internal.h"

MP_EXPORT const char *mp_version_string(void) { return MP_VERSION_STRING; }

MP_EXPORT int mp_version_number(void) { return MP_VERSION_NUMBER; }
