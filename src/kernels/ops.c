/* Element-wise and small kernels: RMSNorm, activations, RoPE with YaRN, top-k, the mHC
 * Sinkhorn projection, the Hadamard transform and the official fake quantisation. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../dsv4_internal.h"

/* Σ x² in double, in four interleaved partial sums: one chain of dependent adds cost four cycles
 * an element, a microsecond for each 1,024-wide mHC mix and several for each decode step's norms */
double sum_squares(const float *x, int64_t n) {
    double s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    int64_t i = 0;
    for (; i + 4 <= n; i += 4) {
        s0 += (double)x[i] * x[i];
        s1 += (double)x[i + 1] * x[i + 1];
        s2 += (double)x[i + 2] * x[i + 2];
        s3 += (double)x[i + 3] * x[i + 3];
    }
    for (; i < n; i++) s0 += (double)x[i] * x[i];
    return (s0 + s1) + (s2 + s3);
}

/* RMSNorm(x) = w ⊙ x / sqrt(mean(x²) + eps) (spec, notation); w == NULL means no weight. */
void rmsnorm(float *out, const float *x, const float *w, int64_t n, double eps) {
    const double ss = sum_squares(x, n);
    const float r = (float)(1.0 / sqrt(ss / (double)n + eps));
    if (w) for (int64_t i = 0; i < n; i++) out[i] = w[i] * (x[i] * r);
    else for (int64_t i = 0; i < n; i++) out[i] = x[i] * r;
}

/* Backward of rmsnorm: y = w ⊙ x r, r = (mean(x²) + eps)^-1/2 (w may be NULL).
 * dx (written) = r (w⊙dy) - r³/n x Σ (w⊙dy⊙x); dw (added, may be NULL) += dy ⊙ x r. */
void rmsnorm_backward(float *dx, float *dw, const float *dy, const float *x, const float *w, int64_t n, double eps) {
    const double ss = sum_squares(x, n);   /* as the forward did */
    double dot = 0;
    const double r = 1.0 / sqrt(ss / (double)n + eps);
    for (int64_t i = 0; i < n; i++) dot += (double)(w ? w[i] : 1.0f) * dy[i] * x[i];
    const double k = r * r * r * dot / (double)n;
    for (int64_t i = 0; i < n; i++) {
        const double g = (w ? w[i] : 1.0f) * dy[i];
        if (dw) dw[i] += (float)(dy[i] * x[i] * r);
        dx[i] = (float)(r * g - k * x[i]);
    }
}

/* Mean next-token cross-entropy over T rows of logits [T, V]; dlogits (may be NULL) receives
 * (softmax - onehot) / T. */
double cross_entropy(const float *logits, const int32_t *targets, int64_t T, int64_t V, float *dlogits) {
    double total = 0;
    for (int64_t t = 0; t < T; t++) {
        const float *l = logits + t * V;
        float mx = -INFINITY;
        for (int64_t v = 0; v < V; v++) mx = fmaxf(mx, l[v]);
        double z = 0;
        for (int64_t v = 0; v < V; v++) z += exp((double)l[v] - mx);
        total += log(z) + mx - l[targets[t]];
        if (dlogits)
            for (int64_t v = 0; v < V; v++)
                dlogits[t * V + v] = (float)((exp((double)l[v] - mx) / z - (v == targets[t])) / (double)T);
    }
    return total / (double)T;
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
void rope_table(float *cs, int rope_dim, const double *freq, int64_t pos) {
    for (int i = 0; i < rope_dim / 2; i++) {
        const float angle = (float)pos * (float)freq[i];
        sincosf(angle, &cs[2 * i + 1], &cs[2 * i]);   /* torch.polar on float32 angles */
    }
}

void rope_apply(float *x, int rope_dim, const float *cs, int inverse) {
    for (int i = 0; i < rope_dim / 2; i++) {
        const float c = cs[2 * i], s = inverse ? -cs[2 * i + 1] : cs[2 * i + 1];
        const float a = x[2 * i], b = x[2 * i + 1];
        x[2 * i] = a * c - b * s;
        x[2 * i + 1] = a * s + b * c;
    }
}

void rope_rotate(float *x, int rope_dim, const double *freq, int64_t pos, int inverse) {
    for (int i = 0; i < rope_dim / 2; i++) {
        float cs[2];
        rope_table(cs, 2, freq + i, pos);
        rope_apply(x + 2 * i, 2, cs, inverse);
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
int cmp_i64(const void *a, const void *b) {
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return x < y ? -1 : x > y;
}
/* The k best by a heap, O(n log k): topk_select for n <= 64. */
static void topk_heap(const float *s, int64_t n, int64_t k, int64_t *idx) {
    for (int64_t i = 0; i < k; i++) idx[i] = i;
    for (int64_t i = k / 2 - 1; i >= 0; i--) sift_down(idx, k, i, s);
    for (int64_t i = k; i < n; i++)
        if (better(s, i, idx[0])) { idx[0] = i; sift_down(idx, k, 0, s); }
    qsort(idx, (size_t)k, sizeof(int64_t), cmp_i64);
}

/* A float's bits turned into an unsigned key in the same order (negatives reversed, below the
 * positives). -0 takes +0's key: the two compare equal as floats, and the callers count entries
 * equal to the threshold as floats do. */
static inline uint32_t order_key(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    if (u == 0x80000000u) u = 0;
    return u >> 31 ? ~u : u | 0x80000000u;
}

/* The k-th largest τ of v[0..n) (NaN already mapped to -inf; 1 <= k <= n), v reordered, and in
 * *ties how many entries equal to τ the k largest take (the rest of them are above τ): radix
 * selection on the order keys, 8 bits a pass from the top. A pass counts the candidates left per
 * byte value, finds the bucket holding the k-th and moves its members to the front; after four
 * passes those left share one key. O(n) whatever the data, with no branch that depends on it
 * (a quickselect's partitioning mispredicts about every other comparison); it runs once per cut
 * of every indexer query's running selection. */
float topk_threshold(float *v, int64_t n, int64_t k, int64_t *ties) {
    int64_t m = n;
    for (int shift = 24; shift >= 0 && m > 1; shift -= 8) {
        uint32_t count[256] = {0};
        for (int64_t i = 0; i < m; i++) count[order_key(v[i]) >> shift & 255]++;
        uint32_t b = 255;
        for (; b > 0 && k > count[b]; b--) k -= count[b];
        int64_t j = 0;
        for (int64_t i = 0; i < m; i++) {   /* branch-free: the bucket test is a coin flip */
            v[j] = v[i];
            j += (order_key(v[i]) >> shift & 255) == b;
        }
        m = j;
    }
    *ties = k;
    return v[0];
}

#if defined(__x86_64__)
#include <immintrin.h>
/* The first index >= i whose score beats bar (n if none), eight scores per compare: after the
 * first cut most entries fail the bar, so the scan is the selection's cost. NaN never beats it. */
__attribute__((target("avx2"))) static int64_t next_above_avx2(const float *s, int64_t i, int64_t n, float bar) {
    const __m256 b = _mm256_set1_ps(bar);
    for (; i + 8 <= n; i += 8) {
        const int mask = _mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(s + i), b, _CMP_GT_OQ));
        if (mask) return i + __builtin_ctz((unsigned)mask);
    }
    for (; i < n && !(s[i] > bar); i++) {}
    return i;
}
#endif

void topk_stream_reset(TopkStream *s, int64_t k) {
    s->n = 0;
    s->k = k > 0 ? k : 0;
    s->cut = k <= 0;   /* nothing to keep: every score fails the bar */
    s->theta = k > 0 ? -INFINITY : INFINITY;
}

void topk_stream_cut(TopkStream *s) {
    if (s->n <= s->k) return;
    /* the k-th best τ (on a copy), then one pass keeps, in order, what is above τ and the first
     * entries equal to it: topk_select's choice, compacted in place */
    for (int64_t j = 0; j < s->n; j++) s->tmp[j] = isnan(s->v[j]) ? -INFINITY : s->v[j];
    int64_t ties, m = 0;
    const float tau = topk_threshold(s->tmp, s->n, s->k, &ties);
    for (int64_t j = 0; j < s->n; j++) {   /* branch-free: about one in four is kept */
        const float x = isnan(s->v[j]) ? -INFINITY : s->v[j];
        const int tie = x == tau && ties > 0;
        s->v[m] = s->v[j];
        s->ix[m] = s->ix[j];
        m += (x > tau) | tie;
        ties -= tie;
    }
    s->n = m;   /* == k */
    s->theta = tau;
    s->cut = 1;
}

#if defined(__x86_64__)
/* topk_stream_scan with AVX-512: until the first cut every score goes in, copied in bulk; after
 * it, 16 scores per compare and only the lanes over the bar visited (a push may cut and raise the
 * bar: each is tested again) */
__attribute__((target("avx512f"))) static void stream_scan_avx512(TopkStream *s, const float *v, int64_t n, int64_t base) {
    int64_t w = 0;
    while (!s->cut && w < n) {
        if (s->n == s->cap) { topk_stream_cut(s); break; }
        const int64_t m = s->cap - s->n < n - w ? s->cap - s->n : n - w;
        memcpy(s->v + s->n, v + w, sizeof(float) * (size_t)m);
        for (int64_t j = 0; j < m; j++) s->ix[s->n + j] = base + w + j;
        s->n += m;
        w += m;
    }
    for (; w + 16 <= n; w += 16) {
        unsigned mask = _mm512_cmp_ps_mask(_mm512_loadu_ps(v + w), _mm512_set1_ps(s->theta), _CMP_GT_OQ);
        while (mask) {
            const int j = __builtin_ctz(mask);
            mask &= mask - 1;
            if (v[w + j] > s->theta) topk_stream_push(s, v[w + j], base + w + j);
        }
    }
    for (; w < n; w++)
        if (v[w] > s->theta) topk_stream_push(s, v[w], base + w);
}
#endif

/* v[0..n) as entries base.. into the stream: once cut, the vector scan skips to the next score
 * over the bar, so most entries cost one comparison */
void topk_stream_scan(TopkStream *st, const float *v, int64_t n, int64_t base) {
#if defined(__x86_64__)
    if (indexer_avx512_usable()) { stream_scan_avx512(st, v, n, base); return; }
    const int vec = cpu_has_avx2();
#endif
    for (int64_t i = 0; i < n; i++) {
#if defined(__x86_64__)
        if (st->cut && vec && (i = next_above_avx2(v, i, n, st->theta)) == n) break;
#endif
        if (!st->cut || v[i] > st->theta) topk_stream_push(st, v[i], base + i);
    }
}

/* Few of many (k <= n/16): one pass through a TopkStream with a buffer of 4k candidates: the
 * indexer picks 256 of 262,144 entries per query at 1M. */
static void topk_stream(const float *s, int64_t n, int64_t k, int64_t *idx, float *tmp) {
    const int64_t cap = 4 * k;
    TopkStream st = {.v = tmp, .tmp = tmp + cap, .ix = xmalloc(sizeof(int64_t) * (size_t)cap), .cap = cap};   /* 8k of the n >= 16k floats of tmp */
    topk_stream_reset(&st, k);
    topk_stream_scan(&st, s, n, 0);
    topk_stream_cut(&st);
    memcpy(idx, st.ix, sizeof(int64_t) * (size_t)k);
    free(st.ix);
}

/* Indices of the k largest of s[0..n) in ascending index order; ties go to the lower index, NaN
 * counts as -inf. Few of many: topk_stream. Otherwise by a threshold: the k-th largest value τ
 * (radix selection on a copy in tmp, n floats), then one scan keeps every entry above τ and the
 * first entries equal to τ. O(n) on average either way. */
void topk_select(const float *s, int64_t n, int64_t k, int64_t *idx, float *tmp) {
    if (k >= n) { for (int64_t i = 0; i < n; i++) idx[i] = i; return; }
    if (k <= 0) return;
    if (n <= 64) { topk_heap(s, n, k, idx); return; }
    if (tmp && n >= 16 * k) { topk_stream(s, n, k, idx, tmp); return; }
    for (int64_t i = 0; i < n; i++) tmp[i] = isnan(s[i]) ? -INFINITY : s[i];
    int64_t ties, m = 0;
    const float tau = topk_threshold(tmp, n, k, &ties);
    for (int64_t i = 0; i < n && m < k; i++) {
        const float x = isnan(s[i]) ? -INFINITY : s[i];
        if (x > tau) idx[m++] = i;
        else if (x == tau && ties > 0) { idx[m++] = i; ties--; }
    }
}

void topk_indices(const float *s, int64_t n, int64_t k, int64_t *idx) {
    if (k >= n || k <= 0 || n <= 64) { topk_select(s, n, k, idx, NULL); return; }
    float *tmp = xmalloc(sizeof(float) * (size_t)n);
    topk_select(s, n, k, idx, tmp);
    free(tmp);
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

/* Backward of hc_split_sinkhorn (spec: unroll the iterations, recomputed from the saved logits;
 * each y = p/(s+eps) along an axis gives dp = (dy - Σ dy⊙y)/(s+eps) along it). Writes dmixes,
 * adds to dscale and dbase. */
void hc_split_sinkhorn_backward(const float *mixes, const float *scale, const float *base, int n, int iters, double eps,
                                const float *dpre, const float *dpost, const float *dcomb, float *dmixes, float *dscale,
                                float *dbase) {
    const double e = (float)eps;
    const int nn = n * n, steps = 2 * iters - 1;
    double *hist = xmalloc(sizeof(double) * (size_t)((steps + 4) * nn + 2 * n));   /* the input of every step */
    double *sm = hist + steps * nn, *cur = sm + nn, *dC = cur + nn, *out = dC + nn, *sums = out + nn, *dot = sums + n;
    /* the forward again, in double: softmax over each row, + eps */
    for (int j = 0; j < n; j++) {
        double mx = -INFINITY, sum = 0;
        for (int k = 0; k < n; k++) {
            const int i = 2 * n + j * n + k;
            cur[j * n + k] = (double)mixes[i] * scale[2] + base[i];
            mx = fmax(mx, cur[j * n + k]);
        }
        for (int k = 0; k < n; k++) { sm[j * n + k] = exp(cur[j * n + k] - mx); sum += sm[j * n + k]; }
        for (int k = 0; k < n; k++) { sm[j * n + k] /= sum; cur[j * n + k] = sm[j * n + k] + e; }
    }
    /* step st: even = column normalisation, odd = row normalisation */
    for (int st = 0; st < steps; st++) {
        memcpy(hist + st * nn, cur, sizeof(double) * (size_t)nn);
        const int col = st % 2 == 0;
        for (int a = 0; a < n; a++) {
            sums[a] = 0;
            for (int b = 0; b < n; b++) sums[a] += col ? cur[b * n + a] : cur[a * n + b];
        }
        for (int j = 0; j < n; j++)
            for (int k = 0; k < n; k++) cur[j * n + k] /= (col ? sums[k] : sums[j]) + e;
    }
    for (int i = 0; i < nn; i++) dC[i] = dcomb[i];
    for (int st = steps - 1; st >= 0; st--) {
        const double *in = hist + st * nn;
        const int col = st % 2 == 0;
        for (int a = 0; a < n; a++) {
            sums[a] = 0;
            for (int b = 0; b < n; b++) sums[a] += col ? in[b * n + a] : in[a * n + b];
        }
        for (int j = 0; j < n; j++)
            for (int k = 0; k < n; k++) out[j * n + k] = in[j * n + k] / ((col ? sums[k] : sums[j]) + e);
        for (int a = 0; a < n; a++) {
            dot[a] = 0;
            for (int b = 0; b < n; b++) dot[a] += col ? dC[b * n + a] * out[b * n + a] : dC[a * n + b] * out[a * n + b];
        }
        for (int j = 0; j < n; j++)
            for (int k = 0; k < n; k++) {
                const int a = col ? k : j;
                dC[j * n + k] = (dC[j * n + k] - dot[a]) / (sums[a] + e);
            }
    }
    /* through the softmax: dL = sm ⊙ (dP - Σ dP ⊙ sm) per row; L = scale2 * m + base */
    for (int j = 0; j < n; j++) {
        double d = 0;
        for (int k = 0; k < n; k++) d += dC[j * n + k] * sm[j * n + k];
        for (int k = 0; k < n; k++) {
            const int i = 2 * n + j * n + k;
            const double dl = sm[j * n + k] * (dC[j * n + k] - d);
            dmixes[i] = (float)(dl * scale[2]);
            dscale[2] += (float)(dl * mixes[i]);
            dbase[i] += (float)dl;
        }
    }
    /* pre = sigmoid(scale0 m + base) + eps, post = 2 sigmoid(scale1 m + base) */
    for (int j = 0; j < n; j++) {
        const double sp = 1.0 / (1.0 + exp(-((double)mixes[j] * scale[0] + base[j])));
        const double g = dpre[j] * sp * (1 - sp);
        dmixes[j] = (float)(g * scale[0]);
        dscale[0] += (float)(g * mixes[j]);
        dbase[j] += (float)g;
        const double sq = 1.0 / (1.0 + exp(-((double)mixes[n + j] * scale[1] + base[n + j])));
        const double h = dpost[j] * 2 * sq * (1 - sq);
        dmixes[n + j] = (float)(h * scale[1]);
        dscale[1] += (float)(h * mixes[n + j]);
        dbase[n + j] += (float)h;
    }
    free(hist);
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

void softmax_sink(float *row, int64_t n, float sink) {
    if (cpu_has_avx2()) { softmax_sink_avx2(row, n, sink); return; }
    float mx = -INFINITY;
    for (int64_t k = 0; k < n; k++) mx = fmaxf(mx, row[k]);
    if (mx == -INFINITY) mx = sink;
    double sum = exp((double)sink - mx);
    for (int64_t k = 0; k < n; k++) { row[k] = row[k] == -INFINITY ? 0.0f : expf(row[k] - mx); sum += row[k]; }
    const float den = (float)(1.0 / sum);
    for (int64_t k = 0; k < n; k++) row[k] *= den;
}
