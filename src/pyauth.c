/* SPDX-License-Identifier: MIT */
/*
 * Python's multiprocessing.connection authentication: deliver_challenge()
 * and answer_challenge(), so that a libmp Listener or Client in Python mode
 * and a Python one prove the same key to each other.
 *
 * The protocol, as CPython has it (Lib/multiprocessing/connection.py):
 *   challenger -> "#CHALLENGE#" + M
 *   answerer   -> R = a MAC of M under the key
 *   challenger -> "#WELCOME#" when R is right, else "#FAILURE#"
 * then the other way round (a Listener challenges first). Up to Python 3.11,
 * M is 20 random bytes and R is the raw 16-byte HMAC-MD5 of M. From 3.12, M
 * is "{sha256}" and 40 random bytes and R is "{sha256}" and the HMAC-SHA256
 * of the whole M, prefix included, so the name cannot be downgraded; a 3.12
 * challenger still accepts a raw HMAC-MD5 answer (what 3.11 sends back when
 * it MACs the whole M with MD5), and a 3.12 answerer answers a 20-byte M the
 * old way. We do what 3.12 does, both ways, so we talk to both generations:
 * we challenge with "{sha256}" (a 3.11 peer answers with MD5 over all of it,
 * which we accept), and answer a 16- or 20-byte M with raw HMAC-MD5 and a
 * "{md5}"- or "{sha256}"-prefixed M with that prefix and that MAC. Python
 * 3.12 also names sha384 and the sha3 digests; it only uses them when told
 * to, and we refuse them (-EACCES).
 *
 * libsodium has no MD5, so it is here (RFC 1321), used only for this HMAC:
 * HMAC-MD5 remains a sound MAC with a random challenge, and it is what
 * Python 3.11 and older speak.
 */
#include <errno.h>
#include <sodium.h>
#include <string.h>

#include "pyauth.h"
#include "wire.h"

/* ------------------------------------------------------------------- MD5 */

struct md5 {
  uint32_t h[4];
  uint64_t n; /* bytes hashed */
  uint8_t buf[64];
};

static uint32_t rol(uint32_t x, int c) { return x << c | x >> (32 - c); }

static void md5_block(uint32_t h[4], const uint8_t *p) {
  static const uint32_t K[64] = {
      0xd76aa478, 0xe8c7b756, 0x242070db, 0xc1bdceee, 0xf57c0faf, 0x4787c62a, 0xa8304613,
      0xfd469501, 0x698098d8, 0x8b44f7af, 0xffff5bb1, 0x895cd7be, 0x6b901122, 0xfd987193,
      0xa679438e, 0x49b40821, 0xf61e2562, 0xc040b340, 0x265e5a51, 0xe9b6c7aa, 0xd62f105d,
      0x02441453, 0xd8a1e681, 0xe7d3fbc8, 0x21e1cde6, 0xc33707d6, 0xf4d50d87, 0x455a14ed,
      0xa9e3e905, 0xfcefa3f8, 0x676f02d9, 0x8d2a4c8a, 0xfffa3942, 0x8771f681, 0x6d9d6122,
      0xfde5380c, 0xa4beea44, 0x4bdecfa9, 0xf6bb4b60, 0xbebfbc70, 0x289b7ec6, 0xeaa127fa,
      0xd4ef3085, 0x04881d05, 0xd9d4d039, 0xe6db99e5, 0x1fa27cf8, 0xc4ac5665, 0xf4292244,
      0x432aff97, 0xab9423a7, 0xfc93a039, 0x655b59c3, 0x8f0ccc92, 0xffeff47d, 0x85845dd1,
      0x6fa87e4f, 0xfe2ce6e0, 0xa3014314, 0x4e0811a1, 0xf7537e82, 0xbd3af235, 0x2ad7d2bb,
      0xeb86d391};
  static const int S[4][4] = {{7, 12, 17, 22}, {5, 9, 14, 20}, {4, 11, 16, 23}, {6, 10, 15, 21}};
  uint32_t m[16];
  for (int i = 0; i < 16; i++)
    m[i] = (uint32_t)p[4 * i] | (uint32_t)p[4 * i + 1] << 8 | (uint32_t)p[4 * i + 2] << 16 |
           (uint32_t)p[4 * i + 3] << 24;
  uint32_t a = h[0], b = h[1], c = h[2], d = h[3];
  for (int i = 0; i < 64; i++) {
    uint32_t f;
    int g;
    switch (i / 16) {
    case 0:
      f = (b & c) | (~b & d);
      g = i;
      break;
    case 1:
      f = (d & b) | (~d & c);
      g = (5 * i + 1) % 16;
      break;
    case 2:
      f = b ^ c ^ d;
      g = (3 * i + 5) % 16;
      break;
    default:
      f = c ^ (b | ~d);
      g = (7 * i) % 16;
      break;
    }
    uint32_t t = d;
    d = c;
    c = b;
    b = b + rol(a + f + K[i] + m[g], S[i / 16][i % 4]);
    a = t;
  }
  h[0] += a;
  h[1] += b;
  h[2] += c;
  h[3] += d;
}

static void md5_init(struct md5 *s) {
  *s = (struct md5){.h = {0x67452301, 0xefcdab89, 0x98badcfe, 0x10325476}};
}

static void md5_update(struct md5 *s, const void *data, size_t len) {
  const uint8_t *p = data;
  size_t have = (size_t)(s->n % 64);
  s->n += len;
  if (have) {
    size_t t = 64 - have < len ? 64 - have : len;
    memcpy(s->buf + have, p, t);
    p += t;
    len -= t;
    if (have + t < 64)
      return;
    md5_block(s->h, s->buf);
  }
  for (; len >= 64; p += 64, len -= 64)
    md5_block(s->h, p);
  memcpy(s->buf, p, len);
}

static void md5_final(struct md5 *s, uint8_t out[16]) {
  uint64_t bits = s->n * 8;
  uint8_t pad[72] = {0x80};
  size_t have = (size_t)(s->n % 64);
  size_t padlen = (have < 56 ? 56 : 120) - have;
  for (int i = 0; i < 8; i++)
    pad[padlen + (size_t)i] = (uint8_t)(bits >> (8 * i));
  md5_update(s, pad, padlen + 8);
  for (int i = 0; i < 4; i++)
    for (int j = 0; j < 4; j++)
      out[4 * i + j] = (uint8_t)(s->h[i] >> (8 * j));
  sodium_memzero(s, sizeof *s);
}

static void hmac_md5(const void *key, size_t keylen, const void *msg, size_t len, uint8_t out[16]) {
  uint8_t k[64] = {0}, pad[64];
  struct md5 s;
  if (keylen > 64) {
    md5_init(&s);
    md5_update(&s, key, keylen);
    md5_final(&s, k);
  } else if (keylen) {
    memcpy(k, key, keylen);
  }
  for (int i = 0; i < 64; i++)
    pad[i] = k[i] ^ 0x36;
  md5_init(&s);
  md5_update(&s, pad, 64);
  md5_update(&s, msg, len);
  md5_final(&s, out);
  for (int i = 0; i < 64; i++)
    pad[i] = k[i] ^ 0x5c;
  md5_init(&s);
  md5_update(&s, pad, 64);
  md5_update(&s, out, 16);
  md5_final(&s, out);
  sodium_memzero(k, sizeof k);
  sodium_memzero(pad, sizeof pad);
}

/* ----------------------------------------------------------- the protocol */

enum { D_MD5 = 1, D_SHA256 = 2 };

/* HMAC of msg under the key with digest dg into out; its length. */
static size_t mac(int dg, const void *key, size_t keylen, const void *msg, size_t len,
                  uint8_t out[32]) {
  if (dg == D_MD5) {
    hmac_md5(key, keylen, msg, len, out);
    return 16;
  }
  crypto_auth_hmacsha256_state st;
  crypto_auth_hmacsha256_init(&st, key, keylen);
  crypto_auth_hmacsha256_update(&st, msg, len);
  crypto_auth_hmacsha256_final(&st, out);
  sodium_memzero(&st, sizeof st);
  return 32;
}

/* Python's _get_digest_name_and_payload(): 0 for the legacy form (16 or 20
 * bytes, MD5 without a prefix), D_* for "{name}" with *skip the prefix's
 * length, -EACCES for anything else. */
static int digest_of(const uint8_t *m, size_t len, size_t *skip) {
  *skip = 0;
  if (len == 16 || len == 20)
    return 0;
  if (len >= 5 && !memcmp(m, "{md5}", 5)) {
    *skip = 5;
    return D_MD5;
  }
  if (len >= 8 && !memcmp(m, "{sha256}", 8)) {
    *skip = 8;
    return D_SHA256;
  }
  return -EACCES;
}

int mp__py_challenge(uint8_t msg[MP__PY_CHAL_LEN]) {
  memcpy(msg, MP__PY_CHALLENGE "{sha256}", MP__PY_CHALLENGE_LEN + 8);
  return mp__random_bytes(msg + MP__PY_CHALLENGE_LEN + 8, 40);
}

int mp__py_verify(const void *key, size_t keylen, const uint8_t msg[MP__PY_CHAL_LEN],
                  const void *resp, size_t rlen) {
  if (sodium_init() < 0)
    return -EACCES;
  size_t skip;
  int dg = digest_of(resp, rlen, &skip);
  if (dg < 0)
    return -EACCES;
  uint8_t want[32];
  size_t n = mac(dg ? dg : D_MD5, key, keylen, msg + MP__PY_CHALLENGE_LEN,
                 MP__PY_CHAL_LEN - MP__PY_CHALLENGE_LEN, want);
  int ok = rlen - skip == n && sodium_memcmp(want, (const uint8_t *)resp + skip, n) == 0;
  sodium_memzero(want, sizeof want);
  return ok ? 0 : -EACCES;
}

int mp__py_answer(const void *key, size_t keylen, const void *chal, size_t clen, uint8_t *out,
                  size_t *outlen) {
  const uint8_t *c = chal;
  if (sodium_init() < 0 || clen < MP__PY_CHALLENGE_LEN + 20 ||
      memcmp(c, MP__PY_CHALLENGE, MP__PY_CHALLENGE_LEN))
    return -EACCES;
  c += MP__PY_CHALLENGE_LEN;
  clen -= MP__PY_CHALLENGE_LEN;
  size_t skip;
  int dg = digest_of(c, clen, &skip);
  if (dg < 0)
    return -EACCES;
  if (dg == 0) {
    *outlen = mac(D_MD5, key, keylen, c, clen, out); /* legacy: raw */
    return 0;
  }
  memcpy(out, c, skip); /* "{name}", then the MAC of the whole message */
  *outlen = skip + mac(dg, key, keylen, c, clen, out + skip);
  return 0;
}
