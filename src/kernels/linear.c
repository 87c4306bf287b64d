/* Linear layers on weights in their stored precision (F32, BF16, F16, FP8 e4m3 with 128x128
 * E8M0 block scales, FP4 e2m1 with 1x32 scales). This is the hot spot of inference.
 * Small batches (decode) decode one weight row at a time into a thread-local buffer and take
 * dot products; large batches (prefill) decode a block of rows and hand it to OpenBLAS sgemm,
 * so the decode cost is paid once per block and amortised over all tokens. */
#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#ifdef __AVX2__
#include <immintrin.h>
#endif

#include "../dsv4_internal.h"

static inline float scale_at(const Mat *W, int64_t i) {
    if (!W->scale_f32) return e8m0_to_f32(((const uint8_t *)W->scale)[i]);
    float s;
    memcpy(&s, (const uint8_t *)W->scale + 4 * i, 4);
    return s;
}

uint64_t mat_bytes(const Mat *m) {
    uint64_t n = (uint64_t)m->rows * (uint64_t)m->cols, s = 0;
    switch (m->kind) {
    case W_F32: return n * 4;
    case W_BF16: case W_F16: return n * 2;
    case W_FP8: s = (uint64_t)((m->rows + 127) / 128) * (uint64_t)m->scale_cols; return n + s * (m->scale_f32 ? 4 : 1);
    case W_FP4: s = (uint64_t)m->rows * (uint64_t)m->scale_cols; return n / 2 + s * (m->scale_f32 ? 4 : 1);
    }
    return 0;
}

static void dequant_row(const Mat *W, int64_t r, float *dst) {
    const int64_t cols = W->cols;
    switch (W->kind) {
    case W_F32:
        memcpy(dst, (const uint8_t *)W->w + 4 * r * cols, sizeof(float) * (size_t)cols);
        break;
    /* 16-bit data may sit at odd offsets in a safetensors file: loads go through memcpy */
    case W_BF16: {
        const uint8_t *p = (const uint8_t *)W->w + 2 * r * cols;
        for (int64_t c = 0; c < cols; c++) { uint16_t h; memcpy(&h, p + 2 * c, 2); dst[c] = bf16_to_f32(h); }
        break;
    }
    case W_F16: {
        const uint8_t *p = (const uint8_t *)W->w + 2 * r * cols;
        for (int64_t c = 0; c < cols; c++) { uint16_t h; memcpy(&h, p + 2 * c, 2); dst[c] = f16_to_f32(h); }
        break;
    }
    case W_FP8: {
        const uint8_t *p = (const uint8_t *)W->w + r * cols;
        const int64_t srow = (r / 128) * W->scale_cols;
        for (int64_t c0 = 0; c0 < cols; c0 += 128) {
            const float s = scale_at(W, srow + c0 / 128);
            const int64_t c1 = c0 + 128 < cols ? c0 + 128 : cols;
            for (int64_t c = c0; c < c1; c++) dst[c] = dsv4_e4m3_table[p[c]] * s;
        }
        break;
    }
    case W_FP4: {
        const uint8_t *p = (const uint8_t *)W->w + r * (cols / 2);
        const int64_t srow = r * W->scale_cols;
        for (int64_t c0 = 0; c0 < cols; c0 += 32) {
            const float s = scale_at(W, srow + c0 / 32);
            for (int64_t c = c0; c < c0 + 32; c += 2) {
                const uint8_t b = p[c / 2];
                dst[c] = dsv4_e2m1_table[b & 0xf] * s;       /* low nibble first */
                dst[c + 1] = dsv4_e2m1_table[b >> 4] * s;
            }
        }
        break;
    }
    }
}

void mat_dequant_rows(const Mat *W, int64_t r0, int64_t nr, float *dst) {
    for (int64_t i = 0; i < nr; i++) dequant_row(W, r0 + i, dst + i * W->cols);
}

float dot_f32(const float *a, const float *b, int64_t n) {
    int64_t i = 0;
#ifdef __AVX2__
    __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps(), s2 = _mm256_setzero_ps(), s3 = _mm256_setzero_ps();
    for (; i + 32 <= n; i += 32) {
        s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
        s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), s1);
        s2 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 16), _mm256_loadu_ps(b + i + 16), s2);
        s3 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 24), _mm256_loadu_ps(b + i + 24), s3);
    }
    for (; i + 8 <= n; i += 8) s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
    __m256 s = _mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3));
    __m128 h = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
    h = _mm_add_ps(h, _mm_movehl_ps(h, h));
    h = _mm_add_ss(h, _mm_movehdup_ps(h));
    float acc = _mm_cvtss_f32(h);
#else
    float acc0 = 0, acc1 = 0, acc2 = 0, acc3 = 0;
    for (; i + 4 <= n; i += 4) {
        acc0 += a[i] * b[i]; acc1 += a[i + 1] * b[i + 1];
        acc2 += a[i + 2] * b[i + 2]; acc3 += a[i + 3] * b[i + 3];
    }
    float acc = (acc0 + acc1) + (acc2 + acc3);
#endif
    for (; i < n; i++) acc += a[i] * b[i];
    return acc;
}

void axpy_f32(float *y, float a, const float *x, int64_t n) {
    int64_t i = 0;
#ifdef __AVX2__
    const __m256 va = _mm256_set1_ps(a);
    for (; i + 16 <= n; i += 16) {
        _mm256_storeu_ps(y + i, _mm256_fmadd_ps(va, _mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
        _mm256_storeu_ps(y + i + 8, _mm256_fmadd_ps(va, _mm256_loadu_ps(x + i + 8), _mm256_loadu_ps(y + i + 8)));
    }
#endif
    for (; i < n; i++) y[i] += a * x[i];
}

#ifdef __AVX2__
static inline float hsum256(__m256 s) {
    __m128 h = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
    h = _mm_add_ps(h, _mm_movehl_ps(h, h));
    h = _mm_add_ss(h, _mm_movehdup_ps(h));
    return _mm_cvtss_f32(h);
}

/* 8 e4m3fn bytes -> 8 floats without a table: the 7 magnitude bits shifted into the float's
 * exponent/mantissa give 2^-120 times the value (normals and subnormals alike; the multiply by
 * 2^120 is exact), the sign bit moves to bit 31. The NaN code (never present in valid
 * checkpoints) decodes as 480. */
static inline __m256 e4m3x8(const uint8_t *p) {
    const __m256i b = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)p));
    const __m256i mag = _mm256_slli_epi32(_mm256_and_si256(b, _mm256_set1_epi32(0x7f)), 20);
    const __m256i sign = _mm256_slli_epi32(_mm256_and_si256(b, _mm256_set1_epi32(0x80)), 24);
    return _mm256_mul_ps(_mm256_castsi256_ps(_mm256_or_si256(mag, sign)), _mm256_set1_ps(0x1p+120f));
}

/* 4 bytes of e2m1 nibbles (low first) -> 8 floats through an 8-entry magnitude table. */
static inline __m256 e2m1x8(const uint8_t *p) {
    int32_t w;
    memcpy(&w, p, 4);
    const __m256i b = _mm256_cvtepu8_epi32(_mm_cvtsi32_si128(w));            /* bytes 0..3 in lanes 0..3 */
    const __m256i perm = _mm256_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3);
    const __m256i bb = _mm256_permutevar8x32_epi32(b, perm);                  /* each byte twice */
    const __m256i shift = _mm256_setr_epi32(0, 4, 0, 4, 0, 4, 0, 4);
    const __m256i nib = _mm256_and_si256(_mm256_srlv_epi32(bb, shift), _mm256_set1_epi32(0xf));
    const __m256 mag = _mm256_permutevar8x32_ps(_mm256_setr_ps(0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 6.0f), nib);
    const __m256i sign = _mm256_slli_epi32(_mm256_and_si256(nib, _mm256_set1_epi32(8)), 28);
    return _mm256_castsi256_ps(_mm256_or_si256(_mm256_castps_si256(mag), sign));
}

static inline __m256 bf16x8(const uint8_t *p) {
    const __m256i h = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p));
    return _mm256_castsi256_ps(_mm256_slli_epi32(h, 16));
}

/* y[t] = row r of W · x[t] for t < T (T <= 4), decoding the row on the fly in registers.
 * Returns 0 when the format has no fused kernel (the caller decodes the row instead). */
static int fused_row_dots(const Mat *W, int64_t r, const float *x, int64_t ldx, int64_t T, float *out) {
    const int64_t cols = W->cols;
    __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
    /* One token (decode): four independent accumulators hide the FMA latency. */
    if (T == 1 && W->kind == W_BF16 && cols % 32 == 0) {
        const uint8_t *p = (const uint8_t *)W->w + 2 * r * cols;
        for (int64_t c = 0; c < cols; c += 32)
            for (int k = 0; k < 4; k++)
                acc[k] = _mm256_fmadd_ps(bf16x8(p + 2 * (c + 8 * k)), _mm256_loadu_ps(x + c + 8 * k), acc[k]);
        out[0] = hsum256(_mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3])));
        return 1;
    }
    if (T == 1 && W->kind == W_FP8 && cols % 32 == 0) {
        const uint8_t *p = (const uint8_t *)W->w + r * cols;
        const int64_t srow = (r / 128) * W->scale_cols;
        float sum = 0;
        for (int64_t c0 = 0; c0 < cols; c0 += 128) {
            const int64_t c1 = c0 + 128 < cols ? c0 + 128 : cols;
            __m256 b[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
            for (int64_t c = c0; c < c1; c += 32)
                for (int k = 0; k < 4; k++) b[k] = _mm256_fmadd_ps(e4m3x8(p + c + 8 * k), _mm256_loadu_ps(x + c + 8 * k), b[k]);
            sum += hsum256(_mm256_add_ps(_mm256_add_ps(b[0], b[1]), _mm256_add_ps(b[2], b[3]))) * scale_at(W, srow + c0 / 128);
        }
        out[0] = sum;
        return 1;
    }
    if (T == 1 && W->kind == W_FP4) {
        const uint8_t *p = (const uint8_t *)W->w + r * (cols / 2);
        const int64_t srow = r * W->scale_cols;
        for (int64_t c0 = 0; c0 < cols; c0 += 32) {
            const __m256 sc = _mm256_set1_ps(scale_at(W, srow + c0 / 32));
            for (int k = 0; k < 4; k++)
                acc[k] = _mm256_fmadd_ps(_mm256_mul_ps(e2m1x8(p + (c0 + 8 * k) / 2), sc), _mm256_loadu_ps(x + c0 + 8 * k), acc[k]);
        }
        out[0] = hsum256(_mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3])));
        return 1;
    }
    if (W->kind == W_BF16 && cols % 8 == 0) {
        const uint8_t *p = (const uint8_t *)W->w + 2 * r * cols;
        for (int64_t c = 0; c < cols; c += 8) {
            const __m256 w = bf16x8(p + 2 * c);
            for (int64_t t = 0; t < T; t++) acc[t] = _mm256_fmadd_ps(w, _mm256_loadu_ps(x + t * ldx + c), acc[t]);
        }
        for (int64_t t = 0; t < T; t++) out[t] = hsum256(acc[t]);
        return 1;
    }
    if (W->kind == W_FP8 && cols % 8 == 0) {
        const uint8_t *p = (const uint8_t *)W->w + r * cols;
        const int64_t srow = (r / 128) * W->scale_cols;
        float sum[4] = {0, 0, 0, 0};
        for (int64_t c0 = 0; c0 < cols; c0 += 128) {
            const int64_t c1 = c0 + 128 < cols ? c0 + 128 : cols;
            __m256 blk[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
            for (int64_t c = c0; c < c1; c += 8) {
                const __m256 w = e4m3x8(p + c);
                for (int64_t t = 0; t < T; t++) blk[t] = _mm256_fmadd_ps(w, _mm256_loadu_ps(x + t * ldx + c), blk[t]);
            }
            const float s = scale_at(W, srow + c0 / 128);
            for (int64_t t = 0; t < T; t++) sum[t] += hsum256(blk[t]) * s;
        }
        for (int64_t t = 0; t < T; t++) out[t] = sum[t];
        return 1;
    }
    if (W->kind == W_FP4) {
        const uint8_t *p = (const uint8_t *)W->w + r * (cols / 2);
        const int64_t srow = r * W->scale_cols;
        for (int64_t c0 = 0; c0 < cols; c0 += 32) {
            const __m256 s = _mm256_set1_ps(scale_at(W, srow + c0 / 32));
            for (int64_t c = c0; c < c0 + 32; c += 8) {
                const __m256 w = _mm256_mul_ps(e2m1x8(p + c / 2), s);
                for (int64_t t = 0; t < T; t++) acc[t] = _mm256_fmadd_ps(w, _mm256_loadu_ps(x + t * ldx + c), acc[t]);
            }
        }
        for (int64_t t = 0; t < T; t++) out[t] = hsum256(acc[t]);
        return 1;
    }
    return 0;
}
#else
static int fused_row_dots(const Mat *W, int64_t r, const float *x, int64_t ldx, int64_t T, float *out) {
    (void)W; (void)r; (void)x; (void)ldx; (void)T; (void)out;
    return 0;
}
#endif

/* Batched paths decode about 16 MB of weight rows at a time into f32 for sgemm. */
static int64_t block_rows(int64_t cols, int64_t nr) {
    int64_t rb = (int64_t)(4 << 20) / (cols > 0 ? cols : 1);
    if (rb < 16) rb = 16;
    return rb > nr ? nr : rb;
}
static void dequant_block(const Mat *W, int64_t r0, int64_t nb, float *buf) {
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < nb; i++) dequant_row(W, r0 + i, buf + i * W->cols);
}

/* Up to this many tokens, each weight row is decoded once and dotted with every token. */
#define LINEAR_SMALL_T 4

void linear(float *y, int64_t ldy, const float *x, int64_t ldx, int64_t T, const Mat *W, int64_t r0, int64_t nr) {
    const int64_t cols = W->cols;
    if (T <= 0 || nr <= 0) return;
    if (W->kind == W_F32 && (uintptr_t)W->w % sizeof(float) == 0) {   /* aligned: straight to BLAS */
        const float *w = (const float *)W->w + r0 * cols;
        if (T == 1) cblas_sgemv(CblasRowMajor, CblasNoTrans, (blasint)nr, (blasint)cols, 1.0f, w, (blasint)cols, x, 1, 0.0f, y, 1);
        else cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (blasint)T, (blasint)nr, (blasint)cols, 1.0f, x,
                         (blasint)ldx, w, (blasint)cols, 0.0f, y, (blasint)ldy);
        return;
    }
    if (T <= LINEAR_SMALL_T) {
#pragma omp parallel
        {
            float *row = NULL, out[LINEAR_SMALL_T];
#pragma omp for schedule(static)
            for (int64_t i = 0; i < nr; i++) {
                if (fused_row_dots(W, r0 + i, x, ldx, T, out)) {
                    for (int64_t t = 0; t < T; t++) y[t * ldy + i] = out[t];
                    continue;
                }
                if (!row) row = xmalloc(sizeof(float) * (size_t)cols);
                dequant_row(W, r0 + i, row);
                for (int64_t t = 0; t < T; t++) y[t * ldy + i] = dot_f32(row, x + t * ldx, cols);
            }
            free(row);
        }
        return;
    }
    const int64_t rb = block_rows(cols, nr);
    float *buf = xmalloc(sizeof(float) * (size_t)(rb * cols));
    for (int64_t b0 = 0; b0 < nr; b0 += rb) {
        const int64_t nb = b0 + rb <= nr ? rb : nr - b0;
        dequant_block(W, r0 + b0, nb, buf);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (blasint)T, (blasint)nb, (blasint)cols, 1.0f, x,
                    (blasint)ldx, buf, (blasint)cols, 0.0f, y + b0, (blasint)ldy);
    }
    free(buf);
}

/* Backward of linear (y = x Wᵀ over rows r0..r0+nr of W): dx [T, cols] (row stride ldx) += dy W;
 * dW (may be NULL; f32 [W->rows, cols]) rows r0.. += dyᵀ x. The weight is decoded a block of rows
 * at a time, so quantised weights get the gradient of their dequantised values. */
void linear_backward(float *dx, int64_t ldx, float *dW, const float *dy, int64_t ldy, const float *x, int64_t T,
                     const Mat *W, int64_t r0, int64_t nr) {
    const int64_t cols = W->cols;
    if (T <= 0 || nr <= 0) return;
    if (dx) {
        const int64_t rb = block_rows(cols, nr);
        float *buf = xmalloc(sizeof(float) * (size_t)(rb * cols));
        for (int64_t b0 = 0; b0 < nr; b0 += rb) {
            const int64_t nb = b0 + rb <= nr ? rb : nr - b0;
            dequant_block(W, r0 + b0, nb, buf);
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (blasint)T, (blasint)cols, (blasint)nb, 1.0f, dy + b0,
                        (blasint)ldy, buf, (blasint)cols, 1.0f, dx, (blasint)ldx);
        }
        free(buf);
    }
    if (dW)
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (blasint)nr, (blasint)cols, (blasint)T, 1.0f, dy, (blasint)ldy, x,
                    (blasint)ldx, 1.0f, dW + r0 * cols, (blasint)cols);
}
