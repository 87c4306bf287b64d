/* `dsv4 convert`: rewrites a model directory (any dtype the loader reads, e.g. the F32 checkpoint
 * of `dsv4 train`) into the storage formats `dsv4 init --dtype` writes (spec "Checkpoint format"):
 * the same tensor names, shapes, dtypes, block scales and shard/index layout. Every tensor is
 * taken from the loaded model (decoded to f32 by the library) and encoded again, so the output of
 * `convert --dtype X` on an F32 model is byte for byte what `init --dtype X` writes for the same
 * values. The directory is built under OUT.tmp.<pid> and renamed into place. */
#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli.h"

static const char *const k_storage[] = {[S_F32] = "f32", [S_BF16] = "bf16", [S_FP8] = "fp8", [S_FP4] = "fp4",
                                        [S_I32] = "i32", [S_Q8] = "q8", [S_Q4] = "q4"};
const char *cli_storage_name(Storage s) { return k_storage[s]; }

/* --dtype takes f32, bf16, fp8, q8, q4; --expert-dtype fp4 too */
static int storage_from_name(const char *s, int allow_fp4) {
    for (int i = 0; i < (int)(sizeof k_storage / sizeof k_storage[0]); i++)
        if (!strcmp(s, k_storage[i]) && i != S_I32 && (allow_fp4 || i != S_FP4)) return i;
    return -1;
}

static int has_block_scale(Storage s) { return s == S_FP8 || s == S_FP4 || s == S_Q8 || s == S_Q4; }

/* How `dsv4 init` classes a tensor: FULL stays F32 (mHC, sinks, ape, gate bias), HALF is BF16
 * unless everything is F32 (norms, embedding, gate, compressors, indexer weights_proj; the head,
 * which `quantize` may store as Q8), BIG follows --dtype (attention, indexer wq_b, shared
 * experts, MTP projections), EXPERT follows --expert-dtype (routed experts). Decided from where
 * the loader bound the tensor. */
typedef enum { C_FULL, C_HALF, C_HEAD, C_BIG, C_EXPERT } Class;

static Class layer_class(const LayerW *L, int n_experts, const ParamRef *p, int *found) {
    *found = 1;
    if (p->vec) {
        float **v = p->vec;
        if (v == &L->attn_norm || v == &L->ffn_norm || v == &L->q_norm || v == &L->kv_norm || v == &L->comp.norm ||
            v == &L->idx.comp.norm || v == &L->enorm || v == &L->hnorm || v == &L->mtp_norm)
            return C_HALF;
    } else {
        const Mat *w = p->mat;
        if (w == &L->hc_attn_fn || w == &L->hc_ffn_fn || w == &L->hc_head_fn) return C_FULL;
        if (w == &L->gate || w == &L->comp.wkv || w == &L->comp.wgate || w == &L->idx.comp.wkv || w == &L->idx.comp.wgate ||
            w == &L->idx.weights_proj)
            return C_HALF;
        if (L->experts && (const char *)w >= (const char *)L->experts && (const char *)w < (const char *)(L->experts + n_experts))
            return C_EXPERT;
    }
    *found = 0;
    return C_FULL;
}

static Class param_class(const dsv4_model *m, const ParamRef *p) {
    const Config *c = &m->cfg;
    if (p->mat == &m->head) return C_HEAD;
    if (p->vec == &m->norm || p->mat == &m->embed) return C_HALF;
    if (p->mat == &m->hc_head_fn) return C_FULL;
    for (int l = 0; l < c->n_layers + c->n_mtp_layers; l++) {
        const LayerW *L = l < c->n_layers ? &m->layers[l] : &m->mtp[l - c->n_layers];
        int found;
        Class k = layer_class(L, c->n_routed_experts, p, &found);
        if (found) return k;
    }
    return p->vec ? C_FULL : C_BIG;   /* other vectors: mHC base/scale, sinks, ape, gate bias */
}

static Storage storage_of(Class k, const Policy *pol, const ParamRef *p) {
    const Storage half = pol->dt == S_F32 ? S_F32 : S_BF16;
    Storage s = k == C_FULL ? S_F32 : k == C_HALF ? half : k == C_HEAD ? (pol->head_set ? pol->head : half) : k == C_BIG ? pol->dt : pol->et;
    /* the 1x32-block formats need whole blocks along the input dimension, as init */
    if (p->mat && p->mat->cols % 32) s = s == S_FP4 ? S_FP8 : s == S_Q8 || s == S_Q4 ? half : s;
    const size_t l = strlen(p->name);
    /* the loader finds a quantised weight's scale through its ".weight" suffix */
    if (has_block_scale(s) && (l < 7 || strcmp(p->name + l - 7, ".weight"))) s = S_BF16;
    return s;
}

/* One output tensor (with its scale when quantised), taken from stored tensor `src`. */
typedef struct {
    int64_t src;       /* index into m->st.tensors */
    int64_t param;     /* index into m->params, or -1: copied unchanged (tid2eid) */
    Storage st;
    uint64_t bytes;    /* output bytes, scale included */
    int shard;
} Item;

static uint64_t item_bytes(const StTensor *t, const ParamRef *p, Storage st) {
    if (!p) return t->nbytes;
    if (!p->mat) return cli_encoded_bytes(st == S_F32 ? S_F32 : S_BF16, p->numel, 0);
    return cli_encoded_bytes(st, p->mat->rows, p->mat->cols);
}

/* Decodes one bound tensor to f32 and encodes it as `st` into the writer. */
static int emit(StWriter *w, const dsv4_model *m, const Item *it) {
    const StTensor *t = &m->st.tensors[it->src];
    if (it->param < 0) {   /* integer tables: the stored bytes, unchanged */
        void *raw = xmalloc(t->nbytes);
        memcpy(raw, t->data, t->nbytes);
        st_writer_add(w, t->name, t->dtype, t->ndim, t->shape, raw);
        return 0;
    }
    const ParamRef *p = &m->params[it->param];
    const int64_t n = p->numel;
    float *v = xmalloc(sizeof(float) * (size_t)n);
    int64_t shape[4] = {0};
    int nd;
    if (p->mat) {
        const Mat *W = p->mat;
        const int64_t step = 256;
#pragma omp parallel for schedule(static) if (n >= (1 << 20))
        for (int64_t r0 = 0; r0 < W->rows; r0 += step) mat_dequant_rows(W, r0, W->rows - r0 < step ? W->rows - r0 : step, v + r0 * W->cols);
        shape[0] = W->rows;
        shape[1] = W->cols;
        nd = 2;
    } else {
        memcpy(v, *p->vec, sizeof(float) * (size_t)n);
        nd = t->ndim;
        for (int k = 0; k < nd; k++) shape[k] = t->shape[k];
    }
    if (has_block_scale(it->st))
        for (int64_t i = 0; i < n; i++)
            if (!isfinite(v[i])) {
                free(v);
                return dsv4_fail("%s: tensor '%s' holds a non-finite value at element %lld; it cannot be given a %s block scale",
                                 m->st.files[t->file].path, t->name, (long long)i, k_storage[it->st]);
            }
    return cli_add_encoded(w, p->name, it->st, nd, shape, v);
}

/* ---- config.json ---- */

static void set_string(cJSON *o, const char *key, const char *value) {
    if (cJSON_GetObjectItemCaseSensitive(o, key)) cJSON_ReplaceItemInObjectCaseSensitive(o, key, cJSON_CreateString(value));
    else cJSON_AddStringToObject(o, key, value);
}

/* The input's config.json with the storage fields of the output: in the official form "dtype",
 * "expert_dtype" and "scale_fmt" (ue8m0 when any weight is FP8/FP4); in the Hugging Face form
 * "quantization_config" (present exactly for FP8 weights), "torch_dtype"/"dtype" when present,
 * and "expert_dtype". Q8/Q4 are named in "dtype"/"expert_dtype" (the tensors' dtypes and
 * scales say the rest). Everything else is kept, in its order. */
static char *rewrite_config(const char *text, const char *path, Storage dt, Storage et) {
    cJSON *root = cJSON_Parse(text);
    if (!cJSON_IsObject(root)) { cJSON_Delete(root); dsv4_fail("%s: not a JSON object", path); return NULL; }
    const int hf = cJSON_GetObjectItemCaseSensitive(root, "hidden_size") != NULL;
    const int quantised = dt == S_FP8 || et == S_FP8 || et == S_FP4;
    if (hf) {
        if (dt == S_FP8) {
            cJSON *qc = cJSON_GetObjectItemCaseSensitive(root, "quantization_config");
            if (!cJSON_IsObject(qc)) {
                cJSON_DeleteItemFromObjectCaseSensitive(root, "quantization_config");
                qc = cJSON_AddObjectToObject(root, "quantization_config");
                cJSON_AddStringToObject(qc, "activation_scheme", "dynamic");
            }
            set_string(qc, "fmt", "e4m3");
            set_string(qc, "quant_method", "fp8");
            set_string(qc, "scale_fmt", "ue8m0");
            const int bs[2] = {128, 128};
            if (cJSON_GetObjectItemCaseSensitive(qc, "weight_block_size"))
                cJSON_ReplaceItemInObjectCaseSensitive(qc, "weight_block_size", cJSON_CreateIntArray(bs, 2));
            else cJSON_AddItemToObject(qc, "weight_block_size", cJSON_CreateIntArray(bs, 2));
        } else cJSON_DeleteItemFromObjectCaseSensitive(root, "quantization_config");
        const char *tdt = dt == S_F32 ? "float32" : "bfloat16";   /* the unquantised tensors */
        if (cJSON_GetObjectItemCaseSensitive(root, "torch_dtype")) set_string(root, "torch_dtype", tdt);
        if (cJSON_GetObjectItemCaseSensitive(root, "dtype")) set_string(root, "dtype", tdt);
    } else {
        set_string(root, "dtype", k_storage[dt]);
        if (quantised) set_string(root, "scale_fmt", "ue8m0");
        else cJSON_DeleteItemFromObjectCaseSensitive(root, "scale_fmt");
        if (dt != S_FP8) cJSON_DeleteItemFromObjectCaseSensitive(root, "quantization_config");
    }
    set_string(root, "expert_dtype", k_storage[et]);
    char *s = cJSON_Print(root);
    cJSON_Delete(root);
    size_t l = strlen(s);
    s = realloc(s, l + 2);
    s[l] = '\n';
    s[l + 1] = 0;
    return s;
}

/* ---- the output directory ---- */

static void json_string(char **buf, size_t *len, size_t *cap, const char *s) {
    const size_t need = *len + 2 * strlen(s) + 8;
    if (need > *cap) { while (need > *cap) *cap *= 2; *buf = realloc(*buf, *cap); }
    char *o = *buf + *len;
    *o++ = '"';
    for (; *s; s++) {
        if (*s == '"' || *s == '\\') *o++ = '\\';
        *o++ = *s;
    }
    *o++ = '"';
    *o = 0;
    *len = (size_t)(o - *buf);
}

static void append(char **buf, size_t *len, size_t *cap, const char *s) {
    const size_t l = strlen(s);
    if (*len + l + 1 > *cap) { while (*len + l + 1 > *cap) *cap *= 2; *buf = realloc(*buf, *cap); }
    memcpy(*buf + *len, s, l + 1);
    *len += l;
}

/* model.safetensors.index.json in the form `dsv4 init` writes. */
static char *index_json(const dsv4_model *m, const Item *items, int64_t n_items, int n_shards, uint64_t total, size_t *len) {
    size_t cap = 1 << 16, l = 0;
    char *s = xmalloc(cap), tmp[128];
    snprintf(tmp, sizeof tmp, "{\n  \"metadata\": {\"total_size\": %llu},\n  \"weight_map\": {", (unsigned long long)total);
    s[0] = 0;
    append(&s, &l, &cap, tmp);
    for (int64_t i = 0; i < n_items; i++) {
        const char *name = m->st.tensors[items[i].src].name;
        const int quantised = items[i].param >= 0 && has_block_scale(items[i].st);
        char fname[64], sname[600];
        snprintf(fname, sizeof fname, ": \"model-%05d-of-%05d.safetensors\"", items[i].shard + 1, n_shards);
        cli_scale_name(name, sname, sizeof sname);
        for (int k = 0; k < 1 + quantised; k++) {
            append(&s, &l, &cap, i || k ? ",\n    " : "\n    ");
            json_string(&s, &l, &cap, k ? sname : name);
            append(&s, &l, &cap, fname);
        }
    }
    append(&s, &l, &cap, "\n  }\n}\n");
    *len = l;
    return s;
}

static int copy_file(const char *from, const char *to) {
    size_t n;
    char *txt = read_file(from, &n);
    if (!txt) return -1;
    int rc = write_file_atomic(to, txt, n);
    free(txt);
    return rc;
}

static const char *CONVERT_HELP =
    "usage: dsv4 convert -m IN --out OUT --dtype f32|bf16|fp8|q8|q4 [--expert-dtype fp4|fp8|q8|q4|bf16|f32]\n"
    "                    [--force] [--shard-gb G]\n"
    "  Rewrites the model directory IN (any dtype the loader reads: F32, BF16, F16, FP8, FP4, Q8, Q4)\n"
    "  into the storage formats of `dsv4 init --dtype`: same tensor names, shapes and block scales.\n"
    "  --dtype f32    everything F32\n"
    "  --dtype bf16   BF16, with the mHC parameters, sinks, ape and gate biases kept F32\n"
    "  --dtype fp8    FP8 e4m3 with 128x128 E8M0 scales for the attention, indexer, shared-expert\n"
    "                 and MTP projections; BF16 norms, embedding, head, gates and compressors\n"
    "  --dtype q8|q4  the same matrices in the CPU block formats of `dsv4 quantize` (int8, or 4-bit,\n"
    "                 with an F16 scale per 32 weights); `dsv4 quantize` also does the head and reports\n"
    "  --expert-dtype the routed experts: fp4 (e2m1 packed in I8 with 1x32 E8M0 scales), fp8, q8, q4,\n"
    "                 bf16 or f32. Default: the --dtype choice; with --dtype fp8 the input config's\n"
    "                 \"expert_dtype\" when it has one, else fp8 (`init --dtype fp8` = --expert-dtype fp4)\n"
    "  --force        replace OUT if it exists (the new directory is complete before the swap)\n"
    "  --shard-gb G   approximate shard size in GB (default 5)\n"
    "  Values are decoded to f32 and rounded again: BF16 to nearest even, FP8/FP4 with the\n"
    "  power-of-two block scale that covers the block's largest magnitude. tid2eid is copied\n"
    "  unchanged. config.json gets the output's \"dtype\"/\"expert_dtype\"/\"scale_fmt\" (official form)\n"
    "  or \"quantization_config\" (Hugging Face form); tokenizer.json, tokenizer_config.json and\n"
    "  generation_config.json are copied when present. OUT is written as OUT.tmp.<pid>, then renamed.\n";

int cmd_convert(int argc, char **argv) {
    const char *in = NULL, *out = NULL, *dts = NULL, *ets = NULL;
    int force = 0;
    double shard_gb = 5;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) { fputs(CONVERT_HELP, stdout); return 0; }
        else if (!strcmp(a, "--force")) force = 1;
        else if (strcmp(a, "-m") && strcmp(a, "--model") && strcmp(a, "--out") && strcmp(a, "--dtype") &&
                 strcmp(a, "--expert-dtype") && strcmp(a, "--shard-gb")) {
            cli_error("convert", "unknown option '%s' (see --help)", a);
            return 2;
        } else if (!v) { cli_error("convert", "option %s needs a value (see --help)", a); return 2; }
        else if (!strcmp(a, "-m") || !strcmp(a, "--model")) in = argv[++i];
        else if (!strcmp(a, "--out")) out = argv[++i];
        else if (!strcmp(a, "--dtype")) dts = argv[++i];
        else if (!strcmp(a, "--expert-dtype")) ets = argv[++i];
        else shard_gb = (double)cli_int("convert", a, argv[++i], 1, 1 << 20);
    }
    if (!in || !out || !dts) { cli_error("convert", "needs -m IN --out OUT --dtype f32|bf16|fp8|q8|q4 (see --help)"); return 2; }
    const int dti = storage_from_name(dts, 0);
    if (dti < 0) { cli_error("convert", "--dtype must be f32, bf16, fp8, q8 or q4, not '%s'", dts); return 2; }
    int eti = ets ? storage_from_name(ets, 1) : -1;
    if (ets && eti < 0) { cli_error("convert", "--expert-dtype must be fp4, fp8, q8, q4, bf16 or f32, not '%s'", ets); return 2; }
    /* with --dtype fp8 the experts default to the input's announced format (read in cli_convert) */
    const Policy pol = {.dt = (Storage)dti, .et = eti < 0 ? (Storage)dti : (Storage)eti, .et_from_input = eti < 0 && dti == S_FP8};
    return cli_convert("convert", in, out, &pol, force, shard_gb, NULL);
}

/* The rewrite itself (convert and quantize): IN to OUT under the policy, atomically. On
 * success *bytes (when given) receives the input and output weight bytes. */
int cli_convert(const char *cmd, const char *in, const char *outa, const Policy *policy, int force, double shard_gb,
                uint64_t bytes[2]) {
    Policy pol_in = *policy;
    const Policy *pol = &pol_in;
    /* OUT without trailing slashes: OUT.tmp.<pid> and OUT.old.<pid> are its siblings */
    char out[4096], tmp[4200], old[4200], path[4400];
    snprintf(out, sizeof out, "%s", outa);
    for (size_t l = strlen(out); l > 1 && out[l - 1] == '/'; l--) out[l - 1] = 0;
    struct stat sb;
    if (stat(in, &sb) != 0) return cli_error(cmd, "%s: no such model directory: %s", in, strerror(errno));
    if (!S_ISDIR(sb.st_mode)) return cli_error(cmd, "%s: not a directory (-m takes a model directory)", in);
    if (lstat(out, &sb) == 0 && !force) return cli_error(cmd, "%s: already exists (--force replaces it)", out);

    const double t0 = now_sec();
    snprintf(path, sizeof path, "%s/config.json", in);
    char *cfg_text = read_file(path, NULL);
    if (!cfg_text) return cli_error(cmd, "%s", dsv4_last_error());
    if (pol_in.et_from_input) {
        cJSON *root = cJSON_Parse(cfg_text);
        cJSON *ed = root ? cJSON_GetObjectItemCaseSensitive(root, "expert_dtype") : NULL;
        if (ed && !cJSON_IsNull(ed)) {
            const int eti = cJSON_IsString(ed) ? storage_from_name(ed->valuestring, 1) : -1;
            if (eti < 0) {
                cJSON_Delete(root);
                free(cfg_text);
                return cli_error(cmd, "%s: field \"expert_dtype\" must be \"fp4\", \"fp8\", \"q8\", \"q4\", \"bf16\" or "
                                 "\"f32\" (or pass --expert-dtype)", path);
            }
            pol_in.et = (Storage)eti;
        }
        cJSON_Delete(root);
    }
    const Storage dt = pol->dt, et = pol->et;

    dsv4_open_options oo = {.quant_rounding = 0};
    dsv4_model *m = dsv4_model_open(in, &oo);
    if (!m) { free(cfg_text); return cli_error(cmd, "%s", dsv4_last_error()); }
    char *new_cfg = rewrite_config(cfg_text, path, dt, et);
    free(cfg_text);
    if (!new_cfg) { dsv4_model_close(m); return cli_error(cmd, "%s", dsv4_last_error()); }

    /* what each stored tensor becomes: a bound parameter, tid2eid, or nothing (scales are
     * derived again; tensors the model does not use, e.g. a training checkpoint's optimiser
     * state, are left out) */
    const StSet *S = &m->st;
    int64_t *role = xmalloc(sizeof(int64_t) * (size_t)(S->n_tensors ? S->n_tensors : 1));
    for (int64_t i = 0; i < S->n_tensors; i++) role[i] = -2;
    for (int64_t k = 0; k < m->n_params; k++) {
        const StTensor *t = st_find(S, m->params[k].name);
        if (t) role[t - S->tensors] = k;
    }
    for (int l = 0; l < m->cfg.n_hash_layers; l++) {
        char nm[128], alt[160];
        snprintf(nm, sizeof nm, "layers.%d.ffn.gate.tid2eid", l);
        snprintf(alt, sizeof alt, "model.%s", nm);
        const StTensor *t = st_find(S, nm);
        if (!t) t = st_find(S, alt);
        if (t) role[t - S->tensors] = -1;
    }
    Item *items = xmalloc(sizeof(Item) * (size_t)(S->n_tensors ? S->n_tensors : 1));
    int64_t n_items = 0, n_unused = 0, first_unused = -1, n_out = 0;
    uint64_t bytes_in = 0, total = 0;
    for (int64_t i = 0; i < S->n_tensors; i++) {
        const StTensor *t = &S->tensors[i];
        if (role[i] == -2) {
            const size_t l = strlen(t->name);
            const int scale = (l > 6 && !strcmp(t->name + l - 6, ".scale")) || (l > 10 && !strcmp(t->name + l - 10, "_scale_inv"));
            if (!scale && n_unused++ == 0) first_unused = i;
            continue;
        }
        Item *it = &items[n_items++];
        memset(it, 0, sizeof *it);
        it->src = i;
        it->param = role[i];
        const ParamRef *p = role[i] >= 0 ? &m->params[role[i]] : NULL;
        if (p) {
            it->st = storage_of(param_class(m, p), pol, p);
            bytes_in += p->mat ? mat_bytes(p->mat) : t->nbytes;
            n_out += has_block_scale(it->st) ? 2 : 1;
        } else {
            bytes_in += t->nbytes;
            n_out++;
        }
        it->bytes = item_bytes(t, p, it->st);
        total += it->bytes;
    }
    free(role);
    const uint64_t limit = (uint64_t)(shard_gb * 1e9);
    int n_shards = 1;
    uint64_t acc = 0;
    for (int64_t i = 0; i < n_items; i++) {
        if (acc && acc + items[i].bytes > limit) { n_shards++; acc = 0; }
        acc += items[i].bytes;
        items[i].shard = n_shards - 1;
    }

    snprintf(tmp, sizeof tmp, "%s.tmp.%d", out, (int)getpid());
    snprintf(old, sizeof old, "%s.old.%d", out, (int)getpid());
    remove_tree(tmp);
    int rc = 0;
    if (mkdir(tmp, 0755)) rc = dsv4_fail("%s: cannot create: %s", tmp, strerror(errno));
    int64_t i = 0;
    for (int sh = 0; sh < n_shards && rc == 0; sh++) {
        StWriter w = {0};
        for (; i < n_items && items[i].shard == sh && rc == 0; i++) {
            rc = emit(&w, m, &items[i]);
            progress(cmd, i + 1, n_items, t0);
        }
        snprintf(path, sizeof path, "%s/model-%05d-of-%05d.safetensors", tmp, sh + 1, n_shards);
        if (rc == 0) rc = st_writer_save(&w, path, 0);
        st_writer_free(&w);
    }
    if (rc == 0) {
        size_t il;
        char *idx = index_json(m, items, n_items, n_shards, total, &il);
        snprintf(path, sizeof path, "%s/model.safetensors.index.json", tmp);
        rc = write_file_atomic(path, idx, il);
        free(idx);
    }
    if (rc == 0) { snprintf(path, sizeof path, "%s/config.json", tmp); rc = write_file_atomic(path, new_cfg, strlen(new_cfg)); }
    static const char *const extra[] = {"tokenizer.json", "tokenizer_config.json", "generation_config.json"};
    for (int k = 0; k < 3 && rc == 0; k++) {
        char from[4400];
        snprintf(from, sizeof from, "%s/%s", in, extra[k]);
        snprintf(path, sizeof path, "%s/%s", tmp, extra[k]);
        if (access(from, F_OK) == 0) rc = copy_file(from, path);
    }
    char unused_msg[1200] = "";
    if (n_unused)
        snprintf(unused_msg, sizeof unused_msg, "%lld stored tensor(s) the model does not use were left out (first: '%s' in %s)",
                 (long long)n_unused, S->tensors[first_unused].name, S->files[S->tensors[first_unused].file].path);
    free(items);
    free(new_cfg);
    dsv4_model_close(m);
    if (rc == 0) {   /* the result must load before it replaces anything */
        dsv4_model *chk = dsv4_model_open(tmp, &oo);
        if (!chk) rc = -1;
        dsv4_model_close(chk);
    }
    if (rc == 0) {
        if (lstat(out, &sb) == 0) {
            remove_tree(old);
            if (rename(out, old)) rc = dsv4_fail("%s: cannot move aside to %s: %s", out, old, strerror(errno));
        }
        if (rc == 0 && rename(tmp, out)) rc = dsv4_fail("%s: cannot rename %s into place: %s", out, tmp, strerror(errno));
        if (rc == 0) remove_tree(old);
    }
    if (rc) {
        char msg[2048];
        snprintf(msg, sizeof msg, "%s", dsv4_last_error());
        remove_tree(tmp);
        return cli_error(cmd, "%s", msg);
    }
    if (unused_msg[0]) fprintf(stderr, "dsv4 %s: note: %s\n", cmd, unused_msg);
    fprintf(stderr, "dsv4 %s: wrote %s: %lld tensors in %d shard(s) (%s, experts %s%s%s), %llu -> %llu bytes, in %.1f s\n", cmd, out,
            (long long)n_out, n_shards, k_storage[dt], k_storage[et], pol->head_set ? ", head " : "",
            pol->head_set ? k_storage[pol->head] : "", (unsigned long long)bytes_in, (unsigned long long)total, now_sec() - t0);
    if (bytes) { bytes[0] = bytes_in; bytes[1] = total; }
    return 0;
}
