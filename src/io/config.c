/* config.json in both published forms: the Hugging Face form (hidden_size, num_hidden_layers,
 * ...) and the official inference form (dim, n_layers, ...). Every field is parsed once and
 * checked; errors name the file and the field. */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../dsv4_internal.h"

typedef enum { F_INT, F_I64, F_DBL } FType;
typedef struct {
    const char *inf;      /* official inference name */
    const char *hf;       /* Hugging Face name (may be a "rope_scaling." sub-key) */
    FType type;
    size_t off;
    int required;
    double def;
} Field;

#define OFF(f) offsetof(Config, f)
static const Field k_fields[] = {
    {"vocab_size", "vocab_size", F_I64, OFF(vocab_size), 1, 0},
    {"dim", "hidden_size", F_I64, OFF(dim), 1, 0},
    {"moe_inter_dim", "moe_intermediate_size", F_I64, OFF(moe_inter_dim), 1, 0},
    {"n_layers", "num_hidden_layers", F_INT, OFF(n_layers), 1, 0},
    {"n_hash_layers", "num_hash_layers", F_INT, OFF(n_hash_layers), 0, 0},
    {"n_mtp_layers", "num_nextn_predict_layers", F_INT, OFF(n_mtp_layers), 0, 1},
    {"n_heads", "num_attention_heads", F_INT, OFF(n_heads), 1, 0},
    {"head_dim", "head_dim", F_INT, OFF(head_dim), 1, 0},
    {"rope_head_dim", "qk_rope_head_dim", F_INT, OFF(rope_head_dim), 1, 0},
    {"q_lora_rank", "q_lora_rank", F_INT, OFF(q_lora_rank), 1, 0},
    {"o_groups", "o_groups", F_INT, OFF(o_groups), 1, 0},
    {"o_lora_rank", "o_lora_rank", F_INT, OFF(o_lora_rank), 1, 0},
    {"n_routed_experts", "n_routed_experts", F_INT, OFF(n_routed_experts), 1, 0},
    {"n_shared_experts", "n_shared_experts", F_INT, OFF(n_shared_experts), 0, 1},
    {"n_activated_experts", "num_experts_per_tok", F_INT, OFF(n_activated_experts), 1, 0},
    {"route_scale", "routed_scaling_factor", F_DBL, OFF(route_scale), 0, 1.0},
    {"swiglu_limit", "swiglu_limit", F_DBL, OFF(swiglu_limit), 0, 0.0},
    {"window_size", "sliding_window", F_INT, OFF(window_size), 1, 0},
    {"original_seq_len", "rope_scaling.original_max_position_embeddings", F_I64, OFF(original_seq_len), 0, 0},
    {"max_seq_len", "max_position_embeddings", F_I64, OFF(max_seq_len), 0, 1048576},
    {"rope_theta", "rope_theta", F_DBL, OFF(rope_theta), 0, 10000.0},
    {"compress_rope_theta", "compress_rope_theta", F_DBL, OFF(compress_rope_theta), 0, 40000.0},
    {"rope_factor", "rope_scaling.factor", F_DBL, OFF(rope_factor), 0, 40.0},
    {"beta_fast", "rope_scaling.beta_fast", F_DBL, OFF(beta_fast), 0, 32.0},
    {"beta_slow", "rope_scaling.beta_slow", F_DBL, OFF(beta_slow), 0, 1.0},
    {"index_n_heads", "index_n_heads", F_INT, OFF(index_n_heads), 0, 0},
    {"index_head_dim", "index_head_dim", F_INT, OFF(index_head_dim), 0, 0},
    {"index_topk", "index_topk", F_INT, OFF(index_topk), 0, 0},
    {"hc_mult", "hc_mult", F_INT, OFF(hc_mult), 1, 0},
    {"hc_sinkhorn_iters", "hc_sinkhorn_iters", F_INT, OFF(hc_sinkhorn_iters), 0, 20},
    {"hc_eps", "hc_eps", F_DBL, OFF(hc_eps), 0, 1e-6},
    {"norm_eps", "rms_norm_eps", F_DBL, OFF(norm_eps), 0, 1e-6},
};

static cJSON *get_path(const cJSON *root, const char *key) {
    const char *dot = strchr(key, '.');
    if (!dot) return cJSON_GetObjectItemCaseSensitive(root, key);
    char head[64];
    size_t l = (size_t)(dot - key);
    if (l >= sizeof head) return NULL;
    memcpy(head, key, l);
    head[l] = 0;
    cJSON *sub = cJSON_GetObjectItemCaseSensitive(root, head);
    return cJSON_IsObject(sub) ? cJSON_GetObjectItemCaseSensitive(sub, dot + 1) : NULL;
}

/* An integer field of the Engram settings (the same names in both config forms). */
static int engram_int(const cJSON *root, const char *key, int required, int64_t def, int64_t lo, int64_t hi, int64_t *out,
                      const char *what) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, key);
    if (!v || cJSON_IsNull(v)) {
        if (required) return dsv4_fail("%s: Engram needs the field \"%s\"", what, key);
        *out = def;
        return 0;
    }
    if (!cJSON_IsNumber(v) || v->valuedouble != floor(v->valuedouble) || v->valuedouble < (double)lo || v->valuedouble > (double)hi)
        return dsv4_fail("%s: field \"%s\" must be an integer in %lld..%lld", what, key, (long long)lo, (long long)hi);
    *out = (int64_t)v->valuedouble;
    return 0;
}

/* Engram (spec ENGRAM.md; DeepSeek V4.1): present when "engram_layer_ids" is. */
static int parse_engram(Config *c, const cJSON *root, const char *what) {
    const cJSON *ids = cJSON_GetObjectItemCaseSensitive(root, "engram_layer_ids");
    if (!ids || cJSON_IsNull(ids)) return 0;
    const int n = cJSON_GetArraySize(ids);
    if (!cJSON_IsArray(ids) || n < 1) return dsv4_fail("%s: \"engram_layer_ids\" must be a non-empty list of layer indices", what);
    if (n > c->n_layers) return dsv4_fail("%s: \"engram_layer_ids\" lists %d layers; the model has %d", what, n, c->n_layers);
    for (int i = 0; i < n; i++) {
        const cJSON *v = cJSON_GetArrayItem(ids, i);
        if (!cJSON_IsNumber(v) || v->valuedouble != floor(v->valuedouble) || v->valuedouble < 0 || v->valuedouble >= c->n_layers)
            return dsv4_fail("%s: \"engram_layer_ids\"[%d] must be a layer index in 0..%d", what, i, c->n_layers - 1);
        c->engram_layer_ids[i] = (int)v->valuedouble;
        for (int k = 0; k < i; k++)
            if (c->engram_layer_ids[k] == c->engram_layer_ids[i]) return dsv4_fail("%s: \"engram_layer_ids\" lists layer %d twice", what, c->engram_layer_ids[i]);
    }
    int64_t N = 0, heads = 0, hd = 0, ks = 0, pad = 0, seed = 0;
    if (engram_int(root, "engram_max_ngram_size", 1, 0, 2, DSV4_MAX_NGRAM, &N, what) ||
        engram_int(root, "engram_n_heads", 1, 0, 1, 4096, &heads, what) ||
        engram_int(root, "engram_head_dim", 1, 0, 1, 1 << 20, &hd, what) ||
        engram_int(root, "engram_kernel_size", 0, 0, 0, 64, &ks, what) ||
        engram_int(root, "engram_pad_token_id", 1, 0, 0, (int64_t)1 << 31, &pad, what) ||
        engram_int(root, "engram_seed", 0, 0, 0, ((int64_t)1 << 53), &seed, what))
        return -1;
    c->engram_n_layers = n;
    c->engram_max_ngram = (int)N; c->engram_n_heads = (int)heads; c->engram_head_dim = (int)hd;
    c->engram_kernel_size = (int)ks; c->engram_pad_id = pad; c->engram_seed = seed;
    /* one size for every order, or one per order 2..N */
    const cJSON *vs = cJSON_GetObjectItemCaseSensitive(root, "engram_vocab_size");
    for (int o = 0; o < N - 1; o++) {
        const cJSON *v = cJSON_IsArray(vs) ? cJSON_GetArrayItem(vs, o) : vs;
        if (cJSON_IsArray(vs) && cJSON_GetArraySize(vs) != N - 1)
            return dsv4_fail("%s: \"engram_vocab_size\" has %d entries; expected %lld (one per n-gram order 2..%lld) or one integer",
                             what, cJSON_GetArraySize(vs), (long long)(N - 1), (long long)N);
        if (!cJSON_IsNumber(v) || v->valuedouble != floor(v->valuedouble) || v->valuedouble < 1 || v->valuedouble > 4.0e15)
            return dsv4_fail("%s: \"engram_vocab_size\" must be a positive integer or a list of them", what);
        c->engram_vocab_size[o] = (int64_t)v->valuedouble;
    }
    return 0;
}

int config_parse(Config *c, const char *text, const char *what) {
    memset(c, 0, sizeof *c);
    cJSON *root = cJSON_Parse(text);
    if (!root) return dsv4_fail("%s: malformed JSON near '%.20s'", what, cJSON_GetErrorPtr() ? cJSON_GetErrorPtr() : "");
    if (!cJSON_IsObject(root)) { cJSON_Delete(root); return dsv4_fail("%s: not a JSON object", what); }
    c->hf_form = cJSON_GetObjectItemCaseSensitive(root, "hidden_size") != NULL;
    if (c->hf_form && cJSON_GetObjectItemCaseSensitive(root, "dim"))
        { cJSON_Delete(root); return dsv4_fail("%s: contradictory config: both \"dim\" and \"hidden_size\"", what); }
    int rc = 0;
    for (size_t i = 0; i < sizeof k_fields / sizeof k_fields[0] && rc == 0; i++) {
        const Field *f = &k_fields[i];
        const char *key = c->hf_form ? f->hf : f->inf;
        cJSON *v = get_path(root, key);
        double x = f->def;
        if (!v || cJSON_IsNull(v)) {
            if (f->required) { rc = dsv4_fail("%s: missing field \"%s\"", what, key); break; }
        } else if (!cJSON_IsNumber(v)) {
            rc = dsv4_fail("%s: field \"%s\" must be a number", what, key); break;
        } else {
            x = v->valuedouble;
            if (!isfinite(x)) { rc = dsv4_fail("%s: field \"%s\" is not finite", what, key); break; }
            if (f->type != F_DBL && (x != floor(x) || fabs(x) > 9.0e15)) {
                rc = dsv4_fail("%s: field \"%s\" must be an integer (got %g)", what, key, x); break;
            }
            if (f->type == F_INT && fabs(x) > 2147483647.0) { rc = dsv4_fail("%s: field \"%s\" out of range", what, key); break; }
        }
        char *p = (char *)c + f->off;
        if (f->type == F_INT) *(int *)p = (int)x;
        else if (f->type == F_I64) *(int64_t *)p = (int64_t)x;
        else *(double *)p = x;
    }
    if (rc == 0 && c->hf_form) {
        /* A rope_scaling block without the YaRN type means plain RoPE everywhere. */
        cJSON *rs = cJSON_GetObjectItemCaseSensitive(root, "rope_scaling");
        if (!cJSON_IsObject(rs)) c->original_seq_len = 0;
    }
    if (rc == 0) {
        const char *key = c->hf_form ? "scoring_func" : "score_func";
        cJSON *v = cJSON_GetObjectItemCaseSensitive(root, key);
        const char *s = cJSON_IsString(v) ? v->valuestring : (v ? NULL : "sqrtsoftplus");
        if (!s) rc = dsv4_fail("%s: field \"%s\" must be a string", what, key);
        else if (!strcmp(s, "sqrtsoftplus")) c->score_func = SCORE_SQRTSOFTPLUS;
        else if (!strcmp(s, "sigmoid")) c->score_func = SCORE_SIGMOID;
        else if (!strcmp(s, "softmax")) c->score_func = SCORE_SOFTMAX;
        else rc = dsv4_fail("%s: field \"%s\": unknown scoring function '%s' (sqrtsoftplus, sigmoid, softmax)", what, key, s);
    }
    if (rc == 0) {
        cJSON *cr = cJSON_GetObjectItemCaseSensitive(root, "compress_ratios");
        int n = cJSON_GetArraySize(cr);
        if (!cJSON_IsArray(cr)) rc = dsv4_fail("%s: missing field \"compress_ratios\" (one ratio per layer)", what);
        else if (c->n_layers < 1 || c->n_layers > DSV4_MAX_LAYERS) rc = dsv4_fail("%s: \"%s\" = %d out of range 1..%d", what, c->hf_form ? "num_hidden_layers" : "n_layers", c->n_layers, DSV4_MAX_LAYERS);
        else if (c->n_mtp_layers < 0 || c->n_mtp_layers > DSV4_MAX_MTP) rc = dsv4_fail("%s: \"%s\" = %d out of range 0..%d", what, c->hf_form ? "num_nextn_predict_layers" : "n_mtp_layers", c->n_mtp_layers, DSV4_MAX_MTP);
        else if (n != c->n_layers && n != c->n_layers + c->n_mtp_layers)
            rc = dsv4_fail("%s: \"compress_ratios\" has %d entries; expected %d (one per layer) or %d (plus one per MTP layer)", what, n, c->n_layers, c->n_layers + c->n_mtp_layers);
        else
            for (int i = 0; i < n; i++) {
                cJSON *v = cJSON_GetArrayItem(cr, i);
                if (!cJSON_IsNumber(v) || v->valuedouble < 0 || v->valuedouble != floor(v->valuedouble) || v->valuedouble > 1e9) {
                    rc = dsv4_fail("%s: \"compress_ratios\"[%d] must be a non-negative integer", what, i); break;
                }
                c->compress_ratios[i] = (int)v->valuedouble;
            }
    }
    if (rc == 0) {
        /* storage format: official "dtype"/"expert_dtype", or HF quantization_config */
        cJSON *dt = cJSON_GetObjectItemCaseSensitive(root, "dtype");
        cJSON *qc = cJSON_GetObjectItemCaseSensitive(root, "quantization_config");
        cJSON *ed = cJSON_GetObjectItemCaseSensitive(root, "expert_dtype");
        if (cJSON_IsString(dt) && !strcmp(dt->valuestring, "fp8")) c->weights_fp8 = 1;
        if (cJSON_IsObject(qc)) {
            cJSON *qm = cJSON_GetObjectItemCaseSensitive(qc, "quant_method");
            if (cJSON_IsString(qm) && !strcmp(qm->valuestring, "fp8")) c->weights_fp8 = 1;
            /* the FP8 kernels read one scale per 128x128 block */
            cJSON *bs = cJSON_GetObjectItemCaseSensitive(qc, "weight_block_size");
            if (bs && !(cJSON_IsArray(bs) && cJSON_GetArraySize(bs) == 2 && cJSON_GetArrayItem(bs, 0)->valuedouble == 128 &&
                        cJSON_GetArrayItem(bs, 1)->valuedouble == 128))
                rc = dsv4_fail("%s: \"quantization_config.weight_block_size\" must be [128, 128]", what);
        }
        cJSON *kvh = cJSON_GetObjectItemCaseSensitive(root, "num_key_value_heads");
        if (rc == 0 && kvh && !(cJSON_IsNumber(kvh) && kvh->valuedouble == 1))
            rc = dsv4_fail("%s: \"num_key_value_heads\" must be 1 (V4 attention shares one key/value vector)", what);
        if (cJSON_IsString(ed) && !strcmp(ed->valuestring, "fp4")) c->experts_fp4 = 1;
    }
    if (rc == 0) rc = parse_engram(c, root, what);
    cJSON_Delete(root);
    if (rc) return rc;
    return config_validate(c, what);
}

int config_validate(const Config *c, const char *what) {
    const int hf = c->hf_form;
#define NAME(inf, hfn) (hf ? hfn : inf)
#define REQ(cond, ...) do { if (!(cond)) return dsv4_fail(__VA_ARGS__); } while (0)
    REQ(c->vocab_size >= 1 && c->vocab_size <= (1 << 30), "%s: \"vocab_size\" = %lld out of range", what, (long long)c->vocab_size);
    REQ(c->dim >= 1 && c->dim <= (1 << 20), "%s: \"%s\" = %lld out of range", what, NAME("dim", "hidden_size"), (long long)c->dim);
    REQ(c->moe_inter_dim >= 1 && c->moe_inter_dim <= (1 << 22), "%s: \"%s\" out of range", what, NAME("moe_inter_dim", "moe_intermediate_size"));
    REQ(c->n_heads >= 1 && c->n_heads <= 4096, "%s: \"%s\" = %d out of range", what, NAME("n_heads", "num_attention_heads"), c->n_heads);
    REQ(c->head_dim >= 2 && c->head_dim <= 65536, "%s: \"head_dim\" = %d out of range", what, c->head_dim);
    REQ(c->rope_head_dim >= 0 && c->rope_head_dim % 2 == 0 && c->rope_head_dim <= c->head_dim,
        "%s: \"%s\" = %d must be even and at most head_dim (%d)", what, NAME("rope_head_dim", "qk_rope_head_dim"), c->rope_head_dim, c->head_dim);
    REQ(c->q_lora_rank >= 1 && c->q_lora_rank <= (1 << 20), "%s: \"q_lora_rank\" out of range", what);
    REQ(c->o_groups >= 1 && c->n_heads % c->o_groups == 0, "%s: \"o_groups\" = %d must divide the number of heads (%d)", what, c->o_groups, c->n_heads);
    REQ(c->o_lora_rank >= 1 && c->o_lora_rank <= (1 << 20), "%s: \"o_lora_rank\" out of range", what);
    REQ(c->n_routed_experts >= 1 && c->n_routed_experts <= 65536, "%s: \"n_routed_experts\" out of range", what);
    REQ(c->n_activated_experts >= 1 && c->n_activated_experts <= c->n_routed_experts,
        "%s: \"%s\" = %d must be between 1 and n_routed_experts (%d)", what, NAME("n_activated_experts", "num_experts_per_tok"), c->n_activated_experts, c->n_routed_experts);
    REQ(c->n_shared_experts >= 0 && c->n_shared_experts <= 64, "%s: \"n_shared_experts\" out of range", what);
    REQ(c->n_hash_layers >= 0 && c->n_hash_layers <= c->n_layers, "%s: \"%s\" = %d exceeds the number of layers (%d)", what, NAME("n_hash_layers", "num_hash_layers"), c->n_hash_layers, c->n_layers);
    REQ(c->window_size >= 1 && c->window_size <= (1 << 24), "%s: \"%s\" out of range", what, NAME("window_size", "sliding_window"));
    REQ(c->hc_mult >= 1 && c->hc_mult <= 64, "%s: \"hc_mult\" = %d out of range 1..64", what, c->hc_mult);
    REQ(c->hc_sinkhorn_iters >= 1 && c->hc_sinkhorn_iters <= 10000, "%s: \"hc_sinkhorn_iters\" must be at least 1", what);
    REQ(c->norm_eps > 0 && c->hc_eps >= 0, "%s: eps fields must be positive", what);
    REQ(c->route_scale > 0, "%s: \"%s\" must be positive", what, NAME("route_scale", "routed_scaling_factor"));
    REQ(c->swiglu_limit >= 0, "%s: \"swiglu_limit\" must be >= 0", what);
    REQ(c->rope_theta > 0 && c->compress_rope_theta > 0, "%s: rope thetas must be positive", what);
    REQ(c->original_seq_len >= 0 && (c->original_seq_len == 0 || c->rope_factor > 0), "%s: YaRN needs a positive rope factor", what);
    int any4 = 0;
    for (int i = 0; i < c->n_layers + c->n_mtp_layers; i++) {
        int r = c->compress_ratios[i];
        REQ(r == 0 || (r >= 2 && r <= (1 << 20)), "%s: \"compress_ratios\"[%d] = %d: a ratio is 0 (window only) or at least 2", what, i, r);
        if (r == 4) any4 = 1;
    }
    if (any4) {
        REQ(c->index_n_heads >= 1 && c->index_head_dim >= 2 && c->index_topk >= 1,
            "%s: ratio-4 layers need \"index_n_heads\", \"index_head_dim\" and \"index_topk\" (all positive)", what);
        REQ(c->rope_head_dim <= c->index_head_dim, "%s: \"index_head_dim\" (%d) is smaller than the RoPE dims (%d)", what, c->index_head_dim, c->rope_head_dim);
    }
    if (c->engram_n_layers)
        REQ(c->engram_pad_id < c->vocab_size, "%s: \"engram_pad_token_id\" = %lld is not a token id (vocab_size %lld)", what,
            (long long)c->engram_pad_id, (long long)c->vocab_size);
    return 0;
#undef REQ
#undef NAME
}

int config_load(Config *c, const char *path) {
    char *txt = read_file(path, NULL);
    if (!txt) return -1;
    int rc = config_parse(c, txt, path);
    free(txt);
    return rc;
}
