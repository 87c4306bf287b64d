/* Engram conditional memory (spec ENGRAM.md; DeepSeek V4.1): the hashed n-gram retrieval.
 *
 * Row addresses depend only on the tokens (spec "Retrieval" 2–3, docs/engram-hash.md (b)–(f)):
 * for Engram layer ℓ, multipliers m_k = 2 r_k + 1 with r drawn by NumPy's
 * default_rng(seed + 10007 ℓ).integers(0, half_bound, N) (src/util/npy_random.c), half_bound =
 * max(1, ((2^63 − 1) // |V'|) // 2); the n-gram of order n at t mixes the compressed ids
 *   mix_n = (x_t m_0) XOR (x_{t−1} m_1) XOR … XOR (x_{t−n+1} m_{n−1})   (int64, wrapping)
 * with the compressed pad id before the sequence; head h of order n reads row mix_n mod p_{n,h}
 * (floor modulo) of its own table, p the primes found in layer → order → head order, each the
 * smallest prime above the previous one (the order's table size − 1 to start) that no earlier
 * layer, order or head took. */
#include <math.h>
#include <pthread.h>
#include <sys/mman.h>
#include <unistd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../dsv4_internal.h"
#include "../util/npy_random.h"

/* Deterministic Miller–Rabin for 64-bit n (these bases decide every n < 2^64). */
static uint64_t mulmod(uint64_t a, uint64_t b, uint64_t m) { return (uint64_t)((unsigned __int128)a * b % m); }
static uint64_t powmod(uint64_t a, uint64_t e, uint64_t m) {
    uint64_t r = 1;
    for (a %= m; e; e >>= 1, a = mulmod(a, a, m))
        if (e & 1) r = mulmod(r, a, m);
    return r;
}
static int is_prime(uint64_t n) {
    static const uint64_t bases[] = {2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37};
    if (n < 2) return 0;
    for (int i = 0; i < 12; i++) {
        if (n % bases[i] == 0) return n == bases[i];
    }
    uint64_t d = n - 1;
    int s = 0;
    while (!(d & 1)) { d >>= 1; s++; }
    for (int i = 0; i < 12; i++) {
        uint64_t x = powmod(bases[i], d, n);
        if (x == 1 || x == n - 1) continue;
        int composite = 1;
        for (int r = 1; r < s && composite; r++) {
            x = mulmod(x, x, n);
            if (x == n - 1) composite = 0;
        }
        if (composite) return 0;
    }
    return 1;
}

void engram_table_primes(const Config *c, int64_t *primes) {
    const int K = c->engram_n_heads, N = c->engram_max_ngram;
    int64_t n_found = 0;
    for (int li = 0; li < c->engram_n_layers; li++)
        for (int o = 0; o < N - 1; o++) {
            uint64_t start = (uint64_t)c->engram_vocab_size[o] - 1;
            for (int hd = 0; hd < K; hd++) {
                uint64_t p = start + 1;
                for (;; p++) {
                    if (!is_prime(p)) continue;
                    int seen = 0;   /* primes are never reused across layers, orders or heads */
                    for (int64_t i = 0; i < n_found && !seen; i++) seen = (uint64_t)primes[i] == p;
                    if (!seen) break;
                }
                primes[n_found++] = (int64_t)p;
                start = p;
            }
        }
}

int engram_hash_init(EngramHash *h, const Config *c, const int32_t *lookup, int64_t n_ids, int64_t n_compressed) {
    memset(h, 0, sizeof *h);
    if (!c->engram_n_layers) return dsv4_fail("engram: the config has no Engram layers (\"engram_layer_ids\")");
    if (c->engram_pad_id >= n_ids)
        return dsv4_fail("engram: \"engram_pad_token_id\" = %lld is beyond the tokenizer's %lld ids", (long long)c->engram_pad_id, (long long)n_ids);
    const int L = c->engram_n_layers, N = c->engram_max_ngram, K = c->engram_n_heads, per = (N - 1) * K;
    h->n_layers = L; h->N = N; h->K = K;
    h->lookup = lookup; h->n_ids = n_ids; h->n_compressed = n_compressed;
    h->pad = lookup[c->engram_pad_id];
    int64_t half = (int64_t)(INT64_MAX / (n_compressed > 0 ? n_compressed : 1)) / 2;
    h->half_bound = half > 1 ? half : 1;
    h->mult = xmalloc(sizeof(int64_t) * (size_t)(L * N));
    h->primes = xmalloc(sizeof(int64_t) * (size_t)(L * per));
    engram_table_primes(c, h->primes);
    for (int li = 0; li < L; li++) {
        NpyRng rng;
        npy_rng_seed(&rng, (uint64_t)c->engram_seed + 10007ull * (uint64_t)c->engram_layer_ids[li]);
        int64_t *m = h->mult + (int64_t)li * N;
        if (npy_rng_integers_i64(&rng, 0, h->half_bound, N, m)) return dsv4_fail("engram: bad multiplier bound");
        for (int k = 0; k < N; k++) m[k] = (int64_t)((uint64_t)m[k] * 2 + 1);
    }
    return 0;
}

void engram_hash_free(EngramHash *h) {
    free(h->mult);
    free(h->primes);
    memset(h, 0, sizeof *h);
}

void engram_rows(const EngramHash *h, int li, const int64_t *recent, int64_t *rows) {
    const int N = h->N, K = h->K;
    const int64_t *m = h->mult + (int64_t)li * N, *p = h->primes + (int64_t)li * (N - 1) * K;
    uint64_t mix = (uint64_t)recent[0] * (uint64_t)m[0];   /* unsigned: the int64 wraparound without UB */
    for (int n = 2; n <= N; n++) {
        mix ^= (uint64_t)recent[n - 1] * (uint64_t)m[n - 1];
        const int64_t x = (int64_t)mix;
        for (int hd = 0; hd < K; hd++) {
            const int64_t q = p[(n - 2) * K + hd], r = x % q;
            rows[(n - 2) * K + hd] = r < 0 ? r + q : r;   /* floor modulo, as NumPy's % */
        }
    }
}

/* The gate's scaled dot RMSNorm(k)·RMSNorm(x) / sqrt(d), in double: the two unit-scale vectors
 * largely cancel, and the signed square root magnifies the error of a small dot. */
static double gate_dot(const float *k, const float *x, const float *wk, const float *wx, int64_t d, double eps) {
    double sk = 0, sx = 0, dot = 0;
    for (int64_t i = 0; i < d; i++) { sk += (double)k[i] * k[i]; sx += (double)x[i] * x[i]; }
    const double rk = 1.0 / sqrt(sk / (double)d + eps), rx = 1.0 / sqrt(sx / (double)d + eps);
    for (int64_t i = 0; i < d; i++) dot += ((double)k[i] * rk * wk[i]) * ((double)x[i] * rx * wx[i]);
    return dot / sqrt((double)d);
}

/* The compressed id of a token; ids the tokenizer does not define (a model vocabulary padded
 * beyond it) hash as the pad. */
static int64_t compressed_id(const EngramHash *h, int32_t id) { return id >= 0 && id < h->n_ids ? h->lookup[id] : h->pad; }

void engram_save_free(EngramSave *s) {
    free(s->rows); free(s->e); free(s->key); free(s->v); free(s->X); free(s->s); free(s->alpha); free(s->U); free(s->z); free(s->y);
    memset(s, 0, sizeof *s);
}

/* Engram's fusion for T tokens at positions t0.. (spec ENGRAM.md "Fusion"; docs/engram-hash.md (h)),
 * added to every mHC stream of X [T, hc*dim] before the block's attention:
 *   e = the looked-up rows; k = e·W_kᵀ + b_k (one key per stream); v = e·W_vᵀ + b_v (shared);
 *   s_m = RMSNorm(k_m)·RMSNorm(X_m) / sqrt(dim), s = sign(s) sqrt(max(|s|, 1e-6)), α_m = σ(s_m);
 *   U_m = α_m v;  Y_m = SiLU(conv(RMSNorm(U_m))) + U_m (depthwise causal, dilation N) or U_m;
 *   X_m += Y_m.
 * c keeps what decoding needs: the compressed ids before t0 and the conv's normed inputs. */
void engram_forward(const dsv4_model *m, const LayerW *L, LayerCache *c, float *X, const int32_t *tokens, int64_t T, int64_t t0,
                    EngramSave *save) {
    const Config *cf = &m->cfg;
    const EngramW *G = L->engram;
    const EngramHash *h = &m->engram_hash;
    const int N = h->N, hc = cf->hc_mult, kc = cf->engram_kernel_size, hd = cf->engram_head_dim;
    const int64_t d = cf->dim, per = (int64_t)(N - 1) * h->K, E = per * hd, nd = hc * d;
    const double gate_eps = 1.1920928955078125e-07;   /* float32 epsilon: the demo's nn.RMSNorm default */
    /* rows, then the memory vectors e [T, E] */
    float *e = xmalloc(sizeof(float) * (size_t)(T * E));
    int64_t *comp = xmalloc(sizeof(int64_t) * (size_t)T), recent[DSV4_MAX_NGRAM], rows[(DSV4_MAX_NGRAM - 1) * 64];
    for (int64_t t = 0; t < T; t++) comp[t] = compressed_id(h, tokens[t]);
    for (int64_t t = 0; t < T; t++) {
        for (int k = 0; k < N; k++) recent[k] = t - k >= 0 ? comp[t - k] : c->eng_recent[k - t - 1];
        int64_t *r = per <= (int64_t)(sizeof rows / sizeof rows[0]) ? rows : xmalloc(sizeof(int64_t) * (size_t)per);
        engram_rows(h, G->li, recent, r);
        for (int64_t i = 0; i < per; i++) mat_dequant_rows(&G->table, G->offsets[i] + r[i], 1, e + t * E + i * hd);
        if (save) {
            if (!save->rows) save->rows = xmalloc(sizeof(int64_t) * (size_t)(T * per));
            for (int64_t i = 0; i < per; i++) save->rows[t * per + i] = G->offsets[i] + r[i];
        }
        if (r != rows) free(r);
    }
    /* the ids before the next chunk: newest first */
    int64_t prev[DSV4_MAX_NGRAM];
    if (c->undo)   /* as they stand after all but the last token */
        for (int k = 0; k < N; k++) c->undo->eng_recent[k] = k < T - 1 ? comp[T - 2 - k] : c->eng_recent[k - (T - 1)];
    for (int k = 0; k < N; k++) prev[k] = k < T ? comp[T - 1 - k] : c->eng_recent[k - T];
    memcpy(c->eng_recent, prev, sizeof prev);
    /* keys of every stream and the shared value */
    float *key = xmalloc(sizeof(float) * (size_t)(T * nd)), *v = xmalloc(sizeof(float) * (size_t)(T * d));
    linear(key, nd, e, E, T, &G->key_proj, 0, nd);
    linear(v, d, e, E, T, &G->value_proj, 0, d);
    float *U = xmalloc(sizeof(float) * (size_t)(T * nd));
    float *gs = save ? xmalloc(sizeof(float) * (size_t)(T * hc)) : NULL, *ga = save ? xmalloc(sizeof(float) * (size_t)(T * hc)) : NULL;
#pragma omp parallel for schedule(static) if (T > 1)
    for (int64_t t = 0; t < T; t++) {
        for (int64_t i = 0; i < d; i++) v[t * d + i] += G->value_bias[i];
        for (int s = 0; s < hc; s++) {
            float *ks = key + t * nd + s * d;
            for (int64_t i = 0; i < d; i++) ks[i] += G->key_bias[s * d + i];
            double g = gate_dot(ks, X + t * nd + s * d, G->key_norm + s * d, G->hidden_norm + s * d, d, gate_eps);
            if (gs) gs[t * hc + s] = (float)g;   /* the scaled dot, before the signed root */
            g = (g > 0 ? 1 : g < 0 ? -1 : 0) * sqrt(fmax(fabs(g), 1e-6));   /* signed square root */
            const float alpha = (float)(1.0 / (1.0 + exp(-g)));
            if (ga) ga[t * hc + s] = alpha;
            for (int64_t i = 0; i < d; i++) U[t * nd + s * d + i] = alpha * v[t * d + i];
        }
    }
    if (save) {
        save->e = e; save->key = key; save->v = v; save->X = dup_floats(X, T * nd); save->s = gs; save->alpha = ga;
        save->U = dup_floats(U, T * nd);
        e = key = v = NULL;
    }
    if (kc > 0) {
        /* short conv: z = RMSNorm(U) per stream (eps 1e-5); y_c[t] = Σ_j w[c, j] z_c[t − (kc−1−j)N];
         * the last (kc−1)N positions of z persist in c->eng_conv (ring, slot = position mod span) */
        const int64_t span = (int64_t)(kc - 1) * N;
        float *z = xmalloc(sizeof(float) * (size_t)(T * nd));
        for (int64_t t = 0; t < T; t++)
            for (int s = 0; s < hc; s++) rmsnorm(z + t * nd + s * d, U + t * nd + s * d, G->conv_norm + s * d, d, 1e-5);
        if (save) { save->z = dup_floats(z, T * nd); save->y = xmalloc(sizeof(float) * (size_t)(T * nd)); }
#pragma omp parallel for schedule(static) if (T > 1)
        for (int64_t t = 0; t < T; t++)
            for (int64_t ch = 0; ch < nd; ch++) {
                double y = 0;
                for (int j = 0; j < kc; j++) {
                    const int64_t back = (int64_t)(kc - 1 - j) * N, pos = t0 + t - back;
                    if (pos < 0) continue;
                    const float zv = t - back >= 0 ? z[(t - back) * nd + ch] : c->eng_conv[(pos % span) * nd + ch];   /* span > 0 here */
                    y += (double)G->conv[ch * kc + j] * zv;
                }
                const double silu = y / (1.0 + exp(-y));
                if (save) save->y[t * nd + ch] = (float)y;
                U[t * nd + ch] += (float)silu;
            }
        for (int64_t t = T > span ? T - span : 0; span > 0 && t < T; t++) {
            if (c->undo && t == T - 1) {   /* the slot as the token before left it */
                c->undo->eng_slot_at = (t0 + t) % span;
                memcpy(c->undo->eng_slot, c->eng_conv + c->undo->eng_slot_at * nd, sizeof(float) * (size_t)nd);
            }
            memcpy(c->eng_conv + ((t0 + t) % span) * nd, z + t * nd, sizeof(float) * (size_t)nd);
        }
        free(z);
    }
    const float sc = m->engram_scale;
    for (int64_t i = 0; i < T * nd; i++) X[i] += sc * U[i];
    free(e); free(comp); free(key); free(v); free(U);
}

void engram_backward(const dsv4_model *m, const LayerW *L, const EngramSave *s, int64_t T, float *dX, SparseRows *dtable, float *dkey_w,
                     float *dkey_b, float *dval_w, float *dval_b, float *dkey_norm, float *dhidden_norm, float *dconv_norm, float *dconv) {
    const Config *cf = &m->cfg;
    const EngramW *G = L->engram;
    const int N = cf->engram_max_ngram, hc = cf->hc_mult, kc = cf->engram_kernel_size, hd = cf->engram_head_dim;
    const int64_t d = cf->dim, per = (int64_t)(N - 1) * cf->engram_n_heads, E = per * hd, nd = hc * d;
    const double gate_eps = 1.1920928955078125e-07;
    /* dU: the identity path, plus the conv path  Y = U + SiLU(y),  y = conv(z),  z = RMSNorm(U) */
    float *dU = dup_floats(dX, T * nd);
    if (kc > 0) {
        float *dy = xmalloc(sizeof(float) * (size_t)(T * nd)), *dz = xcalloc((size_t)(T * nd), sizeof(float));
        for (int64_t i = 0; i < T * nd; i++) {
            const double y = s->y[i], sg = 1.0 / (1.0 + exp(-y));
            dy[i] = (float)(dX[i] * sg * (1.0 + y * (1.0 - sg)));   /* SiLU'(y) = σ(y)(1 + y(1 − σ(y))) */
        }
        for (int64_t t = 0; t < T; t++)
            for (int j = 0; j < kc; j++) {
                const int64_t back = (int64_t)(kc - 1 - j) * N;
                if (t - back < 0) continue;
                for (int64_t ch = 0; ch < nd; ch++) {
                    dconv[ch * kc + j] += dy[t * nd + ch] * s->z[(t - back) * nd + ch];
                    dz[(t - back) * nd + ch] += dy[t * nd + ch] * G->conv[ch * kc + j];
                }
            }
        float *tmp = xmalloc(sizeof(float) * (size_t)d);
        for (int64_t t = 0; t < T; t++)
            for (int st = 0; st < hc; st++) {
                const int64_t o = t * nd + st * d;
                rmsnorm_backward(tmp, dconv_norm + st * d, dz + o, s->U + o, G->conv_norm + st * d, d, 1e-5);
                axpy_f32(dU + o, 1.0f, tmp, d);
            }
        free(tmp); free(dy); free(dz);
    }
    /* U_m = α_m v,  α = σ(g),  g = sign(s') sqrt(max(|s'|, 1e-6)),  s' = Σ kn·xn / sqrt(d) */
    float *dv = xcalloc((size_t)(T * d), sizeof(float)), *dk = xmalloc(sizeof(float) * (size_t)(T * nd));
    float *kn = xmalloc(sizeof(float) * (size_t)d), *xn = xmalloc(sizeof(float) * (size_t)d), *tmp = xmalloc(sizeof(float) * (size_t)d);
    float *dkn = xmalloc(sizeof(float) * (size_t)d), *dxn = xmalloc(sizeof(float) * (size_t)d);
    for (int64_t t = 0; t < T; t++)
        for (int st = 0; st < hc; st++) {
            const int64_t o = t * nd + st * d;
            const double a = s->alpha[t * hc + st], sp = s->s[t * hc + st];
            double da = 0;
            for (int64_t i = 0; i < d; i++) { da += (double)dU[o + i] * s->v[t * d + i]; dv[t * d + i] += (float)(a * dU[o + i]); }
            const double dg = da * a * (1 - a), dsp = fabs(sp) > 1e-6 ? dg / (2 * sqrt(fabs(sp))) : 0.0, ds = dsp / sqrt((double)d);
            rmsnorm(kn, s->key + o, G->key_norm + st * d, d, gate_eps);
            rmsnorm(xn, s->X + o, G->hidden_norm + st * d, d, gate_eps);
            for (int64_t i = 0; i < d; i++) { dkn[i] = (float)(ds * xn[i]); dxn[i] = (float)(ds * kn[i]); }
            rmsnorm_backward(dk + o, dkey_norm + st * d, dkn, s->key + o, G->key_norm + st * d, d, gate_eps);
            rmsnorm_backward(tmp, dhidden_norm + st * d, dxn, s->X + o, G->hidden_norm + st * d, d, gate_eps);
            axpy_f32(dX + o, 1.0f, tmp, d);   /* the identity path's dX is already there */
        }
    /* k = e W_kᵀ + b_k, v = e W_vᵀ + b_v, e = the looked-up rows */
    for (int64_t t = 0; t < T; t++) {
        axpy_f32(dkey_b, 1.0f, dk + t * nd, nd);
        axpy_f32(dval_b, 1.0f, dv + t * d, d);
    }
    float *de = xcalloc((size_t)(T * E), sizeof(float));
    linear_backward(de, E, dkey_w, dk, nd, s->e, T, &G->key_proj, 0, nd);
    linear_backward(de, E, dval_w, dv, d, s->e, T, &G->value_proj, 0, d);
    for (int64_t t = 0; t < T; t++)
        for (int64_t i = 0; i < per; i++) sparse_rows_add(dtable, s->rows[t * per + i], de + t * E + i * hd, 1.0f);
    free(dU); free(dv); free(dk); free(kn); free(xn); free(tmp); free(dkn); free(dxn); free(de);
}

/* The table rows the next T tokens will read are known from the tokens alone (spec ENGRAM.md:
 * addresses depend only on the input), so their pages are requested before the layers run. The
 * requests (madvise WILLNEED: the kernel starts the reads) are made by a prefetch thread, so the
 * layers before the first Engram layer compute while the reads are submitted and in flight. Only
 * tables read in place from the file mapping are prefetched. */
struct EngramPrefetcher {
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    uintptr_t *ranges;             /* pairs [start, end) of page-aligned spans */
    int64_t n, cap, gen, done_gen;
    int quit;
};

static void *prefetch_main(void *arg) {
    EngramPrefetcher *p = arg;
    uintptr_t *mine = NULL;
    int64_t cap = 0;
    pthread_mutex_lock(&p->mu);
    for (;;) {
        while (!p->quit && p->done_gen == p->gen) pthread_cond_wait(&p->cv, &p->mu);
        if (p->quit) break;
        const int64_t n = p->n, gen = p->gen;   /* everything queued so far, oldest first */
        if (n > cap) { cap = n; free(mine); mine = xmalloc(sizeof(uintptr_t) * (size_t)cap); }
        if (n) memcpy(mine, p->ranges, sizeof(uintptr_t) * (size_t)n);
        p->n = 0;
        pthread_mutex_unlock(&p->mu);
        for (int64_t i = 0; i + 1 < n; i += 2) madvise((void *)mine[i], mine[i + 1] - mine[i], MADV_WILLNEED);
        pthread_mutex_lock(&p->mu);
        p->done_gen = gen;
    }
    pthread_mutex_unlock(&p->mu);
    free(mine);
    return NULL;
}

EngramPrefetcher *engram_prefetcher_new(void) {
    EngramPrefetcher *p = xcalloc(1, sizeof *p);
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->cv, NULL);
    if (pthread_create(&p->thread, NULL, prefetch_main, p) != 0) {
        pthread_mutex_destroy(&p->mu);
        pthread_cond_destroy(&p->cv);
        free(p);
        return NULL;   /* no thread: engram_prefetch asks the kernel itself */
    }
    return p;
}

void engram_prefetcher_free(EngramPrefetcher *p) {
    if (!p) return;
    pthread_mutex_lock(&p->mu);
    p->quit = 1;
    pthread_cond_signal(&p->cv);
    pthread_mutex_unlock(&p->mu);
    pthread_join(p->thread, NULL);
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->cv);
    free(p->ranges);
    free(p);
}

void engram_prefetch(const dsv4_model *m, const LayerCache *caches, const int32_t *tokens, int64_t from, int64_t T) {
    const Config *cf = &m->cfg;
    const EngramHash *h = &m->engram_hash;
    if (!cf->engram_n_layers || T - from > 4096 || from >= T) return;   /* requests in chunk-sized pieces */
    const char *env = getenv("DSV4_ENGRAM_PREFETCH");   /* "0": off, to measure what it gains */
    if (env && !strcmp(env, "0")) return;
    const long page = sysconf(_SC_PAGESIZE);
    const int N = h->N;
    const int64_t per = (int64_t)(N - 1) * h->K;
    int64_t recent[DSV4_MAX_NGRAM], *rows = xmalloc(sizeof(int64_t) * (size_t)per), n = 0, cap = 0;
    uintptr_t *ranges = NULL;
    for (int l = 0; l < cf->n_layers; l++) {
        const EngramW *G = m->layers[l].engram;
        if (!G || !G->table_mapped) continue;
        const size_t row_bytes = (size_t)mat_bytes(&G->table) / (size_t)G->table.rows;
        for (int64_t t = from; t < T; t++) {
            for (int k = 0; k < N; k++)
                recent[k] = t - k >= 0 ? compressed_id(h, tokens[t - k]) : caches ? caches[l].eng_recent[k - t - 1] : h->pad;
            engram_rows(h, G->li, recent, rows);
            for (int64_t i = 0; i < per; i++) {
                const uintptr_t a = (uintptr_t)G->table.w + (uintptr_t)((G->offsets[i] + rows[i]) * (int64_t)row_bytes);
                if (n + 2 > cap) { cap = cap ? 2 * cap : 256; ranges = realloc(ranges, sizeof(uintptr_t) * (size_t)cap); }
                ranges[n++] = a & ~(uintptr_t)(page - 1);
                ranges[n++] = (a + row_bytes + (uintptr_t)page - 1) & ~(uintptr_t)(page - 1);
            }
        }
    }
    EngramPrefetcher *p = m->engram_prefetcher;
    if (!n) {   /* no table read in place (a training copy, or tables in memory) */
        free(ranges);
        free(rows);
        return;
    }
    if (p) {   /* queued after any requests the thread has not taken yet; returns at once */
        pthread_mutex_lock(&p->mu);
        if (p->n + n > p->cap) {
            p->cap = 2 * (p->n + n);
            p->ranges = realloc(p->ranges, sizeof(uintptr_t) * (size_t)p->cap);
        }
        memcpy(p->ranges + p->n, ranges, sizeof(uintptr_t) * (size_t)n);
        p->n += n;
        p->gen++;
        pthread_cond_signal(&p->cv);
        pthread_mutex_unlock(&p->mu);
    } else
        for (int64_t i = 0; i + 1 < n; i += 2) madvise((void *)ranges[i], ranges[i + 1] - ranges[i], MADV_WILLNEED);
    free(ranges);
    free(rows);
}
