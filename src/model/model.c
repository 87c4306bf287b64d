/* Assembly of the V4 network: embedding -> n-stream residual -> blocks (attention and MoE
 * sublayers, each wrapped in mHC) -> hc head -> logits; and the session's KV caches. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "../dsv4_internal.h"

void model_linear(const dsv4_model *m, float *y, int64_t ldy, const float *x, int64_t ldx, int64_t T, const Mat *W,
                  int64_t r0, int64_t nr) {
    if (!m->quant || (W->kind != W_FP8 && W->kind != W_FP4)) {
        if (m->int8_activations) linear_fast(y, ldy, x, ldx, T, W, r0, nr);
        else linear(y, ldy, x, ldx, T, W, r0, nr);
        return;
    }
    /* official act_quant: FP8 e4m3 activations, one power-of-two scale per 128 inputs */
    const int64_t cols = W->cols;
    float *xq = xmalloc(sizeof(float) * (size_t)(T * cols));
    for (int64_t t = 0; t < T; t++) {
        memcpy(xq + t * cols, x + t * ldx, sizeof(float) * (size_t)cols);
        fake_quant_fp8(xq + t * cols, cols, 128);
    }
    if (m->int8_activations) linear_fast(y, ldy, xq, cols, T, W, r0, nr);
    else linear(y, ldy, xq, cols, T, W, r0, nr);
    free(xq);
}

/* model_linear for several jobs: one piece of parallel work in exact decode (linear_batch); with the
 * official activation rounding or int8 activations, job by job. */
void model_linear_batch(const dsv4_model *m, const LinearJob *jobs, int n, int64_t T) {
    if (!m->quant && !m->int8_activations) { linear_batch(jobs, n, T); return; }
    for (int i = 0; i < n; i++) model_linear(m, jobs[i].y, jobs[i].ldy, jobs[i].x, jobs[i].ldx, T, jobs[i].W, 0, jobs[i].W->rows);
}

int block_forward(const dsv4_model *m, const LayerW *L, LayerCache *c, float *X, const int32_t *tokens, int64_t T,
                  int64_t t0) {
    const Config *cf = &m->cfg;
    const int n = cf->hc_mult;
    const int64_t d = cf->dim;
    float *y = xmalloc(sizeof(float) * (size_t)(T * d));
    float *f = xmalloc(sizeof(float) * (size_t)(T * d));
    float *post = xmalloc(sizeof(float) * (size_t)(T * n));
    float *comb = xmalloc(sizeof(float) * (size_t)(T * n * n));
    int rc;

    if (L->engram) engram_forward(m, L, c, X, tokens, T, t0, NULL);
    mhc_pre(cf, &L->hc_attn_fn, L->hc_attn_base, L->hc_attn_scale, X, T, y, post, comb);
    for (int64_t t = 0; t < T; t++) rmsnorm(y + t * d, y + t * d, L->attn_norm, d, cf->norm_eps);
    rc = attention_forward(m, L, c, y, T, t0, f, NULL);
    if (rc == 0) {
        mhc_post(cf, X, f, post, comb, T);
        mhc_pre(cf, &L->hc_ffn_fn, L->hc_ffn_base, L->hc_ffn_scale, X, T, y, post, comb);
        for (int64_t t = 0; t < T; t++) rmsnorm(y + t * d, y + t * d, L->ffn_norm, d, cf->norm_eps);
        moe_forward(m, L, y, tokens, T, f);
        mhc_post(cf, X, f, post, comb, T);
    }
    free(y); free(f); free(post); free(comb);
    return rc;
}

/* ---- sessions ---- */

/* floats in one of a compressor's decode-state arrays: coff*ratio rows of coff*width */
static int64_t state_len(const CompressorW *cw) { return (int64_t)cw->coff * cw->ratio * cw->coff * cw->width; }

static void cache_init_state(const dsv4_model *m, const LayerW *L, LayerCache *c) {
    /* Engram: the compressed pad id before the sequence; no conv history */
    for (int k = 0; k < DSV4_MAX_NGRAM; k++) c->eng_recent[k] = m->engram_hash.pad;
    if (c->eng_conv) memset(c->eng_conv, 0, sizeof(float) * (size_t)((m->cfg.engram_kernel_size - 1) * m->cfg.engram_max_ngram * m->cfg.hc_mult * m->cfg.dim));
    /* Rows of a missing previous window pool nothing: z = -inf, a = 0. */
    if (L->has_compressor)
        for (int64_t i = 0; i < state_len(&L->comp); i++) { c->comp_a[i] = 0; c->comp_z[i] = -INFINITY; }
    if (L->has_indexer)
        for (int64_t i = 0; i < state_len(&L->idx.comp); i++) { c->idx_a[i] = 0; c->idx_z[i] = -INFINITY; }
}

/* Allocates one layer's cache; 0 on success, -1 when memory runs out. */
/* A zeroed cache buffer. Large ones (a long context's compressed entries and indexer keys,
 * tens of MB at 1M tokens, read start to end by every decode step) ask for transparent huge
 * pages: the hardware prefetchers stop at 4 KB page boundaries and every page costs a TLB walk. */
static void *cache_calloc(size_t n, size_t size) {
    void *p = calloc(n ? n : 1, size);
#ifdef MADV_HUGEPAGE
    const size_t bytes = (n ? n : 1) * size, huge = (size_t)2 << 20;
    if (p && bytes >= 2 * huge) {
        const uintptr_t a = ((uintptr_t)p + huge - 1) & ~(uintptr_t)(huge - 1), b = ((uintptr_t)p + bytes) & ~(uintptr_t)(huge - 1);
        if (b > a) madvise((void *)a, b - a, MADV_HUGEPAGE);   /* advice only: without it, 4 KB pages */
    }
#endif
    return p;
}

int cache_alloc(const dsv4_model *m, const LayerW *L, LayerCache *c, int64_t ctx) {
    const Config *cf = &m->cfg;
    memset(c, 0, sizeof *c);
    c->ring = calloc((size_t)cf->window_size * (size_t)cf->head_dim, sizeof(float));
    int ok = c->ring != NULL;
    if (L->has_compressor) {
        c->cap_comp = ctx / L->ratio;
        const int64_t n = state_len(&L->comp);
        c->comp = cache_calloc((size_t)(c->cap_comp ? c->cap_comp : 1) * (size_t)cf->head_dim, sizeof(float));
        c->comp_a = malloc(sizeof(float) * (size_t)n);
        c->comp_z = malloc(sizeof(float) * (size_t)n);
        ok = ok && c->comp && c->comp_a && c->comp_z;
    }
    if (L->has_indexer) {
        const int64_t n = state_len(&L->idx.comp);
        c->idx_keys = cache_calloc((size_t)(ctx / 4 ? ctx / 4 : 1) * (size_t)cf->index_head_dim, sizeof(float));
        c->idx_a = malloc(sizeof(float) * (size_t)n);
        c->idx_z = malloc(sizeof(float) * (size_t)n);
        ok = ok && c->idx_keys && c->idx_a && c->idx_z;
    }
    if (L->engram && cf->engram_kernel_size > 1) {   /* a kernel of 1 looks at no earlier position */
        c->eng_conv = calloc((size_t)((cf->engram_kernel_size - 1) * cf->engram_max_ngram) * (size_t)(cf->hc_mult * cf->dim), sizeof(float));
        ok = ok && c->eng_conv;
    }
    if (!ok) return -1;
    cache_init_state(m, L, c);
    return 0;
}

void cache_free(LayerCache *c) {
    free(c->ring); free(c->comp); free(c->comp_a); free(c->comp_z); free(c->idx_keys); free(c->idx_panels); free(c->idx_a); free(c->idx_z);
    free(c->eng_conv);
}

dsv4_session *dsv4_session_new(dsv4_model *m, int64_t max_ctx) {
    if (max_ctx < 1 || max_ctx > ((int64_t)1 << 40)) { dsv4_fail("context size %lld out of range", (long long)max_ctx); return NULL; }
    dsv4_session *s = xcalloc(1, sizeof *s);
    s->m = m;
    s->max_ctx = max_ctx;
    s->chunk = 512;
    s->cache = xcalloc((size_t)m->cfg.n_layers, sizeof(LayerCache));
    s->mtp_cache = xcalloc((size_t)(m->cfg.n_mtp_layers ? m->cfg.n_mtp_layers : 1), sizeof(LayerCache));
    int rc = 0;
    for (int i = 0; i < m->cfg.n_layers && rc == 0; i++) rc = cache_alloc(m, &m->layers[i], &s->cache[i], max_ctx);
    for (int i = 0; i < m->cfg.n_mtp_layers && rc == 0; i++) rc = cache_alloc(m, &m->mtp[i], &s->mtp_cache[i], max_ctx);
    if (rc) {
        PlanStats p;
        plan_compute(&m->cfg, &p);
        dsv4_fail("cannot allocate the KV cache for %lld tokens (about %.2f GB); use a smaller --ctx", (long long)max_ctx,
                  (p.kv_bytes_per_token * (double)max_ctx + p.kv_bytes_fixed) / 1e9);
        dsv4_session_free(s);
        return NULL;
    }
    return s;
}

void dsv4_session_free(dsv4_session *s) {
    if (!s) return;
    for (int i = 0; s->undo && i < s->m->cfg.n_layers; i++) {
        free(s->undo[i].comp); free(s->undo[i].idx); free(s->undo[i].eng_slot);
    }
    free(s->undo);
    for (int i = 0; i < s->m->cfg.n_layers; i++) cache_free(&s->cache[i]);
    for (int i = 0; i < s->m->cfg.n_mtp_layers; i++) cache_free(&s->mtp_cache[i]);
    free(s->cache);
    free(s->mtp_cache);
    free(s);
}

int64_t dsv4_session_pos(const dsv4_session *s) { return s->pos; }
void dsv4_session_set_chunk(dsv4_session *s, int chunk) { s->chunk = chunk > 0 ? chunk : 1; }
void dsv4_session_set_progress(dsv4_session *s, dsv4_progress_fn fn, void *user) {
    s->progress = fn;
    s->progress_user = user;
}
void dsv4_session_reset(dsv4_session *s) {
    s->pos = s->mtp_pos = 0;
    s->undo_ready = 0;
    for (int i = 0; i < s->m->cfg.n_layers; i++) cache_init_state(s->m, &s->m->layers[i], &s->cache[i]);
    for (int i = 0; i < s->m->cfg.n_mtp_layers; i++) cache_init_state(s->m, &s->m->mtp[i], &s->mtp_cache[i]);
}

int dsv4_vocab_size(const dsv4_model *m) { return (int)m->cfg.vocab_size; }
int dsv4_hidden_size(const dsv4_model *m) { return (int)m->cfg.dim; }
int dsv4_hc_mult(const dsv4_model *m) { return m->cfg.hc_mult; }
int dsv4_n_mtp_layers(const dsv4_model *m) { return m->cfg.n_mtp_layers; }

static int check_tokens(const dsv4_model *m, const int32_t *tokens, int64_t n) {
    for (int64_t i = 0; i < n; i++)
        if (tokens[i] < 0 || tokens[i] >= m->cfg.vocab_size)
            return dsv4_fail("token id %d at index %lld is out of range (vocab_size %lld)", tokens[i], (long long)i,
                             (long long)m->cfg.vocab_size);
    return 0;
}

/* logits[T_out, vocab] from the final streams X[T_out, n*d] via hc_head_*, norm and head. */
void final_logits(const dsv4_model *m, const Mat *fn, const float *base, const float *scale,
                         const float *norm, const float *X, int64_t T, float *logits) {
    const int64_t d = m->cfg.dim;
    float *y = xmalloc(sizeof(float) * (size_t)(T * d));
    hc_head(&m->cfg, fn, base, scale, X, T, y);
    for (int64_t t = 0; t < T; t++) rmsnorm(y + t * d, y + t * d, norm, d, m->cfg.norm_eps);
    linear(logits, m->cfg.vocab_size, y, d, T, &m->head, 0, m->cfg.vocab_size);
    free(y);
}

/* logits of the last token (all_logits = 0) or of every token [n, vocab] */
static int forward_tokens(dsv4_session *s, const int32_t *tokens, int64_t n, float *logits, int all_logits, float *hidden) {
    const dsv4_model *m = s->m;
    const Config *cf = &m->cfg;
    if (n <= 0) return dsv4_fail("forward: no tokens");
    if (check_tokens(m, tokens, n)) return -1;
    if (s->pos + n > s->max_ctx)
        return dsv4_fail("context full: %lld + %lld tokens exceed the cache size --ctx %lld", (long long)s->pos,
                         (long long)n, (long long)s->max_ctx);
    const int64_t nd = (int64_t)cf->hc_mult * cf->dim;
    for (int64_t c0 = 0; c0 < n; c0 += s->chunk) {
        const int64_t T = c0 + s->chunk <= n ? s->chunk : n - c0;
        float *X = xmalloc(sizeof(float) * (size_t)(T * nd));
        /* the embedding is copied into the n streams */
        for (int64_t t = 0; t < T; t++) {
            mat_dequant_rows(&m->embed, tokens[c0 + t], 1, X + t * nd);
            for (int i = 1; i < cf->hc_mult; i++) memcpy(X + t * nd + i * cf->dim, X + t * nd, sizeof(float) * (size_t)cf->dim);
        }
        /* Engram tables on disk: this chunk's rows (first chunk only: later ones were asked for
         * one chunk ahead), then the next chunk's, read while this one computes */
        const int64_t next = c0 + T + s->chunk <= n ? s->chunk : n - c0 - T;
        engram_prefetch(m, s->cache, tokens + c0, c0 ? T : 0, T + next);
        for (int l = 0; l < cf->n_layers; l++)
            if (block_forward(m, &m->layers[l], &s->cache[l], X, tokens + c0, T, s->pos)) { free(X); return -1; }
        if (hidden) memcpy(hidden + c0 * nd, X, sizeof(float) * (size_t)(T * nd));
        if (logits && all_logits)
            final_logits(m, &m->hc_head_fn, m->hc_head_base, m->hc_head_scale, m->norm, X, T, logits + c0 * cf->vocab_size);
        else if (logits && c0 + T == n)
            final_logits(m, &m->hc_head_fn, m->hc_head_base, m->hc_head_scale, m->norm, X + (T - 1) * nd, 1, logits);
        s->pos += T;
        free(X);
        if (s->progress && n > 1) s->progress(s->progress_user, c0 + T, n);
    }
    return 0;
}

typedef struct { dsv4_session *s; const int32_t *tokens; int64_t n; float *logits; int all_logits; float *hidden; } ForwardCall;
static int forward_call(void *arg) {
    const ForwardCall *f = arg;
    return forward_tokens(f->s, f->tokens, f->n, f->logits, f->all_logits, f->hidden);
}
/* A few tokens (decode, speculative verification) are ~150 small pieces of parallel work,
 * handed to the threads of one parallel region (team_step); prefill opens its own regions. */
static int forward_step(dsv4_session *s, const int32_t *tokens, int64_t n, float *logits, int all_logits, float *hidden) {
    ForwardCall f = {s, tokens, n, logits, all_logits, hidden};
    return n <= LINEAR_SMALL_T ? team_step(forward_call, &f) : forward_call(&f);
}

int dsv4_forward(dsv4_session *s, const int32_t *tokens, int64_t n, float *logits, float *hidden) {
    s->undo_ready = 0;
    return forward_step(s, tokens, n, logits, 0, hidden);
}

/* Speculative decoding's verification pass: up to one chunk of tokens in one pass (up to 4 take
 * the decode kernels, whose per-token results equal those of one token at a time), logits for
 * each, and the last token kept revocable. */
int dsv4_forward_verify(dsv4_session *s, const int32_t *tokens, int64_t n, float *logits, float *hidden) {
    const dsv4_model *m = s->m;
    const Config *cf = &m->cfg;
    s->undo_ready = 0;
    if (n < 1 || n > s->chunk) return dsv4_fail("forward_verify: %lld tokens; 1 to %d (the chunk size) allowed", (long long)n, s->chunk);
    if (!s->undo) {
        s->undo = xcalloc((size_t)cf->n_layers, sizeof(LayerUndo));
        for (int l = 0; l < cf->n_layers; l++) {
            const LayerW *L = &m->layers[l];
            LayerUndo *u = &s->undo[l];
            if (L->has_compressor) u->comp = xmalloc(sizeof(float) * (size_t)(2 * state_len(&L->comp)));
            if (L->has_indexer) u->idx = xmalloc(sizeof(float) * (size_t)(2 * state_len(&L->idx.comp)));
            if (s->cache[l].eng_conv) u->eng_slot = xmalloc(sizeof(float) * (size_t)(cf->hc_mult * cf->dim));
        }
    }
    for (int l = 0; l < cf->n_layers; l++) {
        s->undo[l].eng_slot_at = -1;
        s->cache[l].undo = &s->undo[l];
    }
    const int rc = forward_step(s, tokens, n, logits, 1, hidden);
    for (int l = 0; l < cf->n_layers; l++) s->cache[l].undo = NULL;
    s->undo_ready = rc == 0;
    return rc;
}

int dsv4_session_undo_last(dsv4_session *s) {
    const dsv4_model *m = s->m;
    if (!s->undo_ready) return dsv4_fail("undo_last: only the last token of a dsv4_forward_verify call can be taken back, once");
    for (int l = 0; l < m->cfg.n_layers; l++) {
        const LayerW *L = &m->layers[l];
        LayerCache *c = &s->cache[l];
        const LayerUndo *u = &s->undo[l];
        if (L->has_compressor) {
            const int64_t k = state_len(&L->comp);
            memcpy(c->comp_a, u->comp, sizeof(float) * (size_t)k);
            memcpy(c->comp_z, u->comp + k, sizeof(float) * (size_t)k);
        }
        if (L->has_indexer) {
            const int64_t k = state_len(&L->idx.comp);
            memcpy(c->idx_a, u->idx, sizeof(float) * (size_t)k);
            memcpy(c->idx_z, u->idx + k, sizeof(float) * (size_t)k);
        }
        if (L->engram) memcpy(c->eng_recent, u->eng_recent, sizeof c->eng_recent);
        if (u->eng_slot_at >= 0)
            memcpy(c->eng_conv + u->eng_slot_at * m->cfg.hc_mult * m->cfg.dim, u->eng_slot,
                   sizeof(float) * (size_t)(m->cfg.hc_mult * m->cfg.dim));
    }
    s->pos--;
    s->undo_ready = 0;
    return 0;
}

void dsv4_prefetch(dsv4_session *s, const int32_t *tokens, int64_t n, int64_t from) {
    for (int64_t i = 0; i < n; i++)
        if (tokens[i] < 0 || tokens[i] >= s->m->cfg.vocab_size) return;   /* a hint: bad ids ask for nothing */
    engram_prefetch(s->m, s->cache, tokens, from, n);
}

/* MTP (spec "MTP"): e = enorm(Embed(token_{i+1})); X' = e·e_projᵀ (broadcast to the streams)
 * + hnorm(X_i)·h_projᵀ (per stream); one full block; its own hc head and norm; shared head. */
static int mtp_forward_tokens(dsv4_session *s, const float *hidden, const int32_t *next_tokens, int64_t n, float *logits) {
    const dsv4_model *m = s->m;
    const Config *cf = &m->cfg;
    if (cf->n_mtp_layers < 1) return dsv4_fail("this model has no MTP layer");
    if (n <= 0) return dsv4_fail("mtp: no tokens");
    if (check_tokens(m, next_tokens, n)) return -1;
    if (s->mtp_pos + n > s->max_ctx) return dsv4_fail("MTP context full (--ctx %lld)", (long long)s->max_ctx);
    const LayerW *L = &m->mtp[0];
    const int64_t d = cf->dim, nd = (int64_t)cf->hc_mult * d;
    for (int64_t c0 = 0; c0 < n; c0 += s->chunk) {
        const int64_t T = c0 + s->chunk <= n ? s->chunk : n - c0;
        float *e = xmalloc(sizeof(float) * (size_t)(T * d));
        float *ep = xmalloc(sizeof(float) * (size_t)(T * d));
        float *hn = xmalloc(sizeof(float) * (size_t)(T * nd));
        float *X = xmalloc(sizeof(float) * (size_t)(T * nd));
        for (int64_t t = 0; t < T; t++) {
            mat_dequant_rows(&m->embed, next_tokens[c0 + t], 1, e + t * d);
            rmsnorm(e + t * d, e + t * d, L->enorm, d, cf->norm_eps);
            for (int i = 0; i < cf->hc_mult; i++)
                rmsnorm(hn + t * nd + i * d, hidden + (c0 + t) * nd + i * d, L->hnorm, d, cf->norm_eps);
        }
        model_linear(m, ep, d, e, d, T, &L->e_proj, 0, d);
        model_linear(m, X, d, hn, d, T * cf->hc_mult, &L->h_proj, 0, d);
        for (int64_t t = 0; t < T; t++)
            for (int i = 0; i < cf->hc_mult; i++) axpy_f32(X + t * nd + i * d, 1.0f, ep + t * d, d);
        int rc = block_forward(m, L, &s->mtp_cache[0], X, next_tokens + c0, T, s->mtp_pos);
        if (rc == 0 && logits)
            final_logits(m, &L->hc_head_fn, L->hc_head_base, L->hc_head_scale, L->mtp_norm, X, T,
                         logits + c0 * cf->vocab_size);
        free(e); free(ep); free(hn); free(X);
        if (rc) return rc;
        s->mtp_pos += T;
    }
    return 0;
}

typedef struct { dsv4_session *s; const float *hidden; const int32_t *tokens; int64_t n; float *logits; } MtpCall;
static int mtp_call(void *arg) {
    const MtpCall *f = arg;
    return mtp_forward_tokens(f->s, f->hidden, f->tokens, f->n, f->logits);
}
int dsv4_mtp_forward(dsv4_session *s, const float *hidden, const int32_t *next_tokens, int64_t n, float *logits) {
    MtpCall f = {s, hidden, next_tokens, n, logits};
    return n <= LINEAR_SMALL_T ? team_step(mtp_call, &f) : mtp_call(&f);   /* drafting: as a decode step */
}
