/* SPDX-License-Identifier: MIT */
/**
 * @file mp/shared.h
 * @brief Value and Array: typed shared memory in the family heap.
 *
 * A Value or Array handle is a plain typed pointer to its elements, so it
 * reads naturally in C:
 *
 * @code
 *   int *counter;                         // Python: counter = Value('i', 0)
 *   mp_value_new('i', NULL, NULL, &counter);
 *   mp_lock *lock;
 *   mp_value_get_lock(counter, &lock);    // with counter.get_lock():
 *   mp_lock_acquire(lock, MP_FOREVER);
 *   *counter += 1;                        //     counter.value += 1
 *   mp_lock_release(lock);
 *   mp_value_add(counter, 1, NULL);       // one atomic add, no lock needed
 * @endcode
 *
 * Typecodes are Python's: `c` char, `b` signed char, `B` unsigned char, `h`
 * short, `H` unsigned short, `i` int, `I` unsigned int, `l` long, `L` unsigned
 * long, `q` long long, `Q` unsigned long long, `f` float, `d` double. The
 * elements are 16-byte aligned and live in the family heap, so the pointer
 * works in every process of the family. A Value is an Array of length 1: every
 * `mp_value_*` function accepts an Array (element 0) and every `mp_array_*`
 * function a Value.
 *
 * By default each gets a new RLock (Python's `lock=True`); options can give an
 * existing Lock or RLock, or none (Python's `RawValue`/`RawArray`, or
 * `lock=False`). Plain stores through the pointer take no lock: lock around
 * read-modify-write sequences, or use the atomic mp_value_add() and
 * mp_value_compare_exchange() on integer typecodes, which never need one.
 * Integer arithmetic wraps (two's complement) instead of overflowing.
 */
#ifndef MP_SHARED_H
#define MP_SHARED_H

#include <stddef.h>
#include <sys/types.h>

#include "common.h"
#include "sync.h"

#ifdef __cplusplus
extern "C" {
#endif

/** Options for mp_value_new() and mp_array_new(). NULL or zero: a new RLock. */
typedef struct mp_value_options {
  /** Use this Lock or RLock (kept alive by the caller) instead of a new one. */
  mp_lock *lock;
  /** Non-zero: no lock at all (Python's `lock=False`); @ref lock must be NULL. */
  int raw;
} mp_value_options;

/**
 * @brief Create a shared value of type @p typecode.
 * @param init NULL for zero, else points to one element of the C type of
 *             @p typecode, copied in.
 * @param[out] ret the address of a pointer of the element type (for example an
 *             `int **` for `'i'`), set to the value on success.
 * @return 0; `-EINVAL` for an unknown typecode, NULL @p ret, both `lock`
 *         and `raw` in @p opts, or an @p opts lock that is not a libmp Lock or
 *         RLock; `-ENOMEM`.
 */
MP_EXPORT int mp_value_new(char typecode, const void *init, const mp_value_options *opts,
                           void *ret);

/** @brief A value without a lock (Python's `RawValue`); as mp_value_new(). */
MP_EXPORT int mp_raw_value_new(char typecode, const void *init, void *ret);

/**
 * @brief Create a shared array of @p len elements of type @p typecode.
 * @param init NULL for zeros, else @p len elements to copy in.
 * @return as mp_value_new(); `-EINVAL` also for @p len 0; `-ENOMEM` when
 *         @p len elements do not fit.
 */
MP_EXPORT int mp_array_new(char typecode, size_t len, const void *init, const mp_value_options *opts,
                           void *ret);

/** @brief An array without a lock (Python's `RawArray`); as mp_array_new(). */
MP_EXPORT int mp_raw_array_new(char typecode, size_t len, const void *init, void *ret);

/**
 * @brief The lock of a Value or Array (Python's `get_lock()`).
 * @return 0 and the lock in @p ret; `-ENOLCK` for a raw one; `-EINVAL` when
 *         @p value is not a libmp Value or Array.
 */
MP_EXPORT int mp_value_get_lock(const void *value, mp_lock **ret);

/**
 * @brief The typecode of a Value or Array.
 * @return the typecode character (> 0) or `-EINVAL`.
 */
MP_EXPORT int mp_value_typecode(const void *value);

/**
 * @brief Copy the value out under its lock (if it has one).
 * @param[out] out room for one element.
 * @return 0; `-EOWNERDEAD` when the lock was taken from a dead holder (the
 *         copy is made); `-EDEADLK` when the value's lock is a (non-recursive)
 *         Lock the calling thread already holds (nothing is copied);
 *         `-EINVAL` for NULL or a non-value.
 */
MP_EXPORT int mp_value_load(const void *value, void *out);

/** @brief Copy one element in under the lock; as mp_value_load(). */
MP_EXPORT int mp_value_store(void *value, const void *in);

/**
 * @brief Atomically add @p delta to an integer value; no lock needed.
 * @param[out] old NULL, or receives the value before the add (sign- or
 *             zero-extended from the element type).
 * @return 0; `-EINVAL` for a float typecode (`f`, `d`) or a non-value.
 */
MP_EXPORT int mp_value_add(void *value, long long delta, long long *old);

/**
 * @brief Atomically replace an integer value equal to @p *expected by
 *        @p desired.
 * @param expected in: the value expected (truncated to the element type);
 *        out, when the exchange fails: the value found.
 * @return 1 when exchanged, 0 when not (then @p *expected is updated);
 *         `-EINVAL` for a float typecode or NULL.
 */
MP_EXPORT int mp_value_compare_exchange(void *value, long long *expected, long long desired);

/**
 * @brief Free a Value or Array (and the lock it made for itself).
 * @return 0; 0 for NULL; `-EINVAL` for a pointer that is not one; `-EBUSY`
 *         when the lock it made is held (nothing is freed).
 */
MP_EXPORT int mp_value_free(void *value);

/** @brief The number of elements. @return it (>= 1) or `-EINVAL`. */
MP_EXPORT ssize_t mp_array_len(const void *array);

/**
 * @brief Copy element @p index out under the lock.
 * @return 0; `-ERANGE` for an index past the end; `-EOWNERDEAD` as
 *         mp_value_load(); `-EINVAL`.
 */
MP_EXPORT int mp_array_get(const void *array, size_t index, void *out);

/** @brief Copy element @p index in under the lock; as mp_array_get(). */
MP_EXPORT int mp_array_set(void *array, size_t index, const void *in);

/** @brief mp_value_add() on element @p index; `-ERANGE` past the end. */
MP_EXPORT int mp_array_add(void *array, size_t index, long long delta, long long *old);

/** @brief mp_value_compare_exchange() on element @p index; `-ERANGE` past the end. */
MP_EXPORT int mp_array_compare_exchange(void *array, size_t index, long long *expected,
                                        long long desired);

/** @brief Free an Array; as mp_value_free(). */
MP_EXPORT int mp_array_free(void *array);

/**
 * @name Typed constructors
 * The constructors above take the result through `void *`, so the address of
 * a pointer of the wrong type compiles. These forms take the element type in
 * their name and a typed result pointer, so the compiler checks it; each is
 * the general constructor with the matching typecode, nothing more (inline,
 * no symbol of their own). For the C type T named by SUFFIX:
 *
 * - `int mp_value_new_SUFFIX(const T *init, const mp_value_options *opts, T **ret)`
 * - `int mp_raw_value_new_SUFFIX(const T *init, T **ret)`
 * - `int mp_array_new_SUFFIX(size_t len, const T *init, const mp_value_options *opts, T **ret)`
 * - `int mp_raw_array_new_SUFFIX(size_t len, const T *init, T **ret)`
 *
 * SUFFIX and T (typecode): `char` char (`c`), `schar` signed char (`b`),
 * `uchar` unsigned char (`B`), `short` (`h`), `ushort` unsigned short (`H`),
 * `int` (`i`), `uint` unsigned int (`I`), `long` (`l`), `ulong` unsigned long
 * (`L`), `llong` long long (`q`), `ullong` unsigned long long (`Q`), `float`
 * (`f`), `double` (`d`). Returns and errors as the general constructors.
 *
 * In C11 and later, MP_VALUE_NEW(init, opts, ret) and
 * MP_ARRAY_NEW(len, init, opts, ret) pick the typed form from the type of
 * `ret` (`_Generic`); a pointer of any other type does not compile:
 *
 * @code
 *   double *speed;
 *   MP_VALUE_NEW(NULL, NULL, &speed);      // mp_value_new('d', ...)
 *   int *squares;
 *   MP_ARRAY_NEW(4, NULL, NULL, &squares); // mp_array_new('i', 4, ...)
 * @endcode
 * @{
 */
#define MP__TYPED_VALUE(suffix, T, code)                                                        \
  static inline int mp_value_new_##suffix(const T *init, const mp_value_options *opts,          \
                                          T **ret) {                                           \
    return mp_value_new(code, init, opts, ret);                                                 \
  }                                                                                             \
  static inline int mp_raw_value_new_##suffix(const T *init, T **ret) {                        \
    return mp_raw_value_new(code, init, ret);                                                   \
  }                                                                                             \
  static inline int mp_array_new_##suffix(size_t len, const T *init,                            \
                                          const mp_value_options *opts, T **ret) {             \
    return mp_array_new(code, len, init, opts, ret);                                            \
  }                                                                                             \
  static inline int mp_raw_array_new_##suffix(size_t len, const T *init, T **ret) {            \
    return mp_raw_array_new(code, len, init, ret);                                              \
  }
MP__TYPED_VALUE(char, char, 'c')
MP__TYPED_VALUE(schar, signed char, 'b')
MP__TYPED_VALUE(uchar, unsigned char, 'B')
MP__TYPED_VALUE(short, short, 'h')
MP__TYPED_VALUE(ushort, unsigned short, 'H')
MP__TYPED_VALUE(int, int, 'i')
MP__TYPED_VALUE(uint, unsigned int, 'I')
MP__TYPED_VALUE(long, long, 'l')
MP__TYPED_VALUE(ulong, unsigned long, 'L')
MP__TYPED_VALUE(llong, long long, 'q')
MP__TYPED_VALUE(ullong, unsigned long long, 'Q')
MP__TYPED_VALUE(float, float, 'f')
MP__TYPED_VALUE(double, double, 'd')
#undef MP__TYPED_VALUE

#if !defined(__cplusplus) && defined(__STDC_VERSION__) && __STDC_VERSION__ >= 201112L
#define MP__TYPED_PICK(ret, verb)                                                               \
  _Generic((ret),                                                                               \
      char **: mp_##verb##_char, signed char **: mp_##verb##_schar,                             \
      unsigned char **: mp_##verb##_uchar, short **: mp_##verb##_short,                         \
      unsigned short **: mp_##verb##_ushort, int **: mp_##verb##_int,                           \
      unsigned int **: mp_##verb##_uint, long **: mp_##verb##_long,                             \
      unsigned long **: mp_##verb##_ulong, long long **: mp_##verb##_llong,                     \
      unsigned long long **: mp_##verb##_ullong, float **: mp_##verb##_float,                   \
      double **: mp_##verb##_double)
/** A Value of the element type of `*ret`, checked by the compiler. */
#define MP_VALUE_NEW(init, opts, ret) MP__TYPED_PICK(ret, value_new)(init, opts, ret)
/** An Array of the element type of `*ret`, checked by the compiler. */
#define MP_ARRAY_NEW(len, init, opts, ret) MP__TYPED_PICK(ret, array_new)(len, init, opts, ret)
#endif
/** @} */

#ifdef __cplusplus
}
#endif

#endif /* MP_SHARED_H */
