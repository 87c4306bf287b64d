/* `dsv4 init`: a randomly initialised model directory in the official checkpoint format
 * (tensor names, dtypes, FP8 128x128 / FP4 1x32 block scales, shards + index). With --sparse
 * only headers are written and the data are holes, so full-size layouts cost no disk. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cli.h"

typedef enum { C_BIG, C_EXPERT, C_HALF, C_FULL, C_INT } Class;
typedef enum { I_NORMAL, I_NORM, I_ONE_PLUS, I_TID2EID } Init;

typedef struct {
    char name[192];
    Storage st;
    int64_t rows, cols;      /* cols == 0: a vector of `rows` */
    Init init;
    float std;
    int shard;
} Spec;

typedef struct {
    Spec *v;
    int64_t n, cap;
    int dtype;               /* 0 f32, 1 bf16, 2 fp8 */
    const Config *c;
} Specs;

static void add(Specs *s, const char *name, Class cl, int64_t rows, int64_t cols, Init init, float std) {
    if (s->n == s->cap) { s->cap = s->cap ? s->cap * 2 : 1024; s->v = realloc(s->v, sizeof(Spec) * (size_t)s->cap); }
    Spec *p = &s->v[s->n++];
    memset(p, 0, sizeof *p);
    snprintf(p->name, sizeof p->name, "%s", name);
    p->rows = rows;
    p->cols = cols;
    p->init = init;
    p->std = std;
    switch (cl) {
    case C_INT: p->st = S_I32; break;
    case C_FULL: p->st = S_F32; break;
    case C_HALF: p->st = s->dtype ? S_BF16 : S_F32; break;
    case C_BIG: p->st = s->dtype == 2 ? S_FP8 : s->dtype ? S_BF16 : S_F32; break;
    case C_EXPERT: p->st = s->dtype == 2 ? S_FP4 : s->dtype ? S_BF16 : S_F32; break;
    }
    if (p->st == S_FP4 && cols % 32) p->st = S_FP8;   /* FP4 needs 1x32 blocks */
}

#define NM(...) (snprintf(nm, sizeof nm, __VA_ARGS__), nm)

/* weights ~ N(0, 1/fan_in) keep activations O(1) at any width */
static float fan(int64_t in) { return (float)(1.0 / sqrt((double)in)); }

static void add_compressor(Specs *s, const char *pre, int ratio, int width) {
    const Config *c = s->c;
    char nm[128];
    const int coff = ratio == 4 ? 2 : 1;
    add(s, NM("%s.ape", pre), C_FULL, ratio, (int64_t)coff * width, I_NORMAL, 0.5f);
    add(s, NM("%s.wkv.weight", pre), C_HALF, (int64_t)coff * width, c->dim, I_NORMAL, fan(c->dim));
    add(s, NM("%s.wgate.weight", pre), C_HALF, (int64_t)coff * width, c->dim, I_NORMAL, fan(c->dim));
    add(s, NM("%s.norm.weight", pre), C_HALF, width, 0, I_NORM, 0.1f);
}

static void add_block(Specs *s, const char *pre, int id, int is_mtp) {
    const Config *c = s->c;
    char nm[128];
    const int64_t d = c->dim, n = c->hc_mult, mix = n * (n + 2), H = c->n_heads, D = c->head_dim;
    const int ratio = c->compress_ratios[id];
    add(s, NM("%s.attn_norm.weight", pre), C_HALF, d, 0, I_NORM, 0.1f);
    add(s, NM("%s.ffn_norm.weight", pre), C_HALF, d, 0, I_NORM, 0.1f);
    add(s, NM("%s.hc_attn_fn", pre), C_FULL, mix, n * d, I_NORMAL, 0.5f * fan(n * d));
    add(s, NM("%s.hc_attn_base", pre), C_FULL, mix, 0, I_NORMAL, 0.5f);
    add(s, NM("%s.hc_attn_scale", pre), C_FULL, 3, 0, I_ONE_PLUS, 0.2f);
    add(s, NM("%s.hc_ffn_fn", pre), C_FULL, mix, n * d, I_NORMAL, 0.5f * fan(n * d));
    add(s, NM("%s.hc_ffn_base", pre), C_FULL, mix, 0, I_NORMAL, 0.5f);
    add(s, NM("%s.hc_ffn_scale", pre), C_FULL, 3, 0, I_ONE_PLUS, 0.2f);
    add(s, NM("%s.attn.attn_sink", pre), C_FULL, H, 0, I_NORMAL, 1.0f);
    add(s, NM("%s.attn.wq_a.weight", pre), C_BIG, c->q_lora_rank, d, I_NORMAL, fan(d));
    add(s, NM("%s.attn.q_norm.weight", pre), C_HALF, c->q_lora_rank, 0, I_NORM, 0.1f);
    add(s, NM("%s.attn.wq_b.weight", pre), C_BIG, H * D, c->q_lora_rank, I_NORMAL, fan(c->q_lora_rank));
    add(s, NM("%s.attn.wkv.weight", pre), C_BIG, D, d, I_NORMAL, fan(d));
    add(s, NM("%s.attn.kv_norm.weight", pre), C_HALF, D, 0, I_NORM, 0.1f);
    add(s, NM("%s.attn.wo_a.weight", pre), C_BIG, (int64_t)c->o_groups * c->o_lora_rank, H * D / c->o_groups, I_NORMAL, fan(H * D / c->o_groups));
    add(s, NM("%s.attn.wo_b.weight", pre), C_BIG, d, (int64_t)c->o_groups * c->o_lora_rank, I_NORMAL, fan((int64_t)c->o_groups * c->o_lora_rank));
    if (ratio) {
        char cp[128];
        snprintf(cp, sizeof cp, "%s.attn.compressor", pre);
        add_compressor(s, cp, ratio, (int)D);
    }
    if (ratio == 4) {
        add(s, NM("%s.attn.indexer.wq_b.weight", pre), C_BIG, (int64_t)c->index_n_heads * c->index_head_dim, c->q_lora_rank, I_NORMAL, fan(c->q_lora_rank));
        add(s, NM("%s.attn.indexer.weights_proj.weight", pre), C_HALF, c->index_n_heads, d, I_NORMAL, fan(d));
        char cp[128];
        snprintf(cp, sizeof cp, "%s.attn.indexer.compressor", pre);
        add_compressor(s, cp, 4, c->index_head_dim);
    }
    add(s, NM("%s.ffn.gate.weight", pre), C_HALF, c->n_routed_experts, d, I_NORMAL, fan(d));
    if (!is_mtp && id < c->n_hash_layers) add(s, NM("%s.ffn.gate.tid2eid", pre), C_INT, c->vocab_size, c->n_activated_experts, I_TID2EID, 0);
    else add(s, NM("%s.ffn.gate.bias", pre), C_FULL, c->n_routed_experts, 0, I_NORMAL, 0.1f);
    for (int e = 0; e < c->n_routed_experts; e++) {
        add(s, NM("%s.ffn.experts.%d.w1.weight", pre, e), C_EXPERT, c->moe_inter_dim, d, I_NORMAL, fan(d));
        add(s, NM("%s.ffn.experts.%d.w2.weight", pre, e), C_EXPERT, d, c->moe_inter_dim, I_NORMAL, fan(c->moe_inter_dim));
        add(s, NM("%s.ffn.experts.%d.w3.weight", pre, e), C_EXPERT, c->moe_inter_dim, d, I_NORMAL, fan(d));
    }
    const int64_t sf = c->moe_inter_dim * (c->n_shared_experts ? c->n_shared_experts : 1);
    add(s, NM("%s.ffn.shared_experts.w1.weight", pre), C_BIG, sf, d, I_NORMAL, fan(d));
    add(s, NM("%s.ffn.shared_experts.w2.weight", pre), C_BIG, d, sf, I_NORMAL, fan(sf));
    add(s, NM("%s.ffn.shared_experts.w3.weight", pre), C_BIG, sf, d, I_NORMAL, fan(d));
    if (is_mtp) {
        add(s, NM("%s.e_proj.weight", pre), C_BIG, d, d, I_NORMAL, fan(d));
        add(s, NM("%s.h_proj.weight", pre), C_BIG, d, d, I_NORMAL, fan(d));
        add(s, NM("%s.enorm.weight", pre), C_HALF, d, 0, I_NORM, 0.1f);
        add(s, NM("%s.hnorm.weight", pre), C_HALF, d, 0, I_NORM, 0.1f);
        add(s, NM("%s.norm.weight", pre), C_HALF, d, 0, I_NORM, 0.1f);
        add(s, NM("%s.hc_head_fn", pre), C_FULL, n, n * d, I_NORMAL, 0.5f * fan(n * d));
        add(s, NM("%s.hc_head_base", pre), C_FULL, n, 0, I_NORMAL, 0.5f);
        add(s, NM("%s.hc_head_scale", pre), C_FULL, 1, 0, I_ONE_PLUS, 0.2f);
    }
}

/* Engram (spec ENGRAM.md "Fusion"): the flat table of every (order, head) sub-table, the key
 * projection of every mHC stream (stacked, stream-major), the shared value projection, the gate's
 * norms (per stream), and the short conv with its norm when engram_kernel_size > 0. */
static void add_engram(Specs *s, const char *pre, const int64_t *primes) {
    const Config *c = s->c;
    char nm[160];
    const int64_t d = c->dim, n = c->hc_mult, per = (int64_t)(c->engram_max_ngram - 1) * c->engram_n_heads;
    const int64_t E = per * c->engram_head_dim;
    int64_t rows = 0;
    for (int64_t i = 0; i < per; i++) rows += primes[i];
    add(s, NM("%s.engram.embed.weight", pre), C_HALF, rows, c->engram_head_dim, I_NORMAL, 1.0f);
    add(s, NM("%s.engram.key_proj.weight", pre), C_BIG, n * d, E, I_NORMAL, fan(E));
    add(s, NM("%s.engram.key_proj.bias", pre), C_FULL, n * d, 0, I_NORMAL, 0.1f);
    add(s, NM("%s.engram.value_proj.weight", pre), C_BIG, d, E, I_NORMAL, fan(E));
    add(s, NM("%s.engram.value_proj.bias", pre), C_FULL, d, 0, I_NORMAL, 0.1f);
    add(s, NM("%s.engram.key_norm.weight", pre), C_HALF, n * d, 0, I_NORM, 0.1f);
    add(s, NM("%s.engram.hidden_norm.weight", pre), C_HALF, n * d, 0, I_NORM, 0.1f);
    if (c->engram_kernel_size > 0) {
        add(s, NM("%s.engram.conv_norm.weight", pre), C_HALF, n * d, 0, I_NORM, 0.1f);
        add(s, NM("%s.engram.conv.weight", pre), C_FULL, n * d, c->engram_kernel_size, I_NORMAL, 0.5f * fan(c->engram_kernel_size));
    }
}

static void build_specs(Specs *s) {
    const Config *c = s->c;
    char nm[128];
    add(s, "embed.weight", C_HALF, c->vocab_size, c->dim, I_NORMAL, 1.0f);
    int64_t *primes = NULL;
    const int64_t per = (int64_t)(c->engram_max_ngram - 1) * c->engram_n_heads;
    if (c->engram_n_layers) {
        primes = xmalloc(sizeof(int64_t) * (size_t)(c->engram_n_layers * per));
        engram_table_primes(c, primes);
    }
    for (int l = 0; l < c->n_layers; l++) {
        snprintf(nm, sizeof nm, "layers.%d", l);
        add_block(s, nm, l, 0);
        for (int li = 0; li < c->engram_n_layers; li++)
            if (c->engram_layer_ids[li] == l) add_engram(s, nm, primes + li * per);
    }
    free(primes);
    add(s, "norm.weight", C_HALF, c->dim, 0, I_NORM, 0.1f);
    add(s, "head.weight", C_HALF, c->vocab_size, c->dim, I_NORMAL, fan(c->dim));
    add(s, "hc_head_fn", C_FULL, c->hc_mult, (int64_t)c->hc_mult * c->dim, I_NORMAL, 0.5f * fan((int64_t)c->hc_mult * c->dim));
    add(s, "hc_head_base", C_FULL, c->hc_mult, 0, I_NORMAL, 0.5f);
    add(s, "hc_head_scale", C_FULL, 1, 0, I_ONE_PLUS, 0.2f);
    for (int i = 0; i < c->n_mtp_layers; i++) { char p[32]; snprintf(p, sizeof p, "mtp.%d", i); add_block(s, p, c->n_layers + i, 1); }
}

uint64_t cli_encoded_bytes(Storage st, int64_t rows, int64_t cols) {
    const uint64_t r = (uint64_t)rows, cc = cols ? (uint64_t)cols : 1, n = r * cc;
    switch (st) {
    case S_F32: case S_I32: return 4 * n;
    case S_BF16: return 2 * n;
    case S_FP8: return n + ((r + 127) / 128) * ((cc + 127) / 128);
    case S_FP4: return n / 2 + r * (cc / 32);
    case S_Q8: return n + 2 * r * (cc / 32);
    case S_Q4: return n / 2 + 2 * r * (cc / 32);
    }
    return 0;
}

static uint64_t spec_bytes(const Spec *p) { return cli_encoded_bytes(p->st, p->rows, p->cols); }

/* splitmix64, seeded per tensor from the seed and the name: independent of order and shards */
typedef struct { uint64_t s; int have; double spare; } Rng;
static uint64_t rng_next(Rng *r) {
    uint64_t z = (r->s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}
static double rng_uniform(Rng *r) { return ((rng_next(r) >> 11) + 0.5) * (1.0 / 9007199254740992.0); }
static double rng_normal(Rng *r) {
    if (r->have) { r->have = 0; return r->spare; }
    double u = rng_uniform(r), v = rng_uniform(r), m = sqrt(-2 * log(u));
    r->spare = m * sin(2 * M_PI * v);
    r->have = 1;
    return m * cos(2 * M_PI * v);
}

static void gen_values(const Spec *p, const Config *c, uint64_t seed, float *v, int32_t *iv) {
    Rng r = {seed, 0, 0};
    for (const char *q = p->name; *q; q++) r.s = (r.s ^ (uint8_t)*q) * 1099511628211ull;
    const int64_t n = p->rows * (p->cols ? p->cols : 1);
    if (p->init == I_TID2EID) {
        const int K = c->n_activated_experts, E = c->n_routed_experts;
        for (int64_t t = 0; t < c->vocab_size; t++)
            for (int k = 0; k < K; k++) {
                int32_t e;
                int dup;
                do {   /* distinct experts per token */
                    e = (int32_t)(rng_next(&r) % (uint64_t)E);
                    dup = 0;
                    for (int j = 0; j < k; j++) dup |= iv[t * K + j] == e;
                } while (dup);
                iv[t * K + k] = e;
            }
        return;
    }
    for (int64_t i = 0; i < n; i++) {
        const double z = rng_normal(&r);
        v[i] = (float)(p->init == I_NORMAL ? p->std * z : 1.0 + p->std * z);
    }
}

/* The official block quantisers (also used by `dsv4 convert`, so both write the same bytes).
 * FP8: v [rows, cols] -> q e4m3 [rows, cols] and s E8M0 [ceil(rows/128), ceil(cols/128)], one
 * scale 2^ceil(log2(amax/448)) per 128x128 block. FP4: cols % 32 == 0; q [rows, cols/2] e2m1
 * nibbles (low first), s E8M0 [rows, cols/32], one scale 2^ceil(log2(amax/6)) per 1x32 block. */
void cli_quant_fp8(const float *v, int64_t rows, int64_t cols, uint8_t *q, uint8_t *s) {
    const int64_t br = (rows + 127) / 128, bc = (cols + 127) / 128;
#pragma omp parallel for schedule(dynamic) if (rows * cols >= (1 << 20))
    for (int64_t i = 0; i < br; i++)
        for (int64_t j = 0; j < bc; j++) {
            float amax = 1e-12f;
            for (int64_t r = i * 128; r < rows && r < i * 128 + 128; r++)
                for (int64_t c = j * 128; c < cols && c < j * 128 + 128; c++) amax = fmaxf(amax, fabsf(v[r * cols + c]));
            const uint8_t e = f32_to_e8m0(amax / 448.0f);
            const float sc = e8m0_to_f32(e);
            s[i * bc + j] = e;
            for (int64_t r = i * 128; r < rows && r < i * 128 + 128; r++)
                for (int64_t c = j * 128; c < cols && c < j * 128 + 128; c++) q[r * cols + c] = f32_to_e4m3(v[r * cols + c] / sc);
        }
}

void cli_quant_fp4(const float *v, int64_t rows, int64_t cols, uint8_t *q, uint8_t *s) {
    const int64_t bc = cols / 32;
#pragma omp parallel for schedule(static) if (rows * cols >= (1 << 20))
    for (int64_t r = 0; r < rows; r++)
        for (int64_t j = 0; j < bc; j++) {
            float amax = 1e-12f;
            for (int64_t c = j * 32; c < j * 32 + 32; c++) amax = fmaxf(amax, fabsf(v[r * cols + c]));
            const uint8_t e = f32_to_e8m0(amax / 6.0f);
            const float sc = e8m0_to_f32(e);
            s[r * bc + j] = e;
            for (int64_t c = j * 32; c < j * 32 + 32; c += 2)   /* low nibble first */
                q[(r * cols + c) / 2] = (uint8_t)(f32_to_e2m1(v[r * cols + c] / sc) | f32_to_e2m1(v[r * cols + c + 1] / sc) << 4);
        }
}

void cli_scale_name(const char *name, char *out, size_t n) {
    const char *dot = strrchr(name, '.');
    snprintf(out, n, "%.*s.scale", (int)(dot ? dot - name : (long)strlen(name)), name);
}

int cli_add_encoded(StWriter *w, const char *name, Storage st, int nd, const int64_t *shape, float *v) {
    int64_t n = 1;
    for (int k = 0; k < nd; k++) n *= shape[k];
    char sname[600];
    cli_scale_name(name, sname, sizeof sname);
    int rc = 0;
    switch (st) {
    case S_F32: st_writer_add(w, name, DT_F32, nd, shape, v); return 0;
    case S_BF16: {
        uint16_t *h = xmalloc(2 * (size_t)(n ? n : 1));
        for (int64_t i = 0; i < n; i++) h[i] = f32_to_bf16(v[i]);
        st_writer_add(w, name, DT_BF16, nd, shape, h);
        break;
    }
    case S_FP8: {
        const int64_t rows = shape[0], cols = shape[1];
        int64_t ss[2] = {(rows + 127) / 128, (cols + 127) / 128};
        uint8_t *q = xmalloc((size_t)n), *s = xmalloc((size_t)(ss[0] * ss[1]));
        cli_quant_fp8(v, rows, cols, q, s);
        st_writer_add(w, name, DT_F8_E4M3, 2, shape, q);
        st_writer_add(w, sname, DT_F8_E8M0, 2, ss, s);
        break;
    }
    case S_FP4: {
        const int64_t rows = shape[0], cols = shape[1];
        int64_t ws[2] = {rows, cols / 2}, ss[2] = {rows, cols / 32};
        uint8_t *q = xmalloc((size_t)(n / 2)), *s = xmalloc((size_t)(rows * (cols / 32)));
        cli_quant_fp4(v, rows, cols, q, s);
        st_writer_add(w, name, DT_I8, 2, ws, q);
        st_writer_add(w, sname, DT_F8_E8M0, 2, ss, s);
        break;
    }
    case S_Q8: case S_Q4: {   /* kernels/quant.c; Q8 is I8 [rows, cols], Q4 U8 [rows, cols/2] */
        const int64_t rows = shape[0], cols = shape[1];
        int64_t ws[2] = {rows, st == S_Q8 ? cols : cols / 2}, ss[2] = {rows, cols / 32};
        const int64_t nq = ws[0] * ws[1], nd_ = ss[0] * ss[1];
        uint8_t *q = xmalloc((size_t)(nq > 0 ? nq : 1));
        uint16_t *d = xmalloc(2 * (size_t)(nd_ > 0 ? nd_ : 1));
        rc = st == S_Q8 ? quant_q8(v, rows, cols, (int8_t *)q, d) : quant_q4(v, rows, cols, q, d);
        if (rc) {
            free(q); free(d);
            rc = dsv4_fail("tensor '%s': a value is not finite, or a block's scale exceeds F16's range (65504)", name);
            break;
        }
        st_writer_add(w, name, st == S_Q8 ? DT_I8 : DT_U8, 2, ws, q);
        st_writer_add(w, sname, DT_F16, 2, ss, d);
        break;
    }
    case S_I32: break;
    }
    free(v);
    return rc;
}

/* A BF16/F32 tensor too large to hold (an Engram table bigger than memory): its values are drawn
 * in order while the file is written, the same values gen_values would draw. */
typedef struct { Rng r; Init init; float std; int bf16; } Stream;
static void stream_fill(void *user, uint8_t *buf, uint64_t n) {
    Stream *s = user;
    const uint64_t k = n / (s->bf16 ? 2 : 4);
    for (uint64_t i = 0; i < k; i++) {
        const double z = rng_normal(&s->r);
        const float v = (float)(s->init == I_NORMAL ? s->std * z : 1.0 + s->std * z);
        if (s->bf16) { const uint16_t h = f32_to_bf16(v); memcpy(buf + 2 * i, &h, 2); }
        else memcpy(buf + 4 * i, &v, 4);
    }
}

static void emit(StWriter *w, const Spec *p, const Config *c, uint64_t seed, int sparse) {
    const int64_t rows = p->rows, cols = p->cols;
    int64_t shape[2] = {rows, cols};
    const int nd = cols ? 2 : 1;
    char sname[600];
    cli_scale_name(p->name, sname, sizeof sname);
    if (sparse) {
        switch (p->st) {
        case S_F32: st_writer_add(w, p->name, DT_F32, nd, shape, NULL); break;
        case S_I32: st_writer_add(w, p->name, DT_I32, nd, shape, NULL); break;
        case S_BF16: st_writer_add(w, p->name, DT_BF16, nd, shape, NULL); break;
        case S_FP8: {
            int64_t ss[2] = {(rows + 127) / 128, (cols + 127) / 128};
            st_writer_add(w, p->name, DT_F8_E4M3, 2, shape, NULL);
            st_writer_add(w, sname, DT_F8_E8M0, 2, ss, NULL);
            break;
        }
        case S_FP4: {
            int64_t ws[2] = {rows, cols / 2}, ss[2] = {rows, cols / 32};
            st_writer_add(w, p->name, DT_I8, 2, ws, NULL);
            st_writer_add(w, sname, DT_F8_E8M0, 2, ss, NULL);
            break;
        }
        case S_Q8: case S_Q4: break;   /* init writes the official formats only */
        }
        return;
    }
    const int64_t n = rows * (cols ? cols : 1);
    if (p->st == S_I32) {
        int32_t *iv = xmalloc(sizeof(int32_t) * (size_t)n);
        gen_values(p, c, seed, NULL, iv);
        st_writer_add(w, p->name, DT_I32, nd, shape, iv);
        return;
    }
    if ((p->st == S_BF16 || p->st == S_F32) && n > ((int64_t)1 << 26)) {
        Stream *s = xcalloc(1, sizeof *s);
        s->r = (Rng){seed, 0, 0};
        for (const char *q = p->name; *q; q++) s->r.s = (s->r.s ^ (uint8_t)*q) * 1099511628211ull;   /* as gen_values */
        s->init = p->init; s->std = p->std; s->bf16 = p->st == S_BF16;
        st_writer_add_fill(w, p->name, s->bf16 ? DT_BF16 : DT_F32, nd, shape, stream_fill, s);
        return;
    }
    float *v = xmalloc(sizeof(float) * (size_t)n);
    gen_values(p, c, seed, v, NULL);
    cli_add_encoded(w, p->name, p->st, nd, shape, v);
}

static const char *INIT_HELP =
    "usage: dsv4 init --config CFG --seed S --out DIR [--dtype f32|bf16|fp8] [--sparse] [--shard-gb G]\n"
    "  Writes a randomly initialised model directory in the official checkpoint format.\n"
    "  --dtype fp8   FP8 e4m3 weights with 128x128 E8M0 scales and FP4 routed experts, as the\n"
    "                official instruct checkpoints (default f32)\n"
    "  --sparse      write the layout only: headers, data left as holes (no disk used)\n"
    "  --shard-gb G  approximate shard size in GB (default 5)\n";

static int mkdir_p(const char *dir) {
    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s", dir);
    for (char *p = tmp + 1; *p; p++)
        if (*p == '/') { *p = 0; if (mkdir(tmp, 0755) && errno != EEXIST) return -1; *p = '/'; }
    return mkdir(tmp, 0755) && errno != EEXIST ? -1 : 0;
}

int cmd_init(int argc, char **argv) {
    const char *cfgp = NULL, *out = NULL, *dts = "f32";
    int64_t seed = -1;
    int sparse = 0;
    double shard_gb = 5;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) { fputs(INIT_HELP, stdout); return 0; }
        else if (!strcmp(a, "--sparse")) sparse = 1;
        else if (!v) return cli_error("init", "option %s needs a value (see --help)", a);
        else if (!strcmp(a, "--config")) cfgp = argv[++i];
        else if (!strcmp(a, "--out")) out = argv[++i];
        else if (!strcmp(a, "--dtype")) dts = argv[++i];
        else if (!strcmp(a, "--seed")) seed = cli_int("init", a, argv[++i], 0, INT64_MAX);
        else if (!strcmp(a, "--shard-gb")) shard_gb = (double)cli_int("init", a, argv[++i], 1, 1 << 20);
        else return cli_error("init", "unknown option '%s' (see --help)", a);
    }
    if (!cfgp || !out || seed < 0) return cli_error("init", "needs --config CFG --seed S --out DIR (see --help)");
    int dtype = !strcmp(dts, "f32") ? 0 : !strcmp(dts, "bf16") ? 1 : !strcmp(dts, "fp8") ? 2 : -1;
    if (dtype < 0) return cli_error("init", "--dtype must be f32, bf16 or fp8, not '%s'", dts);
    size_t cfg_len;
    char *cfg_text = read_file(cfgp, &cfg_len);
    if (!cfg_text) return cli_error("init", "%s", dsv4_last_error());
    Config c;
    if (config_parse(&c, cfg_text, cfgp)) { free(cfg_text); return cli_error("init", "%s", dsv4_last_error()); }
    if (mkdir_p(out)) { free(cfg_text); return cli_error("init", "%s: cannot create directory: %s", out, strerror(errno)); }

    Specs s = {.dtype = dtype, .c = &c};
    build_specs(&s);
    const uint64_t limit = (uint64_t)(shard_gb * 1e9);
    int n_shards = 1;
    uint64_t acc = 0;
    for (int64_t i = 0; i < s.n; i++) {
        const uint64_t b = spec_bytes(&s.v[i]);
        if (acc && acc + b > limit) { n_shards++; acc = 0; }
        acc += b;
        s.v[i].shard = n_shards - 1;
    }
    /* index: tensor -> shard file, with the total size */
    char path[4096];
    size_t icap = 1 << 16, ilen = 0;
    char *idx = xmalloc(icap);
    uint64_t total = 0;
    for (int64_t i = 0; i < s.n; i++) total += spec_bytes(&s.v[i]);
    ilen = (size_t)snprintf(idx, icap, "{\n  \"metadata\": {\"total_size\": %llu},\n  \"weight_map\": {", (unsigned long long)total);
    int first = 1;
    for (int64_t i = 0; i < s.n; i++) {
        const Spec *p = &s.v[i];
        char fname[64];
        snprintf(fname, sizeof fname, "model-%05d-of-%05d.safetensors", p->shard + 1, n_shards);
        for (int k = 0; k < ((p->st == S_FP8 || p->st == S_FP4) ? 2 : 1); k++) {
            char nm[600];
            const char *dot = strrchr(p->name, '.');
            if (k) snprintf(nm, sizeof nm, "%.*s.scale", (int)(dot - p->name), p->name);
            else snprintf(nm, sizeof nm, "%s", p->name);
            if (ilen + 256 > icap) { icap *= 2; idx = realloc(idx, icap); }
            ilen += (size_t)snprintf(idx + ilen, icap - ilen, "%s\n    \"%s\": \"%s\"", first ? "" : ",", nm, fname);
            first = 0;
        }
    }
    if (ilen + 16 > icap) { icap += 16; idx = realloc(idx, icap); }
    ilen += (size_t)snprintf(idx + ilen, icap - ilen, "\n  }\n}\n");

    double t0 = now_sec();
    int rc = 0;
    int64_t i = 0, n_written = 0;
    for (int sh = 0; sh < n_shards && rc == 0; sh++) {
        StWriter w = {0};
        for (; i < s.n && s.v[i].shard == sh; i++) {
            emit(&w, &s.v[i], &c, (uint64_t)seed * 0x9e3779b97f4a7c15ull + 1, sparse);
            if (!sparse) progress("init", i + 1, s.n, t0);
        }
        snprintf(path, sizeof path, "%s/model-%05d-of-%05d.safetensors", out, sh + 1, n_shards);
        n_written += w.n;
        rc = st_writer_save(&w, path, sparse);
        st_writer_free(&w);
    }
    if (rc == 0) { snprintf(path, sizeof path, "%s/model.safetensors.index.json", out); rc = write_file_atomic(path, idx, ilen); }
    if (rc == 0) { snprintf(path, sizeof path, "%s/config.json", out); rc = write_file_atomic(path, cfg_text, cfg_len); }
    free(idx);
    free(cfg_text);
    free(s.v);
    if (rc) return cli_error("init", "%s", dsv4_last_error());
    fprintf(stderr, "dsv4 init: wrote %s: %lld tensors in %d shard(s), %.3f GB%s, in %.1f s\n", out, (long long)n_written, n_shards,
            total / 1e9, sparse ? " (sparse: headers only)" : "", now_sec() - t0);
    return 0;
}
