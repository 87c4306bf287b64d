/* `dsv4 info` (from a model directory's tensors) and `dsv4 plan` (from a config alone):
 * parameters, active parameters, bytes by dtype and KV-cache size. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

static void human(double x, char *buf, size_t n) {
    if (x >= 1e12) snprintf(buf, n, "%.3fT", x / 1e12);
    else if (x >= 1e9) snprintf(buf, n, "%.1fB", x / 1e9);
    else if (x >= 1e6) snprintf(buf, n, "%.2fM", x / 1e6);
    else snprintf(buf, n, "%.0f", x);
}
static void hbytes(double x, char *buf, size_t n) {
    if (x >= 1e9) snprintf(buf, n, "%.2f GB", x / 1e9);
    else if (x >= 1e6) snprintf(buf, n, "%.2f MB", x / 1e6);
    else snprintf(buf, n, "%.0f B", x);
}

static void print_stats(const char *what, const Config *c, const PlanStats *p, int json, const char *extra_json) {
    if (json) {
        printf("{\"source\": \"%s\", \"total_params\": %.0f, \"active_params\": %.0f, \"mtp_params\": %.0f, "
               "\"weight_bytes\": %.0f, \"mtp_weight_bytes\": %.0f, \"bytes_f32\": %.0f, \"bytes_bf16\": %.0f, "
               "\"bytes_fp8\": %.0f, \"bytes_fp4\": %.0f, \"bytes_q8\": %.0f, \"bytes_q4\": %.0f, \"bytes_other\": %.0f, \"kv_bytes_per_token\": %.1f, "
               "\"kv_bytes_fixed\": %.0f, \"kv_bytes_1m\": %.0f, \"decode_weight_bytes_per_token\": %.0f, "
               "\"n_layers\": %d, \"n_mtp_layers\": %d, \"engram_table_params\": %.0f%s}\n",
               what, p->total_params, p->active_params, p->mtp_params, p->weight_bytes, p->mtp_weight_bytes,
               p->bytes_by_dtype[0], p->bytes_by_dtype[1], p->bytes_by_dtype[2], p->bytes_by_dtype[3], p->bytes_by_dtype[5], p->bytes_by_dtype[6], p->bytes_by_dtype[4],
               p->kv_bytes_per_token, p->kv_bytes_fixed, p->kv_bytes_1m, p->decode_weight_bytes_per_token, c->n_layers,
               c->n_mtp_layers, p->engram_table_params, extra_json ? extra_json : "");
        return;
    }
    char a[32], b[32], m[32], w[32], mw[32], k1[32], kf[32], dw[32];
    human(p->total_params, a, sizeof a);
    human(p->active_params, b, sizeof b);
    human(p->mtp_params, m, sizeof m);
    hbytes(p->weight_bytes, w, sizeof w);
    hbytes(p->mtp_weight_bytes, mw, sizeof mw);
    hbytes(p->kv_bytes_1m, k1, sizeof k1);
    hbytes(p->kv_bytes_fixed, kf, sizeof kf);
    hbytes(p->decode_weight_bytes_per_token, dw, sizeof dw);
    int n4 = 0, n128 = 0, n0 = 0, nother = 0;
    for (int l = 0; l < c->n_layers; l++) {
        int r = c->compress_ratios[l];
        if (r == 0) n0++; else if (r == 4) n4++; else if (r == 128) n128++; else nother++;
    }
    printf("%s\n", what);
    printf("  layers            %d (%d window-only, %d CSA ratio 4, %d HCA ratio 128, %d other) + %d MTP\n", c->n_layers, n0, n4,
           n128, nother, c->n_mtp_layers);
    printf("  parameters        %s total, %s active per token (%.0f / %.0f)\n", a, b, p->total_params, p->active_params);
    printf("  MTP               +%s parameters (%s in all), %s\n", m, (human(p->total_params + p->mtp_params, a, sizeof a), a), mw);
    if (p->engram_table_params > 0) {
        char e[32];
        human(p->engram_table_params, e, sizeof e);
        printf("  Engram            %d layers, %s table parameters (in the total, not active)\n", c->engram_n_layers, e);
    }
    printf("  weights           %s (scales included)\n", w);
    const char *dn[7] = {"F32", "BF16", "FP8+scales", "FP4+scales", "other", "Q8+scales", "Q4+scales"};
    for (int i = 0; i < 7; i++)
        if (p->bytes_by_dtype[i] > 0) { char t[32]; hbytes(p->bytes_by_dtype[i], t, sizeof t); printf("    %-12s    %s\n", dn[i], t); }
    printf("  decode reads      %s of weights per token\n", dw);
    printf("  KV cache (fp32)   %.1f bytes per token + %s fixed (window, compressor state); %s at 1M tokens\n",
           p->kv_bytes_per_token, kf, k1);
}

static const char *PLAN_HELP =
    "usage: dsv4 plan CONFIG [--json]\n"
    "  Parameters (total, active per token, MTP), weight bytes in the official storage format\n"
    "  (FP8 + FP4 experts when the config says so) and KV-cache bytes, from config.json alone.\n";

int cmd_plan(int argc, char **argv) {
    const char *path = NULL;
    int json = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) { fputs(PLAN_HELP, stdout); return 0; }
        else if (!strcmp(argv[i], "--json")) json = 1;
        else if (argv[i][0] == '-') return cli_error("plan", "unknown option '%s' (see --help)", argv[i]);
        else if (!path) path = argv[i];
        else return cli_error("plan", "one CONFIG only (got '%s' and '%s')", path, argv[i]);
    }
    if (!path) return cli_error("plan", "needs a CONFIG path (see --help)");
    Config c;
    if (config_load(&c, path)) return cli_error("plan", "%s", dsv4_last_error());
    PlanStats p;
    plan_compute(&c, &p);
    print_stats(path, &c, &p, json, NULL);
    return 0;
}

static const char *INFO_HELP =
    "usage: dsv4 info -m DIR [--json]\n"
    "  Opens and validates a model directory (without reading weight data) and reports the\n"
    "  parameters and bytes actually stored, by dtype, with the KV-cache size per token.\n";

int cmd_info(int argc, char **argv) {
    const char *dir = NULL;
    int json = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) { fputs(INFO_HELP, stdout); return 0; }
        else if (!strcmp(argv[i], "--json")) json = 1;
        else if (!strcmp(argv[i], "-m") && i + 1 < argc) dir = argv[++i];
        else return cli_error("info", "unknown option '%s' (see --help)", argv[i]);
    }
    if (!dir) return cli_error("info", "needs -m DIR (see --help)");
    double t0 = now_sec();
    dsv4_open_options o = {.quant_rounding = 0};
    dsv4_model *m = dsv4_model_open(dir, &o);
    if (!m) return cli_error("info", "%s", dsv4_last_error());
    const Config *c = &m->cfg;
    PlanStats p, cfgp;
    plan_compute(c, &cfgp);
    memset(&p, 0, sizeof p);
    /* count what is stored: scales and integer tables are bytes, not parameters */
    double routed[DSV4_MAX_LAYERS] = {0}, embed = 0;
    for (int64_t i = 0; i < m->st.n_tensors; i++) {
        const StTensor *t = &m->st.tensors[i];
        double numel = 1;
        for (int k = 0; k < t->ndim; k++) numel *= (double)t->shape[k];
        const size_t ln = strlen(t->name);
        /* a block scale sits beside its weight: "<base>.scale" and "<base>.weight" */
        char sib[512];
        const int named_scale = ln > 6 && !strcmp(t->name + ln - 6, ".scale");
        const int named_weight = ln > 7 && !strcmp(t->name + ln - 7, ".weight");
        if (named_scale) snprintf(sib, sizeof sib, "%.*s.weight", (int)(ln - 6), t->name);
        else if (named_weight) snprintf(sib, sizeof sib, "%.*s.scale", (int)(ln - 7), t->name);
        const StTensor *other = named_scale || named_weight ? st_find(&m->st, sib) : NULL;
        const StTensor *w = named_scale ? other : t, *sc = named_scale ? t : other;
        const int is_scale = named_scale && w && (w->dtype == DT_F8_E4M3 || w->dtype == DT_I8 || w->dtype == DT_U8);
        /* I8 is FP4 beside an E8M0/F32 scale, Q8 beside an F16 one; U8 beside an F16 scale is Q4 */
        const int q_scale = sc && sc->dtype == DT_F16;
        const int is_int = t->dtype == DT_I32 || t->dtype == DT_I64 || strstr(t->name, "tid2eid");
        const DType wdt = is_scale ? w->dtype : t->dtype;
        const int kind = wdt == DT_F32 ? 0 : wdt == DT_BF16 ? 1 : wdt == DT_F8_E4M3 ? 2 : wdt == DT_I8 ? (q_scale ? 5 : 3)
                         : wdt == DT_U8 && q_scale ? 6 : 4;
        const double params = is_scale || is_int ? 0 : kind == 3 || kind == 6 ? 2 * numel : numel;   /* two per byte */
        const int mtp = !strncmp(t->name, "mtp.", 4);
        p.bytes_by_dtype[kind] += (double)t->nbytes;
        if (mtp) { p.mtp_params += params; p.mtp_weight_bytes += (double)t->nbytes; continue; }
        p.total_params += params;
        p.weight_bytes += (double)t->nbytes;
        if (!strcmp(t->name, "embed.weight")) embed = params;
        if (strstr(t->name, ".engram.embed.weight")) p.engram_table_params += params;
        int layer;
        if (strstr(t->name, ".ffn.experts.") && sscanf(t->name, "layers.%d.", &layer) == 1 && layer >= 0 && layer < c->n_layers)
            routed[layer] += params;
    }
    p.active_params = p.total_params - embed - p.engram_table_params;
    for (int l = 0; l < c->n_layers; l++) p.active_params -= routed[l] * (1.0 - (double)c->n_activated_experts / c->n_routed_experts);
    p.kv_bytes_per_token = cfgp.kv_bytes_per_token;
    p.kv_bytes_fixed = cfgp.kv_bytes_fixed;
    p.kv_bytes_1m = cfgp.kv_bytes_1m;
    p.decode_weight_bytes_per_token = model_decode_bytes(m);   /* as stored, whatever the config announces */
    char extra[256];
    snprintf(extra, sizeof extra, ", \"n_tensors\": %lld, \"n_files\": %d, \"open_seconds\": %.3f", (long long)m->st.n_tensors,
             m->st.n_files, now_sec() - t0);
    print_stats(dir, c, &p, json, json ? extra : NULL);
    if (!json) printf("  files             %d shard(s), %lld tensors, opened and validated in %.2f s\n", m->st.n_files,
                      (long long)m->st.n_tensors, now_sec() - t0);
    dsv4_model_close(m);
    return 0;
}
