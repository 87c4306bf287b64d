/* Bit-exact C11 reproduction of the NumPy random numbers that DeepSeek's Engram draws:
 *
 *     np.random.default_rng(seed).integers(low, high, size=(n,), dtype=np.int64)
 *
 * i.e. SeedSequence (pool size 4) -> PCG64 (128-bit LCG, XSL-RR output) -> Generator.integers
 * with Lemire's rejection method (use_masked=False, the only path Generator uses). Written from
 * the algorithms in NumPy's numpy/random/bit_generator.pyx, src/pcg64/pcg64.{h,c},
 * _generator.pyx, _bounded_integers.pyx.in and src/distributions/distributions.c; each function
 * in npy_random.c names the NumPy routine it matches (read in NumPy's main branch; the test
 * tests/npy_random_test.sh compares with the installed NumPy, 1.24 on Debian). NEP 19 does not
 * promise Generator streams stable forever: re-run that test when the reference NumPy changes.
 *
 * Self-contained (only <stdint.h>/<stddef.h>); not thread-safe per generator, like NumPy's
 * without its lock. */
#ifndef DSV4_NPY_RANDOM_H
#define DSV4_NPY_RANDOM_H

#include <stddef.h>
#include <stdint.h>

/* The state of a NumPy PCG64 bit generator: the 128-bit LCG state and increment (as high/low
 * 64-bit halves, so that this header needs no 128-bit type), plus the one-word buffer that
 * next_uint32 keeps between calls (has_uint32/uinteger in NumPy's pcg64_state). */
typedef struct {
    uint64_t state_hi, state_lo;
    uint64_t inc_hi, inc_lo;
    int has_uint32;
    uint32_t uinteger;
} NpyRng;

/* ---- SeedSequence ---------------------------------------------------------------------------- */
/* Splits a non-negative integer into little-endian uint32 words as SeedSequence does
 * (_int_to_uint32_array): 0 -> {0}; otherwise as many words as needed, lowest first.
 * Returns the word count (1 or 2). */
size_t npy_seed_to_words(uint64_t seed, uint32_t words[2]);

/* SeedSequence(entropy words).generate_state(n_words, np.uint64): fills out[0..n_words-1].
 * No spawn key, pool size 4 (the defaults). n_entropy may be 0 only if entropy is unused. */
void npy_seedseq_generate_state64(const uint32_t *entropy, size_t n_entropy, size_t n_words,
                                  uint64_t *out);

/* ---- PCG64 ------------------------------------------------------------------------------------ */
/* = np.random.default_rng(seed) (also PCG64(seed)) for a non-negative Python int seed. */
void npy_rng_seed(NpyRng *r, uint64_t seed);
/* = PCG64(SeedSequence(entropy)) where the entropy is already a uint32 word array (what
 * SeedSequence gets from a list of ints / a uint32 array; see npy_seed_to_words). */
void npy_rng_seed_words(NpyRng *r, const uint32_t *entropy, size_t n_entropy);
/* = pcg64_set_seed(state, {seed_hi, seed_lo}, {inc_hi, inc_lo}); clears the 32-bit buffer. */
void npy_rng_set_seed128(NpyRng *r, uint64_t seed_hi, uint64_t seed_lo, uint64_t inc_hi,
                         uint64_t inc_lo);

uint64_t npy_rng_next64(NpyRng *r);  /* = bit_generator.random_raw() / next_uint64 */
uint32_t npy_rng_next32(NpyRng *r);  /* = next_uint32: low half of a fresh draw, then its high
                                        half on the next call (buffered in the state) */

/* ---- Generator.integers ------------------------------------------------------------------------ */
/* = random_bounded_uint64_fill(bitgen, off, rng, n, use_masked=false, out): n values in the
 * closed interval [off, off + rng] (mod 2^64). */
void npy_rng_bounded_u64_fill(NpyRng *r, uint64_t off, uint64_t rng, int64_t n, uint64_t *out);

/* = Generator.integers(low, high, size=(n,), dtype=np.int64) (endpoint=False: high exclusive).
 * Returns 0, or -1 without drawing when n < 0 or (n > 0 and low >= high: NumPy raises
 * ValueError). n == 0 draws nothing and returns 0 whatever the bounds, as NumPy returns an
 * empty array before it checks them. */
int npy_rng_integers_i64(NpyRng *r, int64_t low, int64_t high, int64_t n, int64_t *out);
/* The same with endpoint=True (high inclusive). Also covers integers(low, 2**63, dtype=np.int64),
 * whose exclusive bound does not fit an int64: pass high = INT64_MAX here. -1 when n < 0 or
 * (n > 0 and low > high). */
int npy_rng_integers_i64_closed(NpyRng *r, int64_t low, int64_t high, int64_t n, int64_t *out);

#endif
