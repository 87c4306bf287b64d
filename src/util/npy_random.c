/* NumPy's default random stream in C: SeedSequence -> PCG64 -> Generator.integers (int64).
 * See npy_random.h. Written from the algorithms; the comment above each function names the
 * NumPy routine (and file) whose behaviour it reproduces bit for bit.
 *
 * 128-bit arithmetic: where the compiler has it (__SIZEOF_INT128__: gcc and clang on 64-bit
 * targets) the LCG uses `unsigned __int128`, a GNU extension (marked __extension__ so that
 * -Wpedantic stays quiet). Elsewhere, or when built with -DNPY_RANDOM_NO_INT128 (the test does
 * both), the same arithmetic is done on two 64-bit halves. NumPy itself does the same
 * (PCG_EMULATED_128BIT_MATH in pcg64.h). */
#include "npy_random.h"

/* ---- SeedSequence (numpy/random/bit_generator.pyx) ------------------------------------------ */

#define SS_POOL_SIZE 4u           /* DEFAULT_POOL_SIZE */
#define SS_INIT_A 0x43b0d7e5u     /* constants of the SeedSequence hash (bit_generator.pyx) */
#define SS_MULT_A 0x931e8875u
#define SS_INIT_B 0x8b51f9ddu
#define SS_MULT_B 0x58f38dedu
#define SS_MIX_MULT_L 0xca01f9ddu
#define SS_MIX_MULT_R 0x4973f715u
#define SS_XSHIFT 16u             /* half the bits of a uint32 */

/* = hashmix(value, hash_const): the multiplier is advanced before it is used, in place. All
 * arithmetic is modulo 2^32 (uint32_t). */
static uint32_t ss_hashmix(uint32_t value, uint32_t *hash_const) {
    value ^= *hash_const;
    *hash_const *= SS_MULT_A;
    value *= *hash_const;
    value ^= value >> SS_XSHIFT;
    return value;
}

/* = mix(x, y) */
static uint32_t ss_mix(uint32_t x, uint32_t y) {
    uint32_t r = SS_MIX_MULT_L * x - SS_MIX_MULT_R * y;
    r ^= r >> SS_XSHIFT;
    return r;
}

/* = SeedSequence.mix_entropy(pool, entropy) for a fresh zero pool of DEFAULT_POOL_SIZE words:
 * hash the first pool_size entropy words (zeros past the end) into the pool, cross-mix every
 * pool word into every other one, then fold in any remaining entropy words. */
static void ss_mix_entropy(uint32_t pool[SS_POOL_SIZE], const uint32_t *entropy, size_t n) {
    uint32_t hc = SS_INIT_A;
    for (size_t i = 0; i < SS_POOL_SIZE; i++) pool[i] = ss_hashmix(i < n ? entropy[i] : 0u, &hc);
    for (size_t src = 0; src < SS_POOL_SIZE; src++)
        for (size_t dst = 0; dst < SS_POOL_SIZE; dst++)
            if (src != dst) pool[dst] = ss_mix(pool[dst], ss_hashmix(pool[src], &hc));
    for (size_t src = SS_POOL_SIZE; src < n; src++)
        for (size_t dst = 0; dst < SS_POOL_SIZE; dst++)
            pool[dst] = ss_mix(pool[dst], ss_hashmix(entropy[src], &hc));
}

/* = _int_to_uint32_array(n) (via _coerce_to_uint32_array for a Python int): little-endian
 * 32-bit words; zero is one word {0}. */
size_t npy_seed_to_words(uint64_t seed, uint32_t words[2]) {
    size_t n = 0;
    if (seed == 0) words[n++] = 0;
    while (seed > 0) {
        words[n++] = (uint32_t)(seed & 0xFFFFFFFFu);
        seed >>= 32;
    }
    return n;
}

/* = SeedSequence(entropy).generate_state(n_words, np.uint64): 2*n_words uint32 words are drawn
 * by cycling over the pool with the INIT_B/MULT_B hash, then pairs are read as little-endian
 * uint64 (word 2k is the low half of output k). */
void npy_seedseq_generate_state64(const uint32_t *entropy, size_t n_entropy, size_t n_words,
                                  uint64_t *out) {
    uint32_t pool[SS_POOL_SIZE];
    ss_mix_entropy(pool, entropy, n_entropy);
    uint32_t hc = SS_INIT_B;
    for (size_t i = 0; i < 2 * n_words; i++) {
        uint32_t v = pool[i % SS_POOL_SIZE];
        v ^= hc;
        hc *= SS_MULT_B;
        v *= hc;
        v ^= v >> SS_XSHIFT;
        if (i % 2 == 0) out[i / 2] = v;
        else out[i / 2] |= (uint64_t)v << 32;
    }
}

/* ---- 128-bit helpers --------------------------------------------------------------------------- */

/* PCG_DEFAULT_MULTIPLIER_128 (pcg64.h), as high and low halves */
#define PCG_MULT_HI 2549297995355413924ULL
#define PCG_MULT_LO 4865540595714422341ULL

#if defined(__SIZEOF_INT128__) && !defined(NPY_RANDOM_NO_INT128)
__extension__ typedef unsigned __int128 npy_u128;

static uint64_t mulhi64(uint64_t a, uint64_t b) { return (uint64_t)(((npy_u128)a * b) >> 64); }

/* = pcg_setseq_128_step_r: state = state * MULT + inc (mod 2^128) */
static void pcg_step(NpyRng *r) {
    npy_u128 s = ((npy_u128)r->state_hi << 64) | r->state_lo;
    npy_u128 inc = ((npy_u128)r->inc_hi << 64) | r->inc_lo;
    npy_u128 mult = ((npy_u128)PCG_MULT_HI << 64) | PCG_MULT_LO;
    s = s * mult + inc;
    r->state_hi = (uint64_t)(s >> 64);
    r->state_lo = (uint64_t)s;
}

/* state += (hi, lo) (mod 2^128) */
static void pcg_add_state(NpyRng *r, uint64_t hi, uint64_t lo) {
    npy_u128 s = ((npy_u128)r->state_hi << 64) | r->state_lo;
    s += ((npy_u128)hi << 64) | lo;
    r->state_hi = (uint64_t)(s >> 64);
    r->state_lo = (uint64_t)s;
}
#else
/* High 64 bits of a 64x64-bit product from 32-bit pieces (what NumPy's non-MSVC fallback in
 * bounded_lemire_uint64 and _pcg_mult64 compute). */
static uint64_t mulhi64(uint64_t a, uint64_t b) {
    uint64_t a0 = a & 0xFFFFFFFFu, a1 = a >> 32, b0 = b & 0xFFFFFFFFu, b1 = b >> 32;
    uint64_t w0 = a0 * b0;
    uint64_t t = a1 * b0 + (w0 >> 32);
    uint64_t w1 = (t & 0xFFFFFFFFu) + a0 * b1;
    return a1 * b1 + (t >> 32) + (w1 >> 32);
}

static void pcg_step(NpyRng *r) {
    /* low 128 bits of (sh:sl) * (mh:ml) = sl*ml + ((sh*ml + sl*mh) << 64) */
    uint64_t lo = r->state_lo * PCG_MULT_LO;
    uint64_t hi = mulhi64(r->state_lo, PCG_MULT_LO) + r->state_hi * PCG_MULT_LO +
                  r->state_lo * PCG_MULT_HI;
    uint64_t nlo = lo + r->inc_lo;
    hi += r->inc_hi + (nlo < lo);
    r->state_hi = hi;
    r->state_lo = nlo;
}

static void pcg_add_state(NpyRng *r, uint64_t hi, uint64_t lo) {
    uint64_t nlo = r->state_lo + lo;
    r->state_hi += hi + (nlo < lo);
    r->state_lo = nlo;
}
#endif

/* ---- PCG64 (numpy/random/src/pcg64/pcg64.{h,c}, numpy/random/_pcg64.pyx) ----------------------- */

/* = pcg64_set_seed(state, seed, inc) -> pcg_setseq_128_srandom_r(initstate, initseq):
 * state = 0; inc = initseq << 1 | 1; step; state += initstate; step. Also what
 * PCG64._reset_state_variables does to the 32-bit buffer. */
void npy_rng_set_seed128(NpyRng *r, uint64_t seed_hi, uint64_t seed_lo, uint64_t inc_hi,
                         uint64_t inc_lo) {
    r->state_hi = r->state_lo = 0;
    r->inc_hi = (inc_hi << 1) | (inc_lo >> 63);
    r->inc_lo = (inc_lo << 1) | 1u;
    pcg_step(r);
    pcg_add_state(r, seed_hi, seed_lo);
    pcg_step(r);
    r->has_uint32 = 0;
    r->uinteger = 0;
}

/* = PCG64.__init__ with a SeedSequence: val = seed_seq.generate_state(4, np.uint64);
 * pcg64_set_seed(&state, &val[0], &val[2]) where val[0]/val[2] are the high halves. */
void npy_rng_seed_words(NpyRng *r, const uint32_t *entropy, size_t n_entropy) {
    uint64_t v[4];
    npy_seedseq_generate_state64(entropy, n_entropy, 4, v);
    npy_rng_set_seed128(r, v[0], v[1], v[2], v[3]);
}

/* = np.random.default_rng(seed) = Generator(PCG64(SeedSequence(seed))) for an int seed >= 0. */
void npy_rng_seed(NpyRng *r, uint64_t seed) {
    uint32_t w[2];
    size_t n = npy_seed_to_words(seed, w);
    npy_rng_seed_words(r, w, n);
}

/* = pcg64_next64 -> pcg_setseq_128_xsl_rr_64_random_r: step first, then the XSL-RR output of the
 * new state: rotate (hi ^ lo) right by the top 6 bits of the state. */
uint64_t npy_rng_next64(NpyRng *r) {
    pcg_step(r);
    uint64_t x = r->state_hi ^ r->state_lo;
    unsigned rot = (unsigned)(r->state_hi >> 58);
    return (x >> rot) | (x << ((64u - rot) & 63u));
}

/* = pcg64_next32: returns the buffered high half if there is one; otherwise draws 64 bits,
 * keeps the high half for next time and returns the low half. */
uint32_t npy_rng_next32(NpyRng *r) {
    if (r->has_uint32) {
        r->has_uint32 = 0;
        return r->uinteger;
    }
    uint64_t x = npy_rng_next64(r);
    r->has_uint32 = 1;
    r->uinteger = (uint32_t)(x >> 32);
    return (uint32_t)(x & 0xFFFFFFFFu);
}

/* ---- bounded integers (numpy/random/src/distributions/distributions.c) ---------------------- */

/* = buffered_bounded_lemire_uint32(bitgen, rng, ...) (its bcnt/buf arguments are unused for 32
 * bits; the only buffering is next_uint32's). Value in [0, rng]; rng != 0xFFFFFFFF. */
static uint32_t bounded_lemire_u32(NpyRng *r, uint32_t rng) {
    const uint32_t rng_excl = rng + 1u;
    uint64_t m = (uint64_t)npy_rng_next32(r) * rng_excl;
    uint32_t leftover = (uint32_t)m;
    if (leftover < rng_excl) {
        const uint32_t threshold = (uint32_t)(UINT32_MAX - rng) % rng_excl;
        while (leftover < threshold) {
            m = (uint64_t)npy_rng_next32(r) * rng_excl;
            leftover = (uint32_t)m;
        }
    }
    return (uint32_t)(m >> 32);
}

/* = bounded_lemire_uint64(bitgen, rng): value in [0, rng]; rng != 2^64-1. The product's low
 * half decides rejection, its high half is the result. */
static uint64_t bounded_lemire_u64(NpyRng *r, uint64_t rng) {
    const uint64_t rng_excl = rng + 1u;
    uint64_t x = npy_rng_next64(r);
    uint64_t leftover = x * rng_excl;
    if (leftover < rng_excl) {
        const uint64_t threshold = (UINT64_MAX - rng) % rng_excl;
        while (leftover < threshold) {
            x = npy_rng_next64(r);
            leftover = x * rng_excl;
        }
    }
    return mulhi64(x, rng_excl);
}

/* = random_bounded_uint64_fill(bitgen, off, rng, cnt, use_masked=false, out):
 *   rng == 0            -> every value is off, nothing is drawn;
 *   rng == 0xFFFFFFFF   -> off + next_uint32 (no rejection);
 *   rng <  0xFFFFFFFF   -> off + 32-bit Lemire on next_uint32 (two values per 64-bit draw,
 *                          the spare half carried over between calls in the generator);
 *   rng == 2^64-1       -> off + next_uint64;
 *   otherwise           -> off + 64-bit Lemire on next_uint64. */
void npy_rng_bounded_u64_fill(NpyRng *r, uint64_t off, uint64_t rng, int64_t n, uint64_t *out) {
    if (rng == 0) {
        for (int64_t i = 0; i < n; i++) out[i] = off;
    } else if (rng <= 0xFFFFFFFFu) {
        if (rng == 0xFFFFFFFFu) {
            for (int64_t i = 0; i < n; i++) out[i] = off + (uint64_t)npy_rng_next32(r);
        } else {
            for (int64_t i = 0; i < n; i++) out[i] = off + bounded_lemire_u32(r, (uint32_t)rng);
        }
    } else if (rng == UINT64_MAX) {
        for (int64_t i = 0; i < n; i++) out[i] = off + npy_rng_next64(r);
    } else {
        for (int64_t i = 0; i < n; i++) out[i] = off + bounded_lemire_u64(r, rng);
    }
}

/* Two's-complement reinterpretation without implementation-defined conversion. */
static int64_t u64_to_i64(uint64_t u) {
    return u <= (uint64_t)INT64_MAX ? (int64_t)u : -(int64_t)(UINT64_MAX - u) - 1;
}

/* = _rand_int64(low, high, size, use_masked=False, closed, ...) scalar-bounds path
 * (_bounded_integers.pyx.in): rng = (high - !closed) - low computed exactly then taken as uint64,
 * off = (uint64)(int64)low; the uint64 results are reinterpreted as int64. */
static int integers_i64(NpyRng *r, int64_t low, uint64_t rng, int64_t n, int64_t *out) {
    uint64_t off = (uint64_t)low;                 /* well defined: modulo 2^64 */
    uint64_t *u = (uint64_t *)(void *)out;        /* same size and alignment; filled in place */
    npy_rng_bounded_u64_fill(r, off, rng, n, u);
    for (int64_t i = 0; i < n; i++) out[i] = u64_to_i64(u[i]);
    return 0;
}

/* = Generator.integers(low, high, size=(n,), dtype=np.int64, endpoint=False) */
int npy_rng_integers_i64(NpyRng *r, int64_t low, int64_t high, int64_t n, int64_t *out) {
    if (n <= 0) return n < 0 ? -1 : 0;   /* NumPy returns an empty array before checking bounds */
    if (low >= high) return -1;
    /* high - 1 - low lies in [0, 2^64 - 2]; unsigned arithmetic gives it exactly */
    return integers_i64(r, low, (uint64_t)high - 1u - (uint64_t)low, n, out);
}

/* = Generator.integers(low, high, size=(n,), dtype=np.int64, endpoint=True) */
int npy_rng_integers_i64_closed(NpyRng *r, int64_t low, int64_t high, int64_t n, int64_t *out) {
    if (n <= 0) return n < 0 ? -1 : 0;
    if (low > high) return -1;
    return integers_i64(r, low, (uint64_t)high - (uint64_t)low, n, out);
}
