/* mHC: manifold-constrained hyper-connections (spec "Residual stream: mHC").
 * The residual is n streams X ∈ R^{n×d} per token. Each sublayer reads a mix y = Σ pre_i X_i
 * and writes back X'_k = post_k f + Σ_j C[j,k] X_j with C projected by Sinkhorn onto the
 * doubly-stochastic matrices, which keeps very deep stacks stable. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../dsv4_internal.h"

/* mixes[t] = (fn · vec(X_t)) * rsqrt(mean(vec(X_t)²) + norm_eps): the norm is applied after
 * the matmul (spec), so the matmul runs on the raw streams. */
static void hc_mixes(const Config *c, const Mat *fn, const float *X, int64_t T, float *mixes) {
    const int64_t nd = (int64_t)c->hc_mult * c->dim, nm = fn->rows;
    linear(mixes, nm, X, nd, T, fn, 0, nm);
    for (int64_t t = 0; t < T; t++) {
        double ss = 0;
        const float *x = X + t * nd;
        for (int64_t i = 0; i < nd; i++) ss += (double)x[i] * x[i];
        const float r = (float)(1.0 / sqrt(ss / (double)nd + c->norm_eps));
        for (int64_t i = 0; i < nm; i++) mixes[t * nm + i] *= r;
    }
}

/* X [T, n*d] -> y [T, d] (the sublayer input before its RMSNorm), post [T, n], comb [T, n*n]. */
void mhc_pre(const Config *c, const Mat *fn, const float *base, const float *scale, const float *X, int64_t T,
             float *y, float *post, float *comb) {
    const int n = c->hc_mult;
    const int64_t d = c->dim, nm = (int64_t)n * (n + 2);
    float *mixes = xmalloc(sizeof(float) * (size_t)(T * nm));
    hc_mixes(c, fn, X, T, mixes);
#pragma omp parallel for schedule(static)
    for (int64_t t = 0; t < T; t++) {
        float pre[64];
        hc_split_sinkhorn(mixes + t * nm, scale, base, n, c->hc_sinkhorn_iters, c->hc_eps, pre, post + t * n,
                          comb + t * n * n);
        float *yt = y + t * d;
        const float *xt = X + t * n * d;
        for (int64_t k = 0; k < d; k++) yt[k] = pre[0] * xt[k];
        for (int i = 1; i < n; i++)
            for (int64_t k = 0; k < d; k++) yt[k] += pre[i] * xt[i * d + k];
    }
    free(mixes);
}

/* X'_k = post_k f + Σ_j C[j,k] X_j (the transposed C acts on the streams). */
void mhc_post(const Config *c, float *X, const float *f, const float *post, const float *comb, int64_t T) {
    const int n = c->hc_mult;
    const int64_t d = c->dim;
#pragma omp parallel
    {
        float *old = xmalloc(sizeof(float) * (size_t)(n * d));
#pragma omp for schedule(static)
        for (int64_t t = 0; t < T; t++) {
            float *xt = X + t * n * d;
            const float *ft = f + t * d, *ct = comb + t * n * n, *pt = post + t * n;
            memcpy(old, xt, sizeof(float) * (size_t)(n * d));
            for (int k = 0; k < n; k++) {
                float *out = xt + k * d;
                for (int64_t e = 0; e < d; e++) out[e] = pt[k] * ft[e];
                for (int j = 0; j < n; j++) {
                    const float w = ct[j * n + k];
                    const float *xj = old + j * d;
                    for (int64_t e = 0; e < d; e++) out[e] += w * xj[e];
                }
            }
        }
        free(old);
    }
}

/* Output head mix (spec: hc_head): pre = sigmoid(scale*m + base) + hc_eps, y = Σ pre_i X_i. */
void hc_head(const Config *c, const Mat *fn, const float *base, const float *scale, const float *X, int64_t T,
             float *y) {
    const int n = c->hc_mult;
    const int64_t d = c->dim;
    float *mixes = xmalloc(sizeof(float) * (size_t)(T * n));
    hc_mixes(c, fn, X, T, mixes);
    for (int64_t t = 0; t < T; t++) {
        float *yt = y + t * d;
        const float *xt = X + t * n * d;
        memset(yt, 0, sizeof(float) * (size_t)d);
        for (int i = 0; i < n; i++) {
            const float pre = sigmoid_f(scale[0] * mixes[t * n + i] + base[i]) + (float)c->hc_eps;
            for (int64_t k = 0; k < d; k++) yt[k] += pre * xt[i * d + k];
        }
    }
    free(mixes);
}
