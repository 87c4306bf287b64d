/* KV compressor (spec "Compressor"): every `ratio` tokens become one entry, a per-channel
 * softmax-gated sum of their projections. Ratio 4 (CSA) uses overlapping windows (coff = 2):
 * the first half of the channels pools the previous window, the second half the current one.
 *
 * The decode state holds the last coff*ratio rows of a = x·wkv and z = x·wgate + ape, laid out
 * as the official Compressor's kv_state/score_state: with overlap, rows [0, ratio) are the
 * previous window and rows [ratio, 2 ratio) the current one. Prefill walks the same state
 * token by token, so a prefill and a token-by-token decode produce identical entries. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../dsv4_internal.h"

/* Pools the full window in the state into entry[width] (before norm and RoPE). */
void compressor_pool(const CompressorW *cw, const float *sa, const float *sz, float *entry) {
    const int m = cw->ratio, D = cw->width, W2 = cw->coff * D;
    for (int ch = 0; ch < D; ch++) {
        /* candidates: (row, column) pairs of the state */
        float mx = -INFINITY;
        if (cw->coff == 1) {
            for (int j = 0; j < m; j++) mx = fmaxf(mx, sz[j * W2 + ch]);
            double num = 0, den = 0;
            for (int j = 0; j < m; j++) {
                const double p = exp((double)sz[j * W2 + ch] - mx);
                den += p;
                num += p * sa[j * W2 + ch];
            }
            entry[ch] = (float)(num / den);
        } else {
            for (int j = 0; j < m; j++) {
                mx = fmaxf(mx, sz[j * W2 + ch]);             /* previous window, first half */
                mx = fmaxf(mx, sz[(m + j) * W2 + D + ch]);   /* current window, second half */
            }
            double num = 0, den = 0;
            for (int j = 0; j < m; j++) {
                const float zp = sz[j * W2 + ch];
                if (zp != -INFINITY) {
                    const double p = exp((double)zp - mx);
                    den += p;
                    num += p * sa[j * W2 + ch];
                }
                const double q = exp((double)sz[(m + j) * W2 + D + ch] - mx);
                den += q;
                num += q * sa[(m + j) * W2 + D + ch];
            }
            entry[ch] = (float)(num / den);
        }
    }
}

/* Backward of pool_entry: dentry [width] -> dsa, dsz (added) over the same state rows.
 * entry_c = Σ_j p_j a_j with p = softmax_j(z): ∂/∂a_j = p_j, ∂/∂z_j = p_j (a_j − entry_c). */
void compressor_pool_backward(const CompressorW *cw, const float *sa, const float *sz, const float *dentry, float *dsa,
                              float *dsz) {
    const int m = cw->ratio, D = cw->width, W2 = cw->coff * D;
    int64_t *at = xmalloc(sizeof(int64_t) * (size_t)(2 * m));   /* the candidates of one channel */
    for (int ch = 0; ch < D; ch++) {
        int nc = 0;
        if (cw->coff == 1) for (int j = 0; j < m; j++) at[nc++] = (int64_t)j * W2 + ch;
        else {
            for (int j = 0; j < m; j++) if (sz[(int64_t)j * W2 + ch] != -INFINITY) at[nc++] = (int64_t)j * W2 + ch;
            for (int j = 0; j < m; j++) at[nc++] = (int64_t)(m + j) * W2 + D + ch;
        }
        float mx = -INFINITY;
        for (int i = 0; i < nc; i++) mx = fmaxf(mx, sz[at[i]]);
        double den = 0, entry = 0;
        for (int i = 0; i < nc; i++) { const double p = exp((double)sz[at[i]] - mx); den += p; entry += p * sa[at[i]]; }
        entry /= den;
        for (int i = 0; i < nc; i++) {
            const double p = exp((double)sz[at[i]] - mx) / den;
            dsa[at[i]] += (float)(p * dentry[ch]);
            dsz[at[i]] += (float)(p * (sa[at[i]] - entry) * dentry[ch]);
        }
    }
    free(at);
}

void compressor_forward(const dsv4_model *m, const CompressorW *cw, const double *rope_freq, int rotate_fp4,
                        const float *h, int64_t T, int64_t t0, float *state_a, float *state_z, float *entries,
                        CompSave *save, float *undo) {
    const Config *c = &m->cfg;
    const int ratio = cw->ratio, D = cw->width, W2 = cw->coff * D, r = c->rope_head_dim;
    float *a = xmalloc(sizeof(float) * (size_t)(T * W2));
    float *z = xmalloc(sizeof(float) * (size_t)(T * W2));
    /* The official compressor projections run in fp32 with no activation rounding. */
    const LinearJob jobs[2] = {{&cw->wkv, a, W2, h, c->dim, 0, 0}, {&cw->wgate, z, W2, h, c->dim, 0, 0}};
    linear_batch(jobs, 2, T);
    if (save) {   /* a training forward (t0 = 0): keep a, z + ape and the pooled entries */
        save->a = dup_floats(a, T * W2);
        save->z = xmalloc(sizeof(float) * (size_t)(T * W2 + 1));
        for (int64_t t = 0; t < T; t++)
            for (int k = 0; k < W2; k++) save->z[t * W2 + k] = z[t * W2 + k] + cw->ape[(t % ratio) * W2 + k];
        save->pooled = xmalloc(sizeof(float) * (size_t)((T / ratio) * D + 1));
    }
    for (int64_t t = 0; t < T; t++) {
        const int64_t pos = t0 + t;
        const int j = (int)(pos % ratio);
        if (undo && t == T - 1) {   /* the last token may be taken back (speculative decoding) */
            const int64_t n = (int64_t)cw->coff * ratio * W2;
            memcpy(undo, state_a, sizeof(float) * (size_t)n);
            memcpy(undo + n, state_z, sizeof(float) * (size_t)n);
        }
        const int slot = cw->coff == 2 ? ratio + j : j;
        memcpy(state_a + (int64_t)slot * W2, a + t * W2, sizeof(float) * (size_t)W2);
        float *zs = state_z + (int64_t)slot * W2;
        for (int k = 0; k < W2; k++) zs[k] = z[t * W2 + k] + cw->ape[(int64_t)j * W2 + k];
        if ((pos + 1) % ratio != 0) continue;
        const int64_t w = pos / ratio;
        float *entry = entries + w * D;
        compressor_pool(cw, state_a, state_z, entry);
        if (save) memcpy(save->pooled + w * D, entry, sizeof(float) * (size_t)D);
        rmsnorm(entry, entry, cw->norm, D, c->norm_eps);
        rope_rotate(entry + D - r, r, rope_freq, w * ratio, 0);
        if (m->quant) {
            if (rotate_fp4) { hadamard_f32(entry, D); fake_quant_fp4(entry, D, 32); }
            else fake_quant_fp8(entry, D - r, 64);
        }
        if (cw->coff == 2) {   /* the current window becomes the previous one */
            memcpy(state_a, state_a + (int64_t)ratio * W2, sizeof(float) * (size_t)(ratio * W2));
            memcpy(state_z, state_z + (int64_t)ratio * W2, sizeof(float) * (size_t)(ratio * W2));
        }
    }
    free(a);
    free(z);
}
