/* Gradients of the V4 network: the mean next-token cross-entropy of the main head over a
 * sequence, and its gradient for every floating-point parameter (`dsv4 grad`).
 *
 * The forward runs the inference code (the same caches and kernels) and keeps only each
 * layer's input streams. The backward walks the layers in reverse; for each it runs the layer
 * once more through the same inference code, now keeping its intermediates (an AttnSave for the
 * attention; layer_forward_saved), then backpropagates
 * through them with the backward passes that sit beside each forward (mhc.c, attention.c,
 * compressor.c, moe.c, kernels/). Selections — the indexer's top-k, the MoE top-k or hash
 * table — pass no gradient to the language-model loss; the selection bias gets zeros and the
 * lightning indexer learns only from its own KL loss (indexer_kl_backward, V3.2 recipe). */
#include <limits.h>
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../dsv4_internal.h"

/* ---- gradient buffers, one per model parameter (m->params order), allocated on first use ---- */
struct Grads {
    const dsv4_model *m;
    float **g;          /* [n_params] */
    SparseRows **sp;    /* [n_params]: the Engram tables' gradients as rows */
    int64_t *load;      /* [n_layers, E]: tokens routed to each expert (for aux-loss-free balancing) */
    double indexer_kl;  /* the indexer KL loss, summed over layers, unweighted */
    double main_ce, mtp_ce;   /* the cross-entropies of the main head and of the MTP block */
};

const int64_t *grads_expert_load(const Grads *G) { return G->load; }
double grads_indexer_kl(const Grads *G) { return G->indexer_kl; }
double grads_main_ce(const Grads *G) { return G->main_ce; }
double grads_mtp_ce(const Grads *G) { return G->mtp_ce; }

static Grads *grads_new(const dsv4_model *m) {
    Grads *G = xcalloc(1, sizeof *G);
    G->m = m;
    G->g = xcalloc((size_t)(m->n_params ? m->n_params : 1), sizeof(float *));
    G->sp = xcalloc((size_t)(m->n_params ? m->n_params : 1), sizeof(SparseRows *));
    G->load = xcalloc((size_t)m->cfg.n_layers * (size_t)m->cfg.n_routed_experts, sizeof(int64_t));
    return G;
}

static float *grad_of(Grads *G, const char *name, int64_t numel) {
    const int64_t i = model_param_index(G->m, name);
    if (i < 0 || G->m->params[i].numel != numel) {   /* every name here comes from the bound model */
        fprintf(stderr, "dsv4: internal error: no parameter '%s' of %lld values\n", name, (long long)numel);
        abort();
    }
    if (!G->g[i]) G->g[i] = xcalloc((size_t)numel, sizeof(float));
    return G->g[i];
}

const float *grads_of_param(Grads *G, int64_t i) {
    if (i < 0 || i >= G->m->n_params) return NULL;
    const SparseRows *s = G->sp[i];
    if (s && !G->g[i]) {   /* scattered on demand (small tables: `dsv4 grad`, the tests) */
        G->g[i] = xcalloc((size_t)G->m->params[i].numel, sizeof(float));
        for (int64_t k = 0; k < s->n; k++) axpy_f32(G->g[i] + s->row[k] * s->width, 1.0f, s->val + k * s->width, s->width);
    }
    return G->g[i];
}

const SparseRows *grads_sparse_of_param(const Grads *G, int64_t i) { return i >= 0 && i < G->m->n_params ? G->sp[i] : NULL; }

const float *grads_find(Grads *G, const char *name, int64_t *numel) {
    const int64_t i = model_param_index(G->m, name);
    if (i < 0) return NULL;
    *numel = G->m->params[i].numel;
    return grads_of_param(G, i);
}

void grads_free(Grads *G) {
    if (!G) return;
    for (int64_t i = 0; i < G->m->n_params; i++) {
        free(G->g[i]);
        if (G->sp[i]) { sparse_rows_free(G->sp[i]); free(G->sp[i]); }
    }
    free(G->g); free(G->sp); free(G->load);
    free(G);
}

/* The rows of an Engram table's gradient (the table itself may be far larger than memory). */
static SparseRows *gtable(Grads *G, const Mat *W) {
    const int64_t i = model_param_index(G->m, W->name);
    if (i < 0) { fprintf(stderr, "dsv4: internal error: no parameter '%s'\n", W->name); abort(); }
    if (!G->sp[i]) { G->sp[i] = xcalloc(1, sizeof(SparseRows)); G->sp[i]->width = W->cols; }
    return G->sp[i];
}

static float *gmat(Grads *G, const Mat *W) { return grad_of(G, W->name, W->rows * W->cols); }
static float *gvec(Grads *G, const char *pre, const char *suffix, int64_t n) {
    char nm[1100];
    snprintf(nm, sizeof nm, "%s.%s", pre, suffix);
    return grad_of(G, nm, n);
}

/* ---- one layer, recomputed with its intermediates ---- */
typedef struct {
    int64_t T;
    float *Xa, *Xm;                                      /* streams before each sublayer */
    float *y1, *post1, *comb1, *h1;                      /* attention sublayer input */
    EngramSave es;                                       /* Engram's intermediates (engram.c), Engram layers */
    AttnSave sv;                                         /* the attention's intermediates (attention.c) */
    int64_t n_ent;                                       /* compressed entries of the sequence */
    float *f1;                                           /* attention sublayer output */
    float *y2, *post2, *comb2, *h2, *z2, *s2, *w2, *f2;  /* FFN sublayer */
    int64_t *idx2;
} LayerAct;

static void act_free(LayerAct *a) {
    void *p[] = {a->Xa, a->Xm, a->y1, a->post1, a->comb1, a->h1, a->f1, a->y2, a->post2, a->comb2, a->h2, a->z2, a->s2, a->w2,
                 a->f2, a->idx2};
    for (size_t i = 0; i < sizeof p / sizeof p[0]; i++) free(p[i]);
    attn_save_free(&a->sv);
    engram_save_free(&a->es);
}

#define ALLOC(n) xcalloc((size_t)(n), sizeof(float))

/* The state rows of compressor window w (layout of compressor.c): coff 1 — tokens w*m..;
 * coff 2 — rows [0, m) the previous window (or nothing for w = 0), rows [m, 2m) window w. */
static void window_state(const CompressorW *cw, const float *a, const float *z, int64_t w, float *sa, float *sz) {
    const int m = cw->ratio, W2 = cw->coff * cw->width;
    if (cw->coff == 1) {
        memcpy(sa, a + w * m * W2, sizeof(float) * (size_t)(m * W2));
        memcpy(sz, z + w * m * W2, sizeof(float) * (size_t)(m * W2));
        return;
    }
    for (int j = 0; j < m; j++)
        for (int k = 0; k < W2; k++) {
            const int64_t prev = (w - 1) * m + j, cur = w * m + j;
            sa[j * W2 + k] = w > 0 ? a[prev * W2 + k] : 0.0f;
            sz[j * W2 + k] = w > 0 ? z[prev * W2 + k] : -INFINITY;
            sa[(m + j) * W2 + k] = a[cur * W2 + k];
            sz[(m + j) * W2 + k] = z[cur * W2 + k];
        }
}

/* Backward of a compressor over a whole sequence from its saved a, z + ape and pooled entries:
 * dent [n_ent, width] (RoPE undone in place) -> the parameters (named under cpre) and dh [T, dim]
 * (added; NULL when the input is detached). */
static void compressor_saved_backward(const Config *c, const CompressorW *cw, const double *rope_freq, const float *h1,
                                      int64_t T, const float *ca, const float *cz, const float *pooled, int64_t n_ent,
                                      float *dent, float *dh, Grads *Gr, const char *cpre) {
    const int m_ = cw->ratio, Dw = cw->width, W2 = cw->coff * Dw, r = c->rope_head_dim;
    const int64_t d = c->dim;
    float *g_norm = gvec(Gr, cpre, "norm.weight", Dw), *g_ape = gvec(Gr, cpre, "ape", (int64_t)m_ * W2);
    float *da = ALLOC(T * W2), *dzz = ALLOC(T * W2), *dp = ALLOC(Dw);
    float *sa = ALLOC(2 * m_ * W2), *sz = ALLOC(2 * m_ * W2), *dsa = ALLOC(2 * m_ * W2), *dsz = ALLOC(2 * m_ * W2);
    for (int64_t w = 0; w < n_ent; w++) {
        float *g = dent + w * Dw;
        rope_rotate(g + Dw - r, r, rope_freq, w * m_, 1);
        rmsnorm_backward(dp, g_norm, g, pooled + w * Dw, cw->norm, Dw, c->norm_eps);
        window_state(cw, ca, cz, w, sa, sz);
        memset(dsa, 0, sizeof(float) * (size_t)(2 * m_ * W2));
        memset(dsz, 0, sizeof(float) * (size_t)(2 * m_ * W2));
        compressor_pool_backward(cw, sa, sz, dp, dsa, dsz);
        for (int j = 0; j < (cw->coff == 2 ? 2 * m_ : m_); j++) {   /* the rows back to their tokens */
            const int64_t tok = cw->coff == 1 ? w * m_ + j : j < m_ ? (w - 1) * m_ + j : w * m_ + (j - m_);
            if (tok < 0) continue;
            axpy_f32(da + tok * W2, 1.0f, dsa + (int64_t)j * W2, W2);
            axpy_f32(dzz + tok * W2, 1.0f, dsz + (int64_t)j * W2, W2);
        }
    }
    for (int64_t t = 0; t < T; t++) axpy_f32(g_ape + (t % m_) * W2, 1.0f, dzz + t * W2, W2);
    linear_backward(dh, d, gmat(Gr, &cw->wkv), da, W2, h1, T, &cw->wkv, 0, W2);
    linear_backward(dh, d, gmat(Gr, &cw->wgate), dzz, W2, h1, T, &cw->wgate, 0, W2);
    free(da); free(dzz); free(dp); free(sa); free(sz); free(dsa); free(dsz);
}

/* One layer over a whole sequence by the inference code (attention_forward with an AttnSave, the
 * MoE), keeping what the backward needs. need_kl: also the indexer's KL target; attn_only: stop
 * after the attention sublayer (the indexer-only stage needs nothing more). */
static void layer_forward_saved(const dsv4_model *m, const LayerW *L, const float *X_in, const int32_t *tokens, int64_t T,
                                int need_kl, int attn_only, LayerAct *a) {
    const Config *c = &m->cfg;
    const int n = c->hc_mult, E = c->n_routed_experts, K = c->n_activated_experts;
    const int64_t d = c->dim, nd = n * d;
    memset(a, 0, sizeof *a);
    a->T = T;
    a->Xa = dup_floats(X_in, T * nd);
    LayerCache lc;
    if (cache_alloc(m, L, &lc, T)) { fprintf(stderr, "dsv4: out of memory for a layer cache of %lld tokens\n", (long long)T); abort(); }
    /* Engram adds to the streams first; Xa is then the attention sublayer's input */
    if (L->engram) engram_forward(m, L, &lc, a->Xa, tokens, T, 0, &a->es);
    /* attention sublayer */
    a->y1 = ALLOC(T * d); a->post1 = ALLOC(T * n); a->comb1 = ALLOC(T * n * n); a->h1 = ALLOC(T * d);
    mhc_pre(c, &L->hc_attn_fn, L->hc_attn_base, L->hc_attn_scale, a->Xa, T, a->y1, a->post1, a->comb1);
    for (int64_t t = 0; t < T; t++) rmsnorm(a->h1 + t * d, a->y1 + t * d, L->attn_norm, d, c->norm_eps);
    a->f1 = ALLOC(T * d);
    a->sv.want_kl = need_kl;
    attention_forward(m, L, &lc, a->h1, T, 0, a->f1, &a->sv);
    cache_free(&lc);
    a->n_ent = L->ratio ? T / L->ratio : 0;
    if (attn_only) return;
    a->Xm = dup_floats(a->Xa, T * nd);
    mhc_post(c, a->Xm, a->f1, a->post1, a->comb1, T);
    /* FFN sublayer */
    a->y2 = ALLOC(T * d); a->post2 = ALLOC(T * n); a->comb2 = ALLOC(T * n * n); a->h2 = ALLOC(T * d);
    mhc_pre(c, &L->hc_ffn_fn, L->hc_ffn_base, L->hc_ffn_scale, a->Xm, T, a->y2, a->post2, a->comb2);
    for (int64_t t = 0; t < T; t++) rmsnorm(a->h2 + t * d, a->y2 + t * d, L->ffn_norm, d, c->norm_eps);
    a->z2 = ALLOC(T * E); a->s2 = ALLOC(T * E); a->w2 = ALLOC(T * K);
    a->idx2 = xcalloc((size_t)(T * K), sizeof(int64_t));
    linear(a->z2, E, a->h2, d, T, &L->gate, 0, E);
    memcpy(a->s2, a->z2, sizeof(float) * (size_t)(T * E));
    moe_route(m, L, a->s2, tokens, T, a->idx2, a->w2);
    a->f2 = ALLOC(T * d);
    moe_forward(m, L, a->h2, tokens, T, a->f2);
}

/* The lightning indexer's KL loss of one layer (V3.2 recipe) and weight x its gradient, into the
 * indexer's own parameters only: its inputs (h1, c_q) are detached and the target is constant.
 *   I_{t,s} = Σ_h w_{t,h} ReLU(q_{t,h}·K_s),  Q_t = softmax_{s∈S_t} I_{t,s},
 *   KL_t = Σ_{s∈S_t} P_t(s) log(P_t(s) / Q_t(s)),  loss = mean of KL_t over queries with S_t ≠ ∅,
 *   ∂loss/∂I_{t,s} = (Q_t(s) − P_t(s)) / n_queries.
 * Returns the layer's loss (unweighted). */
static double indexer_kl_backward(const dsv4_model *m, const LayerW *L, const char *pre, const LayerAct *a, double weight,
                                  Grads *Gr) {
    const Config *c = &m->cfg;
    const int HI = c->index_n_heads, I = c->index_head_dim, r = c->rope_head_dim, q_r = c->q_lora_rank;
    const int64_t T = a->T, S = a->sv.sel_max, HII = (int64_t)HI * I;
    int64_t nq = 0;
    for (int64_t t = 0; t < T; t++) nq += a->sv.n_sel[t] > 0;
    if (!nq || !a->sv.kl_target) return 0;
    float *dq = ALLOC(T * HII), *dw = ALLOC(T * HI), *dkeys = ALLOC(a->n_ent * I + 1), *dots = ALLOC(S * HI);
    double *score = xmalloc(sizeof(double) * (size_t)S), kl = 0;
    for (int64_t t = 0; t < T; t++) {
        const int64_t ns = a->sv.n_sel[t], *sel = a->sv.sel + t * S;
        if (!ns) continue;
        const float *q = a->sv.iq + t * HII, *w = a->sv.iw + t * HI, *P = a->sv.kl_target + t * S;
        double mx = -INFINITY, den = 0, kl_t = 0;
        for (int64_t i = 0; i < ns; i++) {
            const float *key = a->sv.ikeys + sel[i] * I;
            double sc = 0;
            for (int h = 0; h < HI; h++) {
                const float dd = dot_f32(q + (int64_t)h * I, key, I);
                dots[i * HI + h] = dd;
                if (dd > 0) sc += (double)w[h] * dd;
            }
            score[i] = sc;
            if (sc > mx) mx = sc;
        }
        for (int64_t i = 0; i < ns; i++) den += exp(score[i] - mx);
        const double log_den = log(den);
        for (int64_t i = 0; i < ns; i++) {
            const double log_q = score[i] - mx - log_den;
            if (P[i] > 0) kl_t += P[i] * (log((double)P[i]) - log_q);
            const float g = (float)(weight * (exp(log_q) - P[i]) / (double)nq);
            const float *key = a->sv.ikeys + sel[i] * I;
            for (int h = 0; h < HI; h++) {
                const float dd = dots[i * HI + h];
                if (dd <= 0) continue;   /* ReLU */
                dw[t * HI + h] += g * dd;
                axpy_f32(dq + t * HII + (int64_t)h * I, g * w[h], key, I);
                axpy_f32(dkeys + sel[i] * I, g * w[h], q + (int64_t)h * I, I);
            }
        }
        kl += kl_t;
    }
    kl /= (double)nq;
    /* w = weights_proj(h1) / sqrt(I·H_I);  q = RoPE(wq_b(c_q));  K = the indexer's compressor */
    const float s = (float)(1.0 / sqrt((double)I) / sqrt((double)HI));
    for (int64_t i = 0; i < T * HI; i++) dw[i] *= s;
    linear_backward(NULL, c->dim, gmat(Gr, &L->idx.weights_proj), dw, HI, a->h1, T, &L->idx.weights_proj, 0, HI);
    for (int64_t t = 0; t < T; t++)
        for (int h = 0; h < HI; h++) rope_rotate(dq + t * HII + (int64_t)h * I + I - r, r, L->rope_freq, t, 1);
    linear_backward(NULL, q_r, gmat(Gr, &L->idx.wq_b), dq, HII, a->sv.cq, T, &L->idx.wq_b, 0, HII);
    char cpre[512];
    snprintf(cpre, sizeof cpre, "%s.attn.indexer.compressor", pre);
    compressor_saved_backward(c, &L->idx.comp, L->rope_freq, a->h1, T, a->sv.icomp.a, a->sv.icomp.z, a->sv.icomp.pooled, a->n_ent, dkeys, NULL, Gr, cpre);
    free(dq); free(dw); free(dkeys); free(dots); free(score);
    Gr->indexer_kl += kl;
    return kl;
}

/* Backward of one layer: dX [T, n*d] holds d loss / d X_out on entry and d loss / d X_in on exit. */
static void layer_backward(const dsv4_model *m, const LayerW *L, const char *pre, const LayerAct *a, float *dX, Grads *Gr,
                           const LossOpts *lo, double *extra_loss) {
    const double balance_alpha = lo->balance_alpha;
    if (lo->indexer_weight > 0 && L->has_indexer) *extra_loss += lo->indexer_weight * indexer_kl_backward(m, L, pre, a, lo->indexer_weight, Gr);
    const Config *c = &m->cfg;
    const int n = c->hc_mult, H = c->n_heads, D = c->head_dim, r = c->rope_head_dim, W = c->window_size;
    const int G = c->o_groups, R = c->o_lora_rank, q_r = c->q_lora_rank, E = c->n_routed_experts, K = c->n_activated_experts;
    const int64_t d = c->dim, nd = n * d, qd = (int64_t)H * D, T = a->T, mix = (int64_t)n * (n + 2);
    float *df = ALLOC(T * d), *dpost = ALLOC(T * n), *dcomb = ALLOC(T * n * n), *dh = ALLOC(T * d), *dy = ALLOC(T * d);

    /* ---- FFN sublayer ---- */
    mhc_post_backward(c, a->Xm, a->f2, a->post2, a->comb2, T, dX, df, dpost, dcomb);
    /* shared expert, then the routed experts token group by token group */
    expert_backward(m, &L->shared, a->h2, T, NULL, 0.0, df, dh, gmat(Gr, &L->shared.w1), gmat(Gr, &L->shared.w2),
                    gmat(Gr, &L->shared.w3), NULL);
    float *dw = ALLOC(T * K), *xe = ALLOC(T * d), *dye = ALLOC(T * d), *dxe = ALLOC(T * d), *we = ALLOC(T), *dwe = ALLOC(T);
    int64_t *who = xmalloc(sizeof(int64_t) * (size_t)(T * K));
    for (int e = 0; e < E; e++) {
        int64_t ne = 0;
        for (int64_t i = 0; i < T * K; i++)
            if (a->idx2[i] == e) {
                who[ne] = i;
                memcpy(xe + ne * d, a->h2 + (i / K) * d, sizeof(float) * (size_t)d);
                memcpy(dye + ne * d, df + (i / K) * d, sizeof(float) * (size_t)d);
                we[ne] = a->w2[i];
                ne++;
            }
        if (!ne) continue;
        memset(dxe, 0, sizeof(float) * (size_t)(ne * d));
        const ExpertW *ex = &L->experts[e];
        expert_backward(m, ex, xe, ne, we, c->swiglu_limit, dye, dxe, gmat(Gr, &ex->w1), gmat(Gr, &ex->w2), gmat(Gr, &ex->w3), dwe);
        for (int64_t j = 0; j < ne; j++) {
            axpy_f32(dh + (who[j] / K) * d, 1.0f, dxe + j * d, d);
            dw[who[j]] = dwe[j];
        }
    }
    /* routing weights -> gate logits -> gate weight and h2 */
    float *dz = ALLOC(T * E);
    for (int64_t t = 0; t < T; t++) moe_gate_backward(c, a->z2 + t * E, a->idx2 + t * K, dw + t * K, dz + t * E);
    if (balance_alpha > 0) *extra_loss += moe_balance_loss(c, a->z2, a->idx2, T, balance_alpha, dz);
    linear_backward(dh, d, gmat(Gr, &L->gate), dz, E, a->h2, T, &L->gate, 0, E);
    free(dw); free(xe); free(dye); free(dxe); free(we); free(dwe); free(who); free(dz);
    float *g_ffn_norm = gvec(Gr, pre, "ffn_norm.weight", d);
    for (int64_t t = 0; t < T; t++) rmsnorm_backward(dy + t * d, g_ffn_norm, dh + t * d, a->y2 + t * d, L->ffn_norm, d, c->norm_eps);
    mhc_pre_backward(c, &L->hc_ffn_fn, L->hc_ffn_base, L->hc_ffn_scale, a->Xm, T, dy, dpost, dcomb, dX, gmat(Gr, &L->hc_ffn_fn),
                     gvec(Gr, pre, "hc_ffn_base", mix), gvec(Gr, pre, "hc_ffn_scale", 3));

    /* ---- attention sublayer ---- */
    mhc_post_backward(c, a->Xa, a->f1, a->post1, a->comb1, T, dX, df, dpost, dcomb);
    float *du = ALLOC(T * G * R), *dO = ALLOC(T * qd);
    linear_backward(du, (int64_t)G * R, gmat(Gr, &L->wo_b), df, d, a->sv.u, T, &L->wo_b, 0, d);
    float *g_wo_a = gmat(Gr, &L->wo_a);
    for (int g = 0; g < G; g++) {
        /* u_g = o_g · wo_a[g]ᵀ with o_g a strided slice of o */
        float *og = ALLOC(T * (qd / G)), *dog = ALLOC(T * (qd / G)), *dug = ALLOC(T * R);
        for (int64_t t = 0; t < T; t++) {
            memcpy(og + t * (qd / G), a->sv.o + t * qd + g * (qd / G), sizeof(float) * (size_t)(qd / G));
            memcpy(dug + t * R, du + t * G * R + (int64_t)g * R, sizeof(float) * (size_t)R);
        }
        linear_backward(dog, qd / G, g_wo_a, dug, R, og, T, &L->wo_a, (int64_t)g * R, R);
        for (int64_t t = 0; t < T; t++) memcpy(dO + t * qd + g * (qd / G), dog + t * (qd / G), sizeof(float) * (size_t)(qd / G));
        free(og); free(dog); free(dug);
    }
    /* through the inverse RoPE on the output, then the attention core. Queries run in parallel;
     * each thread adds into its own copy of the key gradients (keys are shared between queries),
     * and the copies are summed in thread order, so a run is reproducible. */
    float *dq = ALLOC(T * qd), *dkv = ALLOC(T * D), *dent = ALLOC((a->n_ent + 1) * D);
    float *g_sink = gvec(Gr, pre, "attn.attn_sink", H);
    const int nthr = omp_get_max_threads();
    const int64_t nkv = T * D, nen = (a->n_ent + 1) * D;
    float *part = ALLOC((int64_t)nthr * (nkv + nen + H));
#pragma omp parallel num_threads(nthr)
    {
        const int tid = omp_get_thread_num();
        float *my_dkv = part + (int64_t)tid * (nkv + nen + H), *my_dent = my_dkv + nkv, *my_sink = my_dent + nen;
        const float **keys = xmalloc(sizeof(float *) * (size_t)(W + a->n_ent + 1));
        float **dkeys = xmalloc(sizeof(float *) * (size_t)(W + a->n_ent + 1));
        float *scores = ALLOC((int64_t)H * (W + a->n_ent + 1));
#pragma omp for schedule(static)
        for (int64_t t = 0; t < T; t++) {
            for (int h = 0; h < H; h++) rope_rotate(dO + t * qd + (int64_t)h * D + D - r, r, L->rope_freq, t, 0);
            int64_t nk = 0;
            for (int64_t s = t - W + 1 < 0 ? 0 : t - W + 1; s <= t; s++) { keys[nk] = a->sv.kv + s * D; dkeys[nk++] = my_dkv + s * D; }
            for (int64_t i = 0; i < a->sv.n_sel[t]; i++) {
                const int64_t w = L->has_indexer ? a->sv.sel[t * a->sv.sel_max + i] : i;
                keys[nk] = a->sv.ent + w * D;
                dkeys[nk++] = my_dent + w * D;
            }
            attend_heads_backward(a->sv.q + t * qd, H, keys, nk, D, L->attn_sink, dO + t * qd, scores, dq + t * qd, dkeys, my_sink);
        }
        free(keys); free(dkeys); free(scores);
    }
    for (int th = 0; th < nthr; th++) {
        const float *pp = part + (int64_t)th * (nkv + nen + H);
        axpy_f32(dkv, 1.0f, pp, nkv);
        axpy_f32(dent, 1.0f, pp + nkv, nen);
        axpy_f32(g_sink, 1.0f, pp + nkv + nen, H);
    }
    free(part);
    /* q: RoPE, per-head RMS, wq_b, q_norm, wq_a */
    float *dq_raw = ALLOC(T * qd), *dcq = ALLOC(T * q_r), *dcq_raw = ALLOC(T * q_r);
    for (int64_t t = 0; t < T; t++)
        for (int h = 0; h < H; h++) {
            float *g = dq + t * qd + (int64_t)h * D;
            rope_rotate(g + D - r, r, L->rope_freq, t, 1);
            rmsnorm_backward(dq_raw + t * qd + (int64_t)h * D, NULL, g, a->sv.q_raw + t * qd + (int64_t)h * D, NULL, D, c->norm_eps);
        }
    memset(dh, 0, sizeof(float) * (size_t)(T * d));
    linear_backward(dcq, q_r, gmat(Gr, &L->wq_b), dq_raw, qd, a->sv.cq, T, &L->wq_b, 0, qd);
    float *g_q_norm = gvec(Gr, pre, "attn.q_norm.weight", q_r);
    for (int64_t t = 0; t < T; t++) rmsnorm_backward(dcq_raw + t * q_r, g_q_norm, dcq + t * q_r, a->sv.cq_raw + t * q_r, L->q_norm, q_r, c->norm_eps);
    linear_backward(dh, d, gmat(Gr, &L->wq_a), dcq_raw, q_r, a->h1, T, &L->wq_a, 0, q_r);
    /* kv: RoPE, kv_norm, wkv */
    float *dkv_raw = ALLOC(T * D), *g_kv_norm = gvec(Gr, pre, "attn.kv_norm.weight", D);
    for (int64_t t = 0; t < T; t++) {
        rope_rotate(dkv + t * D + D - r, r, L->rope_freq, t, 1);
        rmsnorm_backward(dkv_raw + t * D, g_kv_norm, dkv + t * D, a->sv.kv_raw + t * D, L->kv_norm, D, c->norm_eps);
    }
    linear_backward(dh, d, gmat(Gr, &L->wkv), dkv_raw, D, a->h1, T, &L->wkv, 0, D);
    /* compressed entries: RoPE, norm, softmax pooling, ape, wkv and wgate */
    if (L->has_compressor) {
        char cpre[512];
        snprintf(cpre, sizeof cpre, "%s.attn.compressor", pre);
        compressor_saved_backward(c, &L->comp, L->rope_freq, a->h1, T, a->sv.comp.a, a->sv.comp.z, a->sv.comp.pooled, a->n_ent, dent, dh, Gr, cpre);
    }
    float *g_attn_norm = gvec(Gr, pre, "attn_norm.weight", d);
    for (int64_t t = 0; t < T; t++) rmsnorm_backward(dy + t * d, g_attn_norm, dh + t * d, a->y1 + t * d, L->attn_norm, d, c->norm_eps);
    mhc_pre_backward(c, &L->hc_attn_fn, L->hc_attn_base, L->hc_attn_scale, a->Xa, T, dy, dpost, dcomb, dX,
                     gmat(Gr, &L->hc_attn_fn), gvec(Gr, pre, "hc_attn_base", mix), gvec(Gr, pre, "hc_attn_scale", 3));
    if (L->engram) {
        const EngramW *G = L->engram;
        const int64_t nd_ = (int64_t)n * d;
        const int kc = c->engram_kernel_size;
        engram_backward(m, L, &a->es, T, dX, gtable(Gr, &G->table), gmat(Gr, &G->key_proj), gvec(Gr, pre, "engram.key_proj.bias", nd_),
                        gmat(Gr, &G->value_proj), gvec(Gr, pre, "engram.value_proj.bias", d), gvec(Gr, pre, "engram.key_norm.weight", nd_),
                        gvec(Gr, pre, "engram.hidden_norm.weight", nd_), kc ? gvec(Gr, pre, "engram.conv_norm.weight", nd_) : NULL,
                        kc ? gvec(Gr, pre, "engram.conv.weight", nd_ * kc) : NULL);
    }
    free(du); free(dO); free(dq); free(dkv); free(dent); free(dq_raw); free(dcq); free(dcq_raw); free(dkv_raw);
    free(df); free(dpost); free(dcomb); free(dh); free(dy);
    (void)nd;
}

/* The forward of the main model over a whole sequence with the inference code: X [T, n*d] gets
 * the final streams; Xin (may be NULL) keeps each layer's input. */
static int forward_streams(const dsv4_model *m, const int32_t *tokens, int64_t T, float *X, float **Xin) {
    const Config *c = &m->cfg;
    const int n = c->hc_mult;
    const int64_t d = c->dim, nd = n * d;
    engram_prefetch(m, NULL, tokens, 0, T);   /* tables on disk: the sequence's rows requested at once */
    for (int64_t t = 0; t < T; t++) {
        mat_dequant_rows(&m->embed, tokens[t], 1, X + t * nd);
        for (int i = 1; i < n; i++) memcpy(X + t * nd + i * d, X + t * nd, sizeof(float) * (size_t)d);
    }
    for (int l = 0; l < c->n_layers; l++) {
        LayerCache lc;
        if (cache_alloc(m, &m->layers[l], &lc, T)) return dsv4_fail("out of memory for the layer caches");
        if (Xin) {
            Xin[l] = xmalloc(sizeof(float) * (size_t)(T * nd));
            memcpy(Xin[l], X, sizeof(float) * (size_t)(T * nd));
        }
        block_forward(m, &m->layers[l], &lc, X, tokens, T, 0);
        cache_free(&lc);
    }
    return 0;
}

/* MTP (spec "MTP"): at position i the block sees the main streams X_i and the embedding of token
 * i+1 and predicts token i+2. Returns the mean cross-entropy over the T-2 predictions; adds
 * weight x its gradient to the parameters and to dX (the main model's final streams). */
static double mtp_loss_backward(const dsv4_model *m, const int32_t *tokens, int64_t T, const float *X, double weight,
                                const LossOpts *lo, double *extra_loss, float *dX, Grads *Gr) {
    const Config *c = &m->cfg;
    const LayerW *L = &m->mtp[0];
    const int n = c->hc_mult;
    const int64_t d = c->dim, nd = n * d, V = c->vocab_size, Tm = T - 1;
    const int32_t *next = tokens + 1;
    float *e = ALLOC(Tm * d), *en = ALLOC(Tm * d), *ep = ALLOC(Tm * d), *hn = ALLOC(Tm * nd), *X0 = ALLOC(Tm * nd);
    for (int64_t t = 0; t < Tm; t++) {
        mat_dequant_rows(&m->embed, next[t], 1, e + t * d);
        rmsnorm(en + t * d, e + t * d, L->enorm, d, c->norm_eps);
        for (int i = 0; i < n; i++) rmsnorm(hn + t * nd + i * d, X + t * nd + i * d, L->hnorm, d, c->norm_eps);
    }
    linear(ep, d, en, d, Tm, &L->e_proj, 0, d);
    linear(X0, d, hn, d, Tm * n, &L->h_proj, 0, d);
    for (int64_t t = 0; t < Tm; t++)
        for (int i = 0; i < n; i++) axpy_f32(X0 + t * nd + i * d, 1.0f, ep + t * d, d);
    LayerAct a;
    layer_forward_saved(m, L, X0, next, Tm, lo->indexer_weight > 0, 0, &a);
    float *Xo = xmalloc(sizeof(float) * (size_t)(Tm * nd));
    memcpy(Xo, a.Xm, sizeof(float) * (size_t)(Tm * nd));
    mhc_post(c, Xo, a.f2, a.post2, a.comb2, Tm);
    float *yh = ALLOC(Tm * d), *yn = ALLOC(Tm * d), *logits = ALLOC(Tm * V), *dl = ALLOC(Tm * V);
    hc_head(c, &L->hc_head_fn, L->hc_head_base, L->hc_head_scale, Xo, Tm, yh);
    for (int64_t t = 0; t < Tm; t++) rmsnorm(yn + t * d, yh + t * d, L->mtp_norm, d, c->norm_eps);
    linear(logits, V, yn, d, Tm, &m->head, 0, V);
    const double loss = cross_entropy(logits, tokens + 2, Tm - 1, V, dl);
    for (int64_t i = 0; i < (Tm - 1) * V; i++) dl[i] *= (float)weight;
    /* back through the shared head, the MTP norm and hc head, the block */
    float *dyn = ALLOC(Tm * d), *dyh = ALLOC(Tm * d), *dXo = ALLOC(Tm * nd);
    linear_backward(dyn, d, gmat(Gr, &m->head), dl, V, yn, Tm - 1, &m->head, 0, V);
    float *g_norm = gvec(Gr, "mtp.0", "norm.weight", d);
    for (int64_t t = 0; t < Tm; t++) rmsnorm_backward(dyh + t * d, g_norm, dyn + t * d, yh + t * d, L->mtp_norm, d, c->norm_eps);
    hc_head_backward(c, &L->hc_head_fn, L->hc_head_base, L->hc_head_scale, Xo, Tm, dyh, dXo, gmat(Gr, &L->hc_head_fn),
                     gvec(Gr, "mtp.0", "hc_head_base", n), gvec(Gr, "mtp.0", "hc_head_scale", 1));
    layer_backward(m, L, "mtp.0", &a, dXo, Gr, lo, extra_loss);
    /* X0 = h_proj(hnorm(X_i)) per stream + e_proj(enorm(Embed(token i+1))) broadcast */
    float *dhn = ALLOC(Tm * nd), *dep = ALLOC(Tm * d), *den = ALLOC(Tm * d), *tmp = ALLOC(d);
    linear_backward(dhn, d, gmat(Gr, &L->h_proj), dXo, d, hn, Tm * n, &L->h_proj, 0, d);
    for (int64_t t = 0; t < Tm; t++)
        for (int i = 0; i < n; i++) axpy_f32(dep + t * d, 1.0f, dXo + t * nd + i * d, d);
    linear_backward(den, d, gmat(Gr, &L->e_proj), dep, d, en, Tm, &L->e_proj, 0, d);
    float *g_enorm = gvec(Gr, "mtp.0", "enorm.weight", d), *g_hnorm = gvec(Gr, "mtp.0", "hnorm.weight", d);
    float *g_embed = gmat(Gr, &m->embed);
    for (int64_t t = 0; t < Tm; t++) {
        rmsnorm_backward(tmp, g_enorm, den + t * d, e + t * d, L->enorm, d, c->norm_eps);
        axpy_f32(g_embed + (int64_t)next[t] * d, 1.0f, tmp, d);
        for (int i = 0; i < n; i++) {
            rmsnorm_backward(tmp, g_hnorm, dhn + t * nd + i * d, X + t * nd + i * d, L->hnorm, d, c->norm_eps);
            axpy_f32(dX + t * nd + i * d, 1.0f, tmp, d);
        }
    }
    act_free(&a);
    free(e); free(en); free(ep); free(hn); free(X0); free(Xo); free(yh); free(yn); free(logits); free(dl);
    free(dyn); free(dyh); free(dXo); free(dhn); free(dep); free(den); free(tmp);
    return loss;
}

static int check_sequence(const dsv4_model *m, const int32_t *tokens, int64_t T) {
    if (T < 2) return dsv4_fail("a loss needs at least 2 tokens");
    for (int64_t i = 0; i < T; i++)
        if (tokens[i] < 0 || tokens[i] >= m->cfg.vocab_size)
            return dsv4_fail("token id %d at index %lld is out of range (vocab_size %lld)", tokens[i], (long long)i, (long long)m->cfg.vocab_size);
    return 0;
}

double model_loss(const dsv4_model *m, const int32_t *tokens, int64_t T) {
    const Config *c = &m->cfg;
    if (check_sequence(m, tokens, T)) return NAN;
    const int64_t nd = (int64_t)c->hc_mult * c->dim, V = c->vocab_size;
    float *X = xmalloc(sizeof(float) * (size_t)(T * nd)), *logits = xmalloc(sizeof(float) * (size_t)(T * V));
    double loss = NAN;
    if (forward_streams(m, tokens, T, X, NULL) == 0) {
        final_logits(m, &m->hc_head_fn, m->hc_head_base, m->hc_head_scale, m->norm, X, T, logits);
        loss = cross_entropy(logits, tokens + 1, T - 1, V, NULL);
    }
    free(X);
    free(logits);
    return loss;
}

Grads *model_grad(const dsv4_model *m, const int32_t *tokens, int64_t T, const LossOpts *lo, double *loss) {
    static const LossOpts no_extras = {0};
    if (!lo) lo = &no_extras;
    double extra = 0;
    if (m->quant) { dsv4_fail("gradients are computed in exact arithmetic: open the model without quantisation-aware rounding"); return NULL; }
    if (check_sequence(m, tokens, T)) return NULL;
    /* the dense stage attends every visible compressed entry: the same model with top-k
     * unbounded (a shallow copy: every weight is shared, read-only; the gradients are kept
     * against the caller's model, which outlives this call) */
    const dsv4_model *model = m;
    dsv4_model dense;
    if (lo->indexer_dense) {
        dense = *m;
        dense.cfg.index_topk = INT_MAX;
        m = &dense;
    }
    const Config *c = &m->cfg;
    const int n = c->hc_mult;
    const int64_t d = c->dim, nd = n * d, V = c->vocab_size;
    const int need_kl = lo->indexer_weight > 0;
    /* forward with the inference code; keep each layer's input */
    float **Xin = xcalloc((size_t)c->n_layers, sizeof(float *));
    float *X = xmalloc(sizeof(float) * (size_t)(T * nd));
    if (forward_streams(m, tokens, T, X, Xin)) {
        for (int l = 0; l < c->n_layers; l++) free(Xin[l]);
        free(Xin);
        free(X);
        return NULL;
    }
    /* head and loss: logits[t] predicts tokens[t + 1] */
    float *yh = ALLOC(T * d), *yn = ALLOC(T * d), *logits = ALLOC(T * V), *dlogits = ALLOC(T * V);
    hc_head(c, &m->hc_head_fn, m->hc_head_base, m->hc_head_scale, X, T, yh);
    for (int64_t t = 0; t < T; t++) rmsnorm(yn + t * d, yh + t * d, m->norm, d, c->norm_eps);
    linear(logits, V, yn, d, T, &m->head, 0, V);
    *loss = cross_entropy(logits, tokens + 1, T - 1, V, dlogits);
    free(logits);
    Grads *Gr = grads_new(model);
    Gr->main_ce = *loss;
    if (lo->indexer_only) {
        /* the frozen-model stage: only the indexers of the main layers, from their layer inputs */
        for (int l = 0; l < c->n_layers; l++) {
            if (need_kl && m->layers[l].has_indexer) {
                LayerAct a;
                layer_forward_saved(m, &m->layers[l], Xin[l], tokens, T, 1, 1, &a);
                char pre[64];
                snprintf(pre, sizeof pre, "layers.%d", l);
                extra += lo->indexer_weight * indexer_kl_backward(m, &m->layers[l], pre, &a, lo->indexer_weight, Gr);
                act_free(&a);
            }
            free(Xin[l]);
        }
        *loss += extra;
        free(yh); free(yn); free(dlogits); free(X); free(Xin);
        return Gr;
    }
    /* backward through the head */
    float *dyn = ALLOC(T * d), *dyh = ALLOC(T * d), *dX = ALLOC(T * nd);
    linear_backward(dyn, d, gmat(Gr, &m->head), dlogits, V, yn, T - 1, &m->head, 0, V);
    float *g_norm = grad_of(Gr, "norm.weight", d);
    for (int64_t t = 0; t < T; t++) rmsnorm_backward(dyh + t * d, g_norm, dyn + t * d, yh + t * d, m->norm, d, c->norm_eps);
    hc_head_backward(c, &m->hc_head_fn, m->hc_head_base, m->hc_head_scale, X, T, dyh, dX, gmat(Gr, &m->hc_head_fn),
                     grad_of(Gr, "hc_head_base", n), grad_of(Gr, "hc_head_scale", 1));
    free(yh); free(yn); free(dlogits); free(dyn); free(dyh);
    if (lo->mtp_weight > 0 && c->n_mtp_layers > 0 && T >= 3)
        *loss += lo->mtp_weight * (Gr->mtp_ce = mtp_loss_backward(m, tokens, T, X, lo->mtp_weight, lo, &extra, dX, Gr));
    /* the layers in reverse, each recomputed with its intermediates */
    for (int l = c->n_layers - 1; l >= 0; l--) {
        LayerAct a;
        layer_forward_saved(m, &m->layers[l], Xin[l], tokens, T, need_kl, 0, &a);
        char pre[64];
        snprintf(pre, sizeof pre, "layers.%d", l);
        for (int64_t i = 0; i < T * c->n_activated_experts; i++) Gr->load[(int64_t)l * c->n_routed_experts + a.idx2[i]]++;
        layer_backward(m, &m->layers[l], pre, &a, dX, Gr, lo, &extra);
        act_free(&a);
        if (l + 1 < c->n_layers) free(Xin[l + 1]);
    }
    free(Xin[0]);
    *loss += extra;
    /* the embedding was copied into every stream */
    float *g_embed = gmat(Gr, &m->embed);
    for (int64_t t = 0; t < T; t++)
        for (int i = 0; i < n; i++) axpy_f32(g_embed + (int64_t)tokens[t] * d, 1.0f, dX + t * nd + i * d, d);
    free(dX); free(X); free(Xin);
    return Gr;
}
