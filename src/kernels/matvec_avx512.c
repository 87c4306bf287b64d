/* FP8, FP4 and Q4 decode kernels, the indexer's prefill scoring and the decode attention's block
 * steps for AVX-512 (F + BW), chosen at run time over the AVX2 / sgemm paths where the CPU has it
 * (matvec_avx2.c asks matvec_avx512_usable and attend_avx512_usable, indexer.c
 * indexer_avx512_usable; DSV4_SIMD=avx2 says no).
 *
 * FP8 e4m3. Why a second kernel: with AVX2 the e4m3 -> float widening is bound by the shuffle port
 * (unpack + extract + vcvtph2ps: 8 port-5 uops per 32 weights), which holds FP8 decode to about
 * three quarters of the memory bus (`dsv4 bench --kernels`). Here one 64-byte load is split
 * into its even and odd bytes with shifts alone (no shuffles):
 *   16-bit word = odd byte << 8 | even byte;
 *   odd:  word >> 1 (arithmetic), keep sign | bits 7..13  = F16 bits of value × 2^-8
 *   even: (word << 8) >> 1, the same mask
 * (the e4m3 exponent lands in the low 4 bits of F16's 5-bit field, the e4m3 subnormals on F16
 * subnormals, so vcvtph2ps converts exactly; the 2^8 joins the block scale). Each 64 weights
 * cost 2 port-5 extracts and 4 two-uop conversions of 16 floats: twice the weights per
 * shuffle-port cycle of the AVX2 kernel. The activations are permuted once per call (evens of
 * each 64 columns, then odds), so the weights need no reordering.
 *
 * FP4 e2m1 and Q4: with AVX2 the nibbles go through pshufb, sign extension and conversion, 8
 * shuffle-port uops per 32 weights (FP4 decode at ~45% of the bus). Here a 64-byte load holds 128
 * weights, 8 nibbles per 32-bit lane; vpermps looks a float up in a 16-entry table by the low 4
 * bits of each lane, so shifting the whole vector right by 4k and one vpermps give the k-th
 * nibble of every lane as 16 exact floats: 8 shifts and 8 one-uop lookups per 128 weights, four
 * times fewer shuffle uops. Lane j holds weights 8j..8j+7, so block (32 weights) b sits in lanes
 * 4b..4b+3 whatever k: one vector of the four block scales multiplies each 128 weights' sum.
 * An E8M0 scale byte of 0 (2^-127) counts as 0 here and 255 (NaN) as infinity.
 *
 * Per token the arithmetic (accumulators, order of the sums) is that of T = 1: a batch of up to
 * 4 tokens gives bit-identical results to one token at a time (speculative decoding relies on
 * it), and results do not depend on how rows are split between threads. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../dsv4_internal.h"

#if defined(__x86_64__)
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx2,fma,f16c")
#include <immintrin.h>

#include "simd_x86.h"

/* the same prefetch distances as the AVX2 kernels (see matvec_avx2.c) */
#define PREFETCH_BYTES 16384
#define L1_AHEAD 1024
#define E4M3_SCALE 256.0f

static int cpu_avx512 = -1;
__attribute__((constructor)) static void cpu_probe_avx512(void) {
    __builtin_cpu_init();
    const char *e = getenv("DSV4_SIMD");
    cpu_avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx2") &&
                 __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c") && !(e && (!strcmp(e, "0") || !strcmp(e, "avx2")));
}
static int allow_avx512 = 1;
void matvec_allow_avx512(int on) { allow_avx512 = on; }

int matvec_avx512_usable(const Mat *W) {
    if (cpu_avx512 <= 0 || !allow_avx512) return 0;
    return (W->kind == W_FP8 && W->cols % 64 == 0) || ((W->kind == W_FP4 || W->kind == W_Q4) && W->cols % 128 == 0);
}

/* FP8: the even columns of each 64, then the odd ones. FP4/Q4: position 16k + j of each 128
 * columns holds column 8j + k (the k-th nibble of lane j). */
void matvec_avx512_prepare(const Mat *W, const float *x, int64_t ldx, int64_t T, float *xp) {
    const int64_t cols = W->cols;
    for (int64_t t = 0; t < T; t++) {
        const float *xt = x + t * ldx;
        float *pt = xp + t * cols;
        if (W->kind == W_FP8)
            for (int64_t c0 = 0; c0 < cols; c0 += 64)
                for (int j = 0; j < 32; j++) {
                    pt[c0 + j] = xt[c0 + 2 * j];
                    pt[c0 + 32 + j] = xt[c0 + 2 * j + 1];
                }
        else
            for (int64_t c0 = 0; c0 < cols; c0 += 128)
                for (int k = 0; k < 8; k++)
                    for (int j = 0; j < 16; j++) pt[c0 + 16 * k + j] = xt[c0 + 8 * j + k];
    }
}

/* 64 e4m3 bytes -> value × 2^-8: w[0] = elements 0,2..30, w[1] 32..62, w[2] 1..31, w[3] 33..63 */
static inline void widen_e4m3_64(const uint8_t *p, __m512 w[4]) {
    const __m512i keep = _mm512_set1_epi16((short)0xBF80);
    const __m512i v = _mm512_loadu_si512((const void *)p);
    const __m512i od = _mm512_and_si512(_mm512_srai_epi16(v, 1), keep);
    const __m512i ev = _mm512_and_si512(_mm512_srai_epi16(_mm512_slli_epi16(v, 8), 1), keep);
    w[0] = _mm512_cvtph_ps(_mm512_castsi512_si256(ev));
    w[1] = _mm512_cvtph_ps(_mm512_extracti64x4_epi64(ev, 1));
    w[2] = _mm512_cvtph_ps(_mm512_castsi512_si256(od));
    w[3] = _mm512_cvtph_ps(_mm512_extracti64x4_epi64(od, 1));
}

/* one scale per 128 x 128 block: four accumulators per block, scaled into the row sum */
static inline __attribute__((always_inline)) void row_e4m3_512(const Mat *W, int64_t r, const float *xp, int T, float *out) {
    const int64_t cols = W->cols, srow = (r / 128) * W->scale_cols;
    const uint8_t *p = (const uint8_t *)W->w + r * cols;
    __m512 acc[4], b[4][4], w[4];
    for (int t = 0; t < T; t++) acc[t] = _mm512_setzero_ps();
    for (int64_t c0 = 0; c0 < cols; c0 += 128) {
        const int64_t c1 = c0 + 128 < cols ? c0 + 128 : cols;
        for (int t = 0; t < T; t++)
            for (int k = 0; k < 4; k++) b[t][k] = _mm512_setzero_ps();
        for (int64_t c = c0; c < c1; c += 64) {
            _mm_prefetch((const char *)(p + c + PREFETCH_BYTES), _MM_HINT_T1);
            _mm_prefetch((const char *)(p + c + L1_AHEAD), _MM_HINT_T0);
            widen_e4m3_64(p + c, w);
            for (int t = 0; t < T; t++)
                for (int k = 0; k < 4; k++) b[t][k] = _mm512_fmadd_ps(w[k], _mm512_loadu_ps(xp + t * cols + c + 16 * k), b[t][k]);
        }
        const __m512 s = _mm512_set1_ps(mat_scale(W, srow + c0 / 128) * E4M3_SCALE);
        for (int t = 0; t < T; t++)
            acc[t] = _mm512_fmadd_ps(_mm512_add_ps(_mm512_add_ps(b[t][0], b[t][1]), _mm512_add_ps(b[t][2], b[t][3])), s, acc[t]);
    }
    for (int t = 0; t < T; t++) out[t] = _mm512_reduce_add_ps(acc[t]);
}

/* the four block scales of 128 weights (blocks i..i+3 of the matrix), block b in lanes 4b..4b+3 */
static inline __m512 scales4(const Mat *W, int64_t i, WKind kind) {
    const __m512i spread = _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3);
    if (kind == W_Q4) {   /* F16 */
        const __m128i h = _mm_loadl_epi64((const __m128i *)((const uint8_t *)W->scale + 2 * i));
        return _mm512_permutexvar_ps(spread, _mm512_castps128_ps512(_mm_cvtph_ps(h)));
    }
    if (W->scale_f32) return _mm512_permutexvar_ps(spread, _mm512_castps128_ps512(_mm_loadu_ps((const float *)W->scale + i)));
    uint32_t four;   /* E8M0 bytes: 2^(b-127) is b in a float's exponent field */
    memcpy(&four, (const uint8_t *)W->scale + i, 4);
    const __m512i b = _mm512_permutexvar_epi32(spread, _mm512_cvtepu8_epi32(_mm_cvtsi32_si128((int)four)));
    return _mm512_castsi512_ps(_mm512_slli_epi32(b, 23));
}

/* FP4 / Q4 (`kind` a constant at each call): 128 weights per step, two sums of the nibble
 * products (even and odd k) so the FMA chain is half as long, scaled into the row sum */
static inline __attribute__((always_inline)) void row_nib_512(const Mat *W, int64_t r, const float *xp, int T, float *out,
                                                             WKind kind) {
    const int64_t cols = W->cols, srow = r * W->scale_cols, scale_bytes = kind == W_FP4 ? (W->scale_f32 ? 4 : 1) : 2;
    const uint8_t *p = (const uint8_t *)W->w + r * (cols / 2);
    const uint8_t *sp = (const uint8_t *)W->scale + srow * scale_bytes;
    const __m512 table = kind == W_FP4 ? _mm512_setr_ps(0, 0.5f, 1, 1.5f, 2, 3, 4, 6, -0.0f, -0.5f, -1, -1.5f, -2, -3, -4, -6)
                                       : _mm512_setr_ps(-8, -7, -6, -5, -4, -3, -2, -1, 0, 1, 2, 3, 4, 5, 6, 7);
    __m512 acc[4], a0[4], a1[4];
    for (int t = 0; t < T; t++) acc[t] = _mm512_setzero_ps();
    for (int64_t c = 0, i = 0; c < cols; c += 128, i++) {
        const uint8_t *pb = p + 64 * i;
        _mm_prefetch((const char *)(pb + PREFETCH_BYTES), _MM_HINT_T1);
        _mm_prefetch((const char *)(pb + L1_AHEAD), _MM_HINT_T0);
        /* the scales are a second, thinner stream: one prefetch per cache line of them */
        if (!(4 * i * scale_bytes & 63)) _mm_prefetch((const char *)(sp + 4 * i * scale_bytes + PREFETCH_BYTES / 64 * 4 * scale_bytes), _MM_HINT_T1);
        const __m512 s = scales4(W, srow + 4 * i, kind);
        const __m512i v = _mm512_loadu_si512((const void *)pb);
        for (int k = 0; k < 8; k++) {
            const __m512 w = _mm512_permutexvar_ps(_mm512_srli_epi32(v, 4 * k), table);
            for (int t = 0; t < T; t++) {
                const __m512 xv = _mm512_loadu_ps(xp + t * cols + c + 16 * k);
                if (k == 0) a0[t] = _mm512_mul_ps(w, xv);
                else if (k == 1) a1[t] = _mm512_mul_ps(w, xv);
                else if (k & 1) a1[t] = _mm512_fmadd_ps(w, xv, a1[t]);
                else a0[t] = _mm512_fmadd_ps(w, xv, a0[t]);
            }
        }
        for (int t = 0; t < T; t++) acc[t] = _mm512_fmadd_ps(_mm512_add_ps(a0[t], a1[t]), s, acc[t]);
    }
    for (int t = 0; t < T; t++) out[t] = _mm512_reduce_add_ps(acc[t]);
}

static inline __attribute__((always_inline)) void rows_T(const Mat *W, int64_t r0, int64_t nr, const float *xp, int T,
                                                        float *y, int64_t ldy) {
    float out[4];
    for (int64_t i = 0; i < nr; i++) {
        if (W->kind == W_FP8) row_e4m3_512(W, r0 + i, xp, T, out);
        else if (W->kind == W_FP4) row_nib_512(W, r0 + i, xp, T, out, W_FP4);
        else row_nib_512(W, r0 + i, xp, T, out, W_Q4);
        for (int t = 0; t < T; t++) y[t * ldy + i] = out[t];
    }
}

void matvec_avx512_rows(const Mat *W, int64_t r0, int64_t nr, const float *xp, int64_t T, float *y, int64_t ldy) {
    switch (T) {   /* T a constant in each copy, so the loops over tokens unroll */
    case 1: rows_T(W, r0, nr, xp, 1, y, ldy); break;
    case 2: rows_T(W, r0, nr, xp, 2, y, ldy); break;
    case 3: rows_T(W, r0, nr, xp, 3, y, ldy); break;
    default: rows_T(W, r0, nr, xp, 4, y, ldy); break;
    }
}

/* ---- indexer prefill scoring ----------------------------------------------------------------
 * S[t][e] = Σ_h w[t][h] · ReLU(q[t][h] · key_e) for a block of queries against key panels (32
 * keys each, stored [I][32]: dimension d of the panel's keys is two vectors). A group of R
 * (query, head) rows × 32 keys is 2R accumulators; per dimension two panel loads serve 2R FMAs
 * whose other operand is a broadcast of the row's q element, so the inner loop runs at the FMA
 * rate (an sgemm with inner dimension 32 spends much of its time packing operands and writing C).
 * The heads are combined into S as each group finishes (a query whose heads span two groups:
 * the second adds to what the first stored). */
int indexer_avx512_usable(void) { return cpu_avx512 > 0 && allow_avx512; }

#define IDX_ROWS 12   /* rows per group: 24 accumulators of the 32 registers */
static inline __attribute__((always_inline)) void idx_group(const float *q, const float *w, int64_t row0, int R, int HI,
                                                           int I, const float *panel, float *S, int64_t lds) {
    __m512 a0[IDX_ROWS], a1[IDX_ROWS];
    for (int r = 0; r < R; r++) a0[r] = a1[r] = _mm512_setzero_ps();
    for (int d = 0; d < I; d++) {
        const __m512 k0 = _mm512_loadu_ps(panel + 32 * d), k1 = _mm512_loadu_ps(panel + 32 * d + 16);
        for (int r = 0; r < R; r++) {
            const __m512 qb = _mm512_set1_ps(q[(row0 + r) * I + d]);
            a0[r] = _mm512_fmadd_ps(qb, k0, a0[r]);
            a1[r] = _mm512_fmadd_ps(qb, k1, a1[r]);
        }
    }
    /* a query's heads summed in registers while its rows last in this group; stored when the
     * query changes, added to what an earlier group stored when it began there */
    const __m512 zero = _mm512_setzero_ps();
    __m512 c0 = zero, c1 = zero;
    int64_t tq = row0 / HI;
    int added = (int)(row0 % HI) > 0;
    for (int r = 0; r < R; r++) {
        const int64_t row = row0 + r, t = row / HI;
        if (t != tq) {
            float *st = S + tq * lds;
            if (added) { c0 = _mm512_add_ps(_mm512_loadu_ps(st), c0); c1 = _mm512_add_ps(_mm512_loadu_ps(st + 16), c1); }
            _mm512_storeu_ps(st, c0);
            _mm512_storeu_ps(st + 16, c1);
            c0 = c1 = zero;
            tq = t;
            added = 0;
        }
        const __m512 wv = _mm512_set1_ps(w[row]);
        c0 = _mm512_fmadd_ps(wv, _mm512_max_ps(a0[r], zero), c0);
        c1 = _mm512_fmadd_ps(wv, _mm512_max_ps(a1[r], zero), c1);
    }
    float *st = S + tq * lds;
    if (added) { c0 = _mm512_add_ps(_mm512_loadu_ps(st), c0); c1 = _mm512_add_ps(_mm512_loadu_ps(st + 16), c1); }
    _mm512_storeu_ps(st, c0);
    _mm512_storeu_ps(st + 16, c1);
}

void indexer_block_scores_avx512(const float *q, const float *w, int64_t nq, int HI, int I, const float *panels, int64_t np,
                                 float *S, int64_t lds) {
    const int64_t rows = nq * HI;
    for (int64_t p = 0; p < np; p++) {
        const float *panel = panels + p * 32 * I;
        float *Sp = S + 32 * p;
        int64_t r0 = 0;
        for (; r0 + IDX_ROWS <= rows; r0 += IDX_ROWS) idx_group(q, w, r0, IDX_ROWS, HI, I, panel, Sp, lds);
        switch (rows - r0) {   /* the last group: R a constant in each copy */
        case 0: break;
#define IDX_TAIL(n) case n: idx_group(q, w, r0, n, HI, I, panel, Sp, lds); break;
        IDX_TAIL(1) IDX_TAIL(2) IDX_TAIL(3) IDX_TAIL(4) IDX_TAIL(5) IDX_TAIL(6)
        IDX_TAIL(7) IDX_TAIL(8) IDX_TAIL(9) IDX_TAIL(10) IDX_TAIL(11)
#undef IDX_TAIL
        }
    }
}

/* ---- decode attention over a block of keys ---------------------------------------------------
 * The two arithmetic steps of attend_partial_avx2 (matvec_avx2.c) for one block of up to 32
 * keys and up to 4 heads, 16 lanes wide (D % 16 == 0), scores kept [j][4] as there. The values
 * of four heads × 64 columns stay in 16 registers over all the block's keys. A (key, head)
 * pair's sums are the same whatever heads share the call. */
#define ATT_MAX_HEADS 4
static inline __attribute__((always_inline)) __m256 fold16(__m512 z) {   /* 16 lanes -> 8: lane i + lane i + 8 */
    return _mm256_add_ps(_mm512_castps512_ps256(z), _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(z), 1)));
}

static inline __attribute__((always_inline)) void att_scores(const int NH, const float *q, int D, const float *const *k, int nb,
                                                            float scale, float *s) {
    const __m256 sv = _mm256_set1_ps(scale);
    for (int j = 0; j < nb; j += 2) {
        const float *k0 = k[j], *k1 = j + 1 < nb ? k[j + 1] : k[j];
        __m512 a[8];
        for (int e = 0; e < 8; e++) a[e] = _mm512_setzero_ps();
        for (int d = 0; d < D; d += 16) {
            const __m512 x0 = _mm512_loadu_ps(k0 + d), x1 = _mm512_loadu_ps(k1 + d);
            for (int h = 0; h < NH; h++) {
                const __m512 qv = _mm512_loadu_ps(q + (int64_t)h * D + d);
                a[h] = _mm512_fmadd_ps(qv, x0, a[h]);
                a[4 + h] = _mm512_fmadd_ps(qv, x1, a[4 + h]);
            }
        }
        __m256 f[8];
        for (int e = 0; e < 8; e++) f[e] = fold16(a[e]);
        _mm256_storeu_ps(s + 4 * j, _mm256_mul_ps(hsum8x8(f), sv));   /* lane h: key j, lane 4 + h: key j + 1 */
    }
}

static inline __attribute__((always_inline)) void att_values(const int NH, const float *p, int D, const float *const *k, int nb,
                                                            float *acc, const float *const *pf, int npf) {
    int d = 0;
    for (int j = 0; j < npf && D < 64; j++)   /* no 64-column pass below to spread them over */
        for (int c = 0; c < D; c += 16) _mm_prefetch((const char *)(pf[j] + c), _MM_HINT_T0);
    for (; d + 64 <= D; d += 64) {   /* 64 columns of each head: 4·NH accumulators */
        __m512 o[4 * ATT_MAX_HEADS];
        for (int h = 0; h < NH; h++)
            for (int c = 0; c < 4; c++) o[4 * h + c] = _mm512_loadu_ps(acc + (int64_t)h * D + d + 16 * c);
        for (int j = 0; j < nb; j++) {
            if (d == 0 && j < npf)   /* the next block's key j, while this one's values are summed */
                for (int c = 0; c < D; c += 16) _mm_prefetch((const char *)(pf[j] + c), _MM_HINT_T0);
            const float *kj = k[j] + d;
            const __m512 x0 = _mm512_loadu_ps(kj), x1 = _mm512_loadu_ps(kj + 16), x2 = _mm512_loadu_ps(kj + 32),
                         x3 = _mm512_loadu_ps(kj + 48);
            for (int h = 0; h < NH; h++) {
                const __m512 pv = _mm512_set1_ps(p[4 * j + h]);
                o[4 * h] = _mm512_fmadd_ps(pv, x0, o[4 * h]);
                o[4 * h + 1] = _mm512_fmadd_ps(pv, x1, o[4 * h + 1]);
                o[4 * h + 2] = _mm512_fmadd_ps(pv, x2, o[4 * h + 2]);
                o[4 * h + 3] = _mm512_fmadd_ps(pv, x3, o[4 * h + 3]);
            }
        }
        for (int h = 0; h < NH; h++)
            for (int c = 0; c < 4; c++) _mm512_storeu_ps(acc + (int64_t)h * D + d + 16 * c, o[4 * h + c]);
    }
    for (; d < D; d += 16) {   /* the rest, 16 columns at a time */
        __m512 o[ATT_MAX_HEADS];
        for (int h = 0; h < NH; h++) o[h] = _mm512_loadu_ps(acc + (int64_t)h * D + d);
        for (int j = 0; j < nb; j++) {
            const __m512 x0 = _mm512_loadu_ps(k[j] + d);
            for (int h = 0; h < NH; h++) o[h] = _mm512_fmadd_ps(_mm512_set1_ps(p[4 * j + h]), x0, o[h]);
        }
        for (int h = 0; h < NH; h++) _mm512_storeu_ps(acc + (int64_t)h * D + d, o[h]);
    }
}

int attend_avx512_usable(int D) { return cpu_avx512 > 0 && allow_avx512 && D % 16 == 0; }

void attend_block_scores_avx512(const float *q, int nh, int D, const float *const *k, int nb, float scale, float *s) {
    switch (nh) {
    case 4: att_scores(4, q, D, k, nb, scale, s); break;
    case 3: att_scores(3, q, D, k, nb, scale, s); break;
    case 2: att_scores(2, q, D, k, nb, scale, s); break;
    default: att_scores(1, q, D, k, nb, scale, s); break;
    }
}

void attend_block_values_avx512(const float *p, int nh, int D, const float *const *k, int nb, float *acc, const float *const *pf,
                                int npf) {
    switch (nh) {
    case 4: att_values(4, p, D, k, nb, acc, pf, npf); break;
    case 3: att_values(3, p, D, k, nb, acc, pf, npf); break;
    case 2: att_values(2, p, D, k, nb, acc, pf, npf); break;
    default: att_values(1, p, D, k, nb, acc, pf, npf); break;
    }
}
#pragma GCC pop_options

#else   /* not x86-64: never chosen */
int indexer_avx512_usable(void) { return 0; }
int attend_avx512_usable(int D) { (void)D; return 0; }
void attend_block_scores_avx512(const float *q, int nh, int D, const float *const *k, int nb, float scale, float *s) {
    (void)q; (void)nh; (void)D; (void)k; (void)nb; (void)scale; (void)s;
}
void attend_block_values_avx512(const float *p, int nh, int D, const float *const *k, int nb, float *acc, const float *const *pf,
                                int npf) {
    (void)p; (void)nh; (void)D; (void)k; (void)nb; (void)acc; (void)pf; (void)npf;
}
void indexer_block_scores_avx512(const float *q, const float *w, int64_t nq, int HI, int I, const float *panels, int64_t np,
                                 float *S, int64_t lds) {
    (void)q; (void)w; (void)nq; (void)HI; (void)I; (void)panels; (void)np; (void)S; (void)lds;
}
void matvec_allow_avx512(int on) { (void)on; }
int matvec_avx512_usable(const Mat *W) { (void)W; return 0; }
void matvec_avx512_prepare(const Mat *W, const float *x, int64_t ldx, int64_t T, float *xp) {
    (void)W; (void)x; (void)ldx; (void)T; (void)xp;
}
void matvec_avx512_rows(const Mat *W, int64_t r0, int64_t nr, const float *xp, int64_t T, float *y, int64_t ldy) {
    (void)W; (void)r0; (void)nr; (void)xp; (void)T; (void)y; (void)ldy;
}
#endif
