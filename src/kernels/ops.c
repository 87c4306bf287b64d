/* Element-wise and small kernels: RMSNorm, activations, RoPE with YaRN, top-k, the mHC
 * Sinkhorn projection, the Hadamard transform and the official fake quantisation. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../dsv4_internal.h"

/* RMSNorm(x) = w ⊙ x / sqrt(mean(x²) + eps) (spec, notation); w == NULL means no weight. */
void rmsnorm(float *out, const float *x, const float *w, int64_t n, double eps) {
    double ss = 0;
    for (int64_t i = 0; i < n; i++) ss += (double)x[i] * x[i];
    const float r = (float)(1.0 / sqrt(ss / (double)n + eps));
    if (w) for (int64_t i = 0; i < n; i++) out[i] = w[i] * (x[i] * r);
    else for (int64_t i = 0; i < n; i++) out[i] = x[i] * r;
}

float sigmoid_f(float x) { return 1.0f / (1.0f + expf(-x)); }
float silu_f(float x) { return x / (1.0f + expf(-x)); }
/* softplus as torch.nn.functional.softplus (threshold 20: linear above). */
float softplus_f(float x) { return x > 20.0f ? x : log1pf(expf(x)); }

/* The official precompute_freqs_cis: inv-frequencies base^(-2i/dim), blended with the
 * YaRN-interpolated ones (freq/factor) by a linear ramp between the correction dims of
 * beta_fast and beta_slow, when original_seq_len > 0. The arithmetic follows the official
 * float32 tensors step by step (the correction range is Python double math), so that angles
 * at long positions carry the same rounding as the code the checkpoints were released with. */
static double correction_dim(double rot, int dim, double base, double max_len) {
    return dim * log(max_len / (rot * 2 * M_PI)) / (2 * log(base));
}
void rope_freqs(double *freq, int dim, double base, int64_t original_seq_len, double factor, double beta_fast,
                double beta_slow) {
    for (int i = 0; i < dim / 2; i++) {
        const float e = (float)(2 * i) / (float)dim;
        freq[i] = 1.0f / powf((float)base, e);
    }
    if (original_seq_len > 0) {
        double low = floor(correction_dim(beta_fast, dim, base, (double)original_seq_len));
        double high = ceil(correction_dim(beta_slow, dim, base, (double)original_seq_len));
        if (low < 0) low = 0;
        if (high > dim - 1) high = dim - 1;
        if (low == high) high += 0.001;
        for (int i = 0; i < dim / 2; i++) {
            float ramp = ((float)i - (float)low) / (float)(high - low);
            ramp = ramp < 0 ? 0 : ramp > 1 ? 1 : ramp;
            const float smooth = 1.0f - ramp, f = (float)freq[i];
            freq[i] = f / (float)factor * (1.0f - smooth) + f * smooth;
        }
    }
}

/* angle = float(pos) * freq in float32 (torch.outer on float32), cos/sin of that angle. */
void rope_rotate(float *x, int rope_dim, const double *freq, int64_t pos, int inverse) {
    for (int i = 0; i < rope_dim / 2; i++) {
        const float angle = (float)pos * (float)freq[i];
        double sd, cd;
        sincos((double)angle, &sd, &cd);
        const float c = (float)cd, s = inverse ? -(float)sd : (float)sd;
        const float a = x[2 * i], b = x[2 * i + 1];
        x[2 * i] = a * c - b * s;
        x[2 * i + 1] = a * s + b * c;
    }
}

/* Min-heap on "worse" so that the root is the weakest of the k kept; a is better than b when
 * its score is larger or, at equal scores, its index is lower (spec: ties to the lower index). */
static inline int better(const float *s, int64_t a, int64_t b) {
    float x = s[a], y = s[b];
    if (isnan(x)) x = -INFINITY;
    if (isnan(y)) y = -INFINITY;
    return x > y || (x == y && a < b);
}
static void sift_down(int64_t *h, int64_t n, int64_t i, const float *s) {
    for (;;) {
        int64_t l = 2 * i + 1, r = l + 1, w = i;
        if (l < n && better(s, h[w], h[l])) w = l;
        if (r < n && better(s, h[w], h[r])) w = r;
        if (w == i) return;
        int64_t t = h[i]; h[i] = h[w]; h[w] = t;
        i = w;
    }
}
static int cmp_i64(const void *a, const void *b) {
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return x < y ? -1 : x > y;
}
void topk_indices(const float *s, int64_t n, int64_t k, int64_t *idx) {
    if (k >= n) { for (int64_t i = 0; i < n; i++) idx[i] = i; return; }
    if (k <= 0) return;
    for (int64_t i = 0; i < k; i++) idx[i] = i;
    for (int64_t i = k / 2 - 1; i >= 0; i--) sift_down(idx, k, i, s);
    for (int64_t i = k; i < n; i++)
        if (better(s, i, idx[0])) { idx[0] = i; sift_down(idx, k, 0, s); }
    qsort(idx, (size_t)k, sizeof(int64_t), cmp_i64);
}

/* Spec "Residual stream: mHC" / official hc_split_sinkhorn. comb[j*n+k]: softmax over k, + eps,
 * column-normalise, then (iters-1) x (row-normalise, column-normalise). */
void hc_split_sinkhorn(const float *mixes, const float *scale, const float *base, int n, int iters, double eps,
                       float *pre, float *post, float *comb) {
    const float e = (float)eps;
    for (int j = 0; j < n; j++) pre[j] = sigmoid_f(mixes[j] * scale[0] + base[j]) + e;
    for (int j = 0; j < n; j++) post[j] = 2.0f * sigmoid_f(mixes[n + j] * scale[1] + base[n + j]);
    for (int j = 0; j < n; j++) {
        float *row = comb + j * n, mx = -INFINITY, sum = 0;
        for (int k = 0; k < n; k++) {
            row[k] = mixes[2 * n + j * n + k] * scale[2] + base[2 * n + j * n + k];
            if (row[k] > mx) mx = row[k];
        }
        for (int k = 0; k < n; k++) { row[k] = expf(row[k] - mx); sum += row[k]; }
        for (int k = 0; k < n; k++) row[k] = row[k] / sum + e;
    }
    float cs[64], rs[64];
    for (int it = 0; it < iters; it++) {
        if (it > 0) {
            for (int j = 0; j < n; j++) { rs[j] = 0; for (int k = 0; k < n; k++) rs[j] += comb[j * n + k]; }
            for (int j = 0; j < n; j++) for (int k = 0; k < n; k++) comb[j * n + k] /= rs[j] + e;
        }
        for (int k = 0; k < n; k++) { cs[k] = 0; for (int j = 0; j < n; j++) cs[k] += comb[j * n + k]; }
        for (int j = 0; j < n; j++) for (int k = 0; k < n; k++) comb[j * n + k] /= cs[k] + e;
    }
}

void hadamard_f32(float *x, int64_t n) {
    for (int64_t h = 1; h < n; h *= 2)
        for (int64_t i = 0; i < n; i += 2 * h)
            for (int64_t j = i; j < i + h; j++) {
                const float a = x[j], b = x[j + h];
                x[j] = a + b;
                x[j + h] = a - b;
            }
    const float s = (float)(1.0 / sqrt((double)n));
    for (int64_t i = 0; i < n; i++) x[i] *= s;
}

/* 2^ceil(log2(v)) by the exponent bits, as the official fast_round_scale. */
static float pow2_ceil(float v) {
    uint32_t u;
    memcpy(&u, &v, 4);
    int e = (int)((u >> 23) & 0xff) - 127 + ((u & 0x7fffffu) != 0);
    return ldexpf(1.0f, e);
}

void fake_quant_fp8(float *x, int64_t n, int64_t block) {
    for (int64_t b0 = 0; b0 < n; b0 += block) {
        const int64_t b1 = b0 + block < n ? b0 + block : n;
        float amax = 0;
        for (int64_t i = b0; i < b1; i++) amax = fmaxf(amax, fabsf(x[i]));
        amax = fmaxf(amax, 1e-4f);
        const float s = pow2_ceil(amax * (1.0f / 448.0f));
        for (int64_t i = b0; i < b1; i++) {
            float v = fminf(fmaxf(x[i] / s, -448.0f), 448.0f);
            x[i] = e4m3_to_f32(f32_to_e4m3(v)) * s;
        }
    }
}

void fake_quant_fp4(float *x, int64_t n, int64_t block) {
    for (int64_t b0 = 0; b0 < n; b0 += block) {
        const int64_t b1 = b0 + block < n ? b0 + block : n;
        float amax = 0;
        for (int64_t i = b0; i < b1; i++) amax = fmaxf(amax, fabsf(x[i]));
        amax = fmaxf(amax, 6.0f * ldexpf(1.0f, -126));
        const float s = pow2_ceil(amax * (1.0f / 6.0f));
        for (int64_t i = b0; i < b1; i++) {
            float v = fminf(fmaxf(x[i] / s, -6.0f), 6.0f);
            x[i] = e2m1_to_f32(f32_to_e2m1(v)) * s;
        }
    }
}
