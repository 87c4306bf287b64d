/* Lightning indexer (spec "Lightning indexer", V3.2 DSA): picks, for each query of a CSA
 * (ratio 4) layer, the index_topk compressed entries with the highest score
 *   score(t, w) = Σ_h w_{t,h} ReLU(q^I_{t,h} · K^I_w).
 * It has its own compressor (width index_head_dim) and reuses the attention's c_q. The
 * Hadamard rotation of q and K is the identity on scores in exact arithmetic; it is applied
 * only with the quantisation-aware rounding, where it spreads outliers before FP4. */
#include <cblas.h>
#undef I   /* complex.h, through cblas.h: I is the indexer head dimension here */
#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "../dsv4_internal.h"

void indexer_forward(const dsv4_model *m, const LayerW *L, LayerCache *c, const float *h, const float *cq, const float *rope_cs,
                     int64_t T, int64_t t0, float *q_idx, float *w_idx, AttnSave *save) {
    const Config *cf = &m->cfg;
    const int HI = cf->index_n_heads, I = cf->index_head_dim, r = cf->rope_head_dim;
    model_linear(m, q_idx, (int64_t)HI * I, cq, cf->q_lora_rank, T, &L->idx.wq_b, 0, (int64_t)HI * I);
    for (int64_t t = 0; t < T; t++)
        for (int hh = 0; hh < HI; hh++) {
            float *q = q_idx + (t * HI + hh) * I;
            rope_apply(q + I - r, r, rope_cs + t * r, 0);
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

/* The k best of n contiguous keys [n, I] for one query (I % 8 == 0, the vector kernels present;
 * k <= n), ascending entry order; scratch holds 2n floats.
 * With many entries and more than one thread to hand (team_threads), the keys are cut into
 * ranges of at least PICK_RANGE keys (at most PICK_RANGES of them), handed to the threads as
 * they come free (a thread slowed by the rest of the machine does not hold the step back) and
 * in increasing order to each; a thread streams the scores of all its ranges through one
 * running selection (TopkStream). The union of the threads' top k holds the overall top k (an
 * entry beaten k times among one thread's entries is beaten k times overall), and one more
 * selection over it, in entry order, gives exactly what a single selection would — ties
 * included, whichever thread scored which range. Every score is computed the same way in any
 * range (ranges start at multiples of 8), so the picks do not depend on the thread count. */
#define PICK_RANGE 4096
#define PICK_RANGES 16
typedef struct {
    const float *q, *wt, *keys; int HI, I; int64_t n, k, nr; float *scratch; int64_t *cand, *n_cand; float *cand_v;
    atomic_int_fast64_t next;   /* the next range to take */
} PickWork;

static void indexer_pick_share(void *arg, int id, int nt) {
    (void)nt;
    PickWork *w = arg;
    const int64_t cap = 4 * w->k, n = w->n, nr = w->nr, I = w->I;
    float *buf = xmalloc(sizeof(float) * (size_t)(2 * cap));
    TopkStream st = {.v = buf, .tmp = buf + cap, .ix = xmalloc(sizeof(int64_t) * (size_t)cap), .cap = cap};
    topk_stream_reset(&st, w->k);
    /* each thread takes ranges in increasing order: its running selection sees its entries in order */
    for (int64_t r; (r = atomic_fetch_add_explicit(&w->next, 1, memory_order_relaxed)) < nr;) {
        const int64_t a = (n * r / nr) & ~(int64_t)7, b = r + 1 == nr ? n : (n * (r + 1) / nr) & ~(int64_t)7;
        indexer_scores_avx2(w->q, w->wt, w->HI, w->I, w->keys + a * I, b - a, w->scratch + a);
        topk_stream_scan(&st, w->scratch + a, b - a, a);
    }
    topk_stream_cut(&st);
    w->n_cand[id] = st.n < w->k ? st.n : w->k;
    memcpy(w->cand + id * w->k, st.ix, sizeof(int64_t) * (size_t)w->n_cand[id]);
    memcpy(w->cand_v + id * w->k, st.v, sizeof(float) * (size_t)w->n_cand[id]);   /* their scores, read in order by the merge */
    free(buf); free(st.ix);
}

void indexer_pick(const float *q, const float *wt, int HI, int I, const float *keys, int64_t n, int64_t k, int64_t *selected,
                  float *scratch) {
    int64_t nr = n / PICK_RANGE < PICK_RANGES ? n / PICK_RANGE : PICK_RANGES;
    const int64_t nt = team_threads() < nr ? team_threads() : nr;
    if (nt < 2 || 4 * k * nr > n) {
        indexer_scores_avx2(q, wt, HI, I, keys, n, scratch);
        topk_select(scratch, n, k, selected, scratch + n);
        return;
    }
    int64_t *cand = xmalloc(sizeof(int64_t) * (size_t)(nt * k)), *n_cand = xcalloc((size_t)nt, sizeof(int64_t));
    float *cand_v = xmalloc(sizeof(float) * (size_t)(nt * k));
    PickWork w = {q, wt, keys, HI, I, n, k, nr, scratch, cand, n_cand, cand_v, 0};
    team_run(indexer_pick_share, &w, (int)nt);
    /* the candidates in entry order, then one selection among them: each thread's list is in
     * entry order already (its ranges came in increasing order and the running selection
     * compacts in order), so the lists are merged, their scores beside them (cs) */
    int64_t *all = xmalloc(sizeof(int64_t) * (size_t)(nt * k)), n_all = 0, head[PICK_RANGES] = {0};
    float *cs = scratch + n;   /* free again: the threads' selections are done */
    for (;;) {
        int64_t from = -1;
        for (int64_t t = 0; t < nt; t++)
            if (head[t] < n_cand[t] && (from < 0 || cand[t * k + head[t]] < cand[from * k + head[from]])) from = t;
        if (from < 0) break;
        cs[n_all] = cand_v[from * k + head[from]];
        all[n_all++] = cand[from * k + head[from]++];
    }
    int64_t *pos = xmalloc(sizeof(int64_t) * (size_t)k);
    topk_select(cs, n_all, k, pos, cs + n_all);
    for (int64_t j = 0; j < k; j++) selected[j] = all[pos[j]];
    free(pos); free(all); free(cand); free(cand_v); free(n_cand);
}

/* The portable scores of n entries, an even share per thread. */
typedef struct { const float *q, *wt, *keys; int HI, I; int64_t n; float *out; } ScalarScores;

static void scalar_scores_share(void *arg, int id, int nt) {
    const ScalarScores *w = arg;
    for (int64_t e = w->n * id / nt; e < w->n * (id + 1) / nt; e++) {
        const float *key = w->keys + e * w->I;
        float s = 0;
        for (int hh = 0; hh < w->HI; hh++) {
            const float d = dot_f32(w->q + (int64_t)hh * w->I, key, w->I);
            if (d > 0) s += w->wt[hh] * d;
        }
        w->out[e] = s;
    }
}

/* Top-k of the n_visible entries for one query; returns how many were selected (ascending
 * entry order). scratch holds 2 * n_visible floats. Inside a parallel region (the queries of
 * a small batch in parallel) the same scores are selected serially. */
int64_t indexer_topk(const dsv4_model *m, const LayerW *L, const LayerCache *c, const float *q, const float *wt,
                     int64_t n_visible, int64_t *selected, float *scratch) {
    (void)L;
    const Config *cf = &m->cfg;
    const int HI = cf->index_n_heads, I = cf->index_head_dim;
    const int64_t k = cf->index_topk < n_visible ? cf->index_topk : n_visible;
    if (k <= 0) return 0;
    if (cpu_has_avx2() && I % 8 == 0) {
        indexer_pick(q, wt, HI, I, c->idx_keys, n_visible, k, selected, scratch);
        return k;
    }
    /* portable: each entry's score in turn, split over the threads where there are many */
    const ScalarScores w = {q, wt, c->idx_keys, HI, I, n_visible, scratch};
    team_run(scalar_scores_share, (void *)&w, n_visible >= 1024 ? team_threads() : 1);
    topk_select(scratch, n_visible, k, selected, scratch + n_visible);
    return k;
}

/* Prefill: the picks of every query of a chunk. A block of queries is scored against a tile of
 * entries at once, q [block·heads, I] times keysᵀ [I, tile] by sgemm; the heads combine as in
 * indexer_topk (Σ_h w_h ReLU(q_h·k)) and each query streams its scores through a running
 * selection (TopkStream), so nothing of size entries × queries is ever held — at 1M tokens a CSA
 * layer has 262,144 entries per query, and this is most of the prefill's arithmetic.
 * sel [T, sel_max], n_sel [T]. */
#define IDX_QBLOCK 64
#define IDX_TILE 2048

/* scores of one query for entries e0.. of a tile: the heads' rows of C (row stride ne) */
static void combine_push_scalar(TopkStream *s, const float *C, int64_t ne, int HI, const float *wt, int64_t e0, int64_t n) {
    for (int64_t w = 0; w < n; w++) {
        float sc = 0;
        for (int hh = 0; hh < HI; hh++) {
            const float d = C[hh * ne + w];
            if (d > 0) sc += wt[hh] * d;
        }
        if (!s->cut || sc > s->theta) topk_stream_push(s, sc, e0 + w);
    }
}

#if defined(__x86_64__)
#include <immintrin.h>
/* the same, 8 entries at a time: ReLU, weight and sum the heads, compare with the threshold */
__attribute__((target("avx2,fma"))) static void combine_push_avx2(TopkStream *s, const float *C, int64_t ne, int HI, const float *wt,
                                                                   int64_t e0, int64_t n) {
    const __m256 zero = _mm256_setzero_ps();
    int64_t w = 0;
    for (; w + 8 <= n; w += 8) {
        __m256 sc = zero;
        for (int hh = 0; hh < HI; hh++)
            sc = _mm256_add_ps(sc, _mm256_mul_ps(_mm256_set1_ps(wt[hh]), _mm256_max_ps(_mm256_loadu_ps(C + hh * ne + w), zero)));
        int mask = 0xff;
        if (s->cut) mask = _mm256_movemask_ps(_mm256_cmp_ps(sc, _mm256_set1_ps(s->theta), _CMP_GT_OQ));
        if (!mask) continue;
        float v[8];
        _mm256_storeu_ps(v, sc);
        for (int j = 0; j < 8; j++)
            if (mask >> j & 1 && (!s->cut || v[j] > s->theta)) topk_stream_push(s, v[j], e0 + w + j);
    }
    if (w < n) combine_push_scalar(s, C + w, ne, HI, wt, e0 + w, n - w);
}
#endif

void indexer_select_prefill(const dsv4_model *m, LayerCache *c, const float *q_idx, const float *w_idx, int64_t T,
                            int64_t t0, int ratio, int64_t *sel, int64_t sel_max, int64_t *n_sel) {
    const Config *cf = &m->cfg;
    const int HI = cf->index_n_heads, I = cf->index_head_dim;
    const int64_t nmax = (t0 + T) / ratio;   /* entries the chunk's last query sees */
    const int64_t K = cf->index_topk < nmax ? cf->index_topk : nmax;   /* index_topk may exceed them (a dense stage) */
    const int64_t nblocks = (T + IDX_QBLOCK - 1) / IDX_QBLOCK, cap = 4 * (K > 16 ? K : 16);
    const int avx2 = cpu_has_avx2(), avx512 = indexer_avx512_usable();
    /* AVX-512: the keys in panels of 32, [I][32] each (zero past the last entry), so that the
     * scoring kernel reads one dimension of 32 keys as two vectors; kept with the cache, each
     * chunk transposing only its new entries (from the panel holding the first of them) */
    const int64_t npanels = (nmax + 31) / 32;
    int64_t p_first = 0;
    if (avx512) {
        if (c->idx_panels_cap < npanels * 32) {
            const int64_t cap = npanels * 32 > 2 * c->idx_panels_cap ? npanels * 32 : 2 * c->idx_panels_cap;
            float *grown = xmalloc(sizeof(float) * (size_t)(cap * I));
            if (c->idx_panels) memcpy(grown, c->idx_panels, sizeof(float) * (size_t)(c->idx_panels_cap * I));
            free(c->idx_panels);
            c->idx_panels = grown;
            c->idx_panels_cap = cap;
        }
        const int64_t fixed = t0 / ratio;   /* entries the tokens before this chunk made */
        p_first = (c->idx_panels_n < fixed ? c->idx_panels_n : fixed) / 32;
        c->idx_panels_n = nmax;
    }
    float *panels = c->idx_panels;
#pragma omp parallel
    {
        if (avx512) {
#pragma omp for schedule(static)
            for (int64_t p = p_first; p < npanels; p++) {
                float *pp = panels + p * 32 * I;
                for (int j = 0; j < 32; j++) {
                    const int64_t e = 32 * p + j;
                    if (e >= nmax) { for (int d = 0; d < I; d++) pp[32 * d + j] = 0.0f; continue; }
                    const float *key = c->idx_keys + e * I;
                    for (int d = 0; d < I; d++) pp[32 * d + j] = key[d];
                }
            }
        }
        /* sgemm: the heads' dot products, C [block·heads, tile]; AVX-512: the scores, [block, tile] */
        float *C = xmalloc(sizeof(float) * (size_t)(IDX_QBLOCK * (avx512 ? 1 : HI) * IDX_TILE));
        TopkStream st[IDX_QBLOCK];
        float *vbuf = xmalloc(sizeof(float) * (size_t)(IDX_QBLOCK * cap * 2));
        int64_t *ibuf = xmalloc(sizeof(int64_t) * (size_t)(IDX_QBLOCK * cap));
        for (int j = 0; j < IDX_QBLOCK; j++) {
            st[j].v = vbuf + 2 * j * cap; st[j].tmp = st[j].v + cap;
            st[j].ix = ibuf + j * cap;
            st[j].cap = cap;   /* the buffers are the thread's; each query resets the selection */
        }
#pragma omp for schedule(dynamic, 1)
        for (int64_t b = 0; b < nblocks; b++) {
            const int64_t ta = b * IDX_QBLOCK, tb = ta + IDX_QBLOCK < T ? ta + IDX_QBLOCK : T, nq = tb - ta;
            const int64_t nvis_block = (t0 + tb) / ratio;   /* what the block's last query sees */
            for (int64_t t = 0; t < nq; t++) {
                const int64_t nvis = (t0 + ta + t + 1) / ratio;
                topk_stream_reset(&st[t], K < nvis ? K : nvis);
            }
            for (int64_t e0 = 0; e0 < nvis_block; e0 += IDX_TILE) {
                const int64_t ne = e0 + IDX_TILE < nvis_block ? IDX_TILE : nvis_block - e0;
#if defined(__x86_64__)
                if (avx512) {
                    indexer_block_scores_avx512(q_idx + ta * HI * I, w_idx + ta * HI, nq, HI, I, panels + e0 * I, (ne + 31) / 32, C, IDX_TILE);
                    for (int64_t t = 0; t < nq; t++) {
                        const int64_t nvis = (t0 + ta + t + 1) / ratio, n = nvis - e0 < ne ? nvis - e0 : ne;
                        if (n > 0) topk_stream_scan(&st[t], C + t * IDX_TILE, n, e0);
                    }
                    continue;
                }
#endif
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (blasint)(nq * HI), (blasint)ne, I, 1.0f, q_idx + ta * HI * I, I,
                            c->idx_keys + e0 * I, I, 0.0f, C, (blasint)ne);
                for (int64_t t = 0; t < nq; t++) {
                    const int64_t nvis = (t0 + ta + t + 1) / ratio, n = nvis - e0 < ne ? nvis - e0 : ne;
                    if (n <= 0) continue;
                    const float *Ct = C + t * HI * ne, *wt = w_idx + (ta + t) * HI;
#if defined(__x86_64__)
                    if (avx2) { combine_push_avx2(&st[t], Ct, ne, HI, wt, e0, n); continue; }
#endif
                    combine_push_scalar(&st[t], Ct, ne, HI, wt, e0, n);
                }
            }
            for (int64_t t = 0; t < nq; t++) {   /* the picks, in increasing entry order */
                TopkStream *s = &st[t];
                topk_stream_cut(s);
                memcpy(sel + (ta + t) * sel_max, s->ix, sizeof(int64_t) * (size_t)s->n);
                n_sel[ta + t] = s->n;
            }
        }
        free(C); free(vbuf); free(ibuf);
    }
    (void)avx2;
}
