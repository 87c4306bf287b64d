/* Parameter and memory accounting from a config alone (`dsv4 plan`), with the conventions of
 * the published sizes: total = the main model without MTP layers; active = parameters
 * multiplied per token (all but the embedding lookup and the unchosen routed experts); scales
 * are bytes, not parameters; an FP4 byte holds two parameters. Weight bytes assume the
 * official storage: FP8 e4m3 + 128x128 E8M0 scales for the big matrices, FP4 + 1x32 scales
 * for routed experts when expert_dtype is fp4, BF16 for embeddings, head, norms, compressor,
 * indexer weights_proj and the gate, F32 for mHC, sinks, ape and the gate bias. */
#include <stdlib.h>
#include <string.h>

#include "../dsv4_internal.h"

enum { K_F32, K_BF16, K_FP8, K_FP4, K_OTHER };

typedef struct {
    const Config *c;
    PlanStats *p;
    int mtp;
} Acc;

static double mat_store_bytes(int kind, double r, double cc) {
    switch (kind) {
    case K_F32: return r * cc * 4;
    case K_BF16: return r * cc * 2;
    case K_FP8: return r * cc + (double)((int64_t)(r + 127) / 128) * (double)((int64_t)(cc + 127) / 128);
    case K_FP4: return r * cc / 2 + r * (double)((int64_t)cc / 32);
    }
    return 0;
}

/* count copies of a [r, cc] tensor, of which `active` are multiplied per token */
static void add(Acc *a, int kind, double r, double cc, double count, double active) {
    const double params = r * cc * count, bytes = mat_store_bytes(kind, r, cc) * count;
    if (a->mtp) {
        a->p->mtp_params += params;
        a->p->mtp_active_params += r * cc * active;
        a->p->mtp_weight_bytes += bytes;
    } else {
        a->p->total_params += params;
        a->p->active_params += r * cc * active;
        a->p->weight_bytes += bytes;
        a->p->decode_weight_bytes_per_token += mat_store_bytes(kind, r, cc) * active;
    }
    a->p->bytes_by_dtype[kind] += bytes;
}

static void add_layer(Acc *a, int id, int is_mtp) {
    const Config *c = a->c;
    const double d = (double)c->dim, n = c->hc_mult, H = c->n_heads, D = c->head_dim;
    const int big = c->weights_fp8 ? K_FP8 : K_BF16;
    const int expk = c->experts_fp4 ? K_FP4 : big;
    const int ratio = c->compress_ratios[id];
    const double mix = n * (n + 2);
    add(a, K_F32, mix, n * d, 2, 2);                    /* hc_attn_fn, hc_ffn_fn */
    add(a, K_F32, 1, 2 * mix + 6, 1, 1);                /* hc bases and scales */
    add(a, K_BF16, 1, 2 * d, 1, 1);                     /* attn_norm, ffn_norm */
    add(a, big, c->q_lora_rank, d, 1, 1);
    add(a, K_BF16, 1, c->q_lora_rank + D, 1, 1);        /* q_norm, kv_norm */
    add(a, big, H * D, c->q_lora_rank, 1, 1);
    add(a, big, D, d, 1, 1);
    add(a, big, (double)c->o_groups * c->o_lora_rank, H * D / c->o_groups, 1, 1);
    add(a, big, d, (double)c->o_groups * c->o_lora_rank, 1, 1);
    add(a, K_F32, 1, H, 1, 1);                          /* attn_sink */
    if (ratio) {
        const double coff = ratio == 4 ? 2 : 1;
        add(a, K_BF16, coff * D, d, 2, 2);              /* compressor wkv, wgate */
        add(a, K_F32, ratio, coff * D, 1, 1);           /* ape */
        add(a, K_BF16, 1, D, 1, 1);                     /* norm */
        if (ratio == 4) {
            const double I = c->index_head_dim, HI = c->index_n_heads;
            add(a, big, HI * I, c->q_lora_rank, 1, 1);
            add(a, K_BF16, HI, d, 1, 1);
            add(a, K_BF16, coff * I, d, 2, 2);
            add(a, K_F32, ratio, coff * I, 1, 1);
            add(a, K_BF16, 1, I, 1, 1);
        }
    }
    const double E = c->n_routed_experts, K = c->n_activated_experts, f = (double)c->moe_inter_dim;
    add(a, K_BF16, E, d, 1, 1);                         /* gate */
    if (is_mtp || id >= c->n_hash_layers) add(a, K_F32, 1, E, 1, 1);   /* gate bias (tid2eid is not a parameter) */
    add(a, expk, f, d, 2 * E, 2 * K);                   /* routed w1, w3 */
    add(a, expk, d, f, E, K);                           /* routed w2 */
    const double sf = f * (c->n_shared_experts ? c->n_shared_experts : 1);
    add(a, big, sf, d, 2, 2);
    add(a, big, d, sf, 1, 1);
    if (is_mtp) {
        add(a, big, d, d, 2, 2);                        /* e_proj, h_proj */
        add(a, K_BF16, 1, 3 * d, 1, 1);                 /* enorm, hnorm, norm */
        add(a, K_F32, n, n * d, 1, 1);                  /* hc_head_fn */
        add(a, K_F32, 1, n + 1, 1, 1);
    }
}

/* Engram (spec ENGRAM.md) of the li-th Engram layer: the tables (lookups, like the embedding),
 * the per-stream key projections, the shared value projection, norms, biases and the conv. */
static void add_engram(Acc *a, const int64_t *primes) {
    const Config *c = a->c;
    const double d = (double)c->dim, n = c->hc_mult, per = (double)(c->engram_max_ngram - 1) * c->engram_n_heads;
    const double E = per * c->engram_head_dim;
    const int big = c->weights_fp8 ? K_FP8 : K_BF16;
    double rows = 0;
    for (int i = 0; i < (int)per; i++) rows += (double)primes[i];
    add(a, K_BF16, rows, c->engram_head_dim, 1, 0);
    a->p->engram_table_params += rows * c->engram_head_dim;
    a->p->decode_weight_bytes_per_token += per * c->engram_head_dim * 2;   /* the rows read per token */
    add(a, big, n * d, E, 1, 1);                        /* key_proj */
    add(a, big, d, E, 1, 1);                            /* value_proj */
    add(a, K_F32, 1, n * d + d, 1, 1);                  /* biases */
    add(a, K_BF16, 1, 2 * n * d, 1, 1);                 /* key_norm, hidden_norm */
    if (c->engram_kernel_size > 0) {
        add(a, K_BF16, 1, n * d, 1, 1);                 /* conv_norm */
        add(a, K_F32, n * d, c->engram_kernel_size, 1, 1);
    }
}

void plan_compute(const Config *c, PlanStats *p) {
    memset(p, 0, sizeof *p);
    Acc a = {c, p, 0};
    const double d = (double)c->dim, n = c->hc_mult, V = (double)c->vocab_size;
    add(&a, K_BF16, V, d, 1, 0);                        /* embed: a lookup, not multiplied */
    add(&a, K_BF16, V, d, 1, 1);                        /* head */
    add(&a, K_BF16, 1, d, 1, 1);                        /* norm */
    add(&a, K_F32, n, n * d, 1, 1);                     /* hc_head_fn */
    add(&a, K_F32, 1, n + 1, 1, 1);
    for (int l = 0; l < c->n_layers; l++) add_layer(&a, l, 0);
    if (c->engram_n_layers) {
        const int64_t per = (int64_t)(c->engram_max_ngram - 1) * c->engram_n_heads;
        int64_t *primes = xmalloc(sizeof(int64_t) * (size_t)(c->engram_n_layers * per));
        engram_table_primes(c, primes);
        for (int li = 0; li < c->engram_n_layers; li++) add_engram(&a, primes + li * per);
        free(primes);
    }
    a.mtp = 1;
    for (int i = 0; i < c->n_mtp_layers; i++) add_layer(&a, c->n_layers + i, 1);

    /* dsv4's cache holds fp32: per token, compressed entries (D/ratio) and indexer keys (I/4);
     * fixed: the window ring and the compressor states. */
    const double D = c->head_dim, I = c->index_head_dim;
    for (int l = 0; l < c->n_layers + c->n_mtp_layers; l++) {
        const int r = c->compress_ratios[l];
        p->kv_bytes_fixed += (double)c->window_size * D * 4;
        if (r) {
            const double coff = r == 4 ? 2 : 1;
            p->kv_bytes_per_token += D * 4 / r;
            p->kv_bytes_fixed += 2 * coff * r * coff * D * 4;
            if (r == 4) {
                p->kv_bytes_per_token += I * 4 / 4;
                p->kv_bytes_fixed += 2 * 2 * 4 * 2 * I * 4;
            }
        }
    }
    p->kv_bytes_1m = p->kv_bytes_per_token * 1048576.0 + p->kv_bytes_fixed;
}
