/* SPDX-License-Identifier: MIT */
/* Python's multiprocessing.connection authentication (pyauth.c), for the
 * Listener and Client (listener.c) in Python mode. */
#ifndef MP_PYAUTH_H
#define MP_PYAUTH_H

#include <stddef.h>
#include <stdint.h>

/* Python's handshake messages, and the largest it reads (recv_bytes(256)). */
#define MP__PY_CHALLENGE "#CHALLENGE#"
#define MP__PY_CHALLENGE_LEN 11
#define MP__PY_WELCOME "#WELCOME#"
#define MP__PY_WELCOME_LEN 9
#define MP__PY_FAILURE "#FAILURE#"
#define MP__PY_FAILURE_LEN 9
#define MP__PY_MAX 256
/* Our challenge: "#CHALLENGE#{sha256}" and 40 random bytes, as Python 3.12. */
#define MP__PY_CHAL_LEN (MP__PY_CHALLENGE_LEN + 8 + 40)

/* Make a challenge into msg (MP__PY_CHAL_LEN bytes). 0 or -errno. */
int mp__py_challenge(uint8_t msg[MP__PY_CHAL_LEN]);
/* Check the response to the challenge msg. 0 when right, else -EACCES. */
int mp__py_verify(const void *key, size_t keylen, const uint8_t msg[MP__PY_CHAL_LEN],
                  const void *resp, size_t rlen);
/* Answer a challenge received (the whole message, "#CHALLENGE#" included):
 * the response into out (room for 64 bytes), its length in *outlen. 0, or
 * -EACCES for a message that is not a challenge we can answer. */
int mp__py_answer(const void *key, size_t keylen, const void *chal, size_t clen, uint8_t *out,
                  size_t *outlen);

#endif
