/* The CPU block formats written by `dsv4 quantize` (docs/quantize.md). Both keep one F16 scale
 * per 32 consecutive weights of a row, the granularity of the official FP4 experts, so a decode
 * kernel reads a row as one sequential run of bytes with its scales beside it:
 *   Q8  int8 q in [-127, 127], weight = q·d          (8.5 bits per weight)
 *   Q4  nibble c in [0, 15] (low nibble first), weight = (c - 8)·d   (4.5 bits per weight)
 * Unlike E8M0, an F16 scale fits the block's largest magnitude to within 2^-11, so the levels
 * are spent on the block's own range; integer codes let the fast mode multiply them against
 * int8 activations (matvec_avx2.c). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../dsv4_internal.h"

#define F16_MAX 65504.0f

/* The largest magnitude of the block, or -1 when a value is not finite. */
static float block_amax(const float *v, int n, float *signed_max) {
    float amax = 0, m = 0;
    for (int j = 0; j < n; j++) {
        if (!isfinite(v[j])) return -1;
        if (fabsf(v[j]) > amax) { amax = fabsf(v[j]); m = v[j]; }
    }
    if (signed_max) *signed_max = m;
    return amax;
}

int quant_q8(const float *v, int64_t rows, int64_t cols, int8_t *q, uint16_t *d) {
    const int64_t nb = cols / 32;
    int bad = 0;
#pragma omp parallel for schedule(static) reduction(| : bad) if (rows * cols >= (1 << 20))
    for (int64_t r = 0; r < rows; r++)
        for (int64_t b = 0; b < nb; b++) {
            const float *x = v + r * cols + 32 * b;
            int8_t *o = q + r * cols + 32 * b;
            const float amax = block_amax(x, 32, NULL);
            if (amax < 0 || amax / 127.0f > F16_MAX) { bad = 1; continue; }
            const uint16_t h = f32_to_f16(amax / 127.0f);
            const float s = f16_to_f32(h);   /* the scale the reader will use */
            d[r * nb + b] = h;
            for (int j = 0; j < 32; j++) {
                const long c = s > 0 ? lrintf(x[j] / s) : 0;
                o[j] = (int8_t)(c > 127 ? 127 : c < -127 ? -127 : c);
            }
        }
    return bad ? -1 : 0;
}

/* Codes of x (32 values) under scale s, levels -8..7; the squared error. */
static double q4_assign(const float *x, float s, int8_t *lv) {
    double err = 0;
    for (int j = 0; j < 32; j++) {
        long c = s != 0 ? lrintf(x[j] / s) : 0;
        c = c > 7 ? 7 : c < -8 ? -8 : c;
        lv[j] = (int8_t)c;
        const double e = (double)x[j] - (double)c * s;
        err += e * e;
    }
    return err;
}

int quant_q4(const float *v, int64_t rows, int64_t cols, uint8_t *q, uint16_t *d) {
    const int64_t nb = cols / 32;
    /* where the block's largest magnitude lands: level -8 (the scale takes the opposite sign of
     * that value; the classic choice) or 7, and a little inside each, trading the extreme's
     * error for finer steps over the rest of the block */
    static const float targets[] = {-8.0f, -7.5f, -7.0f, -6.5f, 7.0f, 6.5f};
    int bad = 0;
#pragma omp parallel for schedule(static) reduction(| : bad) if (rows * cols >= (1 << 20))
    for (int64_t r = 0; r < rows; r++)
        for (int64_t b = 0; b < nb; b++) {
            const float *x = v + r * cols + 32 * b;
            float m;
            const float amax = block_amax(x, 32, &m);
            if (amax < 0 || amax / 6.5f > F16_MAX) { bad = 1; continue; }
            int8_t lv[32], best_lv[32];
            uint16_t best_h = 0;
            double best = INFINITY;
            for (size_t k = 0; k < sizeof targets / sizeof targets[0] && amax > 0; k++) {
                const uint16_t h = f32_to_f16(m / targets[k]);
                const double e = q4_assign(x, f16_to_f32(h), lv);
                if (e < best) { best = e; best_h = h; memcpy(best_lv, lv, 32); }
            }
            if (amax > 0) {   /* least-squares scale for the chosen levels, then assigned again */
                double xq = 0, qq = 0;
                for (int j = 0; j < 32; j++) { xq += (double)x[j] * best_lv[j]; qq += (double)best_lv[j] * best_lv[j]; }
                if (qq > 0 && fabs(xq / qq) <= F16_MAX) {
                    const uint16_t h = f32_to_f16((float)(xq / qq));
                    const double e = q4_assign(x, f16_to_f32(h), lv);
                    if (e < best) { best = e; best_h = h; memcpy(best_lv, lv, 32); }
                }
            } else memset(best_lv, 0, 32);
            d[r * nb + b] = best_h;
            uint8_t *o = q + (r * cols + 32 * b) / 2;
            for (int j = 0; j < 16; j++) o[j] = (uint8_t)((best_lv[2 * j] + 8) | (best_lv[2 * j + 1] + 8) << 4);
        }
    return bad ? -1 : 0;
}
