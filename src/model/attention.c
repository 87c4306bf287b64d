/* Attention of one V4 layer (spec "Attention"): MQA with one shared key=value vector per
 * token, q-LoRA, per-head RMS, partial interleaved RoPE, a sliding window plus compressed
 * entries (all visible ones for HCA, the indexer's top-k for CSA), attention sinks, inverse
 * RoPE on the output and a grouped low-rank output projection.
 *
 * A call processes T tokens at positions t0..t0+T-1 (prefill chunk or one decode token).
 * Window keys before t0 come from the ring (slot = position mod W); keys inside the chunk come
 * from the chunk itself, so every query of the chunk can run in parallel. */
#include <cblas.h>
#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "../dsv4_internal.h"

/* All heads h0..h0+nh of one query against the same keys (spec: MQA, one kv vector shared by
 * every head), key-outer so each key is read once per query, not once per head:
 *   o_h = Σ_s e^{ℓ_s−M} kv_s / (Σ_s e^{ℓ_s−M} + e^{sink_h−M}),   ℓ_s = q_h·kv_s / sqrt(D).
 * scores holds nh*nk floats; on return, the probabilities p_{h,s}. */
void attend_heads(const float *q, int nh, const float *const *keys, int64_t nk, int D, const float *sinks, float *scores,
                  float *o) {
    const float scale = 1.0f / sqrtf((float)D);
    for (int64_t s = 0; s < nk; s++)
        for (int h = 0; h < nh; h++) scores[h * nk + s] = dot_f32(q + (int64_t)h * D, keys[s], D) * scale;
    float den[nh];
    for (int h = 0; h < nh; h++) {
        float *sc = scores + h * nk, mx = -INFINITY;
        for (int64_t s = 0; s < nk; s++) mx = fmaxf(mx, sc[s]);
        double sum = exp((double)sinks[h] - mx);
        for (int64_t s = 0; s < nk; s++) { sc[s] = expf(sc[s] - mx); sum += sc[s]; }
        den[h] = (float)(1.0 / sum);
    }
    memset(o, 0, sizeof(float) * (size_t)nh * (size_t)D);
    for (int64_t s = 0; s < nk; s++)
        for (int h = 0; h < nh; h++) axpy_f32(o + (int64_t)h * D, scores[h * nk + s], keys[s], D);
    for (int h = 0; h < nh; h++) {
        for (int i = 0; i < D; i++) o[(int64_t)h * D + i] *= den[h];
        /* leave the probabilities behind: training reads them as the indexer's KL target */
        for (int64_t s = 0; s < nk; s++) scores[h * nk + s] *= den[h];
    }
}

/* Backward of attend_heads for one query: do [nh, D] -> dq [nh, D] (written), dkeys[s] (added:
 * each key is also the value), dsinks [nh] (added). scores holds nh*nk floats of scratch.
 *   p_s = e^{ℓ_s}/Z, Z = Σ e^{ℓ} + e^{sink}: dℓ_s = p_s (dp_s − Σ_s' p_s' dp_s'), dp_s = do·k_s,
 *   dsink = −p_sink Σ_s p_s dp_s (the sink has no value). */
void attend_heads_backward(const float *q, int nh, const float *const *keys, int64_t nk, int D, const float *sinks,
                           const float *dout, float *scores, float *dq, float *const *dkeys, float *dsinks) {
    const float scale = 1.0f / sqrtf((float)D);
    for (int h = 0; h < nh; h++) {
        const float *qh = q + (int64_t)h * D, *doh = dout + (int64_t)h * D;
        float *p = scores + h * nk, mx = -INFINITY;
        for (int64_t s = 0; s < nk; s++) { p[s] = dot_f32(qh, keys[s], D) * scale; mx = fmaxf(mx, p[s]); }
        double z = exp((double)sinks[h] - mx);
        for (int64_t s = 0; s < nk; s++) z += exp((double)p[s] - mx);
        double pdp = 0;   /* Σ p_s dp_s */
        for (int64_t s = 0; s < nk; s++) {
            p[s] = (float)(exp((double)p[s] - mx) / z);
            pdp += (double)p[s] * dot_f32(doh, keys[s], D);
            axpy_f32(dkeys[s], p[s], doh, D);   /* the value path */
        }
        dsinks[h] += (float)(-exp((double)sinks[h] - mx) / z * pdp);
        float *dqh = dq + (int64_t)h * D;
        memset(dqh, 0, sizeof(float) * (size_t)D);
        for (int64_t s = 0; s < nk; s++) {
            const float dl = (float)(p[s] * (dot_f32(doh, keys[s], D) - pdp)) * scale;
            axpy_f32(dqh, dl, keys[s], D);
            axpy_f32(dkeys[s], dl, qh, D);
        }
    }
}

void attn_save_free(AttnSave *s) {
    void *p[] = {s->cq_raw, s->cq, s->q_raw, s->q, s->kv_raw, s->kv, s->comp.a, s->comp.z, s->comp.pooled, s->icomp.a,
                 s->icomp.z, s->icomp.pooled, s->ent, s->ikeys, s->iq, s->iw, s->sel, s->n_sel, s->kl_target, s->o, s->u};
    for (size_t i = 0; i < sizeof p / sizeof p[0]; i++) free(p[i]);
    memset(s, 0, sizeof *s);
}

/* Prefill: a block of consecutive queries shares most of its window keys and its compressed
 * entries (HCA: every visible one; CSA: the indexer's picks, which overlap heavily between
 * neighbouring queries), so the block's scores and outputs are matrix products (sgemm)
 * instead of one dot product per (query, head, key):
 *   S = Q_h K^T over the block's window keys (gathered once) and its entries, masked per
 *   query to its own window and its own entries, softmax with the sink, O_h = P K.
 * Same formula as attend_heads; only the order of the sums differs. A CSA block whose picks
 * spread over more than 2 top-k entries in all goes query by query instead. o [T, qd]. */
#define ATTN_BLOCK 32
typedef struct {
    const float *q, *kv, *ring, *comp, *sinks;
    int H, D, W, ratio;
    int64_t T, t0;
    const int64_t *sel, *n_sel;   /* CSA: the indexer's picks per query (sel_max apart); NULL for HCA */
    int64_t sel_max, n_comp_max;
} AttnBlocks;

/* The keys the query at `pos` attends, into keys: its window (from the chunk's kv at and after
 * t0, from the ring before), then n compressed entries — those listed in pick, or the first n
 * when pick is NULL. Returns their number. */
static int64_t query_keys(const float *kv, const float *ring, const float *comp, int W, int D, int64_t t0, int64_t pos,
                          const int64_t *pick, int64_t n, const float **keys) {
    int64_t nk = 0;
    for (int64_t s = pos - W + 1 < 0 ? 0 : pos - W + 1; s <= pos; s++) keys[nk++] = s >= t0 ? kv + (s - t0) * D : ring + (s % W) * D;
    for (int64_t i = 0; i < n; i++) keys[nk++] = comp + (pick ? pick[i] : i) * D;
    return nk;
}

/* Decode attention of one query (all heads, no training): its keys split in contiguous ranges
 * (flash-decoding), each key read once for every head of a group; the ranges' partial softmax
 * states (max m, sum l, unnormalised output) merge in range order with the sink:
 *   M = max(sink, max_r m_r), o = Σ_r e^{m_r−M} acc_r / (e^{sink−M} + Σ_r e^{m_r−M} l_r).
 * The ranges (one per DECODE_KEYS_PER_RANGE keys, at most DECODE_RANGES) are taken by the
 * threads as they come free, so a thread slowed by the rest of the machine does not hold the
 * step back. With fewer ranges than threads the heads are split into groups too (each head's
 * arithmetic is the same in any group). The ranges depend only on the key count, so a query gets
 * the same result alone or beside others and at any thread count (speculative verification
 * compares them bit for bit). */
#define DECODE_KEYS_PER_RANGE 512
#define DECODE_RANGES 16
typedef struct {
    const float *q; int H, D; const float *const *keys; int64_t nk, nr, ng; float scale; float *m, *l, *acc;
    atomic_int_fast64_t next;   /* the next (range, head group) unit to take */
} DecodeAttn;

static void attend_decode_share(void *arg, int id, int nt) {
    (void)id; (void)nt;
    DecodeAttn *w = arg;
    const int64_t H = w->H, D = w->D;
    for (int64_t u; (u = atomic_fetch_add_explicit(&w->next, 1, memory_order_relaxed)) < w->nr * w->ng;) {
        const int64_t r = u / w->ng, g = u % w->ng, h0 = H * g / w->ng, h1 = H * (g + 1) / w->ng;
        const int64_t a = w->nk * r / w->nr, b = w->nk * (r + 1) / w->nr;
        attend_partial_avx2(w->q + h0 * D, (int)(h1 - h0), (int)D, w->keys + a, b - a, w->scale, w->m + r * H + h0,
                            w->l + r * H + h0, w->acc + (r * H + h0) * D);
    }
}

void attend_decode(const float *q, int H, int D, const float *const *keys, int64_t nk, const float *sinks, float *o) {
    const int64_t nthr = team_threads(), by_keys = nk / DECODE_KEYS_PER_RANGE;
    const int64_t nr = by_keys < 1 ? 1 : by_keys < DECODE_RANGES ? by_keys : DECODE_RANGES;   /* key ranges */
    const int64_t ng = nr >= nthr ? 1 : (nthr + nr - 1) / nr < H ? (nthr + nr - 1) / nr : H;   /* head groups */
    float *m = xmalloc(sizeof(float) * (size_t)(nr * H)), *l = xmalloc(sizeof(float) * (size_t)(nr * H));
    float *acc = xmalloc(sizeof(float) * (size_t)(nr * H * D));
    DecodeAttn w = {q, H, D, keys, nk, nr, ng, 1.0f / sqrtf((float)D), m, l, acc, 0};
    team_run(attend_decode_share, &w, (int)(nr * ng < nthr ? nr * ng : nthr));
    for (int h = 0; h < H; h++) {
        float M = sinks[h];
        for (int64_t r = 0; r < nr; r++) M = fmaxf(M, m[r * H + h]);
        double den = exp((double)sinks[h] - M);
        float *oh = o + (int64_t)h * D;
        memset(oh, 0, sizeof(float) * (size_t)D);
        for (int64_t r = 0; r < nr; r++) {
            if (m[r * H + h] == -INFINITY) continue;   /* an empty range */
            const float f = expf(m[r * H + h] - M);
            den += (double)f * l[r * H + h];
            axpy_f32(oh, f, acc + (r * H + h) * D, D);
        }
        const float inv = (float)(1.0 / den);
        for (int i = 0; i < D; i++) oh[i] *= inv;
    }
    free(m); free(l); free(acc);
}

static void attend_block_queries(const AttnBlocks *a, int64_t ta, int64_t tb, const float **keys, float *scores, float *o) {
    const int64_t qd = (int64_t)a->H * a->D;
    for (int64_t t = ta; t < tb; t++) {
        const int64_t nk = query_keys(a->kv, a->ring, a->comp, a->W, a->D, a->t0, a->t0 + t, a->sel + t * a->sel_max, a->n_sel[t], keys);
        attend_heads(a->q + t * qd, a->H, keys, nk, a->D, a->sinks, scores, o + t * qd);
    }
}

static void attend_blocks(const AttnBlocks *a, float *o) {
    const int H = a->H, D = a->D, W = a->W;
    const int64_t qd = (int64_t)H * D, T = a->T, t0 = a->t0, nblocks = (T + ATTN_BLOCK - 1) / ATTN_BLOCK;
    const float scale = 1.0f / sqrtf((float)D);
#pragma omp parallel
    {
        const int64_t ncap = a->sel ? 2 * a->sel_max : 0;   /* CSA: most entries a block takes as one */
        float *kbuf = xmalloc(sizeof(float) * (size_t)((W + ATTN_BLOCK + ncap) * D));
        int64_t *pos_in_union = a->sel ? xmalloc(sizeof(int64_t) * (size_t)(a->n_comp_max ? a->n_comp_max : 1)) : NULL;
        int64_t *uni = a->sel ? xmalloc(sizeof(int64_t) * (size_t)(ncap ? ncap : 1)) : NULL;
        uint8_t *allowed = a->sel ? xmalloc((size_t)(ATTN_BLOCK * (ncap ? ncap : 1))) : NULL;
        const float **keys = a->sel ? xmalloc(sizeof(float *) * (size_t)(W + a->sel_max)) : NULL;
        float *qscores = a->sel ? xmalloc(sizeof(float) * (size_t)(H * (W + a->sel_max))) : NULL;
        for (int64_t i = 0; pos_in_union && i < a->n_comp_max; i++) pos_in_union[i] = -1;
        float *S = NULL;
        int64_t S_cap = 0;
#pragma omp for schedule(dynamic, 1)
        for (int64_t b = 0; b < nblocks; b++) {
            const int64_t ta = b * ATTN_BLOCK, tb = ta + ATTN_BLOCK < T ? ta + ATTN_BLOCK : T, nq = tb - ta;
            const int64_t lo = t0 + ta - W + 1 > 0 ? t0 + ta - W + 1 : 0, hi = t0 + tb - 1, nw = hi - lo + 1;
            int64_t nc = a->ratio ? (hi + 1) / a->ratio : 0;
            const float *ent = a->comp;
            if (a->sel) {   /* the union of the block's picks, gathered after the window keys */
                int64_t nu = 0, too_many = 0;
                for (int64_t t = ta; t < tb && !too_many; t++)
                    for (int64_t i = 0; i < a->n_sel[t]; i++) {
                        const int64_t e = a->sel[t * a->sel_max + i];
                        if (pos_in_union[e] >= 0) continue;
                        if (nu == ncap) { too_many = 1; break; }
                        pos_in_union[e] = nu;
                        uni[nu++] = e;
                    }
                if (!too_many) {
                    memset(allowed, 0, (size_t)(nq * nu));
                    for (int64_t t = ta; t < tb; t++)
                        for (int64_t i = 0; i < a->n_sel[t]; i++) allowed[(t - ta) * nu + pos_in_union[a->sel[t * a->sel_max + i]]] = 1;
                    for (int64_t j = 0; j < nu; j++) memcpy(kbuf + (nw + j) * D, a->comp + uni[j] * D, sizeof(float) * (size_t)D);
                }
                for (int64_t j = 0; j < nu; j++) pos_in_union[uni[j]] = -1;
                if (too_many) { attend_block_queries(a, ta, tb, keys, qscores, o); continue; }
                nc = nu;
                ent = kbuf + nw * D;
            }
            const int64_t nk = nw + nc;
            for (int64_t s = lo; s <= hi; s++)
                memcpy(kbuf + (s - lo) * D, s >= t0 ? a->kv + (s - t0) * D : a->ring + (s % W) * D, sizeof(float) * (size_t)D);
            if (nq * nk > S_cap) { free(S); S_cap = nq * nk; S = xmalloc(sizeof(float) * (size_t)S_cap); }
            for (int h = 0; h < H; h++) {
                const float *Qh = a->q + ta * qd + (int64_t)h * D;
                float *Oh = o + ta * qd + (int64_t)h * D;
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (blasint)nq, (blasint)nw, D, scale, Qh, (blasint)qd, kbuf, D,
                            0.0f, S, (blasint)nk);
                if (nc)
                    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (blasint)nq, (blasint)nc, D, scale, Qh, (blasint)qd, ent, D,
                                0.0f, S + nw, (blasint)nk);
                for (int64_t t = 0; t < nq; t++) {
                    const int64_t pos = t0 + ta + t, wlo = pos - W + 1 - lo, whi = pos - lo, vis = a->ratio ? (pos + 1) / a->ratio : 0;
                    float *row = S + t * nk;
                    /* outside this query's window or not among its entries: no weight */
                    for (int64_t k = 0; k < wlo; k++) row[k] = -INFINITY;
                    for (int64_t k = whi + 1; k < nw; k++) row[k] = -INFINITY;
                    if (a->sel) {
                        for (int64_t k = 0; k < nc; k++) if (!allowed[t * nc + k]) row[nw + k] = -INFINITY;
                    } else {
                        for (int64_t k = vis; k < nc; k++) row[nw + k] = -INFINITY;
                    }
                    softmax_sink(row, nk, a->sinks[h]);
                }
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (blasint)nq, D, (blasint)nw, 1.0f, S, (blasint)nk, kbuf, D, 0.0f,
                            Oh, (blasint)qd);
                if (nc)
                    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (blasint)nq, D, (blasint)nc, 1.0f, S + nw, (blasint)nk, ent, D,
                                1.0f, Oh, (blasint)qd);
            }
        }
        free(kbuf); free(S); free(pos_in_union); free(uni); free(allowed); free(keys); free(qscores);
    }
}

/* The per-query path (training, and decode without the vector kernels): (query, head group)
 * units taken by the threads as they come free; kl_target (training) also gets the indexer's
 * target of each query. */
typedef struct {
    const float *q, *kv, *ring, *comp, *sinks; const int64_t *sel, *n_sel; float *kl_target;
    int H, D, W, NG; int64_t T, t0, sel_max, max_keys; float *o;
    atomic_int_fast64_t next;
} QueryAttn;

static void attend_queries_share(void *arg, int id, int nt) {
    (void)id; (void)nt;
    QueryAttn *w = arg;
    const int H = w->H, D = w->D, NG = w->NG;
    const int64_t qd = (int64_t)H * D;
    const float **keys = xmalloc(sizeof(float *) * (size_t)w->max_keys);
    float *scores = xmalloc(sizeof(float) * (size_t)(w->max_keys * ((H + NG - 1) / NG)));
    for (int64_t u; (u = atomic_fetch_add_explicit(&w->next, 1, memory_order_relaxed)) < w->T * NG;) {
        const int64_t t = u / NG;
        const int g = (int)(u % NG);
        const int64_t nk = query_keys(w->kv, w->ring, w->comp, w->W, D, w->t0, w->t0 + t, w->sel ? w->sel + t * w->sel_max : NULL,
                                      w->n_sel[t], keys);
        const int h0 = g * H / NG, h1 = (g + 1) * H / NG;
        attend_heads(w->q + t * qd + (int64_t)h0 * D, h1 - h0, keys, nk, D, w->sinks + h0, scores, w->o + t * qd + (int64_t)h0 * D);
        if (w->kl_target && w->n_sel[t] > 0) {
            /* the indexer's training target (V3.2): the attention on each selected entry, summed
             * over heads and normalised over the selection */
            const int64_t ns = w->n_sel[t], nw = nk - ns;
            float *P = w->kl_target + t * w->sel_max;
            double sum = 0;
            for (int64_t i = 0; i < ns; i++) {
                double p = 0;
                for (int hh = 0; hh < H; hh++) p += scores[(int64_t)hh * nk + nw + i];
                P[i] = (float)p;
                sum += p;
            }
            for (int64_t i = 0; i < ns; i++) P[i] = sum > 0 ? (float)(P[i] / sum) : (float)(1.0 / (double)ns);
        }
    }
    free(keys);
    free(scores);
}

/* One token's q heads [H, D] and kv [D]: each q head RMS-normalised, kv by its norm, both
 * rotated on the last r dims by the token's rope_table cs. */
static void norm_rope_token(const dsv4_model *m, const LayerW *L, float *q, float *kv, const float *cs) {
    const Config *cf = &m->cfg;
    const int H = cf->n_heads, D = cf->head_dim, r = cf->rope_head_dim;
    for (int hh = 0; hh < H; hh++) {
        float *qh = q + (int64_t)hh * D;
        rmsnorm(qh, qh, NULL, D, cf->norm_eps);
        rope_apply(qh + D - r, r, cs, 0);
    }
    rmsnorm(kv, kv, L->kv_norm, D, cf->norm_eps);
    rope_apply(kv + D - r, r, cs, 0);
    /* official QAT: FP8 on the non-RoPE dims; the RoPE dims keep their precision */
    if (m->quant) fake_quant_fp8(kv, D - r, 64);
}

/* save (training, t0 = 0): also keep the intermediates the backward needs (AttnSave). */
int attention_forward(const dsv4_model *m, const LayerW *L, LayerCache *c, const float *h, int64_t T, int64_t t0,
                      float *out, AttnSave *save) {
    const Config *cf = &m->cfg;
    const int H = cf->n_heads, D = cf->head_dim, r = cf->rope_head_dim, W = cf->window_size;
    const int ratio = L->ratio, G = cf->o_groups, R = cf->o_lora_rank;
    const int64_t qd = (int64_t)H * D;

    /* q path: c_q = RMSNorm_q(x·wq_a); q_h = (c_q·wq_b)_h / rms(q_h); RoPE on the last r dims */
    float *cq = xmalloc(sizeof(float) * (size_t)(T * cf->q_lora_rank));
    float *q = xmalloc(sizeof(float) * (size_t)(T * qd));
    float *kv = xmalloc(sizeof(float) * (size_t)(T * D));
    /* c_q's and kv's projections read the same input: one pass over both in decode */
    const LinearJob qkv[2] = {{&L->wq_a, cq, cf->q_lora_rank, h, cf->dim, 0, 0}, {&L->wkv, kv, D, h, cf->dim, 0, 0}};
    model_linear_batch(m, qkv, 2, T);
    if (save) save->cq_raw = dup_floats(cq, T * cf->q_lora_rank);
    for (int64_t t = 0; t < T; t++) rmsnorm(cq + t * cf->q_lora_rank, cq + t * cf->q_lora_rank, L->q_norm, cf->q_lora_rank, cf->norm_eps);
    if (save) save->cq = dup_floats(cq, T * cf->q_lora_rank);
    model_linear(m, q, qd, cq, cf->q_lora_rank, T, &L->wq_b, 0, qd);
    /* kv = RMSNorm_kv(x·wkv) (projected above), one vector that is both key and value */
    if (save) { save->q_raw = dup_floats(q, T * qd); save->kv_raw = dup_floats(kv, T * D); }
    float *cs = xmalloc(sizeof(float) * (size_t)(T * (r ? r : 1)));   /* each token's RoPE cos, sin: q, kv, the indexer's q, o */
    if (T == 1) {   /* one token (decode): not worth a parallel region */
        rope_table(cs, r, L->rope_freq, t0);
        norm_rope_token(m, L, q, kv, cs);
    } else {
#pragma omp parallel for schedule(static)
        for (int64_t t = 0; t < T; t++) {
            rope_table(cs + t * r, r, L->rope_freq, t0 + t);
            norm_rope_token(m, L, q + t * qd, kv + t * D, cs + t * r);
        }
    }
    if (save) { save->q = dup_floats(q, T * qd); save->kv = dup_floats(kv, T * D); }

    /* compressed entries and indexer keys for the tokens of this chunk */
    float *q_idx = NULL, *w_idx = NULL;
    if (L->has_compressor) {
        compressor_forward(m, &L->comp, L->rope_freq, 0, h, T, t0, c->comp_a, c->comp_z, c->comp, save ? &save->comp : NULL,
                           c->undo ? c->undo->comp : NULL);
        if (save) save->ent = dup_floats(c->comp, (T / ratio) * D);
    }
    if (L->has_indexer) {
        q_idx = xmalloc(sizeof(float) * (size_t)(T * cf->index_n_heads * cf->index_head_dim));
        w_idx = xmalloc(sizeof(float) * (size_t)(T * cf->index_n_heads));
        indexer_forward(m, L, c, h, cq, cs, T, t0, q_idx, w_idx, save);
    }

    /* per query: the window keys, then the compressed entries it may see */
    const int64_t n_comp_max = ratio ? (t0 + T) / ratio : 0;
    const int64_t sel_max = L->has_indexer ? (cf->index_topk < n_comp_max ? cf->index_topk : n_comp_max) : n_comp_max;
    int64_t *sel = L->has_indexer ? xmalloc(sizeof(int64_t) * (size_t)(T * (sel_max ? sel_max : 1))) : NULL;
    int64_t *n_sel = xcalloc((size_t)T, sizeof(int64_t));
    if (L->has_indexer && T > 4 && !save) {   /* prefill: blocks of queries by sgemm */
        const double ts = now_sec();
        indexer_select_prefill(m, c, q_idx, w_idx, T, t0, ratio, sel, sel_max, n_sel);
        c->indexer_prefill_s += now_sec() - ts;
    } else if (L->has_indexer && T <= LINEAR_SMALL_T) {   /* decode, verification: each query's scoring split */
        float *scratch = xmalloc(sizeof(float) * (size_t)(2 * (n_comp_max ? n_comp_max : 1)));
        for (int64_t t = 0; t < T; t++)
            n_sel[t] = indexer_topk(m, L, c, q_idx + t * cf->index_n_heads * cf->index_head_dim, w_idx + t * cf->index_n_heads,
                                    (t0 + t + 1) / ratio, sel + t * sel_max, scratch);
        free(scratch);
    } else if (L->has_indexer) {
#pragma omp parallel
        {
            float *scratch = xmalloc(sizeof(float) * (size_t)(2 * (n_comp_max ? n_comp_max : 1)));
#pragma omp for schedule(dynamic, 4)
            for (int64_t t = 0; t < T; t++) {
                const int64_t nvis = (t0 + t + 1) / ratio;
                n_sel[t] = indexer_topk(m, L, c, q_idx + t * cf->index_n_heads * cf->index_head_dim,
                                        w_idx + t * cf->index_n_heads, nvis, sel + t * sel_max, scratch);
            }
            free(scratch);
        }
    } else if (ratio) {
        for (int64_t t = 0; t < T; t++) n_sel[t] = (t0 + t + 1) / ratio;
    }

    /* queries in parallel; with fewer queries than threads (decode), heads are split too
     * (not when training: the indexer's target sums every head of a query) */
    float *o = xmalloc(sizeof(float) * (size_t)(T * qd));
    const int64_t max_keys = W + sel_max;
    const int nthr = team_threads();
    const int NG = T >= nthr || save ? 1 : (H < nthr ? H : nthr);   /* head groups per query */
    float *kl_target = save && save->want_kl && L->has_indexer ? xcalloc((size_t)(T * (sel_max ? sel_max : 1)), sizeof(float)) : NULL;
    /* a prefill chunk: blocks of queries as matrix products; decode (and speculative
     * verification, up to 4 tokens) and training keep the per-query path */
    const int blocked = T > 4 && !save;
    if (blocked) {
        const AttnBlocks ab = {.q = q, .kv = kv, .ring = c->ring, .comp = c->comp, .sinks = L->attn_sink, .H = H, .D = D, .W = W,
                               .ratio = ratio, .T = T, .t0 = t0, .sel = L->has_indexer ? sel : NULL, .n_sel = n_sel,
                               .sel_max = sel_max, .n_comp_max = n_comp_max};
        attend_blocks(&ab, o);
    } else if (!save && cpu_has_avx2() && D % 8 == 0) {   /* decode: one query at a time, its keys split */
        const float **keys = xmalloc(sizeof(float *) * (size_t)max_keys);
        for (int64_t t = 0; t < T; t++) {
            const int64_t nk = query_keys(kv, c->ring, c->comp, W, D, t0, t0 + t, L->has_indexer ? sel + t * sel_max : NULL, n_sel[t], keys);
            attend_decode(q + t * qd, H, D, keys, nk, L->attn_sink, o + t * qd);
        }
        free(keys);
    } else {
        QueryAttn w = {.q = q, .kv = kv, .ring = c->ring, .comp = c->comp, .sinks = L->attn_sink, .sel = L->has_indexer ? sel : NULL,
                       .n_sel = n_sel, .kl_target = kl_target, .H = H, .D = D, .W = W, .NG = NG, .T = T, .t0 = t0,
                       .sel_max = sel_max, .max_keys = max_keys, .o = o, .next = 0};
        team_run(attend_queries_share, &w, team_threads());
    }
    /* inverse RoPE on each head's output (spec: the rotation the values carried is undone) */
    if (T == 1) {
        for (int hh = 0; hh < H; hh++) rope_apply(o + (int64_t)hh * D + D - r, r, cs, 1);
    } else {
#pragma omp parallel for schedule(static)
        for (int64_t t = 0; t < T; t++)
            for (int hh = 0; hh < H; hh++) rope_apply(o + t * qd + (int64_t)hh * D + D - r, r, cs + t * r, 1);
    }
    free(cs);
    /* the chunk's keys enter the ring once every query of the chunk has read the old ones */
    for (int64_t t = T > W ? T - W : 0; t < T; t++)
        memcpy(c->ring + ((t0 + t) % W) * D, kv + t * D, sizeof(float) * (size_t)D);

    /* grouped low-rank output: u_g = wo_a[g] · concat_{h in g} o_h; out = wo_b · [u_1..u_G].
     * The official code runs wo_a as a plain bf16 einsum, without activation rounding. */
    float *u = xmalloc(sizeof(float) * (size_t)(T * G * R));
    const int64_t gin = qd / G;
    LinearJob *wo = xmalloc(sizeof(LinearJob) * (size_t)G);   /* the groups in one pass (decode) */
    for (int g = 0; g < G; g++) wo[g] = (LinearJob){&L->wo_a, u + (int64_t)g * R, (int64_t)G * R, o + g * gin, qd, (int64_t)g * R, R};
    linear_batch(wo, G, T);
    free(wo);
    model_linear(m, out, cf->dim, u, (int64_t)G * R, T, &L->wo_b, 0, cf->dim);
    if (save) {
        save->o = dup_floats(o, T * qd);
        save->u = dup_floats(u, T * G * R);
        save->sel = sel; save->n_sel = n_sel; save->sel_max = sel_max; save->kl_target = kl_target;
        sel = NULL; n_sel = NULL;
    }

    free(cq); free(q); free(kv); free(q_idx); free(w_idx); free(sel); free(n_sel); free(o); free(u);
    return 0;
}
