/* Binding a model directory's tensors to the network (spec "Checkpoint format"): every
 * tensor the config implies is looked up by its official name and checked for shape and
 * dtype; large weights stay in the mapped files in their stored precision, small vectors
 * (norms, mHC, sinks, ape, biases, tid2eid) are decoded to fp32/int32 once. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "../dsv4_internal.h"

static void *own(dsv4_model *m, void *p) {
    if (m->n_owned == m->cap_owned) {
        m->cap_owned = m->cap_owned ? m->cap_owned * 2 : 256;
        m->owned = realloc(m->owned, sizeof(void *) * (size_t)m->cap_owned);
    }
    m->owned[m->n_owned++] = p;
    return p;
}

static void register_param(dsv4_model *m, const char *name, Mat *mat, float **vec, int64_t numel) {
    if (m->n_params == m->cap_params) {
        m->cap_params = m->cap_params ? m->cap_params * 2 : 256;
        m->params = realloc(m->params, sizeof(ParamRef) * (size_t)m->cap_params);
    }
    const StTensor *t = st_find(&m->st, name);
    if (t) {
        if (!m->param_of_tensor) {
            m->param_of_tensor = xmalloc(sizeof(int64_t) * (size_t)(m->st.n_tensors ? m->st.n_tensors : 1));
            for (int64_t i = 0; i < m->st.n_tensors; i++) m->param_of_tensor[i] = -1;
        }
        m->param_of_tensor[t - m->st.tensors] = m->n_params;
    }
    m->params[m->n_params++] = (ParamRef){own(m, strdup(name)), mat, vec, numel};
}

int64_t model_param_index(const dsv4_model *m, const char *name) {
    const StTensor *t = m->param_of_tensor ? st_find(&m->st, name) : NULL;
    return t ? m->param_of_tensor[t - m->st.tensors] : -1;
}

static const char *file_of(const dsv4_model *m, const StTensor *t) { return m->st.files[t->file].path; }

static void shape_str(const StTensor *t, char *buf, size_t n) {
    size_t o = (size_t)snprintf(buf, n, "[");
    for (int i = 0; i < t->ndim && o < n; i++) o += (size_t)snprintf(buf + o, n - o, i ? ", %lld" : "%lld", (long long)t->shape[i]);
    if (o < n) snprintf(buf + o, n - o, "]");
}

/* Looks a tensor up by its official name, also accepting a "model." prefix. */
static const StTensor *find(const dsv4_model *m, const char *name) {
    const StTensor *t = st_find(&m->st, name);
    if (!t) {
        char alt[600];
        snprintf(alt, sizeof alt, "model.%s", name);
        t = st_find(&m->st, alt);
    }
    return t;
}

static const StTensor *need(const dsv4_model *m, const char *name) {
    const StTensor *t = find(m, name);
    if (!t) dsv4_fail("%s: missing tensor '%s'", m->dir, name);
    return t;
}

/* A [rows, cols] linear weight: F32/BF16/F16 as is, F8_E4M3 with a 128x128-block scale, FP4
 * (I8 [rows, cols/2], two per byte) with a 1x32-block E8M0 scale, or the CPU formats of
 * `dsv4 quantize`: Q8 (I8 [rows, cols]) and Q4 (U8 [rows, cols/2]) with 1x32-block F16 scales. */
static int bind_mat(dsv4_model *m, Mat *out, const char *name, int64_t rows, int64_t cols) {
    const StTensor *t = need(m, name);
    char sh[128];
    if (!t) return -1;
    memset(out, 0, sizeof *out);
    out->name = t->name;
    out->rows = rows;
    out->cols = cols;
    out->w = t->data;
    /* I8 is FP4 when it holds half the columns, Q8 when it holds all of them */
    const int i8_q8 = t->dtype == DT_I8 && t->ndim == 2 && t->shape[1] == cols && cols % 32 == 0;
    const int packed = (t->dtype == DT_I8 && !i8_q8) || t->dtype == DT_U8;
    int64_t want_cols = packed ? cols / 2 : cols;
    if (t->ndim != 2 || t->shape[0] != rows || t->shape[1] != want_cols || ((packed || i8_q8) && cols % 32)) {
        shape_str(t, sh, sizeof sh);
        return dsv4_fail("%s: tensor '%s' has shape %s %s; the config implies [%lld, %lld]%s", file_of(m, t), name, sh,
                         dtype_name(t->dtype), (long long)rows, (long long)want_cols,
                         t->dtype == DT_I8 ? " (FP4: two values per byte, or Q8: one; in-dim a multiple of 32)"
                         : t->dtype == DT_U8 ? " (Q4: two values per byte, in-dim a multiple of 32)" : "");
    }
    switch (t->dtype) {
    case DT_F32: out->kind = W_F32; register_param(m, t->name, out, NULL, rows * cols); return 0;
    case DT_BF16: out->kind = W_BF16; register_param(m, t->name, out, NULL, rows * cols); return 0;
    case DT_F16: out->kind = W_F16; register_param(m, t->name, out, NULL, rows * cols); return 0;
    case DT_F8_E4M3: case DT_I8: case DT_U8: break;
    default:
        return dsv4_fail("%s: tensor '%s' has dtype %s; a weight matrix must be F32, BF16, F16, F8_E4M3, FP4 (I8), "
                         "Q8 (I8) or Q4 (U8)", file_of(m, t), name, dtype_name(t->dtype));
    }
    out->kind = t->dtype == DT_U8 ? W_Q4 : i8_q8 ? W_Q8 : t->dtype == DT_I8 ? W_FP4 : W_FP8;
    const int cpu_fmt = out->kind == W_Q8 || out->kind == W_Q4;
    /* the official formats turn the official activation rounding on by default; the CPU formats
     * are a storage choice of this engine and leave the arithmetic as it was */
    if (!cpu_fmt) m->has_quantized = 1;
    char sname[512];
    size_t l = strlen(name);
    const StTensor *s = NULL;
    if (l > 7 && strcmp(name + l - 7, ".weight") == 0) {
        snprintf(sname, sizeof sname, "%.*s.scale", (int)(l - 7), name);
        s = find(m, sname);
        if (!s) { snprintf(sname, sizeof sname, "%s_scale_inv", name); s = find(m, sname); }
    }
    if (!s) return dsv4_fail("%s: quantised tensor '%s' (%s) has no scale tensor '%.*s.scale'", file_of(m, t), name,
                             dtype_name(t->dtype), (int)(l > 7 ? l - 7 : l), name);
    const int64_t sr = out->kind == W_FP8 ? (rows + 127) / 128 : rows;
    const int64_t sc = out->kind == W_FP8 ? (cols + 127) / 128 : cols / 32;
    const int dtype_ok = cpu_fmt ? s->dtype == DT_F16 : (s->dtype == DT_F8_E8M0 || s->dtype == DT_F32);
    if (s->ndim != 2 || s->shape[0] != sr || s->shape[1] != sc || !dtype_ok) {
        static const char *const what[] = {[W_FP8] = "FP8 128x128", [W_FP4] = "FP4 1x32", [W_Q8] = "Q8 1x32", [W_Q4] = "Q4 1x32"};
        shape_str(s, sh, sizeof sh);
        return dsv4_fail("%s: scale tensor '%s' is %s %s; expected %s [%lld, %lld] for %s blocks", file_of(m, s), s->name, sh,
                         dtype_name(s->dtype), cpu_fmt ? "F16" : "F8_E8M0 (or F32)", (long long)sr, (long long)sc,
                         what[out->kind]);
    }
    out->scale = s->data;
    out->scale_f32 = s->dtype == DT_F32;
    out->scale_cols = sc;
    register_param(m, t->name, out, NULL, rows * cols);
    return 0;
}

/* A small float vector/matrix of n elements, decoded to fp32 (F32, BF16 or F16). */
static int bind_f32(dsv4_model *m, float **out, const char *name, int64_t d0, int64_t d1) {
    const StTensor *t = need(m, name);
    if (!t) return -1;
    const int64_t n = d0 * (d1 ? d1 : 1);
    int ok = d1 ? (t->ndim == 2 && t->shape[0] == d0 && t->shape[1] == d1) : (t->ndim == 1 && t->shape[0] == d0);
    if (!ok) {
        char sh[128];
        shape_str(t, sh, sizeof sh);
        if (d1) return dsv4_fail("%s: tensor '%s' has shape %s; the config implies [%lld, %lld]", file_of(m, t), name, sh, (long long)d0, (long long)d1);
        return dsv4_fail("%s: tensor '%s' has shape %s; the config implies [%lld]", file_of(m, t), name, sh, (long long)d0);
    }
    float *v = own(m, xmalloc(sizeof(float) * (size_t)n));
    switch (t->dtype) {
    case DT_F32: memcpy(v, t->data, sizeof(float) * (size_t)n); break;
    case DT_BF16: for (int64_t i = 0; i < n; i++) { uint16_t h; memcpy(&h, t->data + 2 * i, 2); v[i] = bf16_to_f32(h); } break;
    case DT_F16: for (int64_t i = 0; i < n; i++) { uint16_t h; memcpy(&h, t->data + 2 * i, 2); v[i] = f16_to_f32(h); } break;
    default:
        return dsv4_fail("%s: tensor '%s' has dtype %s; expected F32, BF16 or F16", file_of(m, t), name, dtype_name(t->dtype));
    }
    for (int64_t i = 0; i < n; i++)
        if (!isfinite(v[i])) return dsv4_fail("%s: tensor '%s' holds a non-finite value at element %lld", file_of(m, t), name, (long long)i);
    *out = v;
    register_param(m, t->name, NULL, out, n);
    return 0;
}

static int bind_compressor(dsv4_model *m, CompressorW *cw, const char *pre, int ratio, int width) {
    const Config *c = &m->cfg;
    char nm[512];
    cw->ratio = ratio;
    cw->coff = ratio == 4 ? 2 : 1;   /* spec: overlapping windows exactly when ratio == 4 */
    cw->width = width;
    const int64_t w2 = (int64_t)cw->coff * width;
    snprintf(nm, sizeof nm, "%s.wkv.weight", pre);
    if (bind_mat(m, &cw->wkv, nm, w2, c->dim)) return -1;
    snprintf(nm, sizeof nm, "%s.wgate.weight", pre);
    if (bind_mat(m, &cw->wgate, nm, w2, c->dim)) return -1;
    snprintf(nm, sizeof nm, "%s.ape", pre);
    if (bind_f32(m, &cw->ape, nm, ratio, w2)) return -1;
    snprintf(nm, sizeof nm, "%s.norm.weight", pre);
    return bind_f32(m, &cw->norm, nm, width, 0);
}

/* Engram of layer `pre`, the li-th Engram layer, whose sub-tables have the sizes `primes`. */
static int bind_engram(dsv4_model *m, LayerW *L, const char *pre, int li, const int64_t *primes) {
    const Config *c = &m->cfg;
    char nm[512];
    const int64_t d = c->dim, n = c->hc_mult, per = (int64_t)(c->engram_max_ngram - 1) * c->engram_n_heads;
    const int64_t E = per * c->engram_head_dim;
    EngramW *G = own(m, xcalloc(1, sizeof *G));
    G->li = li;
    G->offsets = own(m, xmalloc(sizeof(int64_t) * (size_t)per));
    int64_t rows = 0;
    for (int64_t i = 0; i < per; i++) { G->offsets[i] = rows; rows += primes[i]; }
#define EM(field, suffix, r, cc) do { snprintf(nm, sizeof nm, "%s.engram.%s", pre, suffix); if (bind_mat(m, &G->field, nm, r, cc)) return -1; } while (0)
#define EV(field, suffix, a, b) do { snprintf(nm, sizeof nm, "%s.engram.%s", pre, suffix); if (bind_f32(m, &G->field, nm, a, b)) return -1; } while (0)
    EM(table, "embed.weight", rows, c->engram_head_dim);
    /* rows are read at hashed addresses: no readahead around them (prefetching is explicit); a
     * table read into memory needs neither */
    const StTensor *tt = st_find(&m->st, nm);
    if (tt && !m->st.files[tt->file].in_ram && (G->table.kind == W_F32 || G->table.kind == W_BF16 || G->table.kind == W_F16)) {
        const long page = sysconf(_SC_PAGESIZE);
        const uintptr_t a = (uintptr_t)G->table.w & ~(uintptr_t)(page - 1);
        const uintptr_t b = (uintptr_t)G->table.w + (uintptr_t)mat_bytes(&G->table);
        G->table_mapped = madvise((void *)a, b - a, MADV_RANDOM) == 0;
    }
    EM(key_proj, "key_proj.weight", n * d, E);
    EV(key_bias, "key_proj.bias", n * d, 0);
    EM(value_proj, "value_proj.weight", d, E);
    EV(value_bias, "value_proj.bias", d, 0);
    EV(key_norm, "key_norm.weight", n * d, 0);
    EV(hidden_norm, "hidden_norm.weight", n * d, 0);
    if (c->engram_kernel_size > 0) {
        EV(conv_norm, "conv_norm.weight", n * d, 0);
        EV(conv, "conv.weight", n * d, c->engram_kernel_size);
    }
#undef EM
#undef EV
    L->engram = G;
    return 0;
}

static int bind_layer(dsv4_model *m, LayerW *L, const char *pre, int id, int is_mtp) {
    const Config *c = &m->cfg;
    char nm[512];
    const int n = c->hc_mult, H = c->n_heads, D = c->head_dim;
    const int64_t d = c->dim, mix = (int64_t)n * (n + 2);
    memset(L, 0, sizeof *L);
    L->id = id;
    L->ratio = c->compress_ratios[id];
#define M(field, suffix, r, cc) do { snprintf(nm, sizeof nm, "%s.%s", pre, suffix); if (bind_mat(m, &L->field, nm, r, cc)) return -1; } while (0)
#define V(field, suffix, a, b) do { snprintf(nm, sizeof nm, "%s.%s", pre, suffix); if (bind_f32(m, &L->field, nm, a, b)) return -1; } while (0)
    M(hc_attn_fn, "hc_attn_fn", mix, n * d);
    M(hc_ffn_fn, "hc_ffn_fn", mix, n * d);
    V(hc_attn_base, "hc_attn_base", mix, 0);
    V(hc_ffn_base, "hc_ffn_base", mix, 0);
    V(hc_attn_scale, "hc_attn_scale", 3, 0);
    V(hc_ffn_scale, "hc_ffn_scale", 3, 0);
    V(attn_norm, "attn_norm.weight", d, 0);
    V(ffn_norm, "ffn_norm.weight", d, 0);
    M(wq_a, "attn.wq_a.weight", c->q_lora_rank, d);
    V(q_norm, "attn.q_norm.weight", c->q_lora_rank, 0);
    M(wq_b, "attn.wq_b.weight", (int64_t)H * D, c->q_lora_rank);
    M(wkv, "attn.wkv.weight", D, d);
    V(kv_norm, "attn.kv_norm.weight", D, 0);
    M(wo_a, "attn.wo_a.weight", (int64_t)c->o_groups * c->o_lora_rank, (int64_t)H * D / c->o_groups);
    M(wo_b, "attn.wo_b.weight", d, (int64_t)c->o_groups * c->o_lora_rank);
    V(attn_sink, "attn.attn_sink", H, 0);
    if (L->ratio) {
        L->has_compressor = 1;
        snprintf(nm, sizeof nm, "%s.attn.compressor", pre);
        if (bind_compressor(m, &L->comp, nm, L->ratio, D)) return -1;
    }
    if (L->ratio == 4) {
        L->has_indexer = 1;
        M(idx.wq_b, "attn.indexer.wq_b.weight", (int64_t)c->index_n_heads * c->index_head_dim, c->q_lora_rank);
        M(idx.weights_proj, "attn.indexer.weights_proj.weight", c->index_n_heads, d);
        snprintf(nm, sizeof nm, "%s.attn.indexer.compressor", pre);
        if (bind_compressor(m, &L->idx.comp, nm, 4, c->index_head_dim)) return -1;
    }
    /* MoE */
    const int E = c->n_routed_experts, K = c->n_activated_experts;
    M(gate, "ffn.gate.weight", E, d);
    if (!is_mtp && id < c->n_hash_layers) {
        snprintf(nm, sizeof nm, "%s.ffn.gate.tid2eid", pre);
        const StTensor *t = need(m, nm);
        if (!t) return -1;
        if (t->ndim != 2 || t->shape[0] != c->vocab_size || t->shape[1] != K || (t->dtype != DT_I32 && t->dtype != DT_I64))
            return dsv4_fail("%s: tensor '%s' must be I32 or I64 [%lld, %d] (vocab x activated experts)", file_of(m, t), nm,
                             (long long)c->vocab_size, K);
        int32_t *tab = own(m, xmalloc(sizeof(int32_t) * (size_t)(c->vocab_size * K)));
        for (int64_t i = 0; i < c->vocab_size * K; i++) {
            int64_t v;
            if (t->dtype == DT_I32) { int32_t x; memcpy(&x, t->data + 4 * i, 4); v = x; }
            else memcpy(&v, t->data + 8 * i, 8);
            if (v < 0 || v >= E)
                return dsv4_fail("%s: tensor '%s' holds expert id %lld at element %lld (must be < %d)", file_of(m, t), nm,
                                 (long long)v, (long long)i, E);
            tab[i] = (int32_t)v;
        }
        L->tid2eid = tab;
    } else {
        /* learned routing always has the selection bias (aux-loss-free balancing); the
         * Hugging Face name is e_score_correction_bias */
        snprintf(nm, sizeof nm, "%s.ffn.gate.bias", pre);
        if (!find(m, nm)) {
            char alt[512];
            snprintf(alt, sizeof alt, "%s.ffn.gate.e_score_correction_bias", pre);
            if (find(m, alt)) snprintf(nm, sizeof nm, "%s", alt);
        }
        if (bind_f32(m, &L->gate_bias, nm, E, 0)) return -1;
    }
    L->experts = own(m, xcalloc((size_t)E, sizeof(ExpertW)));
    for (int e = 0; e < E; e++) {
        char s1[64], s2[64], s3[64];
        snprintf(s1, sizeof s1, "ffn.experts.%d.w1.weight", e);
        snprintf(s2, sizeof s2, "ffn.experts.%d.w2.weight", e);
        snprintf(s3, sizeof s3, "ffn.experts.%d.w3.weight", e);
        M(experts[e].w1, s1, c->moe_inter_dim, d);
        M(experts[e].w2, s2, d, c->moe_inter_dim);
        M(experts[e].w3, s3, c->moe_inter_dim, d);
    }
    if (c->n_shared_experts < 1) return dsv4_fail("%s: n_shared_experts must be at least 1 (V4 has one shared expert)", m->dir);
    const int64_t sf = c->moe_inter_dim * c->n_shared_experts;
    M(shared.w1, "ffn.shared_experts.w1.weight", sf, d);
    M(shared.w2, "ffn.shared_experts.w2.weight", d, sf);
    M(shared.w3, "ffn.shared_experts.w3.weight", sf, d);
    if (is_mtp) {
        M(e_proj, "e_proj.weight", d, d);
        M(h_proj, "h_proj.weight", d, d);
        V(enorm, "enorm.weight", d, 0);
        V(hnorm, "hnorm.weight", d, 0);
        V(mtp_norm, "norm.weight", d, 0);
        M(hc_head_fn, "hc_head_fn", n, n * d);
        V(hc_head_base, "hc_head_base", n, 0);
        V(hc_head_scale, "hc_head_scale", 1, 0);
    }
#undef M
#undef V
    /* RoPE per layer type: compressed layers use compress_rope_theta with YaRN, window-only
     * layers rope_theta without (spec "Attention"). */
    L->rope_freq = own(m, xmalloc(sizeof(double) * (size_t)(c->rope_head_dim / 2 + 1)));
    if (L->ratio) rope_freqs(L->rope_freq, c->rope_head_dim, c->compress_rope_theta, c->original_seq_len, c->rope_factor, c->beta_fast, c->beta_slow);
    else rope_freqs(L->rope_freq, c->rope_head_dim, c->rope_theta, 0, c->rope_factor, c->beta_fast, c->beta_slow);
    return 0;
}

int model_bind(dsv4_model *m) {
    const Config *c = &m->cfg;
    const int n = c->hc_mult;
    const int64_t d = c->dim;
    if (bind_mat(m, &m->embed, "embed.weight", c->vocab_size, d)) return -1;
    if (bind_mat(m, &m->head, "head.weight", c->vocab_size, d)) return -1;
    if (bind_f32(m, &m->norm, "norm.weight", d, 0)) return -1;
    if (bind_mat(m, &m->hc_head_fn, "hc_head_fn", n, n * d)) return -1;
    if (bind_f32(m, &m->hc_head_base, "hc_head_base", n, 0)) return -1;
    if (bind_f32(m, &m->hc_head_scale, "hc_head_scale", 1, 0)) return -1;
    m->layers = own(m, xcalloc((size_t)c->n_layers, sizeof(LayerW)));
    char pre[64];
    const int64_t per = (int64_t)(c->engram_max_ngram - 1) * c->engram_n_heads;
    int64_t *primes = c->engram_n_layers ? own(m, xmalloc(sizeof(int64_t) * (size_t)(c->engram_n_layers * per))) : NULL;
    if (primes) engram_table_primes(c, primes);
    for (int l = 0; l < c->n_layers; l++) {
        snprintf(pre, sizeof pre, "layers.%d", l);
        if (bind_layer(m, &m->layers[l], pre, l, 0)) return -1;
        for (int li = 0; li < c->engram_n_layers; li++)
            if (c->engram_layer_ids[li] == l && bind_engram(m, &m->layers[l], pre, li, primes + li * per)) return -1;
    }
    m->mtp = own(m, xcalloc((size_t)(c->n_mtp_layers ? c->n_mtp_layers : 1), sizeof(LayerW)));
    for (int i = 0; i < c->n_mtp_layers; i++) {
        snprintf(pre, sizeof pre, "mtp.%d", i);
        if (bind_layer(m, &m->mtp[i], pre, c->n_layers + i, 1)) return -1;
    }
    return 0;
}

dsv4_model *dsv4_model_open(const char *dir, const dsv4_open_options *opts) {
    dsv4_model *m = xcalloc(1, sizeof *m);
    m->dir = strdup(dir);
    m->engram_scale = 1.0f;
    char path[4096];
    snprintf(path, sizeof path, "%s/config.json", dir);
    if (config_load(&m->cfg, path) || st_open_dir(&m->st, dir) || model_bind(m)) {
        dsv4_model_close(m);
        return NULL;
    }
    if (m->cfg.engram_n_layers) {
        /* Engram hashes the tokenizer's compressed ids: the model directory carries its tokenizer */
        snprintf(path, sizeof path, "%s/tokenizer.json", dir);
        dsv4_tokenizer *tk = dsv4_tokenizer_load(path);
        int64_t n_ids = 0, n_comp = 0;
        int rc = !tk || engram_vocab_build(tk, &m->engram_lookup, &n_ids, &n_comp) ||
                 engram_hash_init(&m->engram_hash, &m->cfg, m->engram_lookup, n_ids, n_comp);
        dsv4_tokenizer_free(tk);
        int mapped = 0;
        for (int l = 0; l < m->cfg.n_layers; l++) mapped |= m->layers[l].engram && m->layers[l].engram->table_mapped;
        if (!rc && mapped) m->engram_prefetcher = engram_prefetcher_new();
        if (rc) {
            dsv4_fail("%s: Engram needs the model's tokenizer: %s", dir, dsv4_last_error());
            dsv4_model_close(m);
            return NULL;
        }
    }
    const int q = opts ? opts->quant_rounding : -1;
    m->quant = q < 0 ? m->has_quantized : q;
    m->int8_activations = opts ? opts->int8_activations : 0;
    const int I = m->cfg.index_head_dim;
    int has_indexer = 0;
    for (int l = 0; l < m->cfg.n_layers + m->cfg.n_mtp_layers; l++) has_indexer |= m->cfg.compress_ratios[l] == 4;
    if (m->quant && has_indexer && (I & (I - 1)) != 0) {
        dsv4_fail("%s/config.json: \"index_head_dim\" = %d must be a power of two for the quantisation-aware rounding "
                  "(Hadamard transform); run with it off", dir, I);
        dsv4_model_close(m);
        return NULL;
    }
    return m;
}

int param_is_engram_table(const ParamRef *p) { return strstr(p->name, ".engram.embed.weight") != NULL; }

void model_make_trainable(dsv4_model *m, int except_tables) {
    for (int64_t i = 0; i < m->n_params; i++) {
        Mat *W = m->params[i].mat;
        if (!W || (except_tables && param_is_engram_table(&m->params[i]))) continue;
        float *buf = own(m, xmalloc(sizeof(float) * (size_t)(W->rows * W->cols)));
        mat_dequant_rows(W, 0, W->rows, buf);
        W->kind = W_F32;
        W->w = buf;
        W->scale = NULL;
    }
    for (int l = 0; l < m->cfg.n_layers; l++)   /* the tables are memory copies now */
        if (m->layers[l].engram) m->layers[l].engram->table_mapped = 0;
    m->quant = 0;
    m->int8_activations = 0;
}

void dsv4_model_close(dsv4_model *m) {
    if (!m) return;
    for (int64_t i = 0; i < m->n_owned; i++) free(m->owned[i]);
    free(m->owned);
    free(m->params);
    free(m->param_of_tensor);
    engram_prefetcher_free(m->engram_prefetcher);
    engram_hash_free(&m->engram_hash);
    free(m->engram_lookup);
    st_close(&m->st);
    free(m->dir);
    free(m);
}

/* Weight bytes one decode step reads, from the tensors as stored (scales included): every
 * matrix of the main model once, the routed experts n_activated of n_routed, the embedding
 * one row (not counted, as in `plan`), each Engram table (N-1)·K rows. */
double model_decode_bytes(const dsv4_model *m) {
    const Config *c = &m->cfg;
    double bytes = 0;
    for (int64_t i = 0; i < m->st.n_tensors; i++) {
        const StTensor *t = &m->st.tensors[i];
        if (!strncmp(t->name, "mtp.", 4) || !strcmp(t->name, "embed.weight") || strstr(t->name, "tid2eid")) continue;
        if (strstr(t->name, ".engram.embed.weight")) {
            bytes += (double)(c->engram_max_ngram - 1) * c->engram_n_heads * (double)t->shape[1] * (double)dtype_size(t->dtype);
            continue;
        }
        const double share = strstr(t->name, ".ffn.experts.") ? (double)c->n_activated_experts / c->n_routed_experts : 1.0;
        bytes += (double)t->nbytes * share;
    }
    return bytes;
}
