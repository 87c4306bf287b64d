/* Lightning indexer (spec "Lightning indexer", V3.2 DSA): picks, for each query of a CSA
 * (ratio 4) layer, the index_topk compressed entries with the highest score
 *   score(t, w) = Σ_h w_{t,h} ReLU(q^I_{t,h} · K^I_w).
 * It has its own compressor (width index_head_dim) and reuses the attention's c_q. The
 * Hadamard rotation of q and K is the identity on scores in exact arithmetic; it is applied
 * only with the quantisation-aware rounding, where it spreads outliers before FP4. */
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "../dsv4_internal.h"

void indexer_forward(const dsv4_model *m, const LayerW *L, LayerCache *c, const float *h, const float *cq,
                     int64_t T, int64_t t0, float *q_idx, float *w_idx, AttnSave *save) {
    const Config *cf = &m->cfg;
    const int HI = cf->index_n_heads, I = cf->index_head_dim, r = cf->rope_head_dim;
    model_linear(m, q_idx, (int64_t)HI * I, cq, cf->q_lora_rank, T, &L->idx.wq_b, 0, (int64_t)HI * I);
    for (int64_t t = 0; t < T; t++)
        for (int hh = 0; hh < HI; hh++) {
            float *q = q_idx + (t * HI + hh) * I;
            rope_rotate(q + I - r, r, L->rope_freq, t0 + t, 0);
            if (m->quant) { hadamard_f32(q, I); fake_quant_fp4(q, I, 32); }
        }
    compressor_forward(m, &L->idx.comp, L->rope_freq, 1, h, T, t0, c->idx_a, c->idx_z, c->idx_keys, save ? &save->icomp : NULL,
                       c->undo ? c->undo->idx : NULL);
    linear(w_idx, HI, h, cf->dim, T, &L->idx.weights_proj, 0, HI);
    const float s = (float)(1.0 / sqrt((double)I) / sqrt((double)HI));
    for (int64_t i = 0; i < T * HI; i++) w_idx[i] *= s;
    if (save) {
        save->iq = dup_floats(q_idx, T * HI * I);
        save->iw = dup_floats(w_idx, T * HI);
        save->ikeys = dup_floats(c->idx_keys, (T / L->ratio) * I);
    }
}

/* Top-k of the n_visible entries for one query; returns how many were selected (ascending
 * entry order). scratch holds n_visible floats. */
int64_t indexer_topk(const dsv4_model *m, const LayerW *L, const LayerCache *c, const float *q, const float *wt,
                     int64_t n_visible, int64_t *selected, float *scratch) {
    (void)L;
    const Config *cf = &m->cfg;
    const int HI = cf->index_n_heads, I = cf->index_head_dim;
    const int64_t k = cf->index_topk < n_visible ? cf->index_topk : n_visible;
    if (k <= 0) return 0;
    /* Called once per query: in parallel over entries when not already inside a parallel
     * region (decode), serially per query when prefill runs queries in parallel. */
#pragma omp parallel for schedule(static) if (n_visible >= 1024 && !omp_in_parallel())
    for (int64_t w = 0; w < n_visible; w++) {
        const float *key = c->idx_keys + w * I;
        float s = 0;
        for (int hh = 0; hh < HI; hh++) {
            const float d = dot_f32(q + (int64_t)hh * I, key, I);
            if (d > 0) s += wt[hh] * d;
        }
        scratch[w] = s;
    }
    topk_indices(scratch, n_visible, k, selected);
    return k;
}
