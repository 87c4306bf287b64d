/* Small-batch (decode) matrix-vector kernels for AVX2 + FMA + F16C, chosen at run time
 * (linear.c asks matvec_avx2_usable) so that one binary also runs on CPUs without them.
 *
 * Decode reads every weight once per token, so the aim is to decode weights faster than memory
 * delivers them. Each format is widened with as few cross-lane shuffles as possible, and the
 * activations are permuted once per call into the order the widening produces (cheap: one
 * vector of `cols` floats per token, against rows × cols weights):
 *   BF16  unpack with zero puts each 16-bit value in the high half of a float (exact);
 *   FP8   e4m3 byte in the high byte of a 16-bit word, shifted right by one, is the F16 bit
 *         pattern of value × 2^-8 (the 4-bit exponent field lands in F16's 5-bit field, the
 *         e4m3 subnormals on F16 subnormals), so vcvtph2ps converts it exactly and the 2^8
 *         goes into the block scale. Shifting bits into a float instead would make e4m3
 *         subnormals float denormals, which cost a microcode assist per vector (10x slower);
 *   FP4   e2m1 nibbles through a 16-entry byte table (pshufb) give 2 × value as int8, exact in
 *         float; the 1/2 goes into the 1×32 block scale;
 *   Q4/Q8 (dsv4 quantize) nibble minus 8, or the int8 byte, sign-extended and converted; the F16
 *         block scale by vcvtph2ps.
 * The hardware prefetcher alone leaves these loops at a third of the bus on the machines we
 * measured; an explicit prefetch a fixed distance ahead in the same row stream brings BF16 to
 * the read bandwidth and FP8/FP4 to their instruction throughput (`dsv4 bench --kernels`).
 * Where the CPU has AVX-512, FP8, FP4 and Q4 matrices go to matvec_avx512.c instead (prepare
 * and rows below hand them over), with fewer shuffle-port instructions per weight. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../dsv4_internal.h"

#if defined(__x86_64__) || defined(__i386__)
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
#include <immintrin.h>

#include "simd_x86.h"

/* Software prefetch into L2 this far ahead in the row stream (about 16 rows of 1 KB): more
 * misses in flight than the L1 fill buffers allow, and the L1 prefetcher takes it from there. */
#define PREFETCH_BYTES 16384
#define PF_HINT _MM_HINT_T1
/* ... and into L1 a little ahead, for the kernels with the most work per byte (FP8, FP4) */
#define L1_AHEAD 1024

static inline float hsum8(__m256 s) {
    __m128 h = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
    h = _mm_add_ps(h, _mm_movehl_ps(h, h));
    h = _mm_add_ss(h, _mm_movehdup_ps(h));
    return _mm_cvtss_f32(h);
}

/* ---- widening: 32 weights -> 4 vectors of 8 floats, in the order given by *_ORDER ------- */

/* BF16: 64 bytes; unpacklo/hi_epi16 work inside each 128-bit lane */
static inline void widen_bf16(const uint8_t *p, __m256 w[4]) {
    const __m256i z = _mm256_setzero_si256();
    const __m256i v = _mm256_loadu_si256((const __m256i *)p), u = _mm256_loadu_si256((const __m256i *)(p + 32));
    w[0] = _mm256_castsi256_ps(_mm256_unpacklo_epi16(z, v));
    w[1] = _mm256_castsi256_ps(_mm256_unpackhi_epi16(z, v));
    w[2] = _mm256_castsi256_ps(_mm256_unpacklo_epi16(z, u));
    w[3] = _mm256_castsi256_ps(_mm256_unpackhi_epi16(z, u));
}
static const uint8_t BF16_ORDER[32] = {0,  1,  2,  3,  8,  9,  10, 11, 4,  5,  6,  7,  12, 13, 14, 15,
                                       16, 17, 18, 19, 24, 25, 26, 27, 20, 21, 22, 23, 28, 29, 30, 31};

/* F32: 128 bytes, nothing to widen (any alignment) */
static inline void widen_f32(const uint8_t *p, __m256 w[4]) {
    for (int k = 0; k < 4; k++) w[k] = _mm256_loadu_ps((const float *)p + 8 * k);
}

/* FP8 e4m3: 32 bytes -> value × 2^-8, natural order */
static inline void widen_e4m3(const uint8_t *p, __m256 w[4]) {
    const __m256i z = _mm256_setzero_si256(), keep = _mm256_set1_epi16((short)0xBFFF);
    const __m256i v = _mm256_loadu_si256((const __m256i *)p);
    /* byte b in the high half, arithmetic shift by one (the sign is copied into bit 14, which
     * the mask clears): sign | 0 | eeee | mmm | 0000000 — an F16 of value × 2^-8 */
    const __m256i lo = _mm256_and_si256(_mm256_srai_epi16(_mm256_unpacklo_epi8(z, v), 1), keep);
    const __m256i hi = _mm256_and_si256(_mm256_srai_epi16(_mm256_unpackhi_epi8(z, v), 1), keep);
    w[0] = _mm256_cvtph_ps(_mm256_castsi256_si128(lo));     /* bytes 0..7 */
    w[1] = _mm256_cvtph_ps(_mm256_castsi256_si128(hi));     /* 8..15 */
    w[2] = _mm256_cvtph_ps(_mm256_extracti128_si256(lo, 1)); /* 16..23 */
    w[3] = _mm256_cvtph_ps(_mm256_extracti128_si256(hi, 1)); /* 24..31 */
}
#define E4M3_SCALE 256.0f

/* e2m1 codes 0..15 as 2 × value, exact in int8 (a pshufb table) */
#define E2M1_TIMES2 0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12

/* 16 int8 weights of the even elements and 16 of the odd ones -> 4 vectors of floats */
static inline void widen_halves(__m128i ev, __m128i od, __m256 w[4]) {
    w[0] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(ev));
    w[1] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_unpackhi_epi64(ev, ev)));
    w[2] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(od));
    w[3] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_unpackhi_epi64(od, od)));
}

/* FP4 e2m1: 16 bytes (low nibble first) -> 2 × value; even elements, then odd ones */
static inline void widen_e2m1(const uint8_t *p, __m256 w[4]) {
    const __m128i table = _mm_setr_epi8(E2M1_TIMES2);
    const __m128i nib = _mm_set1_epi8(0x0f);
    const __m128i v = _mm_loadu_si128((const __m128i *)p);
    widen_halves(_mm_shuffle_epi8(table, _mm_and_si128(v, nib)), _mm_shuffle_epi8(table, _mm_and_si128(_mm_srli_epi16(v, 4), nib)), w);
}
static const uint8_t E2M1_ORDER[32] = {0, 2, 4,  6,  8,  10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30,
                                       1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31};
#define E2M1_SCALE 0.5f

/* Q4: 16 bytes (low nibble first) -> nibble - 8; even elements, then odd ones (E2M1_ORDER) */
static inline void widen_q4(const uint8_t *p, __m256 w[4]) {
    const __m128i nib = _mm_set1_epi8(0x0f), eight = _mm_set1_epi8(8);
    const __m128i v = _mm_loadu_si128((const __m128i *)p);
    widen_halves(_mm_sub_epi8(_mm_and_si128(v, nib), eight), _mm_sub_epi8(_mm_and_si128(_mm_srli_epi16(v, 4), nib), eight), w);
}

/* Q8: 32 int8 bytes, natural order */
static inline void widen_q8(const uint8_t *p, __m256 w[4]) {
    for (int k = 0; k < 4; k++) w[k] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(p + 8 * k))));
}

/* F16 block scale i of a Q4/Q8 matrix */
static inline float q_scale(const Mat *W, int64_t i) {
    uint16_t h;
    memcpy(&h, (const uint8_t *)W->scale + 2 * i, 2);
    return _cvtsh_ss(h);
}

/* AVX2, FMA and F16C, asked of the CPU once; DSV4_SIMD=0 in the environment says no (the
 * portable path everywhere, for comparison) */
static int cpu_avx2 = -1;
__attribute__((constructor)) static void cpu_probe(void) {
    __builtin_cpu_init();
    const char *e = getenv("DSV4_SIMD");
    cpu_avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c") &&
               !(e && !strcmp(e, "0"));
}
int cpu_has_avx2(void) { return cpu_avx2 > 0; }

float dot_f32_avx2(const float *a, const float *b, int64_t n) {
    int64_t i = 0;
    __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps(), s2 = _mm256_setzero_ps(), s3 = _mm256_setzero_ps();
    for (; i + 32 <= n; i += 32) {
        s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
        s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), s1);
        s2 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 16), _mm256_loadu_ps(b + i + 16), s2);
        s3 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 24), _mm256_loadu_ps(b + i + 24), s3);
    }
    for (; i + 8 <= n; i += 8) s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
    float acc = hsum8(_mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3)));
    for (; i < n; i++) acc += a[i] * b[i];
    return acc;
}

void axpy_f32_avx2(float *y, float a, const float *x, int64_t n) {
    int64_t i = 0;
    const __m256 va = _mm256_set1_ps(a);
    for (; i + 16 <= n; i += 16) {
        _mm256_storeu_ps(y + i, _mm256_fmadd_ps(va, _mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
        _mm256_storeu_ps(y + i + 8, _mm256_fmadd_ps(va, _mm256_loadu_ps(x + i + 8), _mm256_loadu_ps(y + i + 8)));
    }
    for (; i < n; i++) y[i] += a * x[i];
}

/* e^x for 8 floats (Cephes expf: x = n ln2 + r, |r| <= ln2/2, degree-6 polynomial, 2^n into the
 * exponent): within 2 ulp on [-87, 88]; below -87 (and -inf) it returns 0. */
static inline __m256 exp8(__m256 x) {
    const __m256 hi = _mm256_set1_ps(88.3762626647949f), lo = _mm256_set1_ps(-87.0f);
    const __m256 under = _mm256_cmp_ps(x, lo, _CMP_LT_OQ);
    x = _mm256_max_ps(_mm256_min_ps(x, hi), lo);
    const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 p = _mm256_set1_ps(1.9875691500e-4f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
    p = _mm256_fmadd_ps(_mm256_mul_ps(p, r), r, _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
    const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_andnot_ps(under, _mm256_mul_ps(p, _mm256_castsi256_ps(e)));
}

/* SwiGLU's gate over n values: g <- silu(min(g, L)) · clamp(u, −L, L) · weight (L = 0: no
 * clamp), silu(x) = x / (1 + e^-x) with e^-x by exp8 — the products in the order of the scalar
 * form, so only the exponential's last bits differ. A short tail goes through the same vector
 * steps, so every value of a row gets the same arithmetic wherever it sits. */
void swiglu_avx2(float *g, const float *u, int64_t n, float limit, float weight) {
    const __m256 L = _mm256_set1_ps(limit), negL = _mm256_set1_ps(-limit), one = _mm256_set1_ps(1.0f), w = _mm256_set1_ps(weight);
    const __m256 sign = _mm256_set1_ps(-0.0f);
    for (int64_t i = 0; i < n; i += 8) {
        const int m = n - i < 8 ? (int)(n - i) : 8;
        float tg[8] = {0}, tu[8] = {0};
        if (m < 8) {
            memcpy(tg, g + i, sizeof(float) * (size_t)m);
            memcpy(tu, u + i, sizeof(float) * (size_t)m);
        }
        __m256 gv = _mm256_loadu_ps(m < 8 ? tg : g + i), uv = _mm256_loadu_ps(m < 8 ? tu : u + i);
        if (limit > 0) {   /* min/max return the bound for a NaN input, as fminf/fmaxf do */
            gv = _mm256_min_ps(gv, L);
            uv = _mm256_min_ps(_mm256_max_ps(uv, negL), L);
        }
        const __m256 silu = _mm256_div_ps(gv, _mm256_add_ps(one, exp8(_mm256_xor_ps(gv, sign))));
        _mm256_storeu_ps(m < 8 ? tg : g + i, _mm256_mul_ps(_mm256_mul_ps(silu, uv), w));
        if (m < 8) memcpy(g + i, tg, sizeof(float) * (size_t)m);
    }
}

/* row <- softmax over row[0..n) and a sink logit that takes probability but has no value
 * (spec: attention sinks); -inf entries get 0. */
void softmax_sink_avx2(float *row, int64_t n, float sink) {
    __m256 mv = _mm256_set1_ps(-INFINITY);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) mv = _mm256_max_ps(mv, _mm256_loadu_ps(row + i));
    float mx = -INFINITY, t[8];
    _mm256_storeu_ps(t, mv);
    for (int j = 0; j < 8; j++) mx = fmaxf(mx, t[j]);
    for (; i < n; i++) mx = fmaxf(mx, row[i]);
    if (mx == -INFINITY) mx = sink;   /* nothing visible: all weight on the sink */
    const __m256 m8 = _mm256_set1_ps(mx);
    __m256 acc = _mm256_setzero_ps();
    for (i = 0; i + 8 <= n; i += 8) {
        const __m256 e = exp8(_mm256_sub_ps(_mm256_loadu_ps(row + i), m8));
        _mm256_storeu_ps(row + i, e);
        acc = _mm256_add_ps(acc, e);
    }
    double sum = exp((double)sink - mx) + hsum8(acc);
    for (; i < n; i++) { row[i] = row[i] == -INFINITY ? 0.0f : expf(row[i] - mx); sum += row[i]; }
    const __m256 inv = _mm256_set1_ps((float)(1.0 / sum));
    for (i = 0; i + 8 <= n; i += 8) _mm256_storeu_ps(row + i, _mm256_mul_ps(_mm256_loadu_ps(row + i), inv));
    for (; i < n; i++) row[i] *= (float)(1.0 / sum);
}

/* ---- long-context decode: attention and indexer scoring ------------------------------------ */

/* Partial attention of one query (heads 0..H) over keys[0..n) (each key also the value),
 * online softmax in blocks of ATT_BLK keys so every key is read from memory once:
 *   m[h] = max score, l[h] = Σ e^{score - m}, acc[h] = Σ e^{score - m} key.
 * D % 8 == 0. Scores are q_h · key × scale.
 * Every key serves all heads (the KV is shared, spec "Attention"), so up to four heads go
 * through a block together and each 8 floats of a key are loaded once for all of them. A
 * block's scores are kept key by key, four head slots each ([j][4]): one vector holds two keys
 * × four heads, which is what the dot products reduce into (eight accumulators, one reduction
 * tree, one store) and what the softmax works on (maxima, exponentials and sums eight at a
 * time, no per-head scalar loops). Values: 16 output columns of each head in registers over the
 * block's keys, which are in L1 by then. A (key, head) pair gets the same sums in the same
 * order however the heads are grouped, so a head's result does not depend on which others
 * share its call. Where the CPU has AVX-512 the two arithmetic steps run 16 lanes wide
 * (matvec_avx512.c); the softmax between them is this one. */
#define ATT_BLK 32
#define ALWAYS_INLINE static inline __attribute__((always_inline))

/* scores of NH heads (q rows D apart) over a block's nb keys into s[j·4 + h]; an odd nb also
 * fills key nb's slots (with key nb − 1's scores: the caller masks them) */
ALWAYS_INLINE void attend_scores_nh(const int NH, const float *q, int D, const float *const *k, int nb, float scale, float *s) {
    const __m256 sv = _mm256_set1_ps(scale);
    for (int j = 0; j < nb; j += 2) {
        const float *k0 = k[j], *k1 = j + 1 < nb ? k[j + 1] : k[j];
        __m256 a[8];
        for (int e = 0; e < 8; e++) a[e] = _mm256_setzero_ps();
        for (int d = 0; d < D; d += 8) {
            const __m256 x0 = _mm256_loadu_ps(k0 + d), x1 = _mm256_loadu_ps(k1 + d);
            for (int h = 0; h < NH; h++) {
                const __m256 qv = _mm256_loadu_ps(q + (int64_t)h * D + d);
                a[h] = _mm256_fmadd_ps(qv, x0, a[h]);
                a[4 + h] = _mm256_fmadd_ps(qv, x1, a[4 + h]);
            }
        }
        _mm256_storeu_ps(s + 4 * j, _mm256_mul_ps(hsum8x8(a), sv));   /* lane h: key j, lane 4 + h: key j + 1 */
    }
}

/* acc[h] += Σ_j p[j·4 + h] key_j for NH heads (acc rows D apart), prefetching keys pf[0..npf) */
ALWAYS_INLINE void attend_values_nh(const int NH, const float *p, int D, const float *const *k, int nb, float *acc,
                                    const float *const *pf, int npf) {
    int d = 0;
    for (int j = 0; j < npf && D < 16; j++)   /* no 16-column pass below to spread them over */
        _mm_prefetch((const char *)pf[j], _MM_HINT_T0);
    for (; d + 16 <= D; d += 16) {
        __m256 o[8];
        for (int h = 0; h < NH; h++) {
            o[2 * h] = _mm256_loadu_ps(acc + (int64_t)h * D + d);
            o[2 * h + 1] = _mm256_loadu_ps(acc + (int64_t)h * D + d + 8);
        }
        for (int j = 0; j < nb; j++) {
            if (d == 0 && j < npf)   /* the next block's key j, while this one's values are summed */
                for (int c = 0; c < D; c += 16) _mm_prefetch((const char *)(pf[j] + c), _MM_HINT_T0);
            const __m256 x0 = _mm256_loadu_ps(k[j] + d), x1 = _mm256_loadu_ps(k[j] + d + 8);
            for (int h = 0; h < NH; h++) {
                const __m256 pv = _mm256_broadcast_ss(p + 4 * j + h);
                o[2 * h] = _mm256_fmadd_ps(pv, x0, o[2 * h]);
                o[2 * h + 1] = _mm256_fmadd_ps(pv, x1, o[2 * h + 1]);
            }
        }
        for (int h = 0; h < NH; h++) {
            _mm256_storeu_ps(acc + (int64_t)h * D + d, o[2 * h]);
            _mm256_storeu_ps(acc + (int64_t)h * D + d + 8, o[2 * h + 1]);
        }
    }
    if (d < D) {   /* D % 16 == 8: the last 8 columns */
        __m256 o[4];
        for (int h = 0; h < NH; h++) o[h] = _mm256_loadu_ps(acc + (int64_t)h * D + d);
        for (int j = 0; j < nb; j++) {
            const __m256 x0 = _mm256_loadu_ps(k[j] + d);
            for (int h = 0; h < NH; h++) o[h] = _mm256_fmadd_ps(_mm256_broadcast_ss(p + 4 * j + h), x0, o[h]);
        }
        for (int h = 0; h < NH; h++) _mm256_storeu_ps(acc + (int64_t)h * D + d, o[h]);
    }
}

static void attend_block_scores(int wide, const float *q, int nh, int D, const float *const *k, int nb, float scale, float *s) {
    if (wide) { attend_block_scores_avx512(q, nh, D, k, nb, scale, s); return; }
    switch (nh) {
    case 4: attend_scores_nh(4, q, D, k, nb, scale, s); break;
    case 3: attend_scores_nh(3, q, D, k, nb, scale, s); break;
    case 2: attend_scores_nh(2, q, D, k, nb, scale, s); break;
    default: attend_scores_nh(1, q, D, k, nb, scale, s); break;
    }
}

static void attend_block_values(int wide, const float *p, int nh, int D, const float *const *k, int nb, float *acc,
                                const float *const *pf, int npf) {
    if (wide) { attend_block_values_avx512(p, nh, D, k, nb, acc, pf, npf); return; }
    switch (nh) {
    case 4: attend_values_nh(4, p, D, k, nb, acc, pf, npf); break;
    case 3: attend_values_nh(3, p, D, k, nb, acc, pf, npf); break;
    case 2: attend_values_nh(2, p, D, k, nb, acc, pf, npf); break;
    default: attend_values_nh(1, p, D, k, nb, acc, pf, npf); break;
    }
}

void attend_partial_avx2(const float *q, int H, int D, const float *const *keys, int64_t n, float scale, float *m, float *l,
                         float *acc) {
    const int wide = attend_avx512_usable(D);
    float s[4 * ATT_BLK];
    for (int h = 0; h < H; h++) { m[h] = -INFINITY; l[h] = 0; }
    memset(acc, 0, sizeof(float) * (size_t)H * (size_t)D);
    for (int64_t b0 = 0; b0 < n; b0 += ATT_BLK) {
        const int nb = n - b0 < ATT_BLK ? (int)(n - b0) : ATT_BLK, npair = (nb + 1) / 2;
        const float *const *k = keys + b0;
        for (int h0 = 0; h0 < H; h0 += 4) {
            const int nh = H - h0 < 4 ? H - h0 : 4;
            attend_block_scores(wide, q + (int64_t)h0 * D, nh, D, k, nb, scale, s);
            if (nb % 2) _mm_storeu_ps(s + 4 * nb, _mm_set1_ps(-INFINITY));   /* the slot past an odd block: weight 0 */
            /* online softmax, lane h of each half = head h0 + h */
            __m256 mx = _mm256_set1_ps(-INFINITY);
            for (int i = 0; i < npair; i++) mx = _mm256_max_ps(mx, _mm256_loadu_ps(s + 8 * i));
            float bm[4];
            _mm_storeu_ps(bm, _mm_max_ps(_mm256_castps256_ps128(mx), _mm256_extractf128_ps(mx, 1)));
            for (int hh = 0; hh < nh; hh++) {
                const int h = h0 + hh;
                if (bm[hh] > m[h]) {   /* a new maximum: what was summed so far shrinks by e^{old - new} */
                    const float f = m[h] == -INFINITY ? 0.0f : expf(m[h] - bm[hh]);
                    l[h] *= f;
                    const __m256 fv = _mm256_set1_ps(f);
                    float *ah = acc + (int64_t)h * D;
                    for (int d = 0; d < D; d += 8) _mm256_storeu_ps(ah + d, _mm256_mul_ps(_mm256_loadu_ps(ah + d), fv));
                    m[h] = bm[hh];
                }
                bm[hh] = m[h];
            }
            for (int hh = nh; hh < 4; hh++) bm[hh] = 0;   /* unused slots: any finite value */
            const __m128 m4 = _mm_loadu_ps(bm);
            const __m256 mv = _mm256_insertf128_ps(_mm256_castps128_ps256(m4), m4, 1);
            __m256 lsum = _mm256_setzero_ps();
            for (int i = 0; i < npair; i++) {
                const __m256 e = exp8(_mm256_sub_ps(_mm256_loadu_ps(s + 8 * i), mv));
                _mm256_storeu_ps(s + 8 * i, e);
                lsum = _mm256_add_ps(lsum, e);
            }
            float ls[4];
            _mm_storeu_ps(ls, _mm_add_ps(_mm256_castps256_ps128(lsum), _mm256_extractf128_ps(lsum, 1)));
            for (int hh = 0; hh < nh; hh++) l[h0 + hh] += ls[hh];
            /* the next block's keys are fetched while the first head group sums this one's
             * values: the memory works while the core computes (it otherwise waits at each
             * block's first scores, about a fifth of the time at long context) */
            const int npf = h0 || b0 + ATT_BLK >= n ? 0 : n - b0 - ATT_BLK < ATT_BLK ? (int)(n - b0 - ATT_BLK) : ATT_BLK;
            attend_block_values(wide, s, nh, D, k, nb, acc + (int64_t)h0 * D, k + ATT_BLK, npf);
        }
    }
}

/* Indexer scores of one query against n contiguous keys [n, I] (I % 8 == 0):
 *   out[w] = Σ_h wt[h] · ReLU(q_h · key_w),
 * eight keys at a time, their eight dot products per head reduced into one vector. The same
 * arithmetic for every entry wherever a range starts (the caller splits ranges at multiples
 * of 8), so a score does not depend on the thread count. */
void indexer_scores_avx2(const float *q, const float *wt, int HI, int I, const float *keys, int64_t n, float *out) {
    int64_t w = 0;
    for (; w + 8 <= n; w += 8) {
        const float *k = keys + w * I;
        /* every line of the group PREFETCH_BYTES ahead: the keys are a long stream read once a
         * step (67 MB at 1M), and with one prefetch per group, as before, it ran at about 80%
         * of the bus (1M decode: 4.95 -> 3.4 ms a step) */
        for (int64_t l = 0; l < 8 * I * (int64_t)sizeof(float); l += 64) _mm_prefetch((const char *)k + PREFETCH_BYTES + l, PF_HINT);
        __m256 s = _mm256_setzero_ps();
        for (int h = 0; h < HI; h++) {
            const float *qh = q + (int64_t)h * I;
            __m256 a[8];
            for (int e = 0; e < 8; e++) a[e] = _mm256_setzero_ps();
            for (int c = 0; c < I; c += 8) {
                const __m256 qv = _mm256_loadu_ps(qh + c);
                for (int e = 0; e < 8; e++) a[e] = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k + (int64_t)e * I + c), a[e]);
            }
            s = _mm256_fmadd_ps(_mm256_set1_ps(wt[h]), _mm256_max_ps(hsum8x8(a), _mm256_setzero_ps()), s);
        }
        _mm256_storeu_ps(out + w, s);
    }
    for (; w < n; w++) {   /* the tail: the same sums, one key at a time */
        const float *k = keys + w * I;
        float s = 0;
        for (int h = 0; h < HI; h++) {
            __m256 a[8];
            for (int e = 0; e < 8; e++) a[e] = _mm256_setzero_ps();
            for (int c = 0; c < I; c += 8) a[0] = _mm256_fmadd_ps(_mm256_loadu_ps(q + (int64_t)h * I + c), _mm256_loadu_ps(k + c), a[0]);
            float r[8];
            _mm256_storeu_ps(r, hsum8x8(a));
            s = fmaf(wt[h], fmaxf(r[0], 0.0f), s);
        }
        out[w] = s;
    }
}

int matvec_avx2_usable(const Mat *W) {
    if (!cpu_has_avx2() || W->cols % 32) return 0;
    return W->kind == W_F32 || W->kind == W_BF16 || W->kind == W_FP8 || W->kind == W_FP4 || W->kind == W_Q8 ||
           W->kind == W_Q4;
}

/* xp[t][c] = x[t][c0 + order[c - c0]] for each 32-column chunk */
void matvec_avx2_prepare(const Mat *W, const float *x, int64_t ldx, int64_t T, float *xp) {
    if (matvec_avx512_usable(W)) { matvec_avx512_prepare(W, x, ldx, T, xp); return; }
    const uint8_t *order = W->kind == W_BF16 ? BF16_ORDER : W->kind == W_FP4 || W->kind == W_Q4 ? E2M1_ORDER : NULL;
    const int64_t cols = W->cols;
    for (int64_t t = 0; t < T; t++) {
        const float *xt = x + t * ldx;
        float *pt = xp + t * cols;
        if (!order) { memcpy(pt, xt, sizeof(float) * (size_t)cols); continue; }
        if (W->kind == W_BF16) {   /* BF16_ORDER: the middle two groups of four of every 16 swap */
            for (int64_t c0 = 0; c0 < cols; c0 += 16) {
                _mm_storeu_ps(pt + c0, _mm_loadu_ps(xt + c0));
                _mm_storeu_ps(pt + c0 + 4, _mm_loadu_ps(xt + c0 + 8));
                _mm_storeu_ps(pt + c0 + 8, _mm_loadu_ps(xt + c0 + 4));
                _mm_storeu_ps(pt + c0 + 12, _mm_loadu_ps(xt + c0 + 12));
            }
            continue;
        }
        for (int64_t c0 = 0; c0 < cols; c0 += 32)
            for (int j = 0; j < 32; j++) pt[c0 + j] = xt[c0 + order[j]];
    }
}

/* Each row kernel handles T = 1..4 tokens, widening every 32 weights once for all of them.
 * Per token the arithmetic (accumulators, order of the sums) is exactly that of T = 1, so a
 * batch of tokens gets bit-identical results to one token at a time: speculative decoding
 * verifies drafts in one pass and still reproduces plain greedy decoding. T is a constant at
 * each call site (see matvec_avx2_rows), so the loops over tokens unroll. */

/* F32 and BF16: four accumulators per token keep the FMA latency off the critical path */
ALWAYS_INLINE void row_wide(const Mat *W, int64_t r, const float *xp, int T, float *out) {
    const int64_t cols = W->cols, esize = W->kind == W_F32 ? 4 : 2;
    const uint8_t *p = (const uint8_t *)W->w + esize * r * cols;
    __m256 a[4][4], w[4];
    for (int t = 0; t < T; t++)
        for (int k = 0; k < 4; k++) a[t][k] = _mm256_setzero_ps();
    for (int64_t c = 0; c < cols; c += 32) {
        _mm_prefetch((const char *)(p + esize * c + PREFETCH_BYTES), PF_HINT);
        if (esize == 4) widen_f32(p + 4 * c, w);
        else widen_bf16(p + 2 * c, w);
        for (int t = 0; t < T; t++)
            for (int k = 0; k < 4; k++) a[t][k] = _mm256_fmadd_ps(w[k], _mm256_loadu_ps(xp + t * cols + c + 8 * k), a[t][k]);
    }
    for (int t = 0; t < T; t++) out[t] = hsum8(_mm256_add_ps(_mm256_add_ps(a[t][0], a[t][1]), _mm256_add_ps(a[t][2], a[t][3])));
}

/* one scale per 128 x 128 block: four accumulators per block, scaled into the row sum */
ALWAYS_INLINE void row_e4m3(const Mat *W, int64_t r, const float *xp, int T, float *out) {
    const int64_t cols = W->cols, srow = (r / 128) * W->scale_cols;
    const uint8_t *p = (const uint8_t *)W->w + r * cols;
    __m256 acc[4], b[4][4], w[4];
    for (int t = 0; t < T; t++) acc[t] = _mm256_setzero_ps();
    for (int64_t c0 = 0; c0 < cols; c0 += 128) {
        const int64_t c1 = c0 + 128 < cols ? c0 + 128 : cols;
        for (int t = 0; t < T; t++)
            for (int k = 0; k < 4; k++) b[t][k] = _mm256_setzero_ps();
        for (int64_t c = c0; c < c1; c += 32) {
            _mm_prefetch((const char *)(p + c + PREFETCH_BYTES), PF_HINT);
            _mm_prefetch((const char *)(p + c + L1_AHEAD), _MM_HINT_T0);
            widen_e4m3(p + c, w);
            for (int t = 0; t < T; t++)
                for (int k = 0; k < 4; k++) b[t][k] = _mm256_fmadd_ps(w[k], _mm256_loadu_ps(xp + t * cols + c + 8 * k), b[t][k]);
        }
        const __m256 s = _mm256_set1_ps(mat_scale(W, srow + c0 / 128) * E4M3_SCALE);
        for (int t = 0; t < T; t++)
            acc[t] = _mm256_fmadd_ps(_mm256_add_ps(_mm256_add_ps(b[t][0], b[t][1]), _mm256_add_ps(b[t][2], b[t][3])), s, acc[t]);
    }
    for (int t = 0; t < T; t++) out[t] = hsum8(acc[t]);
}

/* one scale per 32 weights (FP4, Q4, Q8; `kind` is a constant at each call): the two halves of
 * each block (FP4/Q4: even and odd elements) scaled into two sums */
ALWAYS_INLINE void row_blk32(const Mat *W, int64_t r, const float *xp, int T, float *out, WKind kind) {
    const int64_t cols = W->cols, srow = r * W->scale_cols, block_bytes = kind == W_Q8 ? 32 : 16;
    const int64_t scale_bytes = kind == W_FP4 ? (W->scale_f32 ? 4 : 1) : 2;
    const uint8_t *p = (const uint8_t *)W->w + r * (cols / 32) * block_bytes;
    const uint8_t *sp = (const uint8_t *)W->scale + srow * scale_bytes;
    __m256 a0[4], a1[4], w[4];
    for (int t = 0; t < T; t++) a0[t] = a1[t] = _mm256_setzero_ps();
    for (int64_t c = 0, i = 0; c < cols; c += 32, i++) {
        const uint8_t *pb = p + i * block_bytes;
        _mm_prefetch((const char *)(pb + PREFETCH_BYTES), PF_HINT);
        _mm_prefetch((const char *)(pb + L1_AHEAD), _MM_HINT_T0);
        /* the scales are a second, thinner stream: one prefetch per cache line of them */
        if (!(i * scale_bytes & 63)) _mm_prefetch((const char *)(sp + i * scale_bytes + PREFETCH_BYTES / block_bytes * scale_bytes), PF_HINT);
        float sc;
        if (kind == W_FP4) { widen_e2m1(pb, w); sc = mat_scale(W, srow + i) * E2M1_SCALE; }
        else if (kind == W_Q4) { widen_q4(pb, w); sc = q_scale(W, srow + i); }
        else { widen_q8(pb, w); sc = q_scale(W, srow + i); }
        const __m256 s = _mm256_set1_ps(sc);
        for (int t = 0; t < T; t++) {
            const float *xt = xp + t * cols + c;
            const __m256 h0 = _mm256_fmadd_ps(w[1], _mm256_loadu_ps(xt + 8), _mm256_mul_ps(w[0], _mm256_loadu_ps(xt)));
            const __m256 h1 = _mm256_fmadd_ps(w[3], _mm256_loadu_ps(xt + 24), _mm256_mul_ps(w[2], _mm256_loadu_ps(xt + 16)));
            a0[t] = _mm256_fmadd_ps(h0, s, a0[t]);
            a1[t] = _mm256_fmadd_ps(h1, s, a1[t]);
        }
    }
    for (int t = 0; t < T; t++) out[t] = hsum8(_mm256_add_ps(a0[t], a1[t]));
}

ALWAYS_INLINE void rows_T(const Mat *W, int64_t r0, int64_t nr, const float *xp, int T, float *y, int64_t ldy) {
    float out[4];
    for (int64_t i = 0; i < nr; i++) {
        if (W->kind == W_F32 || W->kind == W_BF16) row_wide(W, r0 + i, xp, T, out);
        else if (W->kind == W_FP8) row_e4m3(W, r0 + i, xp, T, out);
        else if (W->kind == W_FP4) row_blk32(W, r0 + i, xp, T, out, W_FP4);
        else if (W->kind == W_Q4) row_blk32(W, r0 + i, xp, T, out, W_Q4);
        else row_blk32(W, r0 + i, xp, T, out, W_Q8);
        for (int t = 0; t < T; t++) y[t * ldy + i] = out[t];
    }
}

/* ---- fast mode: FP4, Q4 and Q8 weights against int8 activations ---------------------------
 * Declared approximate (open option int8_activations): each token's activations are rounded
 * to int8 with one scale per 32 (max |x| / 127), and the dot products run in integers:
 * maddubs multiplies unsigned by signed bytes, so |w| meets x carrying w's sign, and madd
 * sums the 16-bit pairs into 32 bits; each 32-block's sum is scaled once by (weight scale) ×
 * (activation scale). FP4 weights come from a pshufb table as 2 × value (the 1/2 joins the
 * weight scale), Q4 as nibble - 8, Q8 as they are. An E8M0 weight scale of 0 (2^-127) counts
 * as 0 here. Per token the arithmetic does not depend on how many tokens share the call. */

int matvec_avx2_i8_usable(const Mat *W) {
    return cpu_has_avx2() && W->cols % 64 == 0 && (W->kind == W_FP4 || W->kind == W_Q4 || W->kind == W_Q8);
}

/* xq [T, cols] int8, xs [T, cols/64, 8] floats, in the layout of W's kernel: per 64 columns
 *   FP4/Q4  the even elements of both 32-blocks, then the odd ones (a nibble split gives them);
 *           xs = block scale s0 in lanes 0-3, s1 in 4-7 (where the madd sums of each land)
 *   Q8      natural order; xs = s0 s0 s1 s1 s0 s0 s1 s1 (the lane order of hadd) */
void matvec_avx2_i8_prepare(const Mat *W, const float *x, int64_t ldx, int64_t T, int8_t *xq, float *xs) {
    const int64_t cols = W->cols;
    const int natural = W->kind == W_Q8;
    for (int64_t t = 0; t < T; t++)
        for (int64_t c0 = 0; c0 < cols; c0 += 64) {
            const float *xb = x + t * ldx + c0;
            int8_t *q = xq + t * cols + c0;
            float *sc = xs + (t * cols + c0) / 8;
            for (int blk = 0; blk < 2; blk++) {
                float amax = 0;
                for (int j = 0; j < 32; j++) amax = fmaxf(amax, fabsf(xb[32 * blk + j]));
                const float s = amax / 127.0f, inv = amax > 0 ? 127.0f / amax : 0.0f;
                if (natural) {
                    for (int j = 0; j < 32; j++) q[32 * blk + j] = (int8_t)lrintf(xb[32 * blk + j] * inv);
                    sc[2 * blk] = sc[2 * blk + 1] = sc[4 + 2 * blk] = sc[5 + 2 * blk] = s;
                } else {
                    for (int j = 0; j < 16; j++) {
                        q[16 * blk + j] = (int8_t)lrintf(xb[32 * blk + 2 * j] * inv);          /* evens */
                        q[32 + 16 * blk + j] = (int8_t)lrintf(xb[32 * blk + 2 * j + 1] * inv); /* odds */
                    }
                    for (int k = 0; k < 4; k++) sc[4 * blk + k] = s;
                }
            }
        }
}

ALWAYS_INLINE void row_i8(const Mat *W, int64_t r, const int8_t *xq, const float *xs, int T, float *out, WKind kind) {
    const int64_t cols = W->cols, srow = r * W->scale_cols, step_bytes = kind == W_Q8 ? 64 : 32;
    const uint8_t *p = (const uint8_t *)W->w + r * (cols / 64) * step_bytes;
    const __m256i table = _mm256_setr_epi8(E2M1_TIMES2, E2M1_TIMES2);
    const __m256i nib = _mm256_set1_epi8(0x0f), eight = _mm256_set1_epi8(8), ones = _mm256_set1_epi16(1);
    const __m256i q8_lanes = _mm256_setr_epi32(0, 0, 1, 1, 0, 0, 1, 1), q4_lanes = _mm256_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1);
    const int64_t scale_bytes = kind == W_FP4 ? (W->scale_f32 ? 4 : 1) : 2;
    const uint8_t *sp = (const uint8_t *)W->scale + srow * scale_bytes;
    __m256 acc[4];
    for (int t = 0; t < T; t++) acc[t] = _mm256_setzero_ps();
    for (int64_t c = 0, i = 0; c < cols; c += 64, i++) {
        const uint8_t *pb = p + i * step_bytes;
        _mm_prefetch((const char *)(pb + PREFETCH_BYTES), PF_HINT);
        _mm_prefetch((const char *)(pb + L1_AHEAD), _MM_HINT_T0);
        if (!(2 * i * scale_bytes & 63)) _mm_prefetch((const char *)(sp + 2 * i * scale_bytes + PREFETCH_BYTES / step_bytes * 2 * scale_bytes), PF_HINT);
        /* the two blocks' weight scales, each spread over the lanes that hold its sums */
        __m256 ws;
        if (kind != W_FP4) {
            uint32_t two;
            memcpy(&two, sp + 2 * i * 2, 4);
            ws = _mm256_permutevar8x32_ps(_mm256_castps128_ps256(_mm_cvtph_ps(_mm_cvtsi32_si128((int)two))),
                                          kind == W_Q8 ? q8_lanes : q4_lanes);
        } else if (W->scale_f32) {
            ws = _mm256_setr_m128(_mm_set1_ps(mat_scale(W, srow + 2 * i) * E2M1_SCALE), _mm_set1_ps(mat_scale(W, srow + 2 * i + 1) * E2M1_SCALE));
        } else {   /* the two E8M0 bytes, each spread over its 4 lanes, as 2^(b-127) (b = 0 reads as 0) */
            uint16_t two;
            memcpy(&two, sp + 2 * i, 2);
            const __m128i spread = _mm_shuffle_epi8(_mm_cvtsi32_si128(two), _mm_setr_epi8(0, 0, 0, 0, 1, 1, 1, 1, -1, -1, -1, -1, -1, -1, -1, -1));
            ws = _mm256_mul_ps(_mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu8_epi32(spread), 23)), _mm256_set1_ps(E2M1_SCALE));
        }
        if (kind == W_Q8) {
            const __m256i w0 = _mm256_loadu_si256((const __m256i *)pb), w1 = _mm256_loadu_si256((const __m256i *)(pb + 32));
            const __m256i a0 = _mm256_abs_epi8(w0), a1 = _mm256_abs_epi8(w1);
            for (int t = 0; t < T; t++) {
                const int8_t *q = xq + t * cols + c;
                /* pairs: |w| · x <= 2 × 128 × 127, within 16 bits */
                const __m256i p0 = _mm256_madd_epi16(_mm256_maddubs_epi16(a0, _mm256_sign_epi8(_mm256_loadu_si256((const __m256i *)q), w0)), ones);
                const __m256i p1 = _mm256_madd_epi16(_mm256_maddubs_epi16(a1, _mm256_sign_epi8(_mm256_loadu_si256((const __m256i *)(q + 32)), w1)), ones);
                const __m256 sc = _mm256_mul_ps(ws, _mm256_loadu_ps(xs + (t * cols + c) / 8));
                acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_hadd_epi32(p0, p1)), sc, acc[t]);
            }
        } else {
            const __m256i v = _mm256_loadu_si256((const __m256i *)pb);
            __m256i ev = _mm256_and_si256(v, nib), od = _mm256_and_si256(_mm256_srli_epi16(v, 4), nib);
            if (kind == W_FP4) { ev = _mm256_shuffle_epi8(table, ev); od = _mm256_shuffle_epi8(table, od); }   /* 2 × weight */
            else { ev = _mm256_sub_epi8(ev, eight); od = _mm256_sub_epi8(od, eight); }
            const __m256i aev = _mm256_abs_epi8(ev), aod = _mm256_abs_epi8(od);
            for (int t = 0; t < T; t++) {
                const int8_t *q = xq + t * cols + c;
                const __m256i pe = _mm256_maddubs_epi16(aev, _mm256_sign_epi8(_mm256_loadu_si256((const __m256i *)q), ev));
                const __m256i po = _mm256_maddubs_epi16(aod, _mm256_sign_epi8(_mm256_loadu_si256((const __m256i *)(q + 32)), od));
                /* |pe + po| <= 4 × 12 × 127 fits 16 bits */
                const __m256i s32 = _mm256_madd_epi16(_mm256_add_epi16(pe, po), ones);
                const __m256 sc = _mm256_mul_ps(ws, _mm256_loadu_ps(xs + (t * cols + c) / 8));
                acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s32), sc, acc[t]);
            }
        }
    }
    for (int t = 0; t < T; t++) out[t] = hsum8(acc[t]);
}

ALWAYS_INLINE void rows_i8_T(const Mat *W, int64_t r0, int64_t nr, const int8_t *xq, const float *xs, int T, float *y, int64_t ldy) {
    float out[4];
    for (int64_t i = 0; i < nr; i++) {
        if (W->kind == W_FP4) row_i8(W, r0 + i, xq, xs, T, out, W_FP4);
        else if (W->kind == W_Q4) row_i8(W, r0 + i, xq, xs, T, out, W_Q4);
        else row_i8(W, r0 + i, xq, xs, T, out, W_Q8);
        for (int t = 0; t < T; t++) y[t * ldy + i] = out[t];
    }
}

void matvec_avx2_i8_rows(const Mat *W, int64_t r0, int64_t nr, const int8_t *xq, const float *xs, int64_t T, float *y,
                         int64_t ldy) {
    switch (T) {
    case 1: rows_i8_T(W, r0, nr, xq, xs, 1, y, ldy); break;
    case 2: rows_i8_T(W, r0, nr, xq, xs, 2, y, ldy); break;
    case 3: rows_i8_T(W, r0, nr, xq, xs, 3, y, ldy); break;
    default: rows_i8_T(W, r0, nr, xq, xs, 4, y, ldy); break;
    }
}

/* One row decoded to floats in natural order (the batched path hands blocks of rows to sgemm).
 * Same values as the scalar decoder; returns 0 for a format it does not take. */
int matvec_avx2_dequant_row(const Mat *W, int64_t r, float *dst) {
    const int64_t cols = W->cols;
    if (!matvec_avx2_usable(W) || W->kind == W_F32) return 0;   /* F32: the caller's copy */
    if (W->kind == W_BF16) {
        const uint8_t *p = (const uint8_t *)W->w + 2 * r * cols;
        for (int64_t c = 0; c < cols; c += 8)
            _mm256_storeu_ps(dst + c, _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(p + 2 * c))), 16)));
    } else if (W->kind == W_FP8) {
        const uint8_t *p = (const uint8_t *)W->w + r * cols;
        const int64_t srow = (r / 128) * W->scale_cols;
        __m256 w[4];
        for (int64_t c = 0; c < cols; c += 32) {
            const __m256 s = _mm256_set1_ps(mat_scale(W, srow + c / 128) * E4M3_SCALE);
            widen_e4m3(p + c, w);
            for (int k = 0; k < 4; k++) _mm256_storeu_ps(dst + c + 8 * k, _mm256_mul_ps(w[k], s));
        }
    } else if (W->kind == W_Q8) {
        const uint8_t *p = (const uint8_t *)W->w + r * cols;
        __m256 w[4];
        for (int64_t c = 0; c < cols; c += 32) {
            const __m256 s = _mm256_set1_ps(q_scale(W, r * W->scale_cols + c / 32));
            widen_q8(p + c, w);
            for (int k = 0; k < 4; k++) _mm256_storeu_ps(dst + c + 8 * k, _mm256_mul_ps(w[k], s));
        }
    } else {   /* FP4, Q4: a nibble split gives evens and odds, interleaved back into order */
        const uint8_t *p = (const uint8_t *)W->w + r * (cols / 2);
        const int64_t srow = r * W->scale_cols;
        const __m128i table = _mm_setr_epi8(E2M1_TIMES2), nib = _mm_set1_epi8(0x0f), eight = _mm_set1_epi8(8);
        const int q4 = W->kind == W_Q4;
        for (int64_t c = 0; c < cols; c += 32) {
            const __m256 s = _mm256_set1_ps(q4 ? q_scale(W, srow + c / 32) : mat_scale(W, srow + c / 32) * E2M1_SCALE);
            const __m128i v = _mm_loadu_si128((const __m128i *)(p + c / 2));
            const __m128i n0 = _mm_and_si128(v, nib), n1 = _mm_and_si128(_mm_srli_epi16(v, 4), nib);
            const __m128i ev = q4 ? _mm_sub_epi8(n0, eight) : _mm_shuffle_epi8(table, n0);
            const __m128i od = q4 ? _mm_sub_epi8(n1, eight) : _mm_shuffle_epi8(table, n1);
            const __m128i lo = _mm_unpacklo_epi8(ev, od), hi = _mm_unpackhi_epi8(ev, od);   /* back in order */
            const __m128i q[4] = {lo, _mm_unpackhi_epi64(lo, lo), hi, _mm_unpackhi_epi64(hi, hi)};
            for (int k = 0; k < 4; k++)
                _mm256_storeu_ps(dst + c + 8 * k, _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q[k])), s));
        }
    }
    return 1;
}

void matvec_avx2_rows(const Mat *W, int64_t r0, int64_t nr, const float *xp, int64_t T, float *y, int64_t ldy) {
    if (matvec_avx512_usable(W)) { matvec_avx512_rows(W, r0, nr, xp, T, y, ldy); return; }
    switch (T) {
    case 1: rows_T(W, r0, nr, xp, 1, y, ldy); break;
    case 2: rows_T(W, r0, nr, xp, 2, y, ldy); break;
    case 3: rows_T(W, r0, nr, xp, 3, y, ldy); break;
    default: rows_T(W, r0, nr, xp, 4, y, ldy); break;
    }
}
#pragma GCC pop_options

#else   /* not x86: the portable path in linear.c */
int cpu_has_avx2(void) { return 0; }
float dot_f32_avx2(const float *a, const float *b, int64_t n) { (void)a; (void)b; (void)n; return 0; }
void axpy_f32_avx2(float *y, float a, const float *x, int64_t n) { (void)y; (void)a; (void)x; (void)n; }
int matvec_avx2_usable(const Mat *W) { (void)W; return 0; }
void softmax_sink_avx2(float *row, int64_t n, float sink) { (void)row; (void)n; (void)sink; }
void swiglu_avx2(float *g, const float *u, int64_t n, float limit, float weight) { (void)g; (void)u; (void)n; (void)limit; (void)weight; }
void matvec_avx2_prepare(const Mat *W, const float *x, int64_t ldx, int64_t T, float *xp) {
    (void)W; (void)x; (void)ldx; (void)T; (void)xp;
}
void matvec_avx2_rows(const Mat *W, int64_t r0, int64_t nr, const float *xp, int64_t T, float *y, int64_t ldy) {
    (void)W; (void)r0; (void)nr; (void)xp; (void)T; (void)y; (void)ldy;
}
int matvec_avx2_dequant_row(const Mat *W, int64_t r, float *dst) { (void)W; (void)r; (void)dst; return 0; }
void attend_partial_avx2(const float *q, int H, int D, const float *const *keys, int64_t n, float scale, float *m, float *l,
                         float *acc) {
    (void)q; (void)H; (void)D; (void)keys; (void)n; (void)scale; (void)m; (void)l; (void)acc;
}
void indexer_scores_avx2(const float *q, const float *wt, int HI, int I, const float *keys, int64_t n, float *out) {
    (void)q; (void)wt; (void)HI; (void)I; (void)keys; (void)n; (void)out;
}
int matvec_avx2_i8_usable(const Mat *W) { (void)W; return 0; }
void matvec_avx2_i8_prepare(const Mat *W, const float *x, int64_t ldx, int64_t T, int8_t *xq, float *xs) {
    (void)W; (void)x; (void)ldx; (void)T; (void)xq; (void)xs;
}
void matvec_avx2_i8_rows(const Mat *W, int64_t r0, int64_t nr, const int8_t *xq, const float *xs, int64_t T, float *y,
                             int64_t ldy) {
    (void)W; (void)r0; (void)nr; (void)xq; (void)xs; (void)T; (void)y; (void)ldy;
}
#endif
