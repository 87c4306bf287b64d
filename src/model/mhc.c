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
        const double ss = sum_squares(X + t * nd, nd);
        const float r = (float)(1.0 / sqrt(ss / (double)nd + c->norm_eps));
        for (int64_t i = 0; i < nm; i++) mixes[t * nm + i] *= r;
    }
}

/* One token of mhc_pre: its mixes [n(n+2)] -> pre (applied: y [d]), post [n], comb [n*n]. */
static void mhc_pre_token(const Config *c, const float *mixes, const float *base, const float *scale, const float *xt, float *yt,
                          float *post, float *comb) {
    const int n = c->hc_mult;
    const int64_t d = c->dim;
    float pre[64];
    hc_split_sinkhorn(mixes, scale, base, n, c->hc_sinkhorn_iters, c->hc_eps, pre, post, comb);
    for (int64_t k = 0; k < d; k++) yt[k] = pre[0] * xt[k];
    for (int i = 1; i < n; i++)
        for (int64_t k = 0; k < d; k++) yt[k] += pre[i] * xt[i * d + k];
}

/* X [T, n*d] -> y [T, d] (the sublayer input before its RMSNorm), post [T, n], comb [T, n*n]. */
void mhc_pre(const Config *c, const Mat *fn, const float *base, const float *scale, const float *X, int64_t T,
             float *y, float *post, float *comb) {
    const int n = c->hc_mult;
    const int64_t d = c->dim, nm = (int64_t)n * (n + 2);
    float *mixes = xmalloc(sizeof(float) * (size_t)(T * nm));
    hc_mixes(c, fn, X, T, mixes);
    if (T == 1) {   /* one token (decode): not worth a parallel region */
        mhc_pre_token(c, mixes, base, scale, X, y, post, comb);
    } else {
#pragma omp parallel for schedule(static)
        for (int64_t t = 0; t < T; t++)
            mhc_pre_token(c, mixes + t * nm, base, scale, X + t * n * d, y + t * d, post + t * n, comb + t * n * n);
    }
    free(mixes);
}

/* One token of mhc_post, xt [n*d] in place, a block of MHC_POST_BLOCK channels at a time: the
 * block's old streams are copied aside (old: n*MHC_POST_BLOCK floats) and every new stream's
 * block is made from them while they sit in L1. Per element the same operations in the same
 * order as stream by stream: post_k·f, then + C[j,k]·X_j for j = 0 .. n-1. */
#define MHC_POST_BLOCK 64
static void mhc_post_token(const Config *c, float *xt, const float *ft, const float *pt, const float *ct, float *old) {
    const int n = c->hc_mult;
    const int64_t d = c->dim;
    for (int64_t e0 = 0; e0 < d; e0 += MHC_POST_BLOCK) {
        const int64_t nb = d - e0 < MHC_POST_BLOCK ? d - e0 : MHC_POST_BLOCK;
        for (int j = 0; j < n; j++) memcpy(old + j * MHC_POST_BLOCK, xt + j * d + e0, sizeof(float) * (size_t)nb);
        for (int k = 0; k < n; k++) {
            float *out = xt + k * d + e0;
            for (int64_t e = 0; e < nb; e++) out[e] = pt[k] * ft[e0 + e];
            for (int j = 0; j < n; j++) {
                const float w = ct[j * n + k];
                const float *xj = old + j * MHC_POST_BLOCK;
                for (int64_t e = 0; e < nb; e++) out[e] += w * xj[e];
            }
        }
    }
}

/* X'_k = post_k f + Σ_j C[j,k] X_j (the transposed C acts on the streams). */
void mhc_post(const Config *c, float *X, const float *f, const float *post, const float *comb, int64_t T) {
    const int n = c->hc_mult;
    const int64_t d = c->dim;
    if (T == 1) {   /* one token (decode): not worth a parallel region */
        float *old = xmalloc(sizeof(float) * (size_t)(n * MHC_POST_BLOCK));
        mhc_post_token(c, X, f, post, comb, old);
        free(old);
        return;
    }
#pragma omp parallel
    {
        float *old = xmalloc(sizeof(float) * (size_t)(n * MHC_POST_BLOCK));
#pragma omp for schedule(static)
        for (int64_t t = 0; t < T; t++) mhc_post_token(c, X + t * n * d, f + t * d, post + t * n, comb + t * n * n, old);
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

/* ---- backward ---------------------------------------------------------------------------- */

/* Through m = (fn · v) * r, r = rsqrt(mean(v²) + eps): given dm [T, nm], adds to dX [T, n*d]
 * and dfn [nm, n*d]. u = fn · v is recomputed. */
static void hc_mixes_backward(const Config *c, const Mat *fn, const float *X, int64_t T, const float *dm, float *dX,
                              float *dfn) {
    const int64_t nd = (int64_t)c->hc_mult * c->dim, nm = fn->rows;
    float *w = xmalloc(sizeof(float) * (size_t)(nm * nd));
    mat_dequant_rows(fn, 0, nm, w);
    for (int64_t t = 0; t < T; t++) {
        const float *v = X + t * nd;
        const double ss = sum_squares(v, nd);   /* as the forward did */
        const double r = 1.0 / sqrt(ss / (double)nd + c->norm_eps);
        double dr = 0;
        for (int64_t k = 0; k < nm; k++) {
            const double u = dot_f32(w + k * nd, v, nd), du = dm[t * nm + k] * r;
            dr += dm[t * nm + k] * u;
            if (dfn) axpy_f32(dfn + k * nd, (float)du, v, nd);
            axpy_f32(dX + t * nd, (float)du, w + k * nd, nd);
        }
        /* dr/dv_i = -r³ v_i / (n d) */
        axpy_f32(dX + t * nd, (float)(-dr * r * r * r / (double)nd), v, nd);
    }
    free(w);
}

/* Backward of mhc_pre. Inputs: the streams X, upstream dy [T,d], dpost [T,n], dcomb [T,n*n].
 * Adds to dX [T, n*d], dfn [n(n+2), n*d], dbase [n(n+2)], dscale [3] (any of dfn/dbase/dscale may
 * be NULL when the parameters are frozen). */
void mhc_pre_backward(const Config *c, const Mat *fn, const float *base, const float *scale, const float *X, int64_t T,
                      const float *dy, const float *dpost, const float *dcomb, float *dX, float *dfn, float *dbase,
                      float *dscale) {
    const int n = c->hc_mult;
    const int64_t d = c->dim, nm = (int64_t)n * (n + 2);
    float *mixes = xmalloc(sizeof(float) * (size_t)(T * nm));
    float *dm = xcalloc((size_t)(T * nm), sizeof(float));
    float *db = xcalloc((size_t)nm, sizeof(float)), ds[3] = {0, 0, 0};
    hc_mixes(c, fn, X, T, mixes);
    for (int64_t t = 0; t < T; t++) {
        float pre[64], post[64], comb[64 * 64], dpre[64];
        hc_split_sinkhorn(mixes + t * nm, scale, base, n, c->hc_sinkhorn_iters, c->hc_eps, pre, post, comb);
        const float *xt = X + t * n * d, *dyt = dy + t * d;
        for (int i = 0; i < n; i++) {   /* y = Σ_i pre_i X_i */
            dpre[i] = dot_f32(dyt, xt + i * d, d);
            axpy_f32(dX + t * n * d + i * d, pre[i], dyt, d);
        }
        hc_split_sinkhorn_backward(mixes + t * nm, scale, base, n, c->hc_sinkhorn_iters, c->hc_eps, dpre, dpost + t * n,
                                   dcomb + t * n * n, dm + t * nm, ds, db);
    }
    hc_mixes_backward(c, fn, X, T, dm, dX, dfn);
    if (dbase) for (int64_t i = 0; i < nm; i++) dbase[i] += db[i];
    if (dscale) for (int i = 0; i < 3; i++) dscale[i] += ds[i];
    free(mixes); free(dm); free(db);
}

/* Backward of mhc_post, X'_k = post_k f + Σ_j C[j,k] X_j. X is the residual before the update.
 * Writes df [T,d], dpost [T,n], dcomb [T,n*n]; replaces dX [T,n*d] (upstream dX' on entry) by
 * the gradient of the old streams. */
void mhc_post_backward(const Config *c, const float *X, const float *f, const float *post, const float *comb, int64_t T,
                       float *dX, float *df, float *dpost, float *dcomb) {
    const int n = c->hc_mult;
    const int64_t d = c->dim;
    float *up = xmalloc(sizeof(float) * (size_t)(n * d));
    for (int64_t t = 0; t < T; t++) {
        float *dxt = dX + t * n * d;
        const float *xt = X + t * n * d, *ft = f + t * d, *ct = comb + t * n * n;
        memcpy(up, dxt, sizeof(float) * (size_t)(n * d));   /* dX'_k */
        memset(df + t * d, 0, sizeof(float) * (size_t)d);
        for (int k = 0; k < n; k++) {
            axpy_f32(df + t * d, post[t * n + k], up + k * d, d);
            dpost[t * n + k] = dot_f32(up + k * d, ft, d);
        }
        for (int j = 0; j < n; j++) {
            float *dxj = dxt + j * d;
            memset(dxj, 0, sizeof(float) * (size_t)d);
            for (int k = 0; k < n; k++) {
                dcomb[t * n * n + j * n + k] = dot_f32(up + k * d, xt + j * d, d);
                axpy_f32(dxj, ct[j * n + k], up + k * d, d);
            }
        }
    }
    free(up);
}

/* Backward of hc_head: y = Σ pre_i X_i with pre = sigmoid(scale*m + base) + hc_eps. Adds to dX,
 * dfn [n, n*d], dbase [n], dscale [1] (NULL to skip). */
void hc_head_backward(const Config *c, const Mat *fn, const float *base, const float *scale, const float *X, int64_t T,
                      const float *dy, float *dX, float *dfn, float *dbase, float *dscale) {
    const int n = c->hc_mult;
    const int64_t d = c->dim;
    float *mixes = xmalloc(sizeof(float) * (size_t)(T * n));
    float *dm = xmalloc(sizeof(float) * (size_t)(T * n));
    hc_mixes(c, fn, X, T, mixes);
    for (int64_t t = 0; t < T; t++)
        for (int i = 0; i < n; i++) {
            const float *xi = X + t * n * d + i * d;
            const double s = 1.0 / (1.0 + exp(-((double)scale[0] * mixes[t * n + i] + base[i])));
            const float pre = (float)s + (float)c->hc_eps;
            const double dpre = dot_f32(dy + t * d, xi, d), g = dpre * s * (1 - s);
            axpy_f32(dX + t * n * d + i * d, pre, dy + t * d, d);
            dm[t * n + i] = (float)(g * scale[0]);
            if (dscale) dscale[0] += (float)(g * mixes[t * n + i]);
            if (dbase) dbase[i] += (float)g;
        }
    hc_mixes_backward(c, fn, X, T, dm, dX, dfn);
    free(mixes);
    free(dm);
}
