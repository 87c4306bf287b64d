/* DeepSeekMoE (spec "MoE"): routed experts chosen by top-k of (score + bias) — or by the
 * tid2eid hash table in the first n_hash_layers — weighted by their normalised scores, plus
 * a shared expert. Tokens are grouped per expert so each expert's weights are read once per
 * call, whatever the number of tokens routed to it. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../dsv4_internal.h"

/* g <- weight · silu(min(g, L)) ⊙ clamp(u, −L, L) over n rows of f; L = 0 means no clamp. */
static void swiglu_gate(float *g, const float *u, int64_t n, int64_t f, const float *weight, double limit) {
    const float L = (float)limit;
    if (cpu_has_avx2()) {   /* a row at a time, so a token's values do not depend on the batch */
        for (int64_t t = 0; t < n; t++) swiglu_avx2(g + t * f, u + t * f, f, L, weight ? weight[t] : 1.0f);
        return;
    }
    for (int64_t t = 0; t < n; t++)
        for (int64_t i = 0; i < f; i++) {
            float gv = g[t * f + i], uv = u[t * f + i];
            if (L > 0) {
                gv = fminf(gv, L);
                uv = fminf(fmaxf(uv, -L), L);
            }
            g[t * f + i] = silu_f(gv) * uv * (weight ? weight[t] : 1.0f);
        }
}

/* expert(x) = w2 · (weight · silu(min(x·w1, L)) ⊙ clamp(x·w3, −L, L)); L = 0 means no clamp. */
void expert_forward(const dsv4_model *m, const ExpertW *e, const float *x, int64_t n, const float *weight,
                           double limit, float *y) {
    const int64_t d = m->cfg.dim, f = e->w1.rows;
    float *g = xmalloc(sizeof(float) * (size_t)(n * f));
    float *u = xmalloc(sizeof(float) * (size_t)(n * f));
    const LinearJob up[2] = {{&e->w1, g, f, x, d, 0, 0}, {&e->w3, u, f, x, d, 0, 0}};
    model_linear_batch(m, up, 2, n);
    swiglu_gate(g, u, n, f, weight, limit);
    model_linear(m, y, d, g, f, n, &e->w2, 0, d);
    free(g);
    free(u);
}

/* One expert's share of a decode step: its n tokens x [n, d] with weights wt (NULL: 1), the
 * SwiGLU limit, the output y [n, d]; e is the routed expert's number (-1: the shared one). */
typedef struct { const ExpertW *w; const float *x; const float *wt; int64_t n; double limit; float *y; int e; } ExpertCall;

/* Decode (a few tokens): the shared expert and every chosen one in two parallel passes — all
 * the w1/w3 products, then all the w2 — instead of three per expert. The same products and
 * sums as expert_forward expert by expert. */
static void experts_forward_batch(const dsv4_model *m, const ExpertCall *ec, int ne) {
    const int64_t d = m->cfg.dim;
    LinearJob *sel = xmalloc(sizeof(LinearJob) * (size_t)(2 * ne));
    float **g = xmalloc(sizeof(float *) * (size_t)ne), **u = xmalloc(sizeof(float *) * (size_t)ne);
    int64_t maxn = 0;
    for (int i = 0; i < ne; i++) {
        maxn = ec[i].n > maxn ? ec[i].n : maxn;
        g[i] = xmalloc(sizeof(float) * (size_t)(ec[i].n * ec[i].w->w1.rows));
        u[i] = xmalloc(sizeof(float) * (size_t)(ec[i].n * ec[i].w->w1.rows));
    }
    /* the batch kernels take one token count: experts see different numbers of tokens, so
     * they are grouped by it (in decode usually one group) */
    for (int64_t cnt = 1; cnt <= maxn; cnt++) {
        int k = 0;
        for (int i = 0; i < ne; i++)
            if (ec[i].n == cnt) {
                const int64_t f = ec[i].w->w1.rows;
                sel[k++] = (LinearJob){&ec[i].w->w1, g[i], f, ec[i].x, d, 0, 0};
                sel[k++] = (LinearJob){&ec[i].w->w3, u[i], f, ec[i].x, d, 0, 0};
            }
        if (k) model_linear_batch(m, sel, k, cnt);
        k = 0;
        for (int i = 0; i < ne; i++)
            if (ec[i].n == cnt) {
                const int64_t f = ec[i].w->w1.rows;
                swiglu_gate(g[i], u[i], cnt, f, ec[i].wt, ec[i].limit);
                sel[k++] = (LinearJob){&ec[i].w->w2, ec[i].y, d, g[i], f, 0, 0};
            }
        if (k) model_linear_batch(m, sel, k, cnt);
    }
    for (int i = 0; i < ne; i++) { free(g[i]); free(u[i]); }
    free(g); free(u); free(sel);
}

/* The n tokens routed to expert e, in ascending token order (order/count: the (token, slot)
 * pairs grouped by expert): their inputs into xe [n, d] (NULL: not copied), their weights into
 * we [n]. */
static int64_t gather_expert_tokens(const float *h, int64_t d, int K, const int64_t *order, const int64_t *count,
                                    const float *wts, int e, float *xe, float *we) {
    const int64_t n = count[e + 1] - count[e];
    for (int64_t j = 0; j < n; j++) {
        const int64_t pair = order[count[e] + j];
        if (xe) memcpy(xe + j * d, h + (pair / K) * d, sizeof(float) * (size_t)d);
        we[j] = wts[pair];
    }
    return n;
}

/* routed [T, d] += expert e's outputs ye [n, d], each to the token it came from */
static void add_expert_output(float *routed, const float *ye, int64_t d, int K, const int64_t *order, const int64_t *count, int e) {
    for (int64_t j = 0; j < count[e + 1] - count[e]; j++) axpy_f32(routed + (order[count[e] + j] / K) * d, 1.0f, ye + j * d, d);
}

/* Routing of T tokens (spec "MoE"): from the gate logits z [T, E] (overwritten by the scores
 * s_e = sqrt(softplus(z)), sigmoid or softmax), the chosen experts idx [T, K] — top-k of
 * score + bias, or tid2eid in hash layers — and their weights [T, K]: the unbiased scores,
 * normalised unless softmax, times route_scale. */
void moe_route(const dsv4_model *m, const LayerW *L, float *scores, const int32_t *tokens, int64_t T, int64_t *idx,
               float *wts) {
    const Config *c = &m->cfg;
    const int E = c->n_routed_experts, K = c->n_activated_experts;
    float *biased = xmalloc(sizeof(float) * (size_t)E);
    for (int64_t t = 0; t < T; t++) {
        float *s = scores + t * E;
        if (c->score_func == SCORE_SOFTMAX) {
            float mx = -INFINITY;
            double sum = 0;
            for (int e = 0; e < E; e++) mx = fmaxf(mx, s[e]);
            for (int e = 0; e < E; e++) { s[e] = expf(s[e] - mx); sum += s[e]; }
            for (int e = 0; e < E; e++) s[e] = (float)(s[e] / sum);
        } else if (c->score_func == SCORE_SIGMOID) {
            for (int e = 0; e < E; e++) s[e] = sigmoid_f(s[e]);
        } else {
            for (int e = 0; e < E; e++) s[e] = sqrtf(softplus_f(s[e]));
        }
        int64_t *it = idx + t * K;
        if (L->tid2eid) {
            for (int k = 0; k < K; k++) it[k] = L->tid2eid[(int64_t)tokens[t] * K + k];
        } else {
            /* the bias only steers selection; weights use the unbiased scores */
            for (int e = 0; e < E; e++) biased[e] = s[e] + (L->gate_bias ? L->gate_bias[e] : 0.0f);
            topk_indices(biased, E, K, it);
        }
        double sum = 0;
        for (int k = 0; k < K; k++) sum += s[it[k]];
        for (int k = 0; k < K; k++) {
            double w = s[it[k]];
            if (c->score_func != SCORE_SOFTMAX) w /= sum;
            wts[t * K + k] = (float)(w * c->route_scale);
        }
    }
    free(biased);
}

void moe_forward(const dsv4_model *m, const LayerW *L, const float *h, const int32_t *tokens, int64_t T, float *out) {
    const Config *c = &m->cfg;
    const int E = c->n_routed_experts, K = c->n_activated_experts;
    const int64_t d = c->dim;
    float *scores = xmalloc(sizeof(float) * (size_t)(T * E));
    linear(scores, E, h, d, T, &L->gate, 0, E);
    int64_t *idx = xmalloc(sizeof(int64_t) * (size_t)(T * K));
    float *wts = xmalloc(sizeof(float) * (size_t)(T * K));
    moe_route(m, L, scores, tokens, T, idx, wts);

    /* group the (token, slot) pairs by expert */
    int64_t *count = xcalloc((size_t)E + 1, sizeof(int64_t));
    for (int64_t i = 0; i < T * K; i++) count[idx[i] + 1]++;
    for (int e = 0; e < E; e++) count[e + 1] += count[e];
    int64_t *order = xmalloc(sizeof(int64_t) * (size_t)(T * K));
    int64_t *fill = xmalloc(sizeof(int64_t) * (size_t)E);
    memcpy(fill, count, sizeof(int64_t) * (size_t)E);
    for (int64_t i = 0; i < T * K; i++) order[fill[idx[i]]++] = i;   /* ascending token order per expert */
    free(fill);

    float *routed = xcalloc((size_t)(T * d), sizeof(float));
    if (T <= 4) {   /* decode: every expert this step needs, in two parallel passes */
        ExpertCall *ec = xmalloc(sizeof(ExpertCall) * (size_t)(E + 1));
        int ne = 0;
        ec[ne++] = (ExpertCall){&L->shared, h, NULL, T, 0.0, out, -1};
        for (int e = 0; e < E; e++) {
            if (count[e + 1] == count[e]) continue;
            /* an expert every token chose reads them as they are (in order: a token picks an
             * expert once), and the products of all such experts share one prepared input */
            const int all = count[e + 1] - count[e] == T;
            float *xe = all ? NULL : xmalloc(sizeof(float) * (size_t)(T * d)), *we = xmalloc(sizeof(float) * (size_t)T);
            const int64_t n = gather_expert_tokens(h, d, K, order, count, wts, e, xe, we);
            ec[ne++] = (ExpertCall){&L->experts[e], all ? h : xe, we, n, c->swiglu_limit, xmalloc(sizeof(float) * (size_t)(n * d)), e};
        }
        experts_forward_batch(m, ec, ne);
        /* summed as below: the shared expert's output, then the routed ones in expert order */
        for (int i = 1; i < ne; i++) {
            add_expert_output(routed, ec[i].y, d, K, order, count, ec[i].e);
            if (ec[i].x != h) free((void *)ec[i].x);
            free((void *)ec[i].wt); free(ec[i].y);
        }
        free(ec);
    } else {   /* shared expert first, then the routed ones added in expert order */
        expert_forward(m, &L->shared, h, T, NULL, 0.0, out);
        float *xe = xmalloc(sizeof(float) * (size_t)(T * d)), *ye = xmalloc(sizeof(float) * (size_t)(T * d));
        float *we = xmalloc(sizeof(float) * (size_t)T);
        for (int e = 0; e < E; e++) {
            const int64_t n = gather_expert_tokens(h, d, K, order, count, wts, e, xe, we);
            if (!n) continue;
            expert_forward(m, &L->experts[e], xe, n, we, c->swiglu_limit, ye);
            add_expert_output(routed, ye, d, K, order, count, e);
        }
        free(xe); free(ye); free(we);
    }
    for (int64_t i = 0; i < T * d; i++) out[i] += routed[i];
    free(routed); free(count); free(order); free(scores); free(idx); free(wts);
}

/* ---- backward ---------------------------------------------------------------------------- */

/* Backward of expert_forward for n tokens x [n, d] with routing weights `weight` (NULL = 1):
 * dy [n, d] -> dx (added), dW1/dW2/dW3 (f32 [rows, cols], added; NULL to skip), dweight [n]
 * (written; may be NULL). The clamps pass gradient where the input lies inside them. */
void expert_backward(const dsv4_model *m, const ExpertW *e, const float *x, int64_t n, const float *weight, double limit,
                     const float *dy, float *dx, float *dW1, float *dW2, float *dW3, float *dweight) {
    const int64_t d = m->cfg.dim, f = e->w1.rows;
    float *g = xmalloc(sizeof(float) * (size_t)(n * f)), *u = xmalloc(sizeof(float) * (size_t)(n * f));
    float *h = xmalloc(sizeof(float) * (size_t)(n * f)), *dh = xcalloc((size_t)(n * f), sizeof(float));
    linear(g, f, x, d, n, &e->w1, 0, f);
    linear(u, f, x, d, n, &e->w3, 0, f);
    const float L = (float)limit;
    for (int64_t i = 0; i < n * f; i++) {
        const float gc = L > 0 ? fminf(g[i], L) : g[i], uc = L > 0 ? fminf(fmaxf(u[i], -L), L) : u[i];
        h[i] = silu_f(gc) * uc * (weight ? weight[i / f] : 1.0f);
    }
    linear_backward(dh, f, dW2, dy, d, h, n, &e->w2, 0, d);   /* dh = dy W2, dW2 += dyᵀ h */
    float *dg = h, *du = xmalloc(sizeof(float) * (size_t)(n * f));   /* h is no longer needed */
    for (int64_t t = 0; t < n; t++) {
        double dw = 0;
        const float wt = weight ? weight[t] : 1.0f;
        for (int64_t i = t * f; i < (t + 1) * f; i++) {
            const float gc = L > 0 ? fminf(g[i], L) : g[i], uc = L > 0 ? fminf(fmaxf(u[i], -L), L) : u[i];
            const float sg = sigmoid_f(gc), act = gc * sg;
            dw += (double)dh[i] * act * uc;
            const float da = dh[i] * wt;
            dg[i] = (L > 0 && g[i] > L) ? 0.0f : da * uc * sg * (1.0f + gc * (1.0f - sg));
            du[i] = (L > 0 && (u[i] < -L || u[i] > L)) ? 0.0f : da * act;
        }
        if (dweight) dweight[t] = (float)dw;
    }
    /* x went through w1 and w3: dx += dg W1 + du W3, dW1 += dgᵀ x, dW3 += duᵀ x */
    float *dxs = xcalloc((size_t)(n * d), sizeof(float));
    linear_backward(dxs, d, dW1, dg, f, x, n, &e->w1, 0, f);
    linear_backward(dxs, d, dW3, du, f, x, n, &e->w3, 0, f);
    for (int64_t i = 0; i < n * d; i++) dx[i] += dxs[i];
    free(dxs); free(g); free(u); free(h); free(dh); free(du);
}

/* Backward of the routing weights of one token: z [E] are the raw gate logits x·gate, idx [K] the
 * chosen experts, dw [K] the gradient of their weights. Writes dz [E]. Selection (top-k over
 * score + bias, or the hash table) passes no gradient. */
void moe_gate_backward(const Config *c, const float *z, const int64_t *idx, const float *dw, float *dz) {
    const int E = c->n_routed_experts, K = c->n_activated_experts;
    float *s = xmalloc(sizeof(float) * (size_t)E), *ds = xcalloc((size_t)E, sizeof(float));
    if (c->score_func == SCORE_SOFTMAX) {
        float mx = -INFINITY;
        double sum = 0;
        for (int e = 0; e < E; e++) mx = fmaxf(mx, z[e]);
        for (int e = 0; e < E; e++) { s[e] = expf(z[e] - mx); sum += s[e]; }
        for (int e = 0; e < E; e++) s[e] = (float)(s[e] / sum);
        for (int k = 0; k < K; k++) ds[idx[k]] += (float)(dw[k] * c->route_scale);   /* w = s route_scale */
        double dot = 0;
        for (int e = 0; e < E; e++) dot += (double)ds[e] * s[e];
        for (int e = 0; e < E; e++) dz[e] = (float)(s[e] * (ds[e] - dot));
    } else {
        for (int e = 0; e < E; e++) s[e] = c->score_func == SCORE_SIGMOID ? sigmoid_f(z[e]) : sqrtf(softplus_f(z[e]));
        double S = 0, sdw = 0;   /* w_k = route_scale s_k / S over the chosen */
        for (int k = 0; k < K; k++) { S += s[idx[k]]; sdw += (double)dw[k] * s[idx[k]]; }
        for (int k = 0; k < K; k++) ds[idx[k]] += (float)(c->route_scale * (dw[k] / S - sdw / (S * S)));
        for (int e = 0; e < E; e++) {
            if (c->score_func == SCORE_SIGMOID) dz[e] = ds[e] * s[e] * (1 - s[e]);
            else dz[e] = s[e] > 0 ? ds[e] * sigmoid_f(z[e]) / (2 * s[e]) : 0.0f;   /* d sqrt(softplus) */
        }
    }
    free(s);
    free(ds);
}

/* Sequence-wise balance loss (V3/V4 "complementary sequence-wise auxiliary loss") for one layer
 * over T tokens: L = alpha Σ_e f_e P_e with f_e = E/(K T) Σ_t 1[e chosen at t] (no gradient) and
 * P_e = (1/T) Σ_t s_{t,e} / Σ_e' s_{t,e'} (scores normalised over all experts). Returns L and adds
 * dL/dz to dz [T, E] (z: the raw gate logits). Hash layers count their table's choices alike. */
double moe_balance_loss(const Config *c, const float *z, const int64_t *idx, int64_t T, double alpha, float *dz) {
    const int E = c->n_routed_experts, K = c->n_activated_experts;
    double *f = xcalloc((size_t)E, sizeof(double)), L = 0;
    for (int64_t i = 0; i < T * K; i++) f[idx[i]] += (double)E / ((double)K * (double)T);
    float *s = xmalloc(sizeof(float) * (size_t)E), *dzt = xmalloc(sizeof(float) * (size_t)E);
    for (int64_t t = 0; t < T; t++) {
        const float *zt = z + t * E;
        double S = 0;
        if (c->score_func == SCORE_SOFTMAX) {
            float mx = -INFINITY;
            for (int e = 0; e < E; e++) mx = fmaxf(mx, zt[e]);
            for (int e = 0; e < E; e++) { s[e] = expf(zt[e] - mx); S += s[e]; }
        } else
            for (int e = 0; e < E; e++) { s[e] = c->score_func == SCORE_SIGMOID ? sigmoid_f(zt[e]) : sqrtf(softplus_f(zt[e])); S += s[e]; }
        double fs = 0;   /* Σ_e f_e s'_e */
        for (int e = 0; e < E; e++) fs += f[e] * s[e] / S;
        L += alpha * fs / (double)T;
        /* ds_e = alpha/T (f_e - Σ f s') / S, then through the score function */
        for (int e = 0; e < E; e++) {
            const double ds = alpha / (double)T * (f[e] - fs) / S;
            if (c->score_func == SCORE_SOFTMAX) dzt[e] = (float)(ds * s[e]);   /* s = exp: ds/dz = s (S cancels in s') */
            else if (c->score_func == SCORE_SIGMOID) dzt[e] = (float)(ds * s[e] * (1 - s[e]));
            else dzt[e] = s[e] > 0 ? (float)(ds * sigmoid_f(zt[e]) / (2 * s[e])) : 0.0f;
        }
        for (int e = 0; e < E; e++) dz[t * E + e] += dzt[e];
    }
    free(f); free(s); free(dzt);
    return L;
}
